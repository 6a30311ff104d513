"""The official MCP client, with its OAuth support, against ``examples/mcp_server.py`` and the DevIdP.

What it does is what any MCP host does (MCP authorization, 2025-11-25): the first request gets 401
with ``resource_metadata`` and ``scope``; the client reads the RFC 9728 metadata, the issuer's RFC
8414 metadata, registers itself (RFC 7591), and runs the authorization code flow with PKCE and
``resource`` (RFC 8707) for ``bank:read``. ``transfer`` then answers 403 ``insufficient_scope``
with ``scope="bank:read bank:write"``: the client authorizes again with the larger scope and the
call goes through. The DevIdP approves every authorization at once, so "the browser" here is one
HTTP request whose redirect carries the code.

    python examples/mcp_client.py [http://127.0.0.1:8000/mcp]
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


class MemoryStorage:
    """The client's tokens and registration, kept for this run only (``mcp.client.auth.TokenStorage``)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class Browser:
    """Follows the authorization URL as a browser would and hands the code from the redirect back."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []  # the scope of each authorization asked for
        self._result: AuthorizationCodeResult | None = None

    async def open(self, url: str) -> None:
        query = parse_qs(urlsplit(url).query)
        self.authorizations.append(query.get("scope", [""])[0])
        async with httpx2.AsyncClient() as client:
            answer = await client.get(url)
        if answer.status_code not in (302, 303):
            raise RuntimeError(f"the authorization server answered {answer.status_code}: {answer.text[:200]}")
        params = parse_qs(urlsplit(answer.headers["location"]).query)
        if "code" not in params:
            raise RuntimeError(f"the authorization was refused: {params.get('error')}")
        self._result = AuthorizationCodeResult(
            code=params["code"][0], state=params.get("state", [None])[0], iss=params.get("iss", [None])[0]
        )

    async def callback(self) -> AuthorizationCodeResult:
        assert self._result is not None
        result, self._result = self._result, None
        return result


def oauth(server_url: str, browser: Browser, storage: MemoryStorage | None = None) -> OAuthClientProvider:
    metadata = OAuthClientMetadata(
        client_name="tokenguard example client",
        redirect_uris=["http://127.0.0.1:33418/callback"],  # loopback: any port matches (RFC 8252 §7.3)
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none",  # a public client: PKCE instead of a secret
    )
    return OAuthClientProvider(
        server_url=server_url,
        client_metadata=metadata,
        storage=storage or MemoryStorage(),
        redirect_handler=browser.open,
        callback_handler=browser.callback,
    )


async def main(server_url: str) -> None:
    browser = Browser()
    async with (
        httpx2.AsyncClient(auth=oauth(server_url, browser), timeout=30) as http,
        streamable_http_client(server_url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        print("authorized for:", browser.authorizations[-1])
        print("tools:", ", ".join(tool.name for tool in (await session.list_tools()).tools))
        print((await session.call_tool("get_balance", {"account": "checking"})).content[0].text)  # type: ignore[union-attr]
        moved = await session.call_tool("transfer", {"source": "checking", "target": "savings", "amount": 100})
        print("stepped up to:", browser.authorizations[-1])
        print(moved.content[0].text)  # type: ignore[union-attr]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/mcp"))
