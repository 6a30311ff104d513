"""MCP servers: one ``tools/call`` per request through the Streamable HTTP app, driven in-process.

The harness is ``bench_asgi``'s (``await app(scope, receive, send)`` in a loop, no transport), with a
real POST: a JSON-RPC ``tools/call`` body handed over by ``receive``, the headers an MCP client sends
(``accept: application/json, text/event-stream``, ``content-type``, ``mcp-protocol-version``) and the
``Host`` the SDK's DNS-rebinding protection accepts. Every server is the real one, built with
``stateless_http=True, json_response=True`` (no session: each request is a complete call, and the
answer is one JSON body), and each app's ASGI lifespan runs once around all the cases, as a server
runs it: the SDK's session manager needs its task group for every request.

Tokens are real RS256 access tokens (``_common.mint``) for the server's resource URI; the JWKS is
served by ``_common.IssuerTransport`` to tokenguard, as a preloaded ``PyJWKSet`` to the PyJWT peer and
as a PEM public key to FastMCP's ``JWTVerifier``. Before timing, each case answers a call with the
tool's text, and each guarded case refuses a token for another audience (401, the tool not run). Every
timed batch checks that every request answered 200 and that the tool ran once per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from starlette.types import ASGIApp, Message

from benchmarks._common import ISSUER, JWKS_URL, Case, IssuerTransport, Keys, mint, optional
from tokenguard import TokenGuard
from tokenguard.mcp import MCPPolicy, ToolPolicy

GROUP = "MCP SDK tools/call"
GROUP_FASTMCP = "FastMCP tools/call"
GROUP_LARGE = "MCP SDK, 16 KiB argument"
#: The server's canonical URI: the audience its tokens are minted for (MCP authorization, RFC 8707).
RESOURCE = "https://photos.example/mcp"
OTHER_RESOURCE = "https://reports.example/mcp"
PATH = "/mcp"
SCOPE = "read:photos"
TOOL = "get_photo"
ANSWER = "photo-bytes"
LARGE = 16 * 1024

BARE = "bare app, no auth"
GUARD = "+ TokenGuard in front, no mcp policy"
POLICY = "+ TokenGuard in front, MCPPolicy (3 tools)"
SDK_ACCEPT_ALL = "SDK auth, a verifier that checks nothing"
SDK_VERIFIER = "SDK auth + MCPTokenVerifier"
SDK_PYJWT = "SDK auth + hand-rolled PyJWT verifier"
FASTMCP_JWT = "+ FastMCP's JWTVerifier"
FASTMCP_TG = "+ FastMCPTokenVerifier"

_HOST = b"127.0.0.1:8000"  # the SDK refuses other Host headers (DNS-rebinding protection)
_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": PATH,
    "raw_path": PATH.encode(),
    "root_path": "",
    "query_string": b"",
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


def call_body(argument: str) -> bytes:
    """A JSON-RPC ``tools/call`` of ``get_photo`` with ``argument``."""
    message = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": TOOL, "arguments": {}}}
    message["params"]["arguments"] = {"photo": argument}
    return json.dumps(message, separators=(",", ":")).encode()


def policy() -> MCPPolicy:
    """Three tools with scopes; the benchmark calls the first, which the token's scopes allow."""
    return MCPPolicy(
        tools={
            TOOL: ToolPolicy(scopes=SCOPE),
            "put_photo": ToolPolicy(scopes=[SCOPE, "write:photos"]),
            "delete_photo": ToolPolicy(scopes="admin:photos"),
        }
    )


class Counter:
    """How many times the tool ran: every timed batch checks it ran once per request."""

    def __init__(self) -> None:
        self.calls = 0


def _tools(tool: Callable[..., Any], counter: Counter) -> None:
    """Register ``get_photo`` (the one called, a constant answer) and two more through ``tool``."""

    @tool()
    async def get_photo(photo: str) -> str:
        counter.calls += 1
        return ANSWER

    @tool()
    async def put_photo(photo: str, data: str) -> str:
        return "stored"

    @tool()
    async def delete_photo(photo: str) -> str:
        return "deleted"


def sdk_app(counter: Counter, **server: Any) -> Any:
    """The official SDK's ``MCPServer`` as a stateless Streamable HTTP app answering JSON."""
    from mcp.server.mcpserver import MCPServer

    # log_level="WARNING": at its default (INFO) the SDK logs every stateless request ("Terminating
    # session") through a Rich handler on stderr, which would be most of what the rows measure.
    mcp_server = MCPServer("photos", log_level="WARNING", **server)
    _tools(mcp_server.tool, counter)
    return mcp_server.streamable_http_app(stateless_http=True, json_response=True)


def sdk_auth() -> Any:
    from mcp.server.auth.settings import AuthSettings

    return AuthSettings(
        issuer_url=ISSUER, resource_server_url=RESOURCE, required_scopes=[SCOPE], validate_token_resource=True
    )


def fastmcp_app(counter: Counter, auth: Any) -> Any:
    from fastmcp import FastMCP

    mcp_server = FastMCP("photos", auth=auth)
    _tools(mcp_server.tool, counter)
    return mcp_server.http_app(stateless_http=True, json_response=True)


class PyJWTVerifier:
    """What users write today: the SDK's ``TokenVerifier`` protocol around ``PyJWKClient`` + ``jwt.decode``.

    ``PyJWKClient`` as PyJWT's documentation shows it, its JWK-set cache preloaded from the JWKS (no
    network, as ``bench_validation``); ``iss``, ``aud`` and ``exp`` checked and required.
    """

    def __init__(self, jwks: dict[str, Any]) -> None:
        class OfflineJWKClient(jwt.PyJWKClient):
            def fetch_data(self) -> Any:
                raise RuntimeError("the benchmark never reaches the network")

        self.client = OfflineJWKClient(JWKS_URL, cache_jwk_set=True, lifespan=86_400)
        assert self.client.jwk_set_cache is not None
        self.client.jwk_set_cache.put(jwt.PyJWKSet.from_dict(jwks))

    async def verify_token(self, token: str) -> Any:
        from mcp.server.auth.provider import AccessToken

        try:
            key = self.client.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=RESOURCE,
                issuer=ISSUER,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, RuntimeError):
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id", "")),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=claims["exp"],
            resource=RESOURCE,
            subject=claims.get("sub"),
        )


class AcceptAll:
    """A ``TokenVerifier`` that accepts any token without looking at it: the floor of the SDK's auth wiring."""

    async def verify_token(self, token: str) -> Any:
        from mcp.server.auth.provider import AccessToken

        return AccessToken(token=token, client_id="s6BhdRkqt3", scopes=[SCOPE], expires_at=None, resource=RESOURCE)


class Lifespan:
    """Runs an app's ASGI lifespan (startup, then shutdown on ``close``) in a task of ``loop``."""

    def __init__(self, app: ASGIApp, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.started = asyncio.Event()
        self.stop = asyncio.Event()
        self.failed = ""
        self.state: dict[str, Any] = {}
        self._sent_startup = False

        async def receive() -> Message:
            if not self._sent_startup:
                self._sent_startup = True
                return {"type": "lifespan.startup"}
            await self.stop.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.started.set()
            elif message["type"].endswith(".failed"):
                self.failed = str(message.get("message", message["type"]))
                self.started.set()

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.4"}, "state": self.state}
        self.task = loop.create_task(app(scope, receive, send))
        waiter = loop.create_task(self.started.wait())
        loop.run_until_complete(asyncio.wait({self.task, waiter}, return_when=asyncio.FIRST_COMPLETED))
        if not self.started.is_set():
            waiter.cancel()
            self.task.result()  # the app's exception
            raise AssertionError("the app's lifespan ended before its startup completed")
        if self.failed:
            raise AssertionError(f"lifespan startup failed: {self.failed}")

    def close(self) -> None:
        self.stop.set()
        self.loop.run_until_complete(asyncio.wait_for(self.task, 10))


class Harness:
    """POSTs ``body`` to ``/mcp`` with ``token``, counting statuses and tool runs."""

    def __init__(self, app: ASGIApp, token: str | None, body: bytes, counter: Counter, state: dict[str, Any]) -> None:
        self.app, self.body, self.counter, self.state = app, body, counter, state
        self.headers = self._headers(token)
        self.status = 0
        self.answer = b""

    def _headers(self, token: str | None) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"host", _HOST),
            (b"accept", b"application/json, text/event-stream"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            (b"mcp-protocol-version", b"2025-11-25"),
        ]
        if token is not None:
            headers.append((b"authorization", b"Bearer " + token.encode("ascii")))
        return headers

    def _receive(self) -> Callable[[], Awaitable[Message]]:
        """Hands over the body once; after that, waits (a client that stays connected)."""
        pending: list[Message] = [{"type": "http.request", "body": self.body, "more_body": False}]

        async def receive() -> Message:
            if pending:
                return pending.pop()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        return receive

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]

    async def _send_keeping(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.answer += message.get("body", b"")

    async def request(self, token: str | None = None) -> tuple[int, bytes]:
        """One request, its status and body kept (``token`` replaces the harness's own)."""
        headers = self.headers if token is None else self._headers(token)
        self.status, self.answer = 0, b""
        scope = {**_SCOPE, "headers": list(headers), "state": dict(self.state)}
        await self.app(scope, self._receive(), self._send_keeping)
        return self.status, self.answer

    async def batch(self, n: int) -> float:
        app, send, headers, state, receive = self.app, self._send, self.headers, self.state, self._receive
        counter = self.counter
        before, unexpected = counter.calls, 0
        start = time.perf_counter()
        for _ in range(n):
            self.status = 0
            await app({**_SCOPE, "headers": list(headers), "state": dict(state)}, receive(), send)
            unexpected += self.status != 200
        elapsed = time.perf_counter() - start
        if unexpected:
            raise AssertionError(f"{unexpected} of {n} MCP calls did not answer 200")
        if counter.calls - before != n:
            raise AssertionError(f"the tool ran {counter.calls - before} times for {n} calls")
        return elapsed


class Bundle:
    """The group's cases, their apps' lifespans running; ``close()`` shuts them down."""

    def __init__(self, keys: Keys, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.keys = keys
        root = logging.getLogger()
        self._root_logging = (root.level, list(root.handlers))
        self.lifespans: list[Lifespan] = []
        self.closers: list[Callable[[], Awaitable[Any]]] = []
        self.transport = IssuerTransport(keys.jwks())
        self.token = mint(keys, "RS256", aud=RESOURCE)
        self.wrong_audience = mint(keys, "RS256", aud=OTHER_RESOURCE)
        self.cases: list[Case] = []
        try:
            self.cases = optional("mcp", self._build, hint="pip install -e '.[mcp]'")
        except BaseException:
            self.close()
            raise

    def _build(self) -> list[Case]:
        small, large = call_body("p1"), call_body("x" * LARGE)
        cases = [
            self._case(GROUP, BARE, lambda c: sdk_app(c), small, guarded=False),
            self._case(GROUP, GUARD, lambda c: self._guarded(sdk_app(c), None), small),
            self._case(GROUP, POLICY, lambda c: self._guarded(sdk_app(c), policy()), small),
            self._case(
                GROUP,
                SDK_ACCEPT_ALL,
                lambda c: sdk_app(c, token_verifier=AcceptAll(), auth=sdk_auth()),
                small,
                guarded=False,
            ),
            self._case(GROUP, SDK_VERIFIER, self._sdk_verifier, small),
            self._case(
                GROUP,
                SDK_PYJWT,
                lambda c: sdk_app(c, token_verifier=PyJWTVerifier(self.keys.jwks()), auth=sdk_auth()),
                small,
            ),
        ]
        cases += optional("fastmcp", lambda: self._fastmcp(small), hint="pip install fastmcp, on Python 3.11+")
        cases += [
            self._case(GROUP_LARGE, BARE, lambda c: sdk_app(c), large, guarded=False),
            self._case(GROUP_LARGE, GUARD, lambda c: self._guarded(sdk_app(c), None), large),
            self._case(GROUP_LARGE, POLICY, lambda c: self._guarded(sdk_app(c), policy()), large),
        ]
        return cases

    def _fastmcp(self, body: bytes) -> list[Case]:
        from fastmcp.server.auth.providers.jwt import JWTVerifier

        from tokenguard.mcp import FastMCPTokenVerifier

        pem = self.keys.public["RS256"].public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

        def bare(counter: Counter) -> Any:
            return fastmcp_app(counter, None)

        def theirs(counter: Counter) -> Any:
            verifier = JWTVerifier(public_key=pem.decode(), issuer=ISSUER, audience=RESOURCE)
            return fastmcp_app(counter, verifier)

        def ours(counter: Counter) -> Any:
            verifier = FastMCPTokenVerifier(
                issuer=ISSUER,
                audience=RESOURCE,
                base_url="https://photos.example",
                http_client=self.transport.client(),
            )
            self.closers.append(verifier.aclose)
            return fastmcp_app(counter, verifier)

        return [
            self._case(GROUP_FASTMCP, BARE, bare, body, guarded=False),
            self._case(GROUP_FASTMCP, FASTMCP_JWT, theirs, body),
            self._case(GROUP_FASTMCP, FASTMCP_TG, ours, body),
        ]

    def _guarded(self, app: Any, mcp: MCPPolicy | None) -> Any:
        options: dict[str, Any] = {} if mcp is None else {"mcp": mcp}
        app.add_middleware(TokenGuard, issuer=ISSUER, audience=RESOURCE, http_client=self.transport.client(), **options)
        return app

    def _sdk_verifier(self, counter: Counter) -> Any:
        from tokenguard.mcp import MCPTokenVerifier

        verifier = MCPTokenVerifier(issuer=ISSUER, audience=RESOURCE, http_client=self.transport.client())
        self.closers.append(verifier.aclose)
        return sdk_app(counter, token_verifier=verifier, auth=sdk_auth())

    def _case(
        self, group: str, name: str, build: Callable[[Counter], Any], body: bytes, *, guarded: bool = True
    ) -> Case:
        counter = Counter()
        app = build(counter)
        lifespan = Lifespan(app, self.loop)
        self.lifespans.append(lifespan)
        harness = Harness(app, self.token, body, counter, lifespan.state)
        self._check(group, name, harness, guarded=guarded)
        batch: Callable[[int], Awaitable[float]] = harness.batch
        return Case(group, name, "rps", batch, baseline=None if name == BARE else BARE)

    def _check(self, group: str, name: str, harness: Harness, *, guarded: bool) -> None:
        """The call runs the tool and answers its text; a guarded app refuses a token for another audience."""
        where = f"{group} / {name}"
        for _ in range(20):  # warms up: the JWKS fetch, the route and verified caches
            before = harness.counter.calls
            status, answer = self.loop.run_until_complete(harness.request())
            if status != 200 or harness.counter.calls != before + 1:
                raise AssertionError(f"{where}: a call answered {status} {answer[:300]!r}")
        message = json.loads(answer)
        if message.get("result", {}).get("content", [{}])[0].get("text") != ANSWER or message["result"].get("isError"):
            raise AssertionError(f"{where}: the tool did not answer {ANSWER!r}: {answer[:300]!r}")
        if guarded:
            before = harness.counter.calls
            status, answer = self.loop.run_until_complete(harness.request(self.wrong_audience))
            if status != 401 or harness.counter.calls != before:
                raise AssertionError(f"{where}: a token for another audience answered {status} {answer[:300]!r}")

    def close(self) -> None:
        for lifespan in reversed(self.lifespans):
            lifespan.close()
        self.lifespans.clear()
        for closer in self.closers:
            self.loop.run_until_complete(closer())
        self.closers.clear()
        # MCPServer configures the root logger (logging.basicConfig with a Rich handler): undo it for
        # the groups that run next.
        root = logging.getLogger()
        root.setLevel(self._root_logging[0])
        root.handlers[:] = self._root_logging[1]
