"""Differential test: the guard decides exactly what the router will run.

Generated route trees (Route, Mount with and without a trailing slash, nested; Host; Router;
Starlette and FastAPI sub-apps; FastAPI APIRouter + include_router, nested and twice; HTTPEndpoint
and WebSocketEndpoint classes marked on the class and on handlers; functools.partial, wraps and bound
method endpoints; path convertors; redirect_slashes on/off; routes added after the first requests;
FastAPI docs on/off and user routes at the docs paths) and requests (methods, odd ones too, percent
encodings, trailing slashes, root_path, Host headers, websockets, CORS preflights) are run through
the real app behind the real guard. ``tests/route_model.py`` holds the generator, the app builder
and the oracle (see its docstring for the property); ``scripts/route_differential_long.py`` runs the
same property for 100,000 cases.

Below the property: regression cases for the three routing flaws (each fails on the code before
the routing fix, 7ffb6af), the refusal of marks that cannot combine, a cross-check of the oracle's
merge rule against ``Requirement.merge``, and the gaps the long run found (now regression tests).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint, WebSocketEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route, Router, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

import route_model as rm
from tokenguard import TokenGuard, public, require_any_scope, require_auth_level, require_scopes, sensitive
from tokenguard.errors import ConfigurationError

# -- the property ---------------------------------------------------------------------------------

#: 250 trees x 16 requests in the suite (≈ 6 s); scripts/route_differential_long.py runs 100k requests.
SLICE = settings(
    max_examples=250,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REQUESTS_PER_TREE = 16


class DrawSource:
    """The generator's choices, drawn by hypothesis (so a failure shrinks to a small tree)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def choice(self, options: Any) -> Any:
        return self.data.draw(st.sampled_from(options))

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def chance(self, probability: float) -> bool:
        # Shrinks towards False: the rare features (late routes, preflights) go away first.
        return self.data.draw(st.integers(0, 99)) >= 100 - round(probability * 100)


@SLICE
@given(st.data())
def test_guard_applies_the_policy_of_the_endpoint_the_router_runs(data: st.DataObject) -> None:
    source = DrawSource(data)
    tree = rm.gen_tree(source)
    plan = rm.gen_plan(source, tree, REQUESTS_PER_TREE)
    _, found = rm.run_plan_sync(tree, plan, stop_at_first=True)
    assert not found, found[0].describe()


@settings(max_examples=200, derandomize=True, database=None)
@given(st.data())
def test_the_oracle_merges_marks_as_the_guard_does(data: st.DataObject) -> None:
    """The oracle's own merge rule and ``Requirement.merge`` agree (so a disagreement in the property
    is the routing, never two readings of the merge rule)."""
    source = DrawSource(data)
    marks = [rm.gen_mark(source) for _ in range(source.integer(1, 5))]

    def endpoint() -> None:
        return None

    rm.apply_marks(endpoint, marks)
    applied = rm.policy_of(getattr(endpoint, "__tokenguard_requirement__", None))
    assert applied == rm.merge_all([mark.policy() for mark in marks])


# -- helpers for the explicit cases ------------------------------------------------------------------


def guarded(app: Any, **options: Any) -> TestClient:
    app.add_middleware(TokenGuard, **rm.guard_kwargs(**options))
    return TestClient(app)


def bearer(scopes: tuple[str, ...] = rm.SCOPES, *, acr: str = rm.GOD_ACR, jti: str = "ok") -> dict[str, str]:
    return {"Authorization": "Bearer " + rm.token(tuple(scopes), acr=acr, jti=jti)}


def applied(request: Request) -> JSONResponse:
    """What the endpoint saw: the requirement the guard applied, in the oracle's words."""
    policy = rm.policy_of(request.scope.get(rm.REQUIREMENT_KEY))
    return JSONResponse({"ran": True, "applied": policy.describe() if policy else None})


REVOKED_TRANSFER = bearer(("transfer",), jti="revoked-transfer")
GOD = bearer()


# -- flaw 1: a handler's marks add to the class's, never replace them --------------------------------


@sensitive
class Transfers(HTTPEndpoint):
    async def get(self, request: Request) -> JSONResponse:
        return applied(request)

    @require_scopes("transfer")
    async def post(self, request: Request) -> JSONResponse:
        return applied(request)


def test_flaw1_sensitive_class_with_a_scoped_handler_is_introspected_and_scoped() -> None:
    client = guarded(Starlette(routes=[Route("/transfers", Transfers)]))
    # The issuer says the token is revoked: only introspection (the class's @sensitive) can know.
    assert client.post("/transfers", headers=REVOKED_TRANSFER).status_code == 401
    assert client.get("/transfers", headers=REVOKED_TRANSFER).status_code == 401
    assert client.post("/transfers", headers=bearer(("read",))).status_code == 403
    response = client.post("/transfers", headers=bearer(("transfer",)))
    assert response.status_code == 200
    assert response.json()["applied"] == "authenticated(all=transfer sensitive)"


@require_scopes("admin")
class Accounts(HTTPEndpoint):
    async def get(self, request: Request) -> JSONResponse:
        return applied(request)

    @require_auth_level(acr_values=("mfa",))
    async def delete(self, request: Request) -> JSONResponse:
        return applied(request)


def test_flaw1_class_scope_still_applies_when_the_handler_asks_for_a_step_up() -> None:
    client = guarded(Starlette(routes=[Route("/accounts", Accounts)]))
    assert client.delete("/accounts", headers=bearer(("read",), acr="mfa")).status_code == 403
    assert client.delete("/accounts", headers=bearer(("admin",), acr="pwd")).status_code == 401
    response = client.delete("/accounts", headers=bearer(("admin",), acr="mfa"))
    assert response.status_code == 200
    assert response.json()["applied"] == "authenticated(all=admin acr=mfa)"
    assert client.get("/accounts", headers=bearer(("read",))).status_code == 403


@require_scopes("admin")
class Feed(WebSocketEndpoint):
    encoding = "text"

    @require_auth_level(acr_values=("mfa",))
    async def on_connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(repr(rm.policy_of(websocket.scope.get(rm.REQUIREMENT_KEY))))

    @require_scopes("write")
    async def on_receive(self, websocket: WebSocket, data: Any) -> None:
        return None


def test_flaw1_websocket_class_scope_applies_with_a_marked_on_connect() -> None:
    client = guarded(Starlette(routes=[WebSocketRoute("/feed", Feed)]))
    refused = (WebSocketDisconnect, WebSocketDenialResponse)
    with pytest.raises(refused), client.websocket_connect("/feed", headers=bearer(("read", "write"))):
        pass
    # on_receive's scope is part of the connection's policy too.
    with pytest.raises(refused), client.websocket_connect("/feed", headers=bearer(("admin",))):
        pass
    with pytest.raises(refused), client.websocket_connect("/feed", headers=bearer(("admin", "write"), acr="pwd")):
        pass
    with client.websocket_connect("/feed", headers=bearer(("admin", "write"))) as ws:
        seen = ws.receive_text()
    assert seen == repr(rm.Policy(all_scopes=frozenset({"admin", "write"}), acr_values=frozenset({"mfa"})))


# -- flaw 2: only FastAPI's own docs routes are public, and only for GET/HEAD -------------------------


def test_flaw2_a_user_docs_route_is_not_public_when_the_docs_are_off() -> None:
    app = FastAPI(openapi_url=None)

    @app.get("/docs")
    async def my_docs(request: Request) -> JSONResponse:
        return applied(request)

    client = guarded(app)
    assert client.get("/docs").status_code == 401
    assert client.head("/docs").status_code == 401
    assert client.get("/docs", headers=GOD).json()["applied"] == "authenticated"


def test_flaw2_a_user_post_handler_at_the_docs_path_is_not_public() -> None:
    app = FastAPI()

    @app.post("/docs")
    async def upload(request: Request) -> JSONResponse:
        return applied(request)

    client = guarded(app)
    assert client.post("/docs").status_code == 401
    assert client.post("/docs", headers=bearer(("read",))).json()["applied"] == "authenticated"
    # FastAPI's own documentation stays public (GET and HEAD only).
    assert client.get("/docs").status_code == 200
    assert client.head("/docs").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert client.put("/openapi.json").status_code == 401


def test_flaw2_custom_docs_url_user_route_when_the_docs_are_off() -> None:
    # docs_url is still set, but FastAPI registered no docs route: the user's route is not public.
    app = FastAPI(openapi_url=None, docs_url="/api-docs")

    @app.get("/api-docs")
    async def my_docs(request: Request) -> JSONResponse:
        return applied(request)

    client = guarded(app)
    assert client.get("/api-docs").status_code == 401
    assert client.get("/api-docs", headers=GOD).json()["applied"] == "authenticated"
    # With the document on, FastAPI's own route at the custom URL is the public one.
    docs_on = FastAPI(docs_url="/api-docs", redoc_url=None)
    client = guarded(docs_on)
    assert client.get("/api-docs").status_code == 200
    assert client.get("/docs").status_code == 401
    assert client.get("/redoc").status_code == 401  # turned off: no endpoint, the default policy


# -- flaw 3: decisions follow routes added after the first requests -----------------------------------


@public
async def open_x(request: Request) -> PlainTextResponse:
    return PlainTextResponse("open")


@require_scopes("admin")
async def admin_x(request: Request) -> PlainTextResponse:
    return PlainTextResponse("admin ran")


@pytest.mark.parametrize("default", ["authenticated", "public"])
def test_flaw3_route_added_to_an_included_router_after_a_405(default: str) -> None:
    app = FastAPI()
    app.add_route("/x", open_x)  # a public GET /x at the top level
    router = APIRouter()

    @router.get("/other")
    async def other() -> dict[str, str]:
        return {"other": "yes"}

    app.include_router(router)
    client = guarded(app, default=default)
    # No endpoint runs for POST /x (405): the default applies, never open_x's @public.
    assert client.post("/x").status_code == (405 if default == "public" else 401)
    assert client.post("/x", headers=GOD).status_code == 405

    @router.post("/x")
    @require_scopes("admin")
    async def write_x() -> PlainTextResponse:
        return PlainTextResponse("admin ran")

    assert client.post("/x").status_code == 401
    assert client.post("/x", headers=bearer(("read",))).status_code == 403
    assert client.post("/x", headers=GOD).text == "admin ran"
    assert client.get("/x").status_code == 200


@pytest.mark.parametrize("default", ["authenticated", "public"])
def test_flaw3_route_added_to_a_mounted_sub_app_after_a_405(default: str) -> None:
    sub = Starlette(routes=[Route("/x", open_x)])
    client = guarded(Starlette(routes=[Mount("/s", app=sub)]), default=default)
    assert client.post("/s/x").status_code == (405 if default == "public" else 401)
    sub.router.routes.append(Route("/x", admin_x, methods=["POST"]))
    assert client.post("/s/x").status_code == 401
    assert client.post("/s/x", headers=bearer(("read",))).status_code == 403
    assert client.post("/s/x", headers=GOD).text == "admin ran"


# -- marks that cannot combine are refused -------------------------------------------------------------


async def _nothing(request: Request) -> PlainTextResponse:
    return PlainTextResponse("never")


def test_contradictory_marks_on_one_function_are_refused_at_decoration() -> None:
    with pytest.raises(ConfigurationError):
        public(require_scopes("admin")(functools.partial(_nothing)))
    with pytest.raises(ConfigurationError):
        sensitive(public(functools.partial(_nothing)))
    with pytest.raises(ConfigurationError):
        require_auth_level(acr_values="loa2")(require_auth_level(acr_values="loa3")(functools.partial(_nothing)))


def _public_class_scoped_post() -> Any:
    @public
    class Mixed(HTTPEndpoint):
        @require_any_scope("admin")
        async def post(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("never")

    return Route("/c", Mixed), "post"


def _acr_class_acr_handler() -> Any:
    @require_auth_level(acr_values="loa2")
    class Mixed(HTTPEndpoint):
        @require_auth_level(acr_values="loa3")
        async def delete(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("never")

    return Route("/c", Mixed), "delete"


def _websocket_public_and_sensitive() -> Any:
    @public
    class Mixed(WebSocketEndpoint):
        @sensitive
        async def on_receive(self, websocket: WebSocket, data: Any) -> None:
            return None

    return WebSocketRoute("/c", Mixed), "websocket"


def _websocket_handlers_without_common_acr() -> Any:
    class Mixed(WebSocketEndpoint):
        @require_auth_level(acr_values="loa2")
        async def on_connect(self, websocket: WebSocket) -> None:
            await websocket.accept()

        @require_auth_level(acr_values="loa3")
        async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
            return None

    return WebSocketRoute("/c", Mixed), "websocket"


@pytest.mark.parametrize(
    "make",
    [
        _public_class_scoped_post,
        _acr_class_acr_handler,
        _websocket_public_and_sensitive,
        _websocket_handlers_without_common_acr,
    ],
)
def test_contradictory_class_and_handler_marks_are_refused(make: Any) -> None:
    route, method = make()
    app = Starlette(routes=[route])
    app.add_middleware(TokenGuard, **rm.guard_kwargs())
    with pytest.raises(ConfigurationError), TestClient(app):  # the lifespan startup
        pass
    # Without a lifespan, the request fails closed (503), never reaching the endpoint.
    client = TestClient(app)
    if method == "websocket":
        with pytest.raises((WebSocketDisconnect, WebSocketDenialResponse)), client.websocket_connect("/c", headers=GOD):
            pass
    else:
        response = client.request(method.upper(), "/c", headers=GOD)
        assert response.status_code == 503
        assert response.text != "never"


# -- gaps the long run found, fixed: a route list rebound, a route replaced, preflights in includes --


def test_gap_routes_list_rebound_in_a_mounted_router() -> None:
    sub = Router()
    client = guarded(Starlette(routes=[Mount("/m", app=sub)]), default="public")
    assert client.post("/m/x").status_code == 404
    sub.routes = [*sub.routes, Route("/x", admin_x, methods=["POST"])]
    assert client.post("/m/x").status_code == 401


def test_gap_route_replaced_in_place() -> None:
    app = Starlette(routes=[Route("/x", open_x)])
    client = guarded(app)
    assert client.get("/x").status_code == 200
    app.router.routes[0] = Route("/x", admin_x)
    assert client.get("/x").status_code == 401


class Resource(HTTPEndpoint):
    @require_scopes("admin")
    async def options(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("admin ran")


class AdminApp:
    """An ASGI object as a route endpoint (every method reaches it)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("admin ran")(scope, receive, send)


@pytest.mark.parametrize("endpoint", [Resource, require_scopes("admin")(AdminApp())], ids=["class", "asgi-object"])
def test_gap_cors_preflight_to_an_endpoint_in_an_included_router(endpoint: Any) -> None:
    router = APIRouter()
    router.add_route("/r", endpoint)
    app = FastAPI()
    app.include_router(router)
    client = guarded(app)
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "DELETE"}
    response = client.options("/r", headers=preflight)
    assert response.text != "admin ran"
    assert response.status_code == 401
