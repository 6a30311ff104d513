"""Reproducers for the outside review of the issue-10 fix set.

Each test asserts the SECURE (or non-breaking) behaviour, so it fails while the finding is real.
Real apps, real signed tokens, the issuer over respx (``assurance_kit``); nothing sleeps.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import respx
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from assurance_kit import AUDIENCE, ISSUER, RespxIssuer, bearer, guard_of, guarded, junk
from tokenguard import Rule, TokenGuard, public, require_scopes
from tokenguard import routing as routing_module
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


# -- 1. a wrong prediction is confirmed against the PREDICTED path's rules ------------------------------


def test_dispatch_check_applies_rules_of_the_dispatched_path(clock: ManualClock, issuer: RespxIssuer) -> None:
    """FastAPI(root_path=...) wrapped as TokenGuard(app): the guard sees /api/admin/users (no route, no
    rule: default), FastAPI then sets root_path=/api and runs /admin/users. The dispatch check compares
    the endpoint's marks-or-*predicted*-fallback (authenticated) with what was applied (authenticated)
    and lets it run: Rule("/admin", scopes="admin") is never applied."""
    api = FastAPI(root_path="/api")

    @api.get("/admin/users")
    async def users() -> dict[str, str]:
        return {"secret": "admin data"}

    app = TokenGuard(api, issuer=ISSUER, audience=AUDIENCE, clock=clock, rules=[Rule("/admin", scopes="admin")])
    token = issuer.token(scope="read")
    with TestClient(app) as client:
        assert client.get("/admin/users", headers=bearer(token)).status_code == 403
        assert client.get("/api/admin/users", headers=bearer(token)).status_code == 403


# -- 2. FastAPI's private copies of included Starlette routes carry no dispatch check --------------------


@require_scopes("admin")
async def admin_export(request: Request) -> JSONResponse:
    return JSONResponse({"secret": "admin data"})


def test_marks_of_included_starlette_routes_hold_when_prediction_is_wrong(
    clock: ManualClock, issuer: RespxIssuer
) -> None:
    """The same misprediction, on a @require_scopes("admin") Starlette route inside an included APIRouter:
    FastAPI dispatches to its own copy of the route, whose ``handle`` has no _DispatchCheck."""
    api = FastAPI(root_path="/api")
    router = APIRouter()
    router.add_route("/export", admin_export)
    api.include_router(router, prefix="/admin")
    app = TokenGuard(api, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    token = issuer.token(scope="read")
    with TestClient(app) as client:
        assert client.get("/admin/export", headers=bearer(token)).status_code == 403
        assert client.get("/api/admin/export", headers=bearer(token)).status_code == 403


# -- 3. a CORS preflight turns the policy of a dispatch-overriding class endpoint into PUBLIC ------------


@require_scopes("admin")
class AdminProxy(HTTPEndpoint):
    """Serves every method itself (overrides ``dispatch``), as proxies and catch-all endpoints do."""

    async def dispatch(self) -> None:
        request = Request(self.scope, receive=self.receive)
        await PlainTextResponse(f"admin data via {request.method}")(self.scope, self.receive, self.send)


def test_preflight_does_not_open_a_class_endpoint_that_serves_options(clock: ManualClock, issuer: RespxIssuer) -> None:
    app = Starlette(routes=[Route("/proxy", AdminProxy)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    with TestClient(app) as client:
        assert client.get("/proxy").status_code == 401
        response = client.options("/proxy", headers=preflight)
        assert "admin data" not in response.text
        assert response.status_code in (401, 403, 405)


# -- 4. anonymous junk at 10/s keeps every NEW opaque token at 503 ----------------------------------------


def test_anonymous_junk_cannot_lock_out_new_opaque_tokens(clock: ManualClock, issuer: RespxIssuer) -> None:
    """The first-sight budget had one bucket for the whole process: 20 junk values emptied it, one junk
    value per refill kept it empty, and a user's brand-new (real, active) opaque token got 503. Now each
    client has its own share: the attacker spends only its own."""
    with guarded(clock) as attacker:
        user = TestClient(attacker.app, client=("203.0.113.7", 40000))
        for _ in range(21):
            attacker.get("/me", headers=bearer(junk()))
        real = "opaque-" + junk()
        issuer.activate(real)
        statuses = []
        for _ in range(20):
            clock.advance(0.1)
            attacker.get("/me", headers=bearer(junk()))  # the attacker: one junk value per refill
            statuses.append(user.get("/me", headers=bearer(real)).status_code)
        assert statuses[0] == 200, statuses
        assert guard_of(attacker).status()["introspection"]["first_sight_refused"] > 0


# -- 5. every guard built over shared route objects adds a link to their handle chain --------------------


def test_app_factory_over_module_level_routes_keeps_working() -> None:
    """Module-level routes (or APIRouter) + an app factory (tests, per-tenant apps): each guard
    installs one more _DispatchCheck on the same route objects, never removed; after ~480 apps every
    request to those routes is a RecursionError (500), and every old app stays alive."""

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    routes = [Route("/health", public(health))]
    clock = ManualClock()
    first: weakref.ref[Starlette] | None = None
    with respx.mock(assert_all_called=False) as router:
        RespxIssuer(router, clock)
        for index in range(600):
            app = Starlette(routes=routes)
            app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
            if first is None:
                first = weakref.ref(app)
            response = TestClient(app, raise_server_exceptions=False).get("/health")
            assert response.status_code == 200, f"app #{index}: {response.status_code}"
    del app
    gc.collect()
    assert first is not None
    assert first() is None, "a discarded app is kept alive by the shared routes"


def test_an_unguarded_app_sharing_routes_is_not_guarded_by_another_apps_guard(
    clock: ManualClock, issuer: RespxIssuer
) -> None:
    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    routes = [Route("/health", health)]
    guarded_app = Starlette(routes=routes)
    guarded_app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    internal = Starlette(routes=routes)  # e.g. an internal port, unauthenticated by design
    with TestClient(guarded_app) as client:
        assert client.get("/health").status_code == 401
    with TestClient(internal) as client:
        assert client.get("/health").status_code == 200


# -- 6. a Mount of an app without a route table defeats the route cache ----------------------------------


async def _raw_asgi(scope: dict, receive: object, send: object) -> None:
    await PlainTextResponse("raw")(scope, receive, send)  # type: ignore[arg-type]


@public
async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hi")


def test_route_cache_survives_a_mount_of_an_app_without_routes(
    clock: ManualClock, issuer: RespxIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mount("/static", StaticFiles(...)) or any raw ASGI app: ``Mount.routes`` is a new [] at each call,
    so ``_RouteTable.unchanged`` is always False: every request clears the cache and re-walks (and
    re-installs checks on) the whole route tree (~280x slower decide() with 500 routes)."""
    rereads: list[int] = []
    original = routing_module.RouteResolver._reread

    def counting(self: routing_module.RouteResolver, app: object) -> bool:
        rereads.append(1)
        return original(self, app)

    monkeypatch.setattr(routing_module.RouteResolver, "_reread", counting)
    app = Starlette(routes=[Route("/hello", _hello), Mount("/raw", app=_raw_asgi)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with TestClient(app) as client:
        for _ in range(20):
            assert client.get("/hello").status_code == 200
        assert guard_of(client).resolver.cache_entries >= 1
    assert len(rereads) <= 2, f"the route table was re-read {len(rereads)} times for 20 requests"
