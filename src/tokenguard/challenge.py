"""The only place that knows the ``WWW-Authenticate`` wire format and the error bodies (RFC 6750 §3)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from tokenguard.errors import (
    AuthError,
    InsufficientScope,
    InsufficientUserAuthentication,
    InvalidDPoPProof,
    TokenGuardError,
    UnavailableError,
    UseDPoPNonce,
)

__all__ = ["Denial", "challenge", "render", "send_denial"]

# RFC 6750 §3: error, error_description and scope values exclude '"' and '\'; realm is a
# quoted-string. Anything outside printable ASCII (CR/LF first of all) is dropped: no header injection.
# What stays is %x20-21 / %x23-5B / %x5D-7E. Dropped with two C passes (non-ASCII by the encoder, the
# rest by ``bytes.translate``) rather than one regex match per dropped character, which made a text
# made only of dropped characters render 13 times slower than plain text of the same length.
_UNSAFE_ASCII = bytes([*range(0x20), 0x22, 0x5C, 0x7F])


@dataclass(frozen=True)
class Denial:
    """A refusal ready to send: status, headers (ASGI byte pairs) and a JSON body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    error_code: str | None
    reason: str


def _quoted(value: str) -> str:
    safe = value.encode("ascii", "ignore").translate(None, _UNSAFE_ASCII).decode("ascii")
    return '"' + safe + '"'


def challenge(
    error: AuthError,
    *,
    realm: str,
    resource_metadata: str | None = None,
    scheme: str = "Bearer",
    with_error: bool = True,
    algs: tuple[str, ...] = (),
    scopes: tuple[str, ...] = (),
) -> str:
    """One ``WWW-Authenticate`` challenge for a refusal: a bare one when there was no token, or when
    the error belongs to the other scheme's challenge (``with_error=False``). ``algs``: the DPoP
    challenge's algorithms (RFC 9449 §7.1)."""
    params = [f"realm={_quoted(realm)}"]
    if with_error and error.error_code is not None:
        params.append(f"error={_quoted(error.error_code)}")
        params.append(f"error_description={_quoted(error.description)}")
    if with_error and isinstance(error, InsufficientScope) and error.required:
        # RFC 6750 §3: the scope attribute lists the scopes necessary to access the resource.
        params.append(f"scope={_quoted(' '.join(error.required))}")
    elif scopes and error.status_code == 401 and not isinstance(error, InsufficientUserAuthentication):
        # RFC 6750 §3 allows scope on any challenge; MCP 2025-11-25 (scope selection strategy) has a
        # client ask for the scopes of a 401 challenge instead of every scope in the metadata.
        params.append(f"scope={_quoted(' '.join(scopes))}")
    if with_error and isinstance(error, InsufficientUserAuthentication):
        # RFC 9470 §3: acr_values (space-separated) and max_age tell the client how to step up.
        if error.acr_values:
            params.append(f"acr_values={_quoted(' '.join(error.acr_values))}")
        if error.max_age is not None:
            params.append(f'max_age="{int(error.max_age)}"')
    if algs:
        # RFC 9449 §7.1: the DPoP challenge lists the proof algorithms the resource server accepts.
        params.append(f"algs={_quoted(' '.join(algs))}")
    if resource_metadata is not None:
        # RFC 9728 §5.1: where the client finds the protected resource's metadata.
        params.append(f"resource_metadata={_quoted(resource_metadata)}")
    return scheme + " " + ", ".join(params)


def render(
    error: TokenGuardError,
    *,
    realm: str,
    resource_metadata: str | None = None,
    dpop_algs: tuple[str, ...] = (),
    scopes: tuple[str, ...] = (),
) -> Denial:
    """Turn any refusal into the response that says it; the single error-to-HTTP mapping.

    With ``dpop_algs`` (DPoP accepted), a ``DPoP`` challenge follows the ``Bearer`` one in the same
    field (RFC 9449 §7.1, §7.2). Bearer stays: an mTLS-bound token is sent with it (RFC 8705 §3). The
    error goes on the challenge of the scheme the client used; DPoP proof errors on the DPoP one.
    """
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
    ]
    body: dict[str, str] = {}
    if isinstance(error, AuthError):
        on_dpop = bool(dpop_algs) and (isinstance(error, (InvalidDPoPProof, UseDPoPNonce)) or error.scheme == "dpop")
        value = challenge(
            error, realm=realm, resource_metadata=resource_metadata, with_error=not on_dpop, scopes=scopes
        )
        if dpop_algs:
            # One field, two challenges, as RFC 9449 §7.2 shows ("Bearer, DPoP algs=..."): a client that
            # reads one header value sees both (RFC 9110 §11.6.1).
            value += ", " + challenge(
                error,
                realm=realm,
                resource_metadata=resource_metadata,
                scheme="DPoP",
                with_error=on_dpop,
                algs=dpop_algs,
                scopes=scopes,
            )
        headers.append((b"www-authenticate", value.encode("ascii")))
        if isinstance(error, UseDPoPNonce) and error.nonce is not None:
            # RFC 9449 §9: the nonce the client must put in its next proof. Nonces are base64url: safe.
            headers.append((b"dpop-nonce", error.nonce.encode("ascii")))
        if error.error_code is not None:
            body["error"] = error.error_code
        body["error_description"] = error.description
        if isinstance(error, InsufficientScope) and error.required:
            body["scope"] = " ".join(error.required)
        status, code = error.status_code, error.error_code
    elif isinstance(error, UnavailableError):
        # "We could not check" is never "the token is bad": 503 with Retry-After (RFC 9110 §10.2.3).
        headers.append((b"retry-after", str(max(1, int(error.retry_after))).encode("ascii")))
        body = {"error": "temporarily_unavailable", "error_description": error.description}
        status, code = 503, "temporarily_unavailable"
    else:
        body = {"error": "server_error", "error_description": "The request could not be authorized."}
        status, code = 500, "server_error"
    payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
    headers.append((b"content-length", str(len(payload)).encode("ascii")))
    return Denial(status, tuple(headers), payload, code, error.reason)


#: ASGI ``receive``/``send`` as the guard passes them (plain ASGI: no framework types in the core).
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def send_denial(scope: Mapping[str, Any], receive: Receive, send: Send, denial: Denial) -> None:
    """Send a rendered refusal as ASGI messages: an HTTP response, or a WebSocket refusal before accept."""
    if scope["type"] == "websocket":
        await _deny_websocket(scope, receive, send, denial)
        return
    await send({"type": "http.response.start", "status": denial.status, "headers": list(denial.headers)})
    await send({"type": "http.response.body", "body": denial.body})


async def _deny_websocket(scope: Mapping[str, Any], receive: Receive, send: Send, denial: Denial) -> None:
    """Refuse before accept: an HTTP denial response where supported, else close with 1008."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": denial.status, "headers": list(denial.headers)})
        await send({"type": "websocket.http.response.body", "body": denial.body})
        return
    # RFC 6455 §7.4.1: 1008 "policy violation".
    await send({"type": "websocket.close", "code": 1008, "reason": denial.reason})
