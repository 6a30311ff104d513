"""Bearer token extraction from request headers (RFC 6750 §2.1).

Only the ``Authorization`` request header is a credential. RFC 6750 §2.2 (form body) and §2.3
(URI query) methods are never read: tokens in URLs end up in logs and caches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from tokenguard.errors import AuthError, InvalidRequest, InvalidToken, MissingToken

__all__ = [
    "authorization_values",
    "bearer_from",
    "cached_candidate",
    "client_of",
    "credentials_from",
    "host_and_authorization",
    "is_preflight",
    "parse_authorization",
    "parse_credentials",
]

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=". Checked as
# "strip the trailing '=', delete these characters, nothing may remain": one pass in C, no regex
# backtracking (fullmatch of r"[...]+=*" stepped back over the whole token, one character at a time,
# when a stray byte came last: ten times the cost of a good token of the same size).
_B64TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
_AUTHORIZATION = b"authorization"
_HOST = b"host"
# auth-scheme, then the whitespace that separates it from the credentials (RFC 9110 §11.4). Linear:
# each part is greedy and the last takes the rest, so the one match attempt never backtracks.
_SCHEME = re.compile(rb"([^ \t]*)([ \t]*)(.*)", re.DOTALL)


def authorization_values(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Every ``Authorization`` field value of an ASGI header list (names compared case-insensitively)."""
    return host_and_authorization(headers)[1]


def host_and_authorization(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, list[bytes]]:
    """The first ``Host`` value (``b""`` without one) and every ``Authorization`` value, in one pass.

    Names are compared exactly, else case-insensitively; only a name of either length is lowered. The
    middleware reads both at once (the route decision's key, the token); ``routing.host_of`` and
    ``authorization_values`` are this function's two halves.
    """
    host: bytes | None = None
    values: list[bytes] = []
    for name, value in headers:
        if name == _AUTHORIZATION:
            values.append(value)
        elif name == _HOST:
            if host is None:
                host = value
        elif len(name) == 13:
            if name.lower() == _AUTHORIZATION:
                values.append(value)
        elif len(name) == 4 and host is None and name.lower() == _HOST:
            host = value
    return (b"" if host is None else host), values


def bearer_from(values: list[bytes], max_bytes: int) -> str:
    """The bearer token of the request's ``Authorization`` field values, or the RFC 6750 refusal."""
    return credentials_from(values, max_bytes, dpop=False)[1]


def credentials_from(values: list[bytes], max_bytes: int, *, dpop: bool) -> tuple[str, str]:
    """``(scheme, token)`` of the request's ``Authorization`` values: ``"bearer"``, or ``"dpop"`` when
    ``dpop`` (RFC 9449 §7.1: ``Authorization: DPoP <token68>``); any other scheme is no token at all."""
    if not values:
        raise MissingToken()
    if len(values) > 1:
        # RFC 6750 §3.1 invalid_request: "...uses more than one method for including an access token".
        raise InvalidRequest(description="More than one Authorization header was sent.")
    return parse_credentials(values[0], max_bytes, dpop=dpop)


def cached_candidate(values: list[bytes]) -> bytes | None:
    """The token bytes of a single ``Bearer <token>`` value, for a lookup in the verified cache.

    Only a hint: a hit means these exact bytes passed the full checks before; a miss (any other
    shape: whitespace, another scheme, several headers) goes through ``bearer_from``.
    """
    if len(values) != 1:
        return None
    value = values[0]
    prefix = value[:7]
    if prefix == b"Bearer " or prefix.lower() == b"bearer ":
        return value[7:]
    return None


def parse_authorization(value: bytes, max_bytes: int) -> str:
    """Parse one ``Authorization`` field value; another scheme counts as no token at all."""
    return parse_credentials(value, max_bytes, dpop=False)[1]


def parse_credentials(value: bytes, max_bytes: int, *, dpop: bool) -> tuple[str, str]:
    """``(scheme, token)`` of one ``Authorization`` value; the same token68 rules for both schemes."""
    value = value.strip(b" \t")
    if value[6:7] == b" " and value[7:8] not in (b" ", b"\t") and b"\t" not in value[:6] and b" " not in value[:6]:
        # The common shape, "<6 characters> <credentials>", split without the regex: what it would find.
        scheme, sep, credentials = value[:6], b" ", value[7:]
    else:
        # The scheme ends at the first space or tab, so "Bearer<TAB>token" is a malformed bearer credential.
        match = _SCHEME.fullmatch(value)
        assert match is not None  # every byte string matches: the pattern has no required part
        scheme, sep, credentials = match.groups()
    if len(scheme) == 6 and scheme.lower() == b"bearer":  # no copy of a long non-scheme to compare it
        name = "bearer"
    elif dpop and len(scheme) == 4 and scheme.lower() == b"dpop":
        name = "dpop"
    else:
        # RFC 6750 §3.1: a request without bearer credentials gets a challenge with no error code.
        raise MissingToken()
    if not credentials:
        raise _on(name, InvalidRequest(description="The bearer token is empty."))
    if len(credentials) > max_bytes:
        # Size cap before any parsing: bounds the work an attacker can ask of us.
        raise _on(name, InvalidToken("token_too_large", "The access token is too large."))
    token68 = credentials.rstrip(b"=")
    if sep != b" " or not token68 or token68.translate(None, _B64TOKEN_CHARS):
        # RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token. We take exactly one SP (what clients send),
        # and refuse tabs, extra spaces, a second word, control bytes and non-ASCII.
        raise _on(name, InvalidRequest(description="The bearer token is malformed."))
    return name, credentials.decode("ascii")


def _on(scheme: str, error: AuthError) -> AuthError:
    """``error``, marked with the scheme the client used: its challenge carries it (RFC 9449 §7.1)."""
    error.scheme = scheme
    return error


def client_of(scope: Mapping[str, Any]) -> str | None:
    """The peer's address as the server reports it (ASGI ``client``), or ``None``."""
    client = scope.get("client")
    if isinstance(client, (tuple, list)) and client and isinstance(client[0], str):
        return client[0]
    return None


def is_preflight(scope: Mapping[str, Any]) -> bool:
    """A CORS preflight (Fetch standard §3.2.2) carries no credentials and must pass untouched."""
    if scope.get("method") != "OPTIONS":
        return False
    names = {name.lower() for name, _ in scope.get("headers", ())}
    return b"origin" in names and b"access-control-request-method" in names
