"""An MCP server (official ``mcp`` SDK, Streamable HTTP) behind tokenguard, with a policy per tool.

Three tools: ``get_balance`` reads, ``transfer`` writes (``bank:write``), ``close_account`` is
sensitive: it needs ``bank:admin`` and its token is checked with the issuer on every call (RFC 7662
introspection, 30 s cache), so a revoked token stops working at once. Every request to ``/mcp``
needs ``bank:read``, which the 401 challenge names, so an MCP client asks for that first and steps
up to more when a tool answers 403 ``insufficient_scope`` with the scopes it needs.

Run it against the development identity provider (``pip install 'tokenguard-asgi[mcp,server]'``):

    tokenguard dev-idp --port 9000 --audience http://127.0.0.1:8000/mcp \\
        --scope bank:read --scope bank:write --scope bank:admin
    python examples/mcp_server.py
    python examples/mcp_client.py        # the official MCP client: discovery, registration, PKCE, step-up

Settings come from the environment: TOKENGUARD_ISSUER (default ``http://127.0.0.1:9000``),
MCP_PORT (``8000``), MCP_RESOURCE (``http://127.0.0.1:<MCP_PORT>/mcp``: the canonical URI clients
ask tokens for, and the audience), TOKENGUARD_CLIENT_ID and TOKENGUARD_CLIENT_SECRET (the
introspection credentials: the DevIdP's resource-server client, ``dev-api`` / ``dev-api-secret``).
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

from tokenguard import TokenGuard
from tokenguard.mcp import MCPPolicy, ToolPolicy

ISSUER = os.environ.get("TOKENGUARD_ISSUER", "http://127.0.0.1:9000")
PORT = int(os.environ.get("MCP_PORT", "8000"))
RESOURCE = os.environ.get("MCP_RESOURCE", f"http://127.0.0.1:{PORT}/mcp")

BALANCES = {"checking": 1200, "savings": 5000}

server = MCPServer("bank", instructions="A small bank: read balances, transfer money, close accounts.")


@server.tool()
def get_balance(account: str) -> str:
    """The balance of an account."""
    return f"{account}: {BALANCES.get(account, 0)} EUR"


@server.tool()
def transfer(source: str, target: str, amount: int) -> str:
    """Move money between two accounts."""
    if amount <= 0 or BALANCES.get(source, 0) < amount:
        return "refused: amount"
    BALANCES[source] -= amount
    BALANCES[target] = BALANCES.get(target, 0) + amount
    return f"moved {amount} EUR from {source} to {target}"


@server.tool()
def close_account(account: str) -> str:
    """Close an account for good."""
    BALANCES.pop(account, None)
    return f"closed {account}"


POLICY = MCPPolicy(
    scopes="bank:read",  # every request to /mcp, and the scope a client asks for first
    tools={
        "get_balance": ToolPolicy(scopes="bank:read"),
        "transfer": ToolPolicy(scopes="bank:write"),
        "close_account": ToolPolicy(scopes="bank:admin", sensitive=True),
    },
    default=ToolPolicy(scopes="bank:admin"),  # a tool added later without a policy is admin-only
)

app = server.streamable_http_app()
app.add_middleware(
    TokenGuard,
    issuer=ISSUER,
    audience=RESOURCE,
    client_id=os.environ.get("TOKENGUARD_CLIENT_ID", "dev-api"),
    client_secret=os.environ.get("TOKENGUARD_CLIENT_SECRET", "dev-api-secret"),
    mcp=POLICY,
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=PORT)
