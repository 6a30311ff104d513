"""One app driven from several event loops in turn (docs/ARCHITECTURE.md).

Starlette's ``TestClient`` runs a new event loop for each ``with`` block (and for each request made
outside one); some servers run one loop per thread. HTTP clients, locks and in-flight fetches must
belong to the loop that uses them, so nothing made on one loop is awaited from another.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import AUDIENCE, ISSUER, JWKS_URL, Issuer, private_key
from tokenguard import TokenGuard, public
from tokenguard.testing import ManualClock, SigningKey

pytestmark = pytest.mark.respx(assert_all_called=False)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def me(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity})


CLIENTS: dict[int, httpx.AsyncClient] = {}
# Loops seen by the endpoint stay referenced here, so a closed loop's id() is never reused by a
# later one and "a new loop" is not mistaken for "the same loop" (or the reverse).
LOOPS: dict[int, asyncio.AbstractEventLoop] = {}


@public
async def client_id(request: Request) -> JSONResponse:
    """Which HTTP client the guard uses on the loop serving this request."""
    guard: TokenGuard = request.scope["tokenguard"]
    client = guard.authenticator.http.client()
    CLIENTS[id(client)] = client
    loop = asyncio.get_running_loop()
    LOOPS[id(loop)] = loop
    return JSONResponse({"client": id(client), "loop": id(loop)})


def make_guard(clock: ManualClock, **options: Any) -> TokenGuard:
    app = Starlette(routes=[Route("/me", me), Route("/client", client_id)])
    return TokenGuard(app, issuer=ISSUER, audience=AUDIENCE, clock=clock, **options)


def rotate_in_new_key(idp: Issuer) -> None:
    """The issuer publishes a key it did not have at the first fetch."""
    idp.keys.append(SigningKey("RS256", private_key("rsa", slot=2), kid="rsa-2"))


def test_one_app_through_several_testclient_blocks(idp: Issuer, clock: ManualClock) -> None:
    """Three ``with TestClient`` blocks in turn all work; the JWKS cache outlives each loop."""
    guard = make_guard(clock)
    with TestClient(guard) as client:
        assert client.get("/me", headers=bearer(idp.token())).status_code == 200
    with TestClient(guard) as client:
        assert client.get("/me", headers=bearer(idp.token(sub="bob"))).json() == {"identity": "bob"}
    with TestClient(guard) as client:
        assert client.get("/me", headers=bearer(idp.token(kid="ec-1"))).status_code == 200
    assert idp.jwks_calls == 1


def test_unknown_kid_refetch_in_a_later_block(idp: Issuer, clock: ManualClock) -> None:
    """A JWKS refetch for a new kid works in the second loop: its HTTP client and flight are that loop's."""
    guard = make_guard(clock)
    with TestClient(guard) as client:
        assert client.get("/me", headers=bearer(idp.token())).status_code == 200
    rotate_in_new_key(idp)
    with TestClient(guard) as client:
        response = client.get("/me", headers=bearer(idp.token(kid="rsa-2")))
        assert response.status_code == 200
        assert idp.jwks_calls == 2
        assert client.get("/me", headers=bearer(idp.token(kid="rsa-1"))).status_code == 200
    assert idp.jwks_calls == 2


def test_requests_outside_a_with_block_each_on_their_own_loop(idp: Issuer, clock: ManualClock) -> None:
    """Without ``with``, every TestClient request runs on a fresh loop; all work, refetch included."""
    guard = make_guard(clock)
    client = TestClient(guard)
    loops = {client.get("/client").json()["loop"] for _ in range(3)}
    assert len(loops) == 3
    assert client.get("/me", headers=bearer(idp.token())).status_code == 200
    rotate_in_new_key(idp)
    assert client.get("/me", headers=bearer(idp.token(kid="rsa-2"))).status_code == 200
    assert client.get("/me", headers=bearer(idp.token())).status_code == 200
    assert idp.jwks_calls == 2


def test_http_client_is_made_per_loop_and_closed_at_shutdown(idp: Issuer, clock: ManualClock) -> None:
    """Each loop gets its own HTTP client, created lazily; lifespan shutdown closes that loop's client."""
    guard = make_guard(clock)
    with TestClient(guard) as client:
        first = client.get("/client").json()
        assert client.get("/client").json() == first  # same loop, same client
        first_client = CLIENTS[first["client"]]
        assert not first_client.is_closed
    assert first_client.is_closed
    with TestClient(guard) as client:
        second = client.get("/client").json()
        assert not CLIENTS[second["client"]].is_closed
    assert first["loop"] != second["loop"]
    assert first["client"] != second["client"]


def test_http_client_factory_is_called_once_per_loop(idp: Issuer, clock: ManualClock) -> None:
    """``http_client=`` as a factory: called lazily, once for each loop that needs the issuer."""
    made: list[httpx.AsyncClient] = []

    def factory() -> httpx.AsyncClient:
        client = httpx.AsyncClient()
        made.append(client)
        return client

    guard = make_guard(clock, http_client=factory)
    assert made == []  # nothing is built at construction
    with TestClient(guard) as client:
        assert client.get("/me", headers=bearer(idp.token())).status_code == 200
        assert client.get("/me", headers=bearer(idp.token())).status_code == 200
    assert len(made) == 1
    assert made[0].is_closed  # closed at lifespan shutdown
    rotate_in_new_key(idp)
    with TestClient(guard) as client:
        assert client.get("/me", headers=bearer(idp.token(kid="rsa-2"))).status_code == 200
    assert len(made) == 2


def test_prefetch_runs_on_every_startup_without_refetching_fresh_keys(idp: Issuer, clock: ManualClock) -> None:
    """``prefetch=True`` with two lifespans in turn: keys fetched once, then served from the cache."""
    guard = make_guard(clock, prefetch=True)
    with TestClient(guard):
        assert idp.jwks_calls == 1
    with TestClient(guard) as client:
        assert idp.jwks_calls == 1
        assert client.get("/me", headers=bearer(idp.token())).status_code == 200


async def _request(guard: TokenGuard, token: str) -> int:
    """One raw ASGI GET /me; returns the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/me",
        "raw_path": b"/me",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await guard(scope, receive, send)
    return statuses[0]


def test_fetch_left_in_flight_on_a_stopped_loop_is_not_awaited(
    idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """A JWKS fetch still pending on a loop that stopped is never joined from the next loop.

    This test drives two hand-made loops in turn (as a thread-per-loop server would); the first
    fetch hangs until the end, so only a fetch started on the second loop can answer.
    """
    guard = make_guard(clock)
    first_loop, second_loop = asyncio.new_event_loop(), asyncio.new_event_loop()
    state: dict[str, Any] = {}

    async def jwks(request: httpx.Request) -> httpx.Response:
        idp.jwks_calls += 1
        if idp.jwks_calls == 1:
            state["entered"].set()
            await state["gate"].wait()  # the first loop's fetch hangs
        return httpx.Response(200, json=idp.jwks(), headers=idp.jwks_headers)

    respx_mock.get(JWKS_URL).mock(side_effect=jwks)

    async def start_and_abandon() -> asyncio.Task[int]:
        state["entered"], state["gate"] = asyncio.Event(), asyncio.Event()
        request = asyncio.ensure_future(_request(guard, idp.token()))
        await state["entered"].wait()
        request.cancel()  # the client hung up; the shared fetch stays in flight on this loop
        return request

    async def on_second_loop() -> int:
        try:
            return await _request(guard, idp.token())
        finally:
            await guard.authenticator.aclose()

    async def finish_first_loop() -> None:
        state["gate"].set()
        await asyncio.sleep(0)  # let the pending fetch run to completion on its own loop
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        await asyncio.gather(*pending, return_exceptions=True)
        await guard.authenticator.aclose()

    try:
        first_loop.run_until_complete(start_and_abandon())
        assert idp.jwks_calls == 1
        assert second_loop.run_until_complete(on_second_loop()) == 200
        assert idp.jwks_calls == 2
        first_loop.run_until_complete(finish_first_loop())
    finally:
        first_loop.close()
        second_loop.close()
    assert guard.ready() is True
