"""``FastMCPTokenVerifier``: tokenguard's pipeline as a FastMCP auth provider. [adapter]

FastMCP (``fastmcp.server.auth``) wires a ``TokenVerifier`` into the SDK's ``BearerAuthBackend`` and
its own ``RequireAuthMiddleware``. The mapping is ``MCPTokenVerifier``'s (``_sdk``): ``None`` for a
token tokenguard refuses (401), FastMCP's ``AccessToken`` for a good one. A token that cannot be
checked now (issuer unreachable, introspection down or its breaker open) is ``None`` as well, with a
warning logged: FastMCP's ``TokenVerificationError`` ends as a 500 outside ``MultiAuth``, and the
first-sight budget that refuses unknown opaque tokens during a flood is spent by any client, so
raising would let junk tokens produce 500s. ``TokenGuard`` in front answers 503 with ``Retry-After``.

``required_scopes``, ``base_url`` and ``resource_base_url`` go to FastMCP's ``TokenVerifier``:
FastMCP checks the scopes itself (403 ``insufficient_scope``) and advertises them in its metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tokenguard.mcp._verify import TokenCheck, scope_list
from tokenguard.middleware import TokenGuard

try:
    from fastmcp.server.auth import TokenVerifier
    from fastmcp.server.auth.auth import AccessToken
    from pydantic import AnyHttpUrl
except ImportError as exc:  # pragma: no cover - fastmcp needs Python 3.11+
    raise ImportError(
        "tokenguard.mcp.FastMCPTokenVerifier needs FastMCP (Python 3.11 or later): pip install fastmcp"
    ) from exc

__all__ = ["FastMCPTokenVerifier"]


class FastMCPTokenVerifier(TokenVerifier):
    """A FastMCP ``TokenVerifier`` backed by tokenguard: ``FastMCP("name", auth=FastMCPTokenVerifier(...))``.

    ``issuer``, ``audience`` and ``**options`` are ``TokenGuard``'s, validated when it is built
    (``ConfigurationError`` naming the option); ``sensitive=True`` introspects every token (RFC 7662).
    A token bound to a key (``cnf``, DPoP or mTLS) is refused: its proof never reaches a verifier.
    ``await verifier.aclose()`` closes the guard's HTTP clients.
    """

    def __init__(
        self,
        *,
        issuer: str | Sequence[str],
        audience: str | Sequence[str],
        base_url: AnyHttpUrl | str | None = None,
        resource_base_url: AnyHttpUrl | str | None = None,
        required_scopes: Iterable[str] | None = None,
        sensitive: bool = False,
        **options: Any,
    ) -> None:
        scopes = scope_list("FastMCPTokenVerifier", required_scopes)
        # FastMCP checks required_scopes itself (a 403); the check here would make it a 401.
        self._check = TokenCheck(
            "FastMCPTokenVerifier", issuer=issuer, audience=audience, sensitive=sensitive, options=options
        )
        super().__init__(base_url=base_url, required_scopes=scopes, resource_base_url=resource_base_url)

    @property
    def guard(self) -> TokenGuard:
        """The internal guard: ``status()``, ``metrics_snapshot()``, ``revoke(...)``."""
        return self._check.guard

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's ``AccessToken``; ``None`` when it is refused or cannot be checked now (logged).
        ``client_id`` is ``""`` for a token naming no client (a string is required)."""
        verified = await self._check.check(token)
        if verified is None:
            return None
        return AccessToken(**verified.access_token_fields())

    async def aclose(self) -> None:
        """Close the internal guard's HTTP clients and stores; stop its background work."""
        await self._check.aclose()
