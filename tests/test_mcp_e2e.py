"""End to end: the official MCP client and its OAuth support, ``examples/mcp_server.py`` under a real
uvicorn, and the DevIdP served over HTTP.

The server process is the example as README runs it (``python examples/mcp_server.py``); the client
is ``mcp``'s own ``ClientSession`` over Streamable HTTP with ``OAuthClientProvider``, driven by
``examples/mcp_client.py``'s browser stand-in (the DevIdP approves at once, so "the browser" is one
GET whose redirect carries the code). Nothing here stands in for tokenguard or the MCP SDK.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from examples.mcp_client import Browser, MemoryStorage, oauth
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tokenguard.testing import DevIdP
from tokenguard.testing._processes import OutputProcess, ServedIdP, UvicornProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
SCOPES = ("bank:read", "bank:write", "bank:admin")

pytestmark = pytest.mark.anyio


class Stack:
    def __init__(self, idp: DevIdP, url: str, process: OutputProcess) -> None:
        self.idp, self.url, self.process = idp, url, process

    def token(self, scopes: str, *, audience: str | None = None) -> str:
        return self.idp.issue_token(scopes, audience=audience or self.url)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    served = ServedIdP(make=lambda issuer: DevIdP(issuer, scopes=SCOPES)).start()
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    served.idp.add_audience(url)
    served.idp.add_audience("http://127.0.0.1:1/other-mcp")  # another resource server of the same issuer
    env = {
        **__import__("os").environ,
        "TOKENGUARD_ISSUER": served.issuer,
        "MCP_PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }
    process = OutputProcess([sys.executable, str(ROOT / "examples" / "mcp_server.py")], env=env, cwd=ROOT)
    try:
        process.wait_for(UvicornProcess.RUNNING, time.monotonic() + 60)
        yield Stack(served.idp, url, process)
    finally:
        process.stop()
        served.stop()


async def session_calls(url: str, http: httpx2.AsyncClient, *calls: tuple[str, dict[str, Any]]) -> list[Any]:
    """Open a real MCP session over ``http`` and make these tool calls; their results."""
    results = []
    async with streamable_http_client(url, http_client=http) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for name, arguments in calls:
            results.append(await session.call_tool(name, arguments))
    return results


class Statuses:
    """The status of every answer the client's HTTP client received (an httpx2 event hook)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def __call__(self, response: httpx2.Response) -> None:
        self.seen.append(response.status_code)


def text(result: Any) -> str:
    return result.content[0].text  # type: ignore[no-any-return]


async def test_discovery_registration_pkce_then_step_up(stack: Stack) -> None:
    """401 → RFC 9728 metadata → RFC 8414 → RFC 7591 → PKCE + resource → calls; 403 scope → re-authorize."""
    browser, storage = Browser(), MemoryStorage()
    registered = set(stack.idp.dynamic_clients)
    async with httpx2.AsyncClient(auth=oauth(stack.url, browser, storage), timeout=30) as http:
        balance, moved = await session_calls(
            stack.url,
            http,
            ("get_balance", {"account": "checking"}),
            ("transfer", {"source": "checking", "target": "savings", "amount": 10}),
        )
    assert text(balance).startswith("checking: ")
    assert text(moved) == "moved 10 EUR from checking to savings"
    # The first authorization asked for the 401's scope only; the 403 named what transfer needs.
    assert browser.authorizations == ["bank:read", "bank:read bank:write"]
    assert len(stack.idp.dynamic_clients - registered) == 1  # registered itself once
    assert storage.tokens is not None
    claims = jwt.decode(storage.tokens.access_token, options={"verify_signature": False})
    assert claims["aud"] == stack.url  # RFC 8707: minted for this server only
    assert set(claims["scope"].split()) == {"bank:read", "bank:write"}


async def test_the_first_challenge_and_the_metadata(stack: Stack) -> None:
    async with httpx2.AsyncClient() as http:
        first = await http.post(stack.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert first.status_code == 401
        challenge = first.headers["www-authenticate"]
        metadata_url = stack.url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
        assert f'resource_metadata="{metadata_url}"' in challenge
        assert 'scope="bank:read"' in challenge
        document = (await http.get(metadata_url)).json()
    assert document["resource"] == stack.url
    assert document["authorization_servers"] == [stack.idp.issuer]
    assert set(SCOPES) <= set(document["scopes_supported"])


async def test_a_token_for_another_resource_is_401(stack: Stack) -> None:
    """No token passthrough: a token of the same issuer minted for another server is refused."""
    other = stack.token("bank:read bank:write bank:admin", audience="http://127.0.0.1:1/other-mcp")
    headers = {"authorization": f"Bearer {other}", "accept": "application/json, text/event-stream"}
    statuses = Statuses()
    async with httpx2.AsyncClient(headers=headers, timeout=30, event_hooks={"response": [statuses]}) as http:
        answer = await http.post(stack.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert answer.status_code == 401
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]
        statuses.seen.clear()
        with pytest.raises(Exception):  # noqa: B017 - the client wraps the refusal in task-group errors
            await session_calls(stack.url, http)
    assert statuses.seen == [401]  # the real client's initialize was refused, and nothing else was sent


async def test_a_revoked_token_is_refused_on_the_sensitive_tool(stack: Stack) -> None:
    """JWT routes see the token valid until it expires; the sensitive tool asks the issuer (RFC 7662)."""
    access = stack.token("bank:read bank:admin")
    headers = {"authorization": f"Bearer {access}"}
    statuses = Statuses()
    async with httpx2.AsyncClient(headers=headers, timeout=30, event_hooks={"response": [statuses]}) as http:
        (balance,) = await session_calls(stack.url, http, ("get_balance", {"account": "savings"}))
        assert text(balance).startswith("savings: ")
        assert stack.idp.revoke(access)  # RFC 7009 at the issuer
        # An ordinary tool validates locally: still accepted (README: this is what sensitive is for).
        (again,) = await session_calls(stack.url, http, ("get_balance", {"account": "savings"}))
        assert text(again).startswith("savings: ")
        statuses.seen.clear()
        with pytest.raises(Exception):  # noqa: B017 - the client wraps the refusal in task-group errors
            await session_calls(stack.url, http, ("close_account", {"account": "savings"}))
    assert 401 in statuses.seen  # initialize passed (local validation); the sensitive call was refused
    assert statuses.seen[0] == 200
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "close_account", "arguments": {"account": "savings"}},
        }
        answer = await http.post(stack.url, json=call, headers={"accept": "application/json, text/event-stream"})
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


async def test_the_client_reauthorizes_after_its_token_is_revoked(stack: Stack) -> None:
    """With its OAuth support, the client meets the 401 on the sensitive tool and authorizes again."""
    browser, storage = Browser(), MemoryStorage()
    provider = oauth(stack.url, browser, storage)
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        (moved,) = await session_calls(
            stack.url, http, ("transfer", {"source": "checking", "target": "x", "amount": 1})
        )
        assert text(moved).startswith("moved 1 EUR")
        assert storage.tokens is not None
        stack.idp.revoke(storage.tokens.access_token)
        authorizations = len(browser.authorizations)
        (closed,) = await session_calls(stack.url, http, ("close_account", {"account": "x"}))
    assert text(closed) == "closed x"
    assert len(browser.authorizations) > authorizations  # the revoked token was refused, a new one obtained
    assert "bank:admin" in browser.authorizations[-1]
