"""Assurance (issue 10): the guard applies the policy of the endpoint the router will run.

Regression tests for the routing flaws, each through a real app behind the real guard with real
signed tokens: merged class/handler marks (flaw 1), FastAPI's own docs routes only (flaw 2), route
tables that change after the first request (flaw 3), and metric labels that are templates (flaw 8).
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint, WebSocketEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from conftest import AUDIENCE, ISSUER, Issuer
from tokenguard import Rule, TokenGuard, public, require_auth_level, require_scopes, sensitive
from tokenguard.errors import ConfigurationError
from tokenguard.events import DecisionEvent
from tokenguard.policy import Requirement
from tokenguard.routing import declared_requirements, endpoint_requirement
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def guarded(app: Any, clock: ManualClock, **options: Any) -> TestClient:
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, **options)
    return TestClient(app)


def guard_of(client: TestClient) -> TokenGuard:
    app: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(app, TokenGuard):
        app = app.app
    return app


@public
async def open_get(request: Request) -> PlainTextResponse:
    return PlainTextResponse("open")


@require_scopes("admin")
async def admin_post(request: Request) -> PlainTextResponse:
    return PlainTextResponse("admin")


# -- flaw 1: a handler's marks add to the class's, never replace them --------------------------------


@require_scopes("admin")
class Accounts(HTTPEndpoint):
    async def get(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("listed")

    @require_auth_level(acr_values="mfa")
    async def delete(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("deleted")


def test_class_scopes_still_apply_when_the_handler_has_a_mark(idp: Issuer, clock: ManualClock) -> None:
    client = guarded(Starlette(routes=[Route("/accounts", Accounts)]), clock)
    # Only `read`, but the step-up the handler asks for: the class's `admin` still applies.
    assert client.delete("/accounts", headers=bearer(idp.token(scope="read", acr="mfa"))).status_code == 403
    assert client.delete("/accounts", headers=bearer(idp.token(scope="admin", acr="pwd"))).status_code == 401
    assert client.delete("/accounts", headers=bearer(idp.token(scope="admin", acr="mfa"))).status_code == 200
    assert client.get("/accounts", headers=bearer(idp.token(scope="read"))).status_code == 403
    assert client.get("/accounts", headers=bearer(idp.token(scope="admin"))).status_code == 200


@sensitive
class Transfers(HTTPEndpoint):
    @require_scopes("transfer")
    async def post(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("sent")


def test_class_sensitive_mark_survives_a_handler_scope_mark() -> None:
    merged = endpoint_requirement(Transfers, {"type": "http", "method": "POST"})
    assert merged == Requirement(all_scopes=frozenset({"transfer"}), sensitive=True)


@require_scopes("chat")
class Chat(WebSocketEndpoint):
    @sensitive
    async def on_connect(self, websocket: WebSocket) -> None:
        await websocket.accept()

    @require_scopes("post")
    async def on_receive(self, websocket: WebSocket, data: Any) -> None:
        await websocket.send_text("ok")


def test_websocket_endpoint_merges_class_and_every_handler() -> None:
    merged = endpoint_requirement(Chat, {"type": "websocket"})
    assert merged == Requirement(all_scopes=frozenset({"chat", "post"}), sensitive=True)


def test_websocket_class_scope_applies_with_a_marked_on_connect(idp: Issuer, clock: ManualClock) -> None:
    @require_scopes("chat")
    class Room(WebSocketEndpoint):
        @require_auth_level(max_age=600)
        async def on_connect(self, websocket: WebSocket) -> None:
            await websocket.accept()

    client = guarded(Starlette(routes=[WebSocketRoute("/ws", Room)]), clock)
    fresh = {"auth_time": int(clock.now)}
    weak = bearer(idp.token(scope="read", **fresh))
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws", headers=weak):
        pass
    with client.websocket_connect("/ws", headers=bearer(idp.token(scope="chat", **fresh))) as ws:
        ws.close()


def test_marks_that_cannot_combine_are_refused_when_the_app_starts(idp: Issuer, clock: ManualClock) -> None:
    @public
    class Mixed(HTTPEndpoint):
        @require_scopes("admin")
        async def post(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("never")

    app = Starlette(routes=[Route("/mixed", Mixed)])
    with pytest.raises(ConfigurationError, match="@public cannot be combined"):
        declared_requirements(app)
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with pytest.raises(ConfigurationError), TestClient(app):  # lifespan startup
        pass
    # Without a lifespan, the request fails closed: 503, never the endpoint.
    response = TestClient(app).post("/mixed")
    assert response.status_code == 503
    assert response.text != "never"


# -- flaw 2: only FastAPI's own docs routes are public, only for GET/HEAD ----------------------------


def test_docs_path_with_docs_turned_off_is_not_public(idp: Issuer, clock: ManualClock) -> None:
    app = FastAPI(openapi_url=None)

    @app.get("/docs")
    async def my_docs() -> dict[str, str]:
        return {"secret": "yes"}

    client = guarded(app, clock)
    assert client.get("/docs").status_code == 401
    assert client.get("/docs", headers=bearer(idp.token())).status_code == 200


def test_user_handler_on_a_docs_path_is_not_public(idp: Issuer, clock: ManualClock) -> None:
    app = FastAPI()

    @app.post("/docs")
    async def upload() -> dict[str, str]:
        return {"ran": "yes"}

    client = guarded(app, clock)
    assert client.get("/docs").status_code == 200  # FastAPI's Swagger UI
    assert client.get("/openapi.json").status_code == 200
    assert client.head("/docs").status_code == 200
    assert client.post("/docs").status_code == 401
    assert client.put("/openapi.json").status_code == 401


# -- flaw 3: decisions follow routes added after the first request ------------------------------------


def test_route_added_to_an_included_router_after_a_405_is_seen(idp: Issuer, clock: ManualClock) -> None:
    app = FastAPI()
    router = APIRouter()

    @router.get("/x")
    @public
    async def read_x() -> dict[str, str]:
        return {"x": "open"}

    app.include_router(router)
    client = guarded(app, clock)
    assert client.get("/x").status_code == 200
    assert client.post("/x").status_code == 401  # the 405 of a public route is not public

    @router.post("/x")
    @require_scopes("admin")
    async def write_x() -> dict[str, str]:
        return {"x": "written"}

    assert client.post("/x").status_code == 401
    assert client.post("/x", headers=bearer(idp.token(scope="read"))).status_code == 403
    assert client.post("/x", headers=bearer(idp.token(scope="admin"))).status_code == 200


def test_route_added_inside_a_mount_after_first_requests_is_seen(idp: Issuer, clock: ManualClock) -> None:
    inner = Starlette(routes=[Route("/open", open_get)])
    client = guarded(Starlette(routes=[Mount("/api", app=inner)]), clock)
    assert client.get("/api/open").status_code == 200
    assert client.post("/api/open").status_code == 401
    inner.router.routes.insert(0, Route("/open", admin_post, methods=["POST"]))
    assert client.post("/api/open").status_code == 401
    assert client.post("/api/open", headers=bearer(idp.token(scope="read"))).status_code == 403
    assert client.post("/api/open", headers=bearer(idp.token(scope="admin"))).status_code == 200


def test_top_level_route_list_replaced_is_seen(idp: Issuer, clock: ManualClock) -> None:
    app = Starlette(routes=[Route("/thing", open_get)])
    client = guarded(app, clock)
    assert client.get("/thing").status_code == 200
    app.router.routes = [Route("/thing", admin_post, methods=["GET"])]
    assert client.get("/thing").status_code == 401


# -- flaw 8: route labels are templates, whatever the client puts in the path -------------------------


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse("item")


def test_route_labels_under_a_templated_mount_stay_bounded(idp: Issuer, clock: ManualClock) -> None:
    events: list[DecisionEvent] = []
    tenant = Starlette(routes=[Route("/items/{item_id}", item)])
    app = Starlette(routes=[Mount("/t/{tenant}", app=tenant)])
    client = guarded(app, clock, on_decision=events.append)
    for number in range(200):
        assert client.get(f"/t/tenant-{number}/items/{number}").status_code == 401
        assert client.get(f"/t/tenant-{number}/nothing/{number}").status_code == 401
    labels = {event.route for event in events}
    assert labels == {"/t/{tenant}/items/{item_id}", "/t/{tenant}/{path}"}


def test_route_labels_of_included_routers_are_templates(idp: Issuer, clock: ManualClock) -> None:
    events: list[DecisionEvent] = []
    app = FastAPI()
    router = APIRouter(prefix="/orgs/{org}")

    @router.get("/users/{user}")
    async def user(org: str, user: str) -> dict[str, str]:
        return {"org": org}

    app.include_router(router, prefix="/v1")
    client = guarded(app, clock, on_decision=events.append)
    for number in range(50):
        client.get(f"/v1/orgs/o{number}/users/u{number}")
    assert {event.route for event in events} == {"/v1/orgs/{org}/users/{user}"}


# -- the dispatch check: a wrong prediction costs a check, never a bypass -----------------------------


class RouterOnlyRoute(Route):
    """A custom route that matches only inside the router (the guard's probe sees no "router" key):
    the guard's prediction is wrong for it by construction."""

    def matches(self, scope: Any) -> Any:
        if "router" not in scope:
            from starlette.routing import Match

            return Match.NONE, {}
        return super().matches(scope)


def test_dispatch_check_applies_the_policy_of_the_endpoint_that_runs(
    idp: Issuer, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = Starlette(routes=[RouterOnlyRoute("/thing", admin_post, methods=["GET"]), Route("/thing", open_get)])
    client = guarded(app, clock)
    assert client.get("/thing").status_code == 401
    guard = guard_of(client)
    assert client.get("/thing", headers=bearer(idp.token(scope="read"))).status_code == 403
    response = client.get("/thing", headers=bearer(idp.token(scope="admin")))
    assert (response.status_code, response.text) == (200, "admin")
    assert guard.status()["route_mismatches"] == 3
    assert "not the endpoint the guard predicted" in caplog.text


def test_dispatch_check_passes_when_the_policy_is_the_same(idp: Issuer, clock: ManualClock) -> None:
    @require_scopes("admin")
    async def other_admin(request: Request) -> PlainTextResponse:
        return PlainTextResponse("other")

    app = Starlette(routes=[RouterOnlyRoute("/thing", other_admin), Route("/thing", admin_post, methods=["GET"])])
    client = guarded(app, clock)
    assert client.get("/thing").status_code == 401
    guard = guard_of(client)
    assert client.get("/thing", headers=bearer(idp.token(scope="admin"))).text == "other"
    # Counted (a wrong prediction is a bug worth seeing), though no second check was needed.
    assert guard.status()["route_mismatches"] == 1


def test_dispatch_check_fails_closed_on_marks_that_cannot_combine(idp: Issuer, clock: ManualClock) -> None:
    @public
    class Broken(HTTPEndpoint):
        @require_scopes("admin")
        async def get(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("never")

    app = Starlette(routes=[RouterOnlyRoute("/thing", Broken), Route("/thing", open_get)])
    client = guarded(app, clock)
    response = client.get("/thing", headers=bearer(idp.token(scope="admin")))
    assert response.status_code == 503
    assert "never" not in response.text


def test_dispatch_check_on_a_websocket_route(idp: Issuer, clock: ManualClock) -> None:
    @require_scopes("chat")
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    @public
    async def lobby(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("lobby")
        await websocket.close()

    class RouterOnlyWebSocketRoute(WebSocketRoute):
        def matches(self, scope: Any) -> Any:
            if "router" not in scope:
                from starlette.routing import Match

                return Match.NONE, {}
            return super().matches(scope)

    app = Starlette(routes=[RouterOnlyWebSocketRoute("/ws", chat), WebSocketRoute("/ws", lobby)])
    client = guarded(app, clock)
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws") as ws:
        ws.receive_text()
    with client.websocket_connect("/ws", headers=bearer(idp.token(scope="chat"))) as ws:
        assert ws.receive_text() == "hello"


def test_dispatch_checks_are_installed_on_included_fastapi_routes(idp: Issuer, clock: ManualClock) -> None:
    from tokenguard.routing import _DispatchCheck

    app = FastAPI()
    router = APIRouter(prefix="/r")

    @router.get("/a")
    async def a() -> dict[str, str]:
        return {"a": "a"}

    app.include_router(router)
    client = guarded(app, clock)
    assert client.get("/r/a", headers=bearer(idp.token())).status_code == 200
    route = router.routes[0]
    assert isinstance(vars(route)["handle"], _DispatchCheck)
    # Installed once, whatever the number of requests and route-table changes.
    app.add_api_route("/later", a)
    assert client.get("/later", headers=bearer(idp.token())).status_code == 200
    assert not isinstance(vars(route)["handle"].handle, _DispatchCheck)
    guard = guard_of(client)
    assert guard.status()["route_mismatches"] == 0


def test_query_method_handler_marks_apply(idp: Issuer, clock: ManualClock) -> None:
    """Starlette 1.x dispatches QUERY to ``query``: its marks add to the class's like any other."""

    @require_scopes("read")
    class Search(HTTPEndpoint):
        @require_scopes("search")
        async def query(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("found")

    client = guarded(Starlette(routes=[Route("/search", Search)]), clock)
    assert client.request("QUERY", "/search", headers=bearer(idp.token(scope="read"))).status_code == 403
    assert client.request("QUERY", "/search", headers=bearer(idp.token(scope="search"))).status_code == 403
    assert client.request("QUERY", "/search", headers=bearer(idp.token(scope="read search"))).text == "found"


def test_route_trees_too_large_to_fingerprint_are_decided_afresh(idp: Issuer, clock: ManualClock) -> None:
    from tokenguard.routing import _MAX_ROUTE_LISTS

    mounts = [Mount(f"/m{i}", routes=[Route("/x", open_get)]) for i in range(_MAX_ROUTE_LISTS + 1)]
    app = Starlette(routes=[*mounts, Route("/secret", admin_post, methods=["GET"])])
    client = guarded(app, clock)
    assert client.get("/m3/x").status_code == 200
    assert client.get("/secret").status_code == 401
    guard = guard_of(client)
    assert guard.status()["route_cache_entries"] == 0
    app.router.routes.insert(0, Route("/m3/x", admin_post, methods=["GET"]))
    assert client.get("/m3/x").status_code == 401


class RewritePath:
    """A middleware inside the guard that rewrites the path (an alias, a legacy URL): the guard
    predicts for the path it saw, the router runs the rewritten one."""

    def __init__(self, app: Any, aliases: dict[str, str]) -> None:
        self.app = app
        self.aliases = aliases

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] in self.aliases:
            scope["path"] = self.aliases[scope["path"]]
        await self.app(scope, receive, send)


def rewritten(app: Any, clock: ManualClock, aliases: dict[str, str], **options: Any) -> TestClient:
    app.add_middleware(RewritePath, aliases=aliases)  # inside the guard: added first
    return guarded(app, clock, **options)


def test_dispatch_check_covers_fastapi_copies_of_included_starlette_routes(idp: Issuer, clock: ManualClock) -> None:
    """FastAPI re-creates a plain Starlette route of an included router; its copy is what runs, so the
    copy carries the dispatch check: a path rewritten behind the guard still meets the admin mark."""

    @require_scopes("admin")
    async def export(request: Request) -> PlainTextResponse:
        return PlainTextResponse("exported")

    router = APIRouter()
    router.add_route("/export", export)
    app = FastAPI()
    app.include_router(router, prefix="/admin")
    client = rewritten(app, clock, {"/legacy/export": "/admin/export"})
    assert client.get("/legacy/export", headers=bearer(idp.token(scope="read"))).status_code == 403
    assert client.get("/legacy/export", headers=bearer(idp.token(scope="admin"))).text == "exported"
    assert guard_of(client).status()["route_mismatches"] == 2


def test_fastapi_route_copies_are_found() -> None:
    """The one place that reads FastAPI's private included-route copies: fails loudly if FastAPI changes."""
    from tokenguard.routing import _fastapi_route_copies

    async def export(request: Request) -> PlainTextResponse:
        return PlainTextResponse("exported")

    inner, outer = APIRouter(), APIRouter()
    inner.add_route("/export", export)
    outer.include_router(inner, prefix="/inner")
    app = FastAPI()
    app.include_router(outer, prefix="/outer")
    (included,) = [route for route in app.router.routes if hasattr(route, "original_router")]
    copies = _fastapi_route_copies(included)
    assert [copy.endpoint for copy in copies] == [export]
    assert copies[0].path == "/outer/inner/export"


def test_dispatch_check_applies_path_rules_of_the_dispatched_path(idp: Issuer, clock: ManualClock) -> None:
    """An unmarked endpoint reached through a rewritten path: the rules of the path the router ran apply."""

    async def users(request: Request) -> PlainTextResponse:
        return PlainTextResponse("users")

    app = Starlette(routes=[Route("/admin/users", users)])
    client = rewritten(app, clock, {"/people": "/admin/users"}, rules=[Rule("/admin", scopes="admin")])
    assert client.get("/admin/users", headers=bearer(idp.token(scope="read"))).status_code == 403
    assert client.get("/people", headers=bearer(idp.token(scope="read"))).status_code == 403
    assert client.get("/people", headers=bearer(idp.token(scope="admin"))).text == "users"


def test_fastapi_root_path_is_predicted(idp: Issuer, clock: ManualClock) -> None:
    """A guard wrapping ``FastAPI(root_path=...)`` predicts with the root_path FastAPI will set."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FastAPI deprecates the parameter; apps still use it
        api = FastAPI(root_path="/api")

    @api.get("/admin/users")
    async def users() -> dict[str, str]:
        return {"users": "all"}

    guard = TokenGuard(api, issuer=ISSUER, audience=AUDIENCE, clock=clock, rules=[Rule("/admin", scopes="admin")])
    client = TestClient(guard)
    assert client.get("/api/admin/users", headers=bearer(idp.token(scope="read"))).status_code == 403
    assert client.get("/api/admin/users", headers=bearer(idp.token(scope="admin"))).status_code == 200
    assert guard.status()["route_mismatches"] == 0


def test_one_dispatch_check_per_route_whatever_the_number_of_apps(idp: Issuer, clock: ManualClock) -> None:
    """An app factory over module-level routes: each new app and guard reuse the one check, keep none alive."""
    import gc
    import weakref

    from tokenguard.routing import _DispatchCheck

    shared = [Route("/admin", admin_post, methods=["GET"]), Route("/open", open_get)]
    guards: list[weakref.ref[TokenGuard]] = []
    for _ in range(600):
        app = Starlette(routes=shared)
        client = guarded(app, clock)
        assert client.get("/admin").status_code == 401
        guards.append(weakref.ref(guard_of(client)))
        del app, client
    check = vars(shared[0])["handle"]
    assert isinstance(check, _DispatchCheck)
    assert not isinstance(check.handle, _DispatchCheck)
    gc.collect()
    assert sum(ref() is not None for ref in guards) <= 1


def test_an_unguarded_app_sharing_routes_is_left_alone(idp: Issuer, clock: ManualClock) -> None:
    @require_scopes("admin")
    async def internal(request: Request) -> PlainTextResponse:
        return PlainTextResponse("internal")

    shared = [Route("/internal", internal)]
    guarded_client = guarded(Starlette(routes=shared), clock)
    assert guarded_client.get("/internal").status_code == 401
    assert TestClient(Starlette(routes=shared)).get("/internal").text == "internal"


def test_a_mount_of_an_app_without_routes_keeps_the_route_cache(idp: Issuer, clock: ManualClock) -> None:
    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("raw")(scope, receive, send)

    app = Starlette(routes=[Mount("/raw", app=raw), Route("/open", open_get)])
    client = guarded(app, clock, rules=[Rule("/raw", public=True)])
    for _ in range(5):
        assert client.get("/open").status_code == 200
        assert client.get("/raw/x").text == "raw"
    assert guard_of(client).status()["route_cache_entries"] == 2


def test_preflight_does_not_open_a_class_endpoint_with_its_own_dispatch(idp: Issuer, clock: ManualClock) -> None:
    @require_scopes("admin")
    class Proxy(HTTPEndpoint):
        async def dispatch(self) -> None:
            await PlainTextResponse("proxied")(self.scope, self.receive, self.send)

    client = guarded(Starlette(routes=[Route("/proxy", Proxy)]), clock)
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "DELETE"}
    response = client.options("/proxy", headers=preflight)
    assert response.status_code == 401
    assert response.text != "proxied"
