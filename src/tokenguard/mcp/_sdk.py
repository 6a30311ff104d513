"""``MCPTokenVerifier``: tokenguard's pipeline behind the official MCP SDK's ``TokenVerifier`` protocol. [adapter]

The SDK (``mcp``) calls ``verify_token(token)`` from its ``BearerAuthBackend`` with the bearer token
alone. What it does with the answer (``mcp/server/auth/middleware/bearer_auth.py``) decides the
mapping here:

* ``None``: the request is anonymous, and ``RequireAuthMiddleware`` answers 401 ``invalid_token``.
  Returned for every token tokenguard refuses (``AuthError``): forged, expired, another audience or
  issuer, revoked, malformed, not ASCII, longer than ``max_token_bytes``, bound to a key (below).
* An ``AccessToken``: the SDK refuses it still when ``expires_at`` is past (by the wall clock) or,
  with ``AuthSettings(validate_token_resource=True)``, when ``resource`` is not
  ``resource_server_url``: ``resource`` is the configured audience the token's ``aud`` named,
  so configure that audience as the server's URL. ``AuthSettings.required_scopes`` is checked
  against ``scopes`` (403 ``insufficient_scope``).
* An exception: nothing in the SDK catches it; Starlette's ``ServerErrorMiddleware`` answers 500.

The token could not be checked now (issuer or JWKS unreachable, introspection down or its breaker
open, the first-sight budget spent: tokenguard's 503 ``UnavailableError``): ``verify_token`` returns
``None`` too, so the client gets 401, and the cause is logged as a warning. The protocol has no
"try again later": an exception would be a 500, and the first-sight budget is spent by anyone who
sends unknown opaque tokens, so raising would let any client turn junk into 500s. For a 503 with
``Retry-After`` (and a client that keeps its token), put ``TokenGuard`` in front of the MCP app.

A token bound to a key (``cnf``: DPoP, RFC 9449; an mTLS certificate, RFC 8705) needs a proof the
SDK never passes to its verifier, so it is refused (RFC 9449 §7.2: a DPoP-bound token MUST NOT be
accepted as a bearer token). For proof of possession, per-tool scopes or step-up, put ``TokenGuard``
in front of the MCP app instead (``tokenguard.mcp``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tokenguard.mcp._verify import TokenCheck
from tokenguard.middleware import TokenGuard

try:
    from mcp.server.auth.provider import AccessToken
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "tokenguard.mcp.MCPTokenVerifier needs the official MCP SDK: pip install 'tokenguard-asgi[mcp]'"
    ) from exc

__all__ = ["MCPTokenVerifier"]


class MCPTokenVerifier:
    """The MCP SDK's ``TokenVerifier`` (``mcp.server.auth.provider``), backed by tokenguard.

    ``MCPServer(token_verifier=MCPTokenVerifier(issuer=..., audience="https://mcp.example.com/mcp"),
    auth=AuthSettings(issuer_url=..., resource_server_url="https://mcp.example.com/mcp", ...))``.

    ``issuer``, ``audience`` and ``**options`` are ``TokenGuard``'s, validated by an internal
    ``TokenGuard``: a wrong one raises ``ConfigurationError`` naming it, here. Options that act only on
    a request the verifier never sees (``rules``, ``dpop="required"``, ``client_certificate_header``,
    ``on_decision``, ...) are refused the same way.

    ``sensitive=True`` introspects every token (RFC 7662) through the guard's introspection cache, so
    a revoked token is refused within ``introspection_cache_ttl``; it needs ``client_id`` and
    ``client_secret``. ``required_scopes`` (default none) makes a token without them ``None`` (a 401);
    ``AuthSettings(required_scopes=...)`` is usually better: the SDK answers 403 ``insufficient_scope``.

    ``await verifier.aclose()`` at shutdown closes the guard's HTTP clients (and, with
    ``shared_store``/``shared_signals``, stops the fleet's background work, started on first use).
    """

    def __init__(
        self,
        *,
        issuer: str | Sequence[str],
        audience: str | Sequence[str],
        sensitive: bool = False,
        required_scopes: Iterable[str] | None = None,
        **options: Any,
    ) -> None:
        self._check = TokenCheck(
            "MCPTokenVerifier",
            issuer=issuer,
            audience=audience,
            sensitive=sensitive,
            required_scopes=required_scopes,
            options=options,
        )

    @property
    def guard(self) -> TokenGuard:
        """The internal guard: ``status()``, ``metrics_snapshot()``, ``revoke(...)``."""
        return self._check.guard

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's ``AccessToken``, or ``None`` when it is refused.

        ``None`` also when it cannot be checked now (logged; see the module).
        ``client_id`` is ``""`` for a token that names no client: the SDK's model requires a string.
        """
        verified = await self._check.check(token)
        if verified is None:
            return None
        return AccessToken(**verified.access_token_fields())

    async def aclose(self) -> None:
        """Close the internal guard's HTTP clients and stores; stop its background work."""
        await self._check.aclose()

    def __repr__(self) -> str:
        return f"MCPTokenVerifier(issuer={list(self.guard.issuers)!r}, audience={list(self._check.audiences)!r})"
