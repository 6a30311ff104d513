"""Regressions from the security review: each case once reached a protected endpoint it must not.

Mounted guards reading the parent's routes, ``functools.partial`` endpoints, rules and root_path,
HEAD under a GET rule, and route-cache memory bounded against long anonymous paths.
"""

from __future__ import annotations

import functools

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from conftest import AUDIENCE, ISSUER, Issuer
from tokenguard import Rule, TokenGuard, public, require_scopes
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@require_scopes("admin")
async def delete_all(request: Request) -> PlainTextResponse:
    return PlainTextResponse("deleted")


@public
async def spa(request: Request) -> PlainTextResponse:
    return PlainTextResponse("index.html")


async def admin_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("admin app ran")(scope, receive, send)


@pytest.mark.parametrize("default", ["authenticated", "public"])
def test_a_guard_around_a_mounted_app_reads_that_apps_routes(idp: Issuer, clock: ManualClock, default: str) -> None:
    """TokenGuard(sub_app) mounted in a parent: the sub-app's marks decide, never the parent's catch-all."""
    api = Starlette(routes=[Route("/users", delete_all)])
    guarded = TokenGuard(api, issuer=ISSUER, audience=AUDIENCE, clock=clock, default=default)  # type: ignore[arg-type]
    parent = Starlette(routes=[Mount("/api", app=guarded), Route("/{path:path}", spa)])
    with TestClient(parent) as client:
        assert client.get("/api/users").status_code == 401
        assert client.get("/api/users", headers=bearer(idp.token(scope="read"))).status_code == 403
        assert client.get("/api/users", headers=bearer(idp.token(scope="admin"))).status_code == 200
        assert client.get("/elsewhere").text == "index.html"


def test_marks_on_a_partial_endpoint_are_read(idp: Issuer, clock: ManualClock) -> None:
    """functools.partial(endpoint): Starlette runs the marked function inside, so its marks apply."""

    @require_scopes("admin")
    async def remove(request: Request, what: str) -> PlainTextResponse:
        return PlainTextResponse(what)

    app = Starlette(routes=[Route("/remove", functools.partial(remove, what="x"))])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with TestClient(app) as client:
        assert client.get("/remove", headers=bearer(idp.token(scope="read"))).status_code == 403
        assert client.get("/remove", headers=bearer(idp.token(scope="admin"))).status_code == 200


def test_marks_on_a_partial_fastapi_endpoint_are_read(idp: Issuer, clock: ManualClock) -> None:
    """FastAPI add_api_route with a partial: @require_scopes still applies."""

    @require_scopes("admin")
    async def remove(what: str = "x") -> dict[str, str]:
        return {"removed": what}

    app = FastAPI()
    app.add_api_route("/remove", functools.partial(remove, what="y"), methods=["DELETE"])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with TestClient(app) as client:
        assert client.delete("/remove", headers=bearer(idp.token(scope="read"))).status_code == 403
        assert client.delete("/remove", headers=bearer(idp.token(scope="admin"))).status_code == 200


def _rule_guarded(clock: ManualClock, **options: object) -> Starlette:
    sub = Starlette(routes=[Mount("/admin", app=admin_asgi)])
    sub.add_middleware(
        TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, rules=[Rule("/admin", scopes="admin")], **options
    )
    return sub


def test_rules_match_the_path_below_a_mount(idp: Issuer, clock: ManualClock) -> None:
    """A guarded app mounted under /v1: Rule("/admin") still covers /v1/admin/..."""
    parent = Starlette(routes=[Mount("/v1", app=_rule_guarded(clock))])
    with TestClient(parent) as client:
        assert client.get("/v1/admin/users", headers=bearer(idp.token(scope="read"))).status_code == 403
        assert client.get("/v1/admin/users", headers=bearer(idp.token(scope="admin"))).status_code == 200
    public_parent = Starlette(routes=[Mount("/v1", app=_rule_guarded(clock, default="public"))])
    with TestClient(public_parent) as client:
        assert client.get("/v1/admin/users").status_code == 401


@pytest.mark.parametrize("path", ["/admin/users", "/api/admin/users"], ids=["path-without-prefix", "uvicorn-style"])
def test_rules_match_behind_a_root_path(idp: Issuer, clock: ManualClock, path: str) -> None:
    """Served with --root-path /api: the rule matches the route path, with or without the prefix in path."""
    with TestClient(_rule_guarded(clock), root_path="/api") as client:
        assert client.get(path, headers=bearer(idp.token(scope="read"))).status_code == 403


def test_a_get_rule_covers_head(idp: Issuer, clock: ManualClock) -> None:
    """Rule(methods="GET") covers HEAD too: Starlette answers HEAD with the GET endpoint."""
    assert Rule("/x", methods="GET").methods == {"GET", "HEAD"}
    app = Starlette(routes=[Mount("/admin", app=admin_asgi)])
    app.add_middleware(
        TokenGuard,
        issuer=ISSUER,
        audience=AUDIENCE,
        clock=clock,
        default="public",
        rules=[Rule("/admin", methods=["GET"], scopes="admin")],
    )
    with TestClient(app) as client:
        assert client.head("/admin/users").status_code == 401
        assert client.head("/admin/users", headers=bearer(idp.token(scope="read"))).status_code == 403


def test_long_anonymous_paths_are_not_memoised(clock: ManualClock, idp: Issuer) -> None:
    """Paths and Host headers past the cap are decided afresh: the route cache never holds them."""

    async def anything(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/{path:path}", anything)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with TestClient(app) as client:
        for index in range(20):
            assert client.get("/" + str(index) * 2000).status_code == 401
        assert client.get("/short").status_code == 401
        guard = next(m for m in _middleware_instances(app) if isinstance(m, TokenGuard))
        assert guard.status()["route_cache_entries"] == 1


def _middleware_instances(app: Starlette) -> list[object]:
    found, node = [], app.middleware_stack
    while node is not None:
        found.append(node)
        node = getattr(node, "app", None)
    return found


@pytest.mark.parametrize("wrap", [lambda app: app, lambda app: functools.partial(app)], ids=["asgi-app", "partial"])
def test_a_faked_preflight_never_reaches_an_asgi_app_endpoint_anonymously(
    idp: Issuer, clock: ManualClock, wrap: object
) -> None:
    """Route("/rpc", endpoint=<ASGI app>) answers every method itself: a preflight keeps the route's policy."""
    ran: list[str] = []

    class Rpc:  # an ASGI app instance: Starlette hands it every method
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            ran.append(scope["method"])
            await PlainTextResponse("rpc")(scope, receive, send)

    app = Starlette(routes=[Route("/rpc", wrap(Rpc()))])  # type: ignore[operator]
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with TestClient(app) as client:
        assert client.options("/rpc", headers=preflight).status_code == 401
        assert ran == []
        assert client.options("/rpc", headers={**preflight, **bearer(idp.token())}).status_code == 200
        assert ran == ["OPTIONS"]
