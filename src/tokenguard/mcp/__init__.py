"""tokenguard for MCP servers: per-tool policy, canonical resource URIs, and the SDKs' verifier interfaces.

Two ways to protect a Python MCP server (Streamable HTTP):

* **In front** (recommended): ``app.add_middleware(TokenGuard, issuer=..., audience="https://mcp.example.com/mcp",
  mcp=MCPPolicy(tools={...}))``. The guard serves the RFC 9728 metadata at the path-inserted
  well-known URL, answers every challenge (``resource_metadata``, ``scope``), reads the JSON-RPC body
  once to apply a policy per tool and per method (scopes, any-of, introspection, step-up, sender
  constraint), and keeps DPoP/mTLS, revocations and the shared caches.
* **As the SDK's verifier**: ``MCPTokenVerifier`` (official ``mcp`` SDK, ``TokenVerifier`` protocol) and
  ``FastMCPTokenVerifier`` (FastMCP's auth provider). They see the token only, so no per-tool policy,
  proof of possession or step-up: what the token-only interface cannot carry.

``MCPPolicy``, ``ToolPolicy`` and ``canonical_uri`` need nothing beyond tokenguard; the verifiers need
the ``mcp`` extra (``pip install 'tokenguard-asgi[mcp]'``) or ``fastmcp``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenguard._mcp import MCPPolicy, ToolPolicy
from tokenguard._uri import canonical_uri

if TYPE_CHECKING:
    from tokenguard.mcp._fastmcp import FastMCPTokenVerifier
    from tokenguard.mcp._sdk import MCPTokenVerifier

__all__ = ["FastMCPTokenVerifier", "MCPPolicy", "MCPTokenVerifier", "ToolPolicy", "canonical_uri"]


def __getattr__(name: str) -> Any:
    # The verifiers import their SDK: only when asked for, so the policy works without it.
    if name == "MCPTokenVerifier":
        from tokenguard.mcp._sdk import MCPTokenVerifier

        return MCPTokenVerifier
    if name == "FastMCPTokenVerifier":
        from tokenguard.mcp._fastmcp import FastMCPTokenVerifier

        return FastMCPTokenVerifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
