"""The route-decision memo (``RouteResolver.decide``): bounded, least recently used out, and never an answer
a fresh resolution would not give — while routes are added, replaced and removed between requests.

Cache invariant (docs/ARCHITECTURE.md, "Route decisions"): an entry is served only for the app object it
was made for, and only while every route list reachable from that app still equals the copy taken when
the decision was made.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route
from starlette.testclient import TestClient

from conftest import AUDIENCE, ISSUER, Issuer
from tokenguard import Rule, TokenGuard, public, require_scopes
from tokenguard.policy import AUTHENTICATED
from tokenguard.routing import RouteResolver
from tokenguard.testing import ManualClock


@public
async def open_get(request: Request) -> PlainTextResponse:
    return PlainTextResponse("open")


@require_scopes("read")
async def read(request: Request) -> PlainTextResponse:
    return PlainTextResponse("read")


@require_scopes("write")
async def write(request: Request) -> PlainTextResponse:
    return PlainTextResponse("write")


async def unmarked(request: Request) -> PlainTextResponse:
    return PlainTextResponse("unmarked")


ENDPOINTS = (open_get, read, write, unmarked)
PATHS = ("/a", "/b", "/items/1", "/m/a", "/m/b", "/nowhere", "/" + "x" * 3000)
HOSTS = (b"api.example", b"admin.example", b"")
METHODS = ("GET", "POST", "OPTIONS", "DELETE")


def app_with_routes() -> Starlette:
    mount = Mount("/m", routes=[Route("/a", unmarked), Route("/b", write)])
    app = Starlette(
        routes=[
            Route("/a", open_get),
            Route("/b", read, methods=["GET", "POST"]),
            Route("/items/{id:int}", write, methods=["DELETE"]),
            mount,
            Host("admin.example", app=Starlette(routes=[Route("/a", write)])),
        ]
    )
    app.state.mount = mount
    return app


def scope_of(app: Any, method: str, path: str, host: bytes) -> dict[str, Any]:
    headers = [(b"host", host)] if host else []
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": headers, "app": app}


def resolvers(cache_size: int) -> tuple[RouteResolver, RouteResolver]:
    rules = (Rule("/nowhere", public=True),)
    return RouteResolver(rules, AUTHENTICATED, cache_size=cache_size), RouteResolver(rules, AUTHENTICATED, cache_size=0)


requests = st.tuples(st.sampled_from(METHODS), st.sampled_from(PATHS), st.sampled_from(HOSTS))
changes = st.tuples(
    st.sampled_from(["append", "insert", "replace", "remove", "mount_append", "swap_list"]),
    st.sampled_from(("/a", "/b", "/items/{id:int}", "/c")),
    st.sampled_from(range(len(ENDPOINTS))),
)
steps = st.lists(st.one_of(requests, changes), min_size=1, max_size=60)


def apply(app: Starlette, change: tuple[str, str, int]) -> None:
    kind, path, endpoint = change
    route = Route(path, ENDPOINTS[endpoint], methods=["GET", "POST", "DELETE"])
    routes = app.router.routes
    mount = app.state.mount  # the Mount's own list, whether or not the Mount is still in the table
    if kind == "append":
        routes.append(route)
    elif kind == "insert":
        routes.insert(0, route)
    elif kind == "replace":
        routes[0] = route
    elif kind == "remove" and len(routes) > 1:
        del routes[0]
    elif kind == "mount_append":
        mount.routes.append(route)
    elif kind == "swap_list":
        app.router.routes = [route, *routes]


@settings(max_examples=300, deadline=None)
@given(steps=steps, cache_size=st.sampled_from([1, 2, 3, 4096]))
def test_the_memo_answers_what_a_fresh_resolution_answers(steps: list[Any], cache_size: int) -> None:
    """Property: whatever requests and route changes come in whatever order, a memoised decision equals
    the decision of a resolver that memoises nothing, and the memo never holds more than its bound."""
    app = app_with_routes()
    memo, fresh = resolvers(cache_size)
    for step in steps:
        if len(step) == 3 and isinstance(step[2], int):
            apply(app, step)
            continue
        method, path, host = step
        got = memo.decide(scope_of(app, method, path, host), app, host)
        want = fresh.decide(scope_of(app, method, path, host), app, host)
        assert got == want, step
        assert memo.cache_entries <= cache_size
    assert fresh.cache_entries == 0


def test_the_least_recently_used_decision_goes_first() -> None:
    app = app_with_routes()
    memo, _ = resolvers(2)
    entries = memo._entries

    def decide(path: str) -> None:
        memo.decide(scope_of(app, "GET", path, b"api.example"), app, b"api.example")

    decide("/a")
    decide("/b")
    decide("/a")  # /a used last: /b is the least recently used
    decide("/m/a")
    assert [key[3] for key in entries] == ["/a", "/m/a"]
    assert memo.cache_entries == 2


def test_an_entry_serves_only_the_app_it_was_made_for() -> None:
    """Two apps with the same path and different policies through one resolver: each gets its own."""
    first = Starlette(routes=[Route("/x", open_get)])
    second = Starlette(routes=[Route("/x", write)])
    memo, _ = resolvers(16)
    for _ in range(3):
        assert memo.decide(scope_of(first, "GET", "/x", b"h"), first, b"h").requirement.public
        assert memo.decide(scope_of(second, "GET", "/x", b"h"), second, b"h").requirement.all_scopes == {"write"}
    assert memo.cache_entries == 2


def test_long_paths_are_decided_afresh_and_never_memoised() -> None:
    app = app_with_routes()
    memo, _ = resolvers(16)
    long = "/" + "x" * 3000
    assert memo.decide(scope_of(app, "GET", long, b"h"), app, b"h").template is None
    assert memo.cache_entries == 0


def test_route_cache_size_zero_memoises_nothing_and_still_guards(idp: Issuer, clock: ManualClock) -> None:
    """``route_cache_size=0`` is accepted at startup: it must mean "decide every request afresh",
    never a guard that answers 500 (it did: the memo refused a size of zero)."""
    app = Starlette(routes=[Route("/open", open_get), Route("/read", read)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, route_cache_size=0)
    client = TestClient(app)
    assert client.get("/open").text == "open"
    assert client.get("/read").status_code == 401
    assert client.get("/read", headers={"Authorization": f"Bearer {idp.token(scope='read')}"}).text == "read"
    assert client.get("/read", headers={"Authorization": f"Bearer {idp.token(scope='other')}"}).status_code == 403
    app.router.routes.insert(0, Route("/open", write))  # a route replaced in front: its policy applies at once
    assert client.get("/open").status_code == 401
    guard: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(guard, TokenGuard):
        guard = guard.app
    assert guard.status()["route_cache_entries"] == 0


def test_a_route_changed_while_a_decision_is_made_never_serves_that_decision() -> None:
    """Another thread changes a route (and another request re-reads the table) while this request is
    being resolved: the memo must keep the decision tied to the table validated before resolving, so
    the next request sees the new route's policy, never the one decided for the old routes."""
    app = Starlette(routes=[Route("/x", open_get)])
    memo, _ = resolvers(16)
    real_resolve = memo._resolve
    interleaved = []

    def resolve_while_routes_change(scope: Any, routed: Any, routes: Any) -> Any:
        decision = real_resolve(scope, routed, routes)
        if not interleaved:
            interleaved.append(True)
            app.router.routes[0] = Route("/x", write)  # thread B: the route is replaced...
            memo.decide(scope_of(app, "GET", "/y", b"h"), app, b"h")  # ...and thread C re-reads the table
        return decision

    memo._resolve = resolve_while_routes_change  # type: ignore[method-assign]
    assert memo.decide(scope_of(app, "GET", "/x", b"h"), app, b"h").requirement.public  # decided before the change
    assert memo.decide(scope_of(app, "GET", "/x", b"h"), app, b"h").requirement.all_scopes == {"write"}


def test_long_methods_are_decided_afresh_and_never_memoised() -> None:
    app = app_with_routes()
    memo, _ = resolvers(16)
    method = "X" * 2000  # h11 accepts any token as a method
    assert memo.decide(scope_of(app, method, "/a", b"h"), app, b"h").template == "/a"
    assert memo.cache_entries == 0


def test_a_flood_of_request_shapes_keeps_the_memo_bounded_and_every_answer_right(
    idp: Issuer, clock: ManualClock
) -> None:
    """Through a real guard: anonymous clients sending ever new methods, paths and Host values cannot grow
    the memo past ``route_cache_size``, nor push a route's policy out of effect — evicted shapes are
    decided afresh, with the same answer."""
    app = Starlette(
        routes=[Route("/open", open_get), Route("/read", read), Route("/items/{id:int}", write, methods=["DELETE"])]
    )
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, route_cache_size=8)
    client = TestClient(app)
    reader = {"Authorization": f"Bearer {idp.token(scope='read')}"}
    assert client.get("/open").text == "open"  # builds the middleware stack
    guard: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(guard, TokenGuard):
        guard = guard.app
    for i in range(60):
        assert client.get("/open").text == "open"
        assert client.get("/read", headers=reader).text == "read"
        assert client.get("/read").status_code == 401
        assert client.delete(f"/items/{i}", headers=reader).status_code == 403  # needs write
        # A method the route does not list reaches no endpoint (the router would answer 405): the default
        # applies, so an anonymous request is refused first; with a token, the router's 405.
        assert client.request(f"M{i}", "/open").status_code == 401
        assert client.request(f"M{i}", "/open", headers=reader).status_code == 405
        assert client.get(f"/nowhere/{i}", headers={"Host": f"h{i}.example"}).status_code == 401
        assert guard.status()["route_cache_entries"] <= 8
