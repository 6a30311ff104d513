"""The token-only check both MCP verifiers share: one token in, a verdict out. [adapter]

An MCP SDK hands its verifier the bearer token and nothing else: no other header, no client address,
no route. ``TokenCheck`` runs tokenguard's whole pipeline on it (strict JOSE parsing, the issuer's
keys, ``aud``, lifetimes, revocations, introspection when asked) through the ``Authenticator`` of an
internal ``TokenGuard``, so every option is validated as the guard validates it.

What the token-only interface cannot carry is refused rather than skipped: a token bound to a key
(``cnf``: DPoP, RFC 9449, or an mTLS certificate, RFC 8705) arrives without its proof, so it is
refused as a bearer token (RFC 9449 §7.2; RFC 8705 §3), and options that act only on requests the
verifier never sees (route rules, DPoP proofs, challenges, metadata) are configuration errors.

Verdicts: a ``Verified`` token, or ``None``: for a token that is wrong (``AuthError``: forged,
expired, another audience or issuer, revoked, malformed, not ASCII, too long), and also for one that
could not be checked now (``UnavailableError``: issuer or introspection unreachable, breaker open,
the first-sight budget spent), logged as a warning with its cause. The token-only protocols have no
"try again later": an exception there is a 500, and the first-sight budget is spent by anyone who
sends unknown opaque tokens, so raising would let any client turn junk into 500s. ``TokenGuard`` in
front of the MCP app answers those with 503 and ``Retry-After``. Nothing logged here holds the token.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send

from tokenguard._claims import matched_audience
from tokenguard.errors import AuthError, ConfigurationError, UnavailableError
from tokenguard.middleware import TokenGuard
from tokenguard.policy import Requirement

__all__ = ["TokenCheck", "Verified", "scope_list"]

logger = logging.getLogger("tokenguard")

#: TokenGuard options that act only on what a token verifier never sees: the request's route, its other
#: headers, the TLS connection, the response. Given to a verifier they would silently do nothing.
_REQUEST_ONLY: Mapping[str, str] = {
    "mcp": "a per-tool policy reads the JSON-RPC body, which a token verifier never sees",
    "rules": "route rules need the request's path; the MCP SDK passes the verifier only the token",
    "default": "there are no routes here: every token is checked",
    "resource": "the MCP server's AuthSettings.resource_server_url names the resource in its metadata",
    "resource_metadata": "the MCP server serves its own RFC 9728 metadata (AuthSettings.resource_server_url)",
    "realm": "the MCP server writes the WWW-Authenticate challenge",
    "max_body_bytes": "the verifier never reads a request body",
    "route_cache_size": "there are no routes here",
    "on_decision": "decision events are reported by the TokenGuard middleware, not by the verifier",
    "prefetch": "the verifier has no lifespan of its own; keys are fetched on the first token",
    "dpop_algorithms": "DPoP proofs never reach a token verifier: a DPoP-bound token is refused",
    "dpop_iat_window": "DPoP proofs never reach a token verifier: a DPoP-bound token is refused",
    "dpop_nonce": "DPoP proofs never reach a token verifier: a DPoP-bound token is refused",
    "dpop_nonce_secret": "DPoP proofs never reach a token verifier: a DPoP-bound token is refused",
    "replay_store": "DPoP proofs never reach a token verifier: a DPoP-bound token is refused",
    "client_certificate_header": "no client certificate reaches a token verifier: an mTLS-bound token is refused",
    "trusted_proxies": "the verifier never sees the request's client address or forwarded headers",
    "public_url": "the verifier never sees the request's URL",
}

_IN_FRONT = "put TokenGuard in front of the MCP app instead (see tokenguard.mcp)"


async def _refuse_everything(scope: Scope, receive: Receive, send: Send) -> None:
    """The internal guard's app: it is never called (the verifier uses the guard's authenticator only)."""
    raise RuntimeError("the token verifier's internal TokenGuard serves no requests")


@dataclass(frozen=True)
class Verified:
    """What an MCP ``AccessToken`` is built from: the token's values, as the SDKs' models name them."""

    #: The raw token, which the SDKs' ``AccessToken`` requires; never in this object's ``repr``.
    token: str = field(repr=False)
    #: The token's ``client_id`` (RFC 9068 §2.2, RFC 7662 §2.2), ``None`` when it names none.
    client_id: str | None
    scopes: list[str]
    expires_at: int | None
    #: The configured audience the token's ``aud`` names (exactly, or as the same canonical URI).
    resource: str | None
    subject: str | None
    issuer: str | None
    #: A deep copy: the pipeline's token may be shared by every request that carries the same bytes.
    claims: dict[str, Any]

    def access_token_fields(self) -> dict[str, Any]:
        """The members of both SDKs' ``AccessToken`` (FastMCP's extends the official one).

        ``client_id`` is ``""`` for a token that names no client: the SDK's model requires a string.
        """
        return {
            "token": self.token,
            "client_id": self.client_id if self.client_id is not None else "",
            "scopes": self.scopes,
            "expires_at": self.expires_at,
            "resource": self.resource,
            "subject": self.subject,
            "claims": self.claims,
        }


class TokenCheck:
    """The whole tokenguard pipeline for one bare token, built from TokenGuard's options.

    ``verifier`` names the public class in messages (``MCPTokenVerifier``, ``FastMCPTokenVerifier``).
    """

    def __init__(
        self,
        verifier: str,
        *,
        issuer: str | Sequence[str],
        audience: str | Sequence[str],
        sensitive: bool = False,
        required_scopes: Iterable[str] | None = None,
        options: Mapping[str, Any],
    ) -> None:
        self.verifier = verifier
        if not isinstance(sensitive, bool):
            raise ConfigurationError(f"{verifier}: sensitive must be True or False, got {sensitive!r}")
        scopes = frozenset(scope_list(verifier, required_scopes))
        for name in options:
            if name in _REQUEST_ONLY:
                reason = _REQUEST_ONLY[name]
                raise ConfigurationError(f"{verifier}: {name} does not apply to a token verifier ({reason})")
        if options.get("dpop") == "required":
            raise ConfigurationError(
                f"{verifier}: dpop='required' cannot be met: the MCP SDK passes only the token, never its DPoP "
                f"proof, so every token would be refused; {_IN_FRONT}"
            )
        self.guard = _build_guard(verifier, issuer=issuer, audience=audience, options=options)
        authenticator = self.guard.authenticator
        # No proof of possession reaches a verifier: with no sender constraints the pipeline refuses
        # every token carrying ``cnf`` (401 unsupported_token), whatever its binding method.
        authenticator.constraints = None
        if sensitive and (problem := authenticator.introspection_problem()) is not None:
            raise ConfigurationError(f"{verifier}: sensitive=True needs introspection: {problem}")
        self.sensitive = sensitive
        self.requirement = Requirement(sensitive=sensitive, all_scopes=scopes)
        self.audiences: tuple[str, ...] = self.guard.config.audience
        self.max_token_bytes: int = self.guard.config.max_token_bytes
        self._closed = False

    async def check(self, token: str) -> Verified | None:
        """The token's values; ``None`` for a wrong token, or one that could not be checked now (logged)."""
        if not isinstance(token, str) or len(token) > self.max_token_bytes or not token:
            return None
        if not token.isascii() or not token.isprintable():
            return None  # RFC 6750 §2.1 b64token: ASCII only; the pipeline would refuse it too
        guard = self.guard
        if guard._background:
            guard._start_background()  # fleet mode: the revocation feed and SSF poller, as TokenGuard.__call__
        headers = [(b"authorization", b"Bearer " + token.encode("ascii"))]
        try:
            access = await guard.authenticator.authenticate(headers, self.requirement)
        except AuthError as exc:
            logger.debug("tokenguard: %s refused a token: %s", self.verifier, exc.reason)
            return None
        except UnavailableError as exc:
            # ``cause`` names what failed (a URL, a status), never the token.
            logger.warning("tokenguard: %s could not check a token (refused): %s", self.verifier, exc.cause)
            return None
        except Exception as exc:  # a bug fails closed; its message might quote the token, so only its type
            logger.error("tokenguard: %s: internal error while checking a token: %s", self.verifier, type(exc).__name__)
            return None
        return Verified(
            token=token,
            client_id=access.client_id,
            scopes=sorted(access.scopes),
            expires_at=math.floor(access.expires_at) if access.expires_at is not None else None,
            resource=matched_audience(_audiences_of(access.claims), self.audiences),
            subject=access.subject,
            issuer=access.issuer,
            claims=copy.deepcopy(dict(access.claims)),
        )

    async def aclose(self) -> None:
        """Stop the fleet's background work and close the guard's HTTP clients and stores (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self.guard._shutdown()  # what the guard's lifespan shutdown does


def _audiences_of(claims: Mapping[str, Any]) -> list[str]:
    """The token's ``aud`` as a list of strings (RFC 7519 §4.1.3: one string or an array of them)."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, (list, tuple)):
        return [value for value in aud if isinstance(value, str)]
    return []


def scope_list(verifier: str, scopes: Iterable[str] | None) -> list[str]:
    """``required_scopes`` checked: a list of scope names (a space-separated string is split)."""
    if scopes is None:
        return []
    values = scopes.split() if isinstance(scopes, str) else list(scopes)
    if not all(isinstance(value, str) and value and not any(c.isspace() for c in value) for value in values):
        raise ConfigurationError(f"{verifier}: required_scopes must be a list of scope names, got {values!r}")
    return values


def _build_guard(
    verifier: str, *, issuer: str | Sequence[str], audience: str | Sequence[str], options: Mapping[str, Any]
) -> TokenGuard:
    """A ``TokenGuard`` around an app that refuses everything: TokenGuard validates every option."""
    try:
        built: Any = TokenGuard(
            _refuse_everything, issuer=issuer, audience=audience, resource_metadata=False, **options
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"{verifier}: {exc}") from None
    except Exception as exc:  # a value of the wrong type, said as TokenGuard says it when a framework builds it
        raise ConfigurationError(
            f"{verifier}: an option has a value of the wrong type ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    # Built while a framework builds its middleware stack, TokenGuard defers its error to the lifespan
    # (a ``FailedGuard``, ``_startup``); a verifier has no lifespan of its own, so it raises now.
    if not isinstance(built, TokenGuard):
        raise ConfigurationError(f"{verifier}: {built.error}")
    if built._failed is not None:
        raise ConfigurationError(f"{verifier}: {built._failed.error}")
    return built
