"""Route policy lookup (``routing.py``) through real Starlette and FastAPI apps (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Host, Match, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from conftest import AUDIENCE, ISSUER, Issuer
from tokenguard import Rule, TokenGuard, public, require_scopes
from tokenguard.policy import AUTHENTICATED, PUBLIC, Requirement
from tokenguard.routing import RouteResolver
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@public
async def open_endpoint(request: Request) -> PlainTextResponse:
    return PlainTextResponse("open")


@require_scopes("admin")
async def admin_endpoint(request: Request) -> PlainTextResponse:
    return PlainTextResponse("admin")


async def plain_endpoint(request: Request) -> PlainTextResponse:
    return PlainTextResponse("plain")


def guarded(app: Any, clock: ManualClock, **options: Any) -> TestClient:
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, **options)
    return TestClient(app)


def assert_scoped(client: TestClient, idp: Issuer, url: str, scope: str = "admin") -> None:
    """``url`` needs a token with ``scope``: 401 without a token, 403 without the scope, 200 with it."""
    assert client.get(url).status_code == 401, url
    assert client.get(url, headers=bearer(idp.token(scope="other"))).status_code == 403, url
    assert client.get(url, headers=bearer(idp.token(scope=scope))).status_code == 200, url


# -- Mount, Router, Host ---------------------------------------------------------------------------


def test_marks_inside_a_mounted_starlette_app(idp: Issuer, clock: ManualClock) -> None:
    """Routes of a mounted Starlette app keep their marks: public stays open, scoped stays scoped."""
    sub = Starlette(routes=[Route("/open", open_endpoint), Route("/admin", admin_endpoint)])
    client = guarded(Starlette(routes=[Mount("/api", app=sub)]), clock)
    assert client.get("/api/open").status_code == 200
    assert_scoped(client, idp, "/api/admin")


def test_marks_inside_mount_routes_and_routers(idp: Issuer, clock: ManualClock) -> None:
    """``Mount(routes=...)``, a mounted ``Router`` and nested mounts are all searched."""
    inner = Router(routes=[Route("/open", open_endpoint), Route("/admin", admin_endpoint)])
    app = Starlette(
        routes=[
            Mount("/a", routes=[Route("/open", open_endpoint), Route("/admin", admin_endpoint)]),
            Mount("/b", app=inner),
            Mount("/c", routes=[Mount("/d", routes=[Mount("/e", app=inner)])]),
        ]
    )
    client = guarded(app, clock)
    for prefix in ("/a", "/b", "/c/d/e"):
        assert client.get(f"{prefix}/open").status_code == 200, prefix
        assert_scoped(client, idp, f"{prefix}/admin")


def test_marks_inside_a_mounted_app_wrapped_in_middleware(idp: Issuer, clock: ManualClock) -> None:
    """A mounted app wrapped in middleware is looked through to its routes."""
    sub = Starlette(routes=[Route("/open", open_endpoint), Route("/admin", admin_endpoint)])
    client = guarded(Starlette(routes=[Mount("/api", app=GZipMiddleware(sub))]), clock)
    assert client.get("/api/open").status_code == 200
    assert_scoped(client, idp, "/api/admin")


def test_unmatched_path_inside_a_mount_gets_the_default(idp: Issuer, clock: ManualClock) -> None:
    """A path under a mount that no inner route matches: 401 without a token, the app's 404 with one."""
    sub = Starlette(routes=[Route("/open", open_endpoint)])
    client = guarded(Starlette(routes=[Mount("/api", app=sub)]), clock)
    assert client.get("/api/missing").status_code == 401
    assert client.get("/api/missing", headers=bearer(idp.token())).status_code == 404


def test_host_routes_are_matched_by_host_header(idp: Issuer, clock: ManualClock) -> None:
    """``Host`` routing: the same path is public on one host and scoped on another, in any order."""
    app = Starlette(
        routes=[
            Host("www.example.com", app=Router(routes=[Route("/page", open_endpoint)])),
            Host("admin.example.com", app=Router(routes=[Route("/page", admin_endpoint)])),
        ]
    )
    client = guarded(app, clock)
    for _ in range(2):  # the second round is answered from the route cache
        assert client.get("http://www.example.com/page").status_code == 200
        assert client.get("http://admin.example.com/page").status_code == 401
        assert client.get("http://admin.example.com/page", headers=bearer(idp.token(scope="x"))).status_code == 403


def test_path_params_and_convertors(idp: Issuer, clock: ManualClock) -> None:
    """A route with path params is matched like the router does; a convertor miss is unmatched."""
    app = Starlette(routes=[Route("/photos/{photo_id:int}", admin_endpoint), Route("/open/{name}", open_endpoint)])
    client = guarded(app, clock)
    assert_scoped(client, idp, "/photos/42")
    assert client.get("/open/anything").status_code == 200
    assert client.get("/photos/not-a-number").status_code == 401
    assert client.get("/photos/not-a-number", headers=bearer(idp.token(scope="x"))).status_code == 404


def test_method_mismatch_gets_the_default_policy(idp: Issuer, clock: ManualClock) -> None:
    """A wrong method reaches no endpoint (the router answers 405): the default policy applies, not
    the policy of the route it did not reach — a valid token without the GET route's scope sees 405."""
    app = Starlette(routes=[Route("/admin", admin_endpoint, methods=["GET"])])
    client = guarded(app, clock)
    assert client.post("/admin").status_code == 401
    assert client.post("/admin", headers=bearer(idp.token(scope="x"))).status_code == 405
    assert client.post("/admin", headers=bearer(idp.token(scope="admin"))).status_code == 405


def test_method_mismatch_on_a_public_route_is_not_public(idp: Issuer, clock: ManualClock) -> None:
    """The 405 of a public GET route is not public: with the default policy, no token is a 401."""
    app = Starlette(routes=[Route("/open", open_endpoint, methods=["GET"])])
    client = guarded(app, clock)
    assert client.get("/open").status_code == 200
    assert client.post("/open").status_code == 401


def test_one_path_with_per_method_routes(idp: Issuer, clock: ManualClock) -> None:
    """Two routes on one path with different methods each keep their own policy."""
    app = Starlette(
        routes=[Route("/items", open_endpoint, methods=["GET"]), Route("/items", admin_endpoint, methods=["POST"])]
    )
    client = guarded(app, clock)
    assert client.get("/items").status_code == 200
    assert client.post("/items").status_code == 401
    assert client.post("/items", headers=bearer(idp.token(scope="admin"))).status_code == 200


# -- rules for what cannot be decorated ------------------------------------------------------------


async def raw_asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    response = PlainTextResponse(f"raw {scope['method']}")
    await response(scope, receive, send)


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.js").write_text("console.log('hi')")
    return tmp_path


def rules_app(static_dir: Path) -> Starlette:
    return Starlette(
        routes=[
            Route("/reports/open", open_endpoint),
            Mount("/static", app=StaticFiles(directory=static_dir)),
            Mount("/reports", app=raw_asgi_app),
            Mount("/internal", app=raw_asgi_app),
            Route("/plain", plain_endpoint),
        ]
    )


RULES = [
    Rule("/static", methods=["GET", "HEAD"], public=True),
    Rule("/reports/secret", scopes=["admin"]),
    Rule("/reports", public=True),
]


def test_rule_opens_static_files(idp: Issuer, clock: ManualClock, static_dir: Path) -> None:
    """A public rule opens a StaticFiles mount, for the methods it lists only."""
    client = guarded(rules_app(static_dir), clock, rules=RULES)
    response = client.get("/static/app.js")
    assert response.status_code == 200
    assert "console.log" in response.text
    assert client.head("/static/app.js").status_code == 200
    assert client.post("/static/app.js").status_code == 401  # method filter: the default applies


def test_rules_first_match_wins(idp: Issuer, clock: ManualClock, static_dir: Path) -> None:
    """Rules are tried in order: the scoped /reports/secret rule is listed first and wins."""
    client = guarded(rules_app(static_dir), clock, rules=RULES)
    assert client.get("/reports/summary").text == "raw GET"
    assert_scoped(client, idp, "/reports/secret/2024")
    reordered = guarded(rules_app(static_dir), clock, rules=[RULES[2], RULES[1]])
    assert reordered.get("/reports/secret/2024").status_code == 200


def test_rule_paths_match_on_segment_boundaries(idp: Issuer, clock: ManualClock) -> None:
    """A rule for /reports does not cover /reportsX."""
    app = Starlette(routes=[Mount("/reportsX", app=raw_asgi_app), Mount("/reports", app=raw_asgi_app)])
    client = guarded(app, clock, rules=[Rule("/reports", public=True)])
    assert client.get("/reports/a").status_code == 200
    assert client.get("/reportsX/a").status_code == 401


def test_marks_beat_rules(idp: Issuer, clock: ManualClock, static_dir: Path) -> None:
    """A decorated route under a rule's path keeps its own mark."""
    rules = [Rule("/reports", scopes=["admin"]), Rule("/plain", public=True)]
    client = guarded(rules_app(static_dir), clock, rules=rules)
    assert client.get("/reports/open").status_code == 200  # @public beats the scoped rule
    assert_scoped(client, idp, "/reports/other")
    assert client.get("/plain").status_code == 200  # an undecorated route takes the rule


def test_rules_beat_the_default(idp: Issuer, clock: ManualClock, static_dir: Path) -> None:
    """With ``default="public"`` a scoped rule still guards its mounted app."""
    client = guarded(rules_app(static_dir), clock, default="public", rules=[Rule("/internal", scopes=["admin"])])
    assert client.get("/plain").status_code == 200
    assert_scoped(client, idp, "/internal/anything")


def test_rules_apply_to_unmatched_paths(idp: Issuer, clock: ManualClock) -> None:
    """A rule also decides for paths no route matches (the app answers 404 then)."""
    client = guarded(Starlette(routes=[]), clock, rules=[Rule("/", public=True)])
    assert client.get("/nothing-here").status_code == 404


# -- FastAPI -------------------------------------------------------------------------------------------


def fastapi_photos_router() -> APIRouter:
    router = APIRouter()

    @router.get("/open")
    @public
    async def router_open() -> dict[str, str]:
        return {"who": "anyone"}

    @router.get("/admin")
    @require_scopes("admin")
    async def router_admin() -> dict[str, str]:
        return {"who": "admin"}

    @router.get("/items/{item_id}")
    @require_scopes("admin")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return router


def test_fastapi_included_router_with_prefix(idp: Issuer, clock: ManualClock) -> None:
    """Marks on routes of an APIRouter included with a prefix are found (FastAPI does not flatten it)."""
    app = FastAPI()
    app.include_router(fastapi_photos_router(), prefix="/v1")
    client = guarded(app, clock)
    assert client.get("/v1/open").json() == {"who": "anyone"}
    assert_scoped(client, idp, "/v1/admin")
    assert_scoped(client, idp, "/v1/items/7")
    assert client.get("/v1/items/7", headers=bearer(idp.token(scope="admin"))).json() == {"item_id": 7}


def test_fastapi_nested_include_router(idp: Issuer, clock: ManualClock) -> None:
    """Routers included in routers included in the app are searched to any depth."""
    inner = fastapi_photos_router()
    middle = APIRouter()
    middle.include_router(inner, prefix="/photos")
    outer = APIRouter()
    outer.include_router(middle, prefix="/v2")
    app = FastAPI()
    app.include_router(outer, prefix="/api")
    client = guarded(app, clock)
    assert client.get("/api/v2/photos/open").status_code == 200
    assert_scoped(client, idp, "/api/v2/photos/admin")
    assert client.get("/api/v2/photos/missing").status_code == 401


def test_fastapi_router_included_twice(idp: Issuer, clock: ManualClock) -> None:
    """One router included under two prefixes is guarded under both."""
    router = fastapi_photos_router()
    app = FastAPI()
    app.include_router(router, prefix="/a")
    app.include_router(router, prefix="/b")
    client = guarded(app, clock)
    for prefix in ("/a", "/b"):
        assert client.get(f"{prefix}/open").status_code == 200
        assert_scoped(client, idp, f"{prefix}/admin")


def test_fastapi_starlette_routes_and_mounts_inside_routers(idp: Issuer, clock: ManualClock) -> None:
    """Plain Starlette routes and mounts inside an included APIRouter keep their marks."""
    router = APIRouter()
    router.add_route("/raw-open", open_endpoint)
    router.add_route("/raw-admin", admin_endpoint)
    router.mount("/sub", Starlette(routes=[Route("/admin", admin_endpoint), Route("/open", open_endpoint)]))
    app = FastAPI()
    app.include_router(router, prefix="/r")
    client = guarded(app, clock)
    assert client.get("/r/raw-open").status_code == 200
    assert_scoped(client, idp, "/r/raw-admin")
    assert client.get("/r/sub/open").status_code == 200
    assert_scoped(client, idp, "/r/sub/admin")


def test_fastapi_method_mismatch_in_router(idp: Issuer, clock: ManualClock) -> None:
    """A wrong method on an included route is refused without a token (not a 405 leak)."""
    app = FastAPI()
    app.include_router(fastapi_photos_router(), prefix="/v1")
    client = guarded(app, clock)
    assert client.post("/v1/admin").status_code == 401
    assert client.post("/v1/admin", headers=bearer(idp.token(scope="admin"))).status_code == 405


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_fastapi_documentation_is_public_by_default(idp: Issuer, clock: ManualClock, path: str) -> None:
    """FastAPI's own /docs, /redoc, /openapi.json and oauth2 redirect need no token."""
    app = FastAPI()
    app.include_router(fastapi_photos_router())
    client = guarded(app, clock)
    assert client.get(path).status_code == 200
    assert client.get("/admin").status_code == 401


def test_fastapi_custom_documentation_urls(idp: Issuer, clock: ManualClock) -> None:
    """Custom docs URLs are public; a disabled docs URL is just an unmatched path."""
    app = FastAPI(docs_url="/api-docs", redoc_url=None, openapi_url="/schema.json")
    client = guarded(app, clock)
    assert client.get("/api-docs").status_code == 200
    assert client.get("/schema.json").status_code == 200
    assert client.get("/redoc").status_code == 401
    assert client.get("/docs").status_code == 401


def test_documentation_routes_can_be_guarded_by_a_mark(idp: Issuer, clock: ManualClock) -> None:
    """A user who serves the docs themselves decides: a marked /docs route keeps its mark."""
    app = FastAPI(docs_url=None)

    @app.get("/docs")
    @require_scopes("admin")
    async def docs() -> dict[str, str]:
        return {"docs": "private"}

    assert_scoped(guarded(app, clock), idp, "/docs")


def test_docs_path_inside_a_mount_is_not_treated_as_documentation(idp: Issuer, clock: ManualClock) -> None:
    """Only FastAPI's own top-level doc routes are public; a mounted route at /docs keeps the default."""
    app = FastAPI()
    app.mount("/internal", Starlette(routes=[Route("/docs", plain_endpoint)]))
    app.mount("/", Starlette(routes=[Route("/openapi.json", plain_endpoint)]))
    client = guarded(app, clock)
    assert client.get("/internal/docs").status_code == 401
    assert client.get("/docs").status_code == 200


def test_mounted_fastapi_sub_app(idp: Issuer, clock: ManualClock) -> None:
    """A FastAPI app mounted in another keeps its marks."""
    sub = FastAPI()
    sub.include_router(fastapi_photos_router(), prefix="/p")
    app = FastAPI()
    app.mount("/sub", sub)
    client = guarded(app, clock)
    assert client.get("/sub/p/open").status_code == 200
    assert_scoped(client, idp, "/sub/p/admin")


# -- the route cache -----------------------------------------------------------------------------------


def test_route_cache_is_bounded(idp: Issuer, clock: ManualClock) -> None:
    """``route_cache_size`` bounds the memoised results; evicted entries are resolved again correctly."""
    app = Starlette(routes=[Route("/open/{name}", open_endpoint), Route("/admin/{name}", admin_endpoint)])
    guard = TokenGuard(app, issuer=ISSUER, audience=AUDIENCE, clock=clock, route_cache_size=3)
    client = TestClient(guard)
    for index in range(20):
        assert client.get(f"/open/{index}").status_code == 200
        assert client.get(f"/admin/{index}").status_code == 401
        assert guard.resolver.cache_entries <= 3
    assert guard.status()["route_cache_entries"] == 3


def test_route_added_after_first_requests_is_seen(idp: Issuer, clock: ManualClock) -> None:
    """A route added at runtime is guarded by its marks, not by a cached default."""
    app = Starlette(routes=[Route("/open", open_endpoint)])
    client = guarded(app, clock, default="public")
    assert client.get("/late").status_code == 404  # unmatched, public default: cached
    app.router.routes.append(Route("/late", admin_endpoint))
    assert client.get("/late").status_code == 401


class ExplodingRoute(BaseRoute):
    """A custom route whose matching raises."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        raise RuntimeError("boom")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await Response("never")(scope, receive, send)


def test_a_route_that_cannot_be_probed_falls_back_to_rules(idp: Issuer, clock: ManualClock) -> None:
    """Matching errors never become a 500 in the guard: rules, then the default, decide."""
    resolver = RouteResolver([Rule("/open", public=True)], AUTHENTICATED)

    app = Router(routes=[ExplodingRoute()])
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/open", "headers": [], "app": app}
    assert resolver.decide(scope).requirement == PUBLIC
    assert resolver.decide({**scope, "path": "/other"}).requirement == AUTHENTICATED


def test_resolver_without_routes_uses_rules_and_default() -> None:
    """An app without a route table (a bare ASGI callable) is governed by rules and the default."""
    resolver = RouteResolver([Rule("/health", public=True)], AUTHENTICATED)
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/health", "headers": []}
    assert resolver.decide(scope, raw_asgi_app).requirement == PUBLIC
    assert resolver.decide({**scope, "path": "/x"}, raw_asgi_app).requirement == AUTHENTICATED


def test_resolver_reads_marks_of_websocket_routes() -> None:
    """WebSocket scopes are matched against WebSocket routes, not HTTP ones of the same path."""
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    @require_scopes("chat")
    async def chat(websocket: WebSocket) -> None:
        await websocket.close()

    app = Starlette(routes=[Route("/chat", open_endpoint), WebSocketRoute("/chat", chat)])
    resolver = RouteResolver([], AUTHENTICATED)
    http: dict[str, Any] = {"type": "http", "method": "GET", "path": "/chat", "headers": [], "app": app}
    websocket: dict[str, Any] = {"type": "websocket", "path": "/chat", "headers": [], "app": app}
    assert resolver.decide(http).requirement == PUBLIC
    assert resolver.decide(websocket).requirement == Requirement(all_scopes=frozenset({"chat"}))


def test_json_404_for_unmatched_with_valid_token(idp: Issuer, clock: ManualClock) -> None:
    """The guard does not alter app responses once a request is let through (the app's 404 body)."""

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "nope"}, status_code=404)

    app = Starlette(routes=[], exception_handlers={404: not_found})
    client = guarded(app, clock)
    response = client.get("/x", headers=bearer(idp.token()))
    assert response.status_code == 404
    assert response.json() == {"detail": "nope"}


def test_route_path_is_starlettes_rule() -> None:
    """``routing.route_path`` restates Starlette's private ``get_route_path``: fail loudly if it changes."""
    import itertools

    from starlette._utils import get_route_path

    from tokenguard.routing import route_path

    paths = ["", "/", "/api", "/api/", "/api/x", "/apix", "/apix/y", "/x/api", "//api", "/api//x", "/ä/ö"]
    roots = ["", "/", "/api", "/api/", "/ap", "/ä", "//"]
    for path, root in itertools.product(paths, roots):
        scope = {"type": "http", "path": path, "root_path": root}
        assert route_path(scope) == get_route_path(scope), (path, root)


def test_fastapi_included_router_match_is_what_routing_reads() -> None:
    """routing reads FastAPI's private ``_IncludedRouter._match`` (included routers are not flattened in
    recent releases): (match, child scope, route, context). Fail loudly when FastAPI changes it."""
    from starlette.routing import Match

    router = APIRouter(prefix="/r")

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    app = FastAPI()
    app.include_router(router)
    (included,) = [route for route in app.router.routes if hasattr(route, "original_router")]
    result = included._match({"type": "http", "method": "GET", "path": "/r/items/3", "root_path": "", "headers": []})
    assert isinstance(result, tuple)
    assert len(result) == 4
    assert result[0] is Match.FULL
    assert result[2].endpoint is item
    assert result[3].path == "/r/items/{item_id}"
