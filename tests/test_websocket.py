"""WebSocket scopes get the same policy as HTTP, and are refused before accept (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.routing import Mount, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from conftest import AUDIENCE, ISSUER, Issuer, dpop_challenge
from tokenguard import TokenGuard, public, require_scopes
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

REALM = AUDIENCE


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def echo_identity(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(
        {
            "identity": websocket.user.identity,
            "scopes": websocket.auth.scopes,
            "source": websocket.auth.source,
            "sub": websocket.auth.claims["sub"],
        }
    )
    await websocket.close()


@require_scopes("chat")
async def chat(websocket: WebSocket) -> None:
    await echo_identity(websocket)


@public
async def lobby(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"authenticated": websocket.user.is_authenticated})
    await websocket.close()


class Room(WebSocketEndpoint):
    encoding = "text"

    @require_scopes("rooms")
    async def on_connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(websocket.user.identity)


@public
class Foyer(WebSocketEndpoint):
    encoding = "text"

    async def on_connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("welcome")


ROUTES = [
    WebSocketRoute("/ws", echo_identity),
    WebSocketRoute("/chat", chat),
    WebSocketRoute("/lobby", lobby),
    WebSocketRoute("/room", Room),
    WebSocketRoute("/foyer", Foyer),
    Mount("/nested", routes=[WebSocketRoute("/chat", chat)]),
]


def make_app(clock: ManualClock, **options: Any) -> Starlette:
    app = Starlette(routes=ROUTES)
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, **options)
    return app


@pytest.fixture
def client(idp: Issuer, clock: ManualClock) -> TestClient:
    return TestClient(make_app(clock))


def denial(client: TestClient, path: str, headers: dict[str, str] | None = None) -> WebSocketDenialResponse:
    with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect(path, headers=headers or {}):
        pass  # pragma: no cover - the connection is refused
    return info.value


# -- through Starlette's TestClient (it advertises websocket.http.response) ---------------------------------


def test_testclient_advertises_the_denial_extension(idp: Issuer, clock: ManualClock) -> None:
    """Starlette's TestClient offers ``websocket.http.response``, so refusals arrive as HTTP responses."""
    seen: dict[str, Any] = {}

    @public
    async def probe(websocket: WebSocket) -> None:
        seen["extensions"] = websocket.scope.get("extensions", {})
        await websocket.accept()
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/probe", probe)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with TestClient(app).websocket_connect("/probe"):
        pass
    assert "websocket.http.response" in seen["extensions"]


def test_missing_token_is_refused_with_a_401_denial(client: TestClient) -> None:
    """No token on an undecorated socket: a 401 denial response with a bare challenge."""
    response = denial(client, "/ws")
    assert response.status_code == 401
    # RFC 9728 §5.1 (issue 7): the bare challenge names the resource metadata.
    metadata = f"{AUDIENCE}/.well-known/oauth-protected-resource"
    expected = f'Bearer realm="{REALM}", resource_metadata="{metadata}"' + dpop_challenge(REALM, metadata)
    assert response.headers["www-authenticate"] == expected
    assert response.json() == {"error_description": "A bearer access token is required."}


def test_invalid_token_is_refused_with_invalid_token(client: TestClient, idp: Issuer) -> None:
    """An expired or foreign token is a 401 invalid_token denial."""
    response = denial(client, "/ws", bearer(idp.token(iss="https://evil.example")))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_missing_scope_is_refused_with_a_403_denial(client: TestClient, idp: Issuer) -> None:
    """A valid token without the socket's scope: 403 insufficient_scope naming it."""
    response = denial(client, "/chat", bearer(idp.token(scope="read:photos")))
    assert response.status_code == 403
    assert 'scope="chat"' in response.headers["www-authenticate"]


def test_accepted_socket_sees_user_and_auth(client: TestClient, idp: Issuer) -> None:
    """A socket let through sees websocket.user and websocket.auth like an HTTP request."""
    with client.websocket_connect("/chat", headers=bearer(idp.token(scope="chat", sub="erin"))) as ws:
        assert ws.receive_json() == {"identity": "erin", "scopes": ["chat"], "source": "jwt", "sub": "erin"}


def test_public_socket_needs_no_token(client: TestClient) -> None:
    """A @public socket is accepted without a token, with an unauthenticated user."""
    with client.websocket_connect("/lobby") as ws:
        assert ws.receive_json() == {"authenticated": False}


def test_socket_inside_a_mount_keeps_its_mark(client: TestClient, idp: Issuer) -> None:
    """Marks of websocket routes inside a Mount are found."""
    assert denial(client, "/nested/chat", bearer(idp.token(scope="x"))).status_code == 403
    with client.websocket_connect("/nested/chat", headers=bearer(idp.token(scope="chat"))) as ws:
        assert ws.receive_json()["identity"] == "alice"


def test_websocket_endpoint_class_marks(client: TestClient, idp: Issuer) -> None:
    """A mark on WebSocketEndpoint.on_connect, or on the class, decides for the socket."""
    assert denial(client, "/room", bearer(idp.token(scope="chat"))).status_code == 403
    with client.websocket_connect("/room", headers=bearer(idp.token(scope="rooms"))) as ws:
        assert ws.receive_text() == "alice"
    with client.websocket_connect("/foyer") as ws:
        assert ws.receive_text() == "welcome"


def test_query_parameter_token_is_not_read_for_sockets(client: TestClient, idp: Issuer) -> None:
    """?access_token= is ignored on sockets too (tokens in URLs end up in logs)."""
    assert denial(client, f"/ws?access_token={idp.token()}").status_code == 401


def test_unmatched_socket_path_gets_the_default(client: TestClient, idp: Issuer) -> None:
    """A socket path no route matches is refused without a token."""
    assert denial(client, "/nowhere").status_code == 401


def test_fastapi_websocket_route(idp: Issuer, clock: ManualClock) -> None:
    """FastAPI websocket routes take marks in either order."""
    app = FastAPI()

    @require_scopes("chat")
    @app.websocket("/a")
    async def a(websocket: WebSocket) -> None:
        await echo_identity(websocket)

    @app.websocket("/b")
    @public
    async def b(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("b")
        await websocket.close()

    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    client = TestClient(app)
    assert denial(client, "/a", bearer(idp.token(scope="x"))).status_code == 403
    with client.websocket_connect("/a", headers=bearer(idp.token(scope="chat"))) as ws:
        assert ws.receive_json()["scopes"] == ["chat"]
    with client.websocket_connect("/b") as ws:
        assert ws.receive_text() == "b"


# -- a raw ASGI driver: both branches of the refusal ---------------------------------------------------------


async def drive_websocket(
    app: Any, *, path: str, headers: list[tuple[bytes, bytes]], extensions: dict[str, Any], first: str = "connect"
) -> list[dict[str, Any]]:
    """Open one socket as a server would: send ``websocket.<first>``, record what the app sends."""
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "subprotocols": [],
        "extensions": extensions,
    }
    inbox = [{"type": f"websocket.{first}"}, {"type": "websocket.disconnect", "code": 1000}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.mark.anyio
async def test_raw_refusal_without_the_extension_closes_with_1008(idp: Issuer, clock: ManualClock) -> None:
    """A server without ``websocket.http.response``: the socket is closed with 1008 and never accepted."""
    sent = await drive_websocket(make_app(clock), path="/chat", headers=[], extensions={})
    assert [message["type"] for message in sent] == ["websocket.close"]
    assert sent[0]["code"] == 1008
    assert sent[0]["reason"] == "missing_token"


@pytest.mark.anyio
async def test_raw_refusal_with_the_extension_sends_the_http_answer(idp: Issuer, clock: ManualClock) -> None:
    """A server with ``websocket.http.response`` gets the same 403 answer as HTTP, before any accept."""
    headers = [(b"authorization", f"Bearer {idp.token(scope='x')}".encode())]
    extensions = {"websocket.http.response": {}}
    sent = await drive_websocket(make_app(clock), path="/chat", headers=headers, extensions=extensions)
    assert [message["type"] for message in sent] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert sent[0]["status"] == 403
    response_headers = dict(sent[0]["headers"])
    assert b'error="insufficient_scope"' in response_headers[b"www-authenticate"]
    assert json.loads(sent[1]["body"])["error"] == "insufficient_scope"


@pytest.mark.anyio
async def test_raw_bad_header_on_socket_is_refused_not_crashed(idp: Issuer, clock: ManualClock) -> None:
    """A malformed Authorization header on a socket is refused (1008), never an exception."""
    headers = [(b"authorization", b"Bearer \xff\x00"), (b"authorization", b"Bearer x")]
    sent = await drive_websocket(make_app(clock), path="/ws", headers=headers, extensions={})
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "malformed_header"}]


@pytest.mark.anyio
async def test_raw_client_gone_before_connect_gets_nothing(idp: Issuer, clock: ManualClock) -> None:
    """If the client disconnects before the connect event, the guard sends nothing at all."""
    sent = await drive_websocket(make_app(clock), path="/ws", headers=[], extensions={}, first="disconnect")
    assert sent == []


@pytest.mark.anyio
async def test_raw_accepted_socket(idp: Issuer, clock: ManualClock) -> None:
    """With a valid token the app accepts and sees the identity (raw server, no extension)."""
    headers = [(b"authorization", f"Bearer {idp.token(scope='chat')}".encode())]
    sent = await drive_websocket(make_app(clock), path="/chat", headers=headers, extensions={})
    assert sent[0]["type"] == "websocket.accept"
    assert json.loads(sent[1]["text"])["identity"] == "alice"


def test_refused_socket_never_runs_the_endpoint(idp: Issuer, clock: ManualClock) -> None:
    """The endpoint of a refused socket is never called (nothing is accepted behind the guard's back)."""
    calls: list[str] = []

    async def spy(websocket: WebSocket) -> None:
        calls.append("called")  # pragma: no cover - must not run
        await websocket.accept()  # pragma: no cover

    app = Starlette(routes=[WebSocketRoute("/spy", spy)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with pytest.raises(WebSocketDisconnect), TestClient(app).websocket_connect("/spy"):
        pass  # pragma: no cover
    assert calls == []
