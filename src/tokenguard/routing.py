"""Finding, before the app runs, the endpoint an ASGI scope will reach, and so its policy. [adapter]

The request is matched against the app's own routes (``scope["app"].routes``), recursing into
``Mount``/``Host`` and FastAPI's included routers, the way the router itself will match it. The
endpoint's marks decide (for class endpoints, the class's marks merged with the handler's); then
the ``rules``; then the default. A request that reaches no endpoint (no match, or a partial match the
router answers with 405) gets the rules/default, never the policy of a route it did not reach.

Results are memoised in a bounded LRU keyed by everything the routers look at: type, method,
root_path, path and Host header, and the app the scope names. Cache invariant (docs/ARCHITECTURE.md,
"Cache invariants"): an entry is valid only while the route table it was computed from is unchanged;
every route list reachable from the app is kept with a copy, compared with it (``==``, elements by
identity first) on each request, and any change empties the cache.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from starlette.endpoints import HTTPEndpoint
from starlette.routing import Match

from tokenguard.extract import host_and_authorization
from tokenguard.policy import PUBLIC, Requirement, Rule, first_rule, requirement_of

__all__ = [
    "DECISION_KEY",
    "REQUIREMENT_KEY",
    "Enforcer",
    "RouteDecision",
    "RouteResolver",
    "declared_requirements",
    "endpoint_requirement",
    "route_path",
    "routed_app",
]

logger = logging.getLogger("tokenguard")

_MAX_DEPTH = 16
#: Requests whose path + root_path + Host are longer than this are not memoised.
_MAX_CACHED_KEY = 1024
_FASTAPI_DOC_ATTRS = ("openapi_url", "docs_url", "redoc_url", "swagger_ui_oauth2_redirect_url")

_CacheKey = tuple[str, str, str, str, bytes, int]
#: How many route lists one app's fingerprint follows at most; past that the cache is not used.
_MAX_ROUTE_LISTS = 512
_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})


class _Found:
    """What matching found: an endpoint (and the route that holds it), or a mounted app.

    ``full`` is False for a partial match: the router answers it (405) without running the endpoint.
    """

    def __init__(
        self,
        endpoint: Any = None,
        route: Any = None,
        template: str | None = None,
        path_params: Mapping[str, Any] | None = None,
        full: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.route = route
        self.template = template
        self.path_params = path_params
        self.full = full


class RouteDecision(NamedTuple):
    """A route's policy, its path template (a low-cardinality label for logs and metrics), and the
    path parameters the router will hand the endpoint (for ``authorization_details`` checks)."""

    requirement: Requirement
    template: str | None
    path_params: Mapping[str, Any] = _NO_PARAMS
    #: The matched endpoint may itself answer OPTIONS (it lists the method, defines ``options``, or is
    #: a mounted app we cannot see into): a CORS preflight is then no reason to skip its policy.
    answers_options: bool = False
    #: The route whose endpoint the router is predicted to run (``None`` when none will run).
    route: Any = None
    #: The rules/default for this path: the policy of an endpoint without marks.
    fallback: Requirement | None = None


#: Scope keys the guard sets for the dispatch check: the decision, and the requirement it applied.
DECISION_KEY = "tokenguard.decision"
REQUIREMENT_KEY = "tokenguard.requirement"

#: ``enforce(scope, receive, send, requirement)``: apply ``requirement`` now; the ``receive`` to go
#: on with, or ``None`` when the request was refused (the refusal has been sent).
Enforcer = Callable[[MutableMapping[str, Any], Any, Any, Requirement], Awaitable[Any]]


class _DispatchCheck:
    """Installed as ``route.handle`` on every endpoint route of a guarded app: confirms, when the
    router dispatches, that the guard applied the policy of the endpoint that is about to run.

    The guard predicts the endpoint before the app runs; this check makes a wrong prediction cost a
    second check (the endpoint's own policy is applied here), never a bypass. The common case — the
    route the router picked is the one predicted — is one identity comparison.

    One check per route object, whichever guard installed it: the guard that handled the request is
    read from the scope (``scope["tokenguard"]``), so route objects shared by many apps (an app
    factory over module-level routes) carry one check and keep no guard alive. A request that passed
    no guard (an app that shares the routes but is not guarded) goes through untouched.
    """

    __slots__ = ("handle", "route")

    def __init__(self, route: Any, handle: Any) -> None:
        self.route = route
        self.handle = handle

    def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        # Not a coroutine function: the common case hands the router the route's own ``handle``
        # awaitable, adding no frame to every request.
        decision = scope.get(DECISION_KEY)
        if (decision is None or decision.route is not self.route) and _endpoint_runs(self.route, scope):
            resolver = getattr(scope.get("tokenguard"), "resolver", None)
            if isinstance(resolver, RouteResolver):
                return self._confirmed(resolver, scope, receive, send)
        return self.handle(scope, receive, send)  # type: ignore[no-any-return]

    async def _confirmed(
        self, resolver: RouteResolver, scope: MutableMapping[str, Any], receive: Any, send: Any
    ) -> None:
        receive = await resolver.confirm(self.route, scope, receive, send)
        if receive is not None:
            await self.handle(scope, receive, send)


def _endpoint_runs(route: Any, scope: Mapping[str, Any]) -> bool:
    """False when the route will answer 405 itself (a method it does not list), never running its endpoint."""
    methods = getattr(route, "methods", None)
    return not (scope["type"] == "http" and methods and scope.get("method") not in methods)


class _RouteTable:
    """Every route list reachable from one app, with a copy of each as it was when the table was read.

    Routes can change after the first request: ``app.add_route``, a route appended to an already
    included ``APIRouter`` or to a mounted app's router, a route replaced in place, a list replaced
    by another. Each shows as a list that no longer equals its copy (list equality compares each
    element by identity first, so the unchanged case is one C loop), or a holder (the app, a Mount,
    an included router) that now hands out another list object; then memoised decisions are dropped.
    """

    __slots__ = ("app", "lists", "top")

    def __init__(self, app: Any, install_checks: bool = False) -> None:
        self.app = app
        self.top = _routes(app)
        seen: dict[int, tuple[Any, Sequence[Any], list[Any]]] = {}
        if self.top is not None:
            _route_lists(None, self.top, seen, 0)
        if install_checks:
            for _, routes, _copy in seen.values():
                for route in routes:
                    _install_check(route)
                    for copy in _fastapi_route_copies(route):
                        _install_check(copy)
        #: ``None`` when the tree is too large to fingerprint: nothing is memoised for this app then.
        self.lists: tuple[tuple[Any, Sequence[Any], list[Any]], ...] | None = (
            tuple(seen.values()) if len(seen) <= _MAX_ROUTE_LISTS else None
        )

    def unchanged(self) -> bool:
        if self.lists is None or getattr(self.app, "routes", None) is not self.top:
            return False
        for holder, routes, copy in self.lists:
            if routes != copy or (holder is not None and _sub_routes(holder) is not routes):
                return False
        return True


def _route_lists(
    holder: Any, routes: Sequence[Any], seen: dict[int, tuple[Any, Sequence[Any], list[Any]]], depth: int
) -> None:
    if id(routes) in seen or depth > _MAX_DEPTH or len(seen) > _MAX_ROUTE_LISTS:
        return
    seen[id(routes)] = (holder, routes, list(routes))
    for route in routes:
        sub_routes = _sub_routes(route)
        if sub_routes is not None:
            _route_lists(route, sub_routes, seen, depth + 1)


def _install_check(route: Any) -> None:
    """Put a ``_DispatchCheck`` in front of an endpoint route's ``handle`` (once per route object).

    Routers call ``route.handle(scope, receive, send)`` on the route objects of their tables —
    Starlette's ``Router`` and FastAPI's included routers alike — so an instance attribute of that
    name is the one hook every dispatch passes through.
    """
    if not hasattr(route, "endpoint") or _sub_routes(route) is not None:
        return
    current = vars(route).get("handle") if hasattr(route, "__dict__") else None
    if isinstance(current, _DispatchCheck):
        return
    handle = getattr(route, "handle", None)
    if not callable(handle):
        return
    try:
        route.handle = _DispatchCheck(route, handle)
    except Exception:  # a route class that refuses attributes: the prediction alone decides for it
        logger.debug("tokenguard: cannot install a dispatch check on %s", type(route).__name__)


def _fastapi_route_copies(route: Any) -> list[Any]:
    """The routes FastAPI dispatches instead of ``route``'s own when ``route`` is an included router.

    FastAPI (0.16x) re-creates the plain Starlette routes (``Route``, ``WebSocketRoute``,
    ``APIWebSocketRoute``) of an included ``APIRouter`` per inclusion and calls the copies' ``handle``;
    the copies live in the private ``effective_candidates()`` of its ``_IncludedRouter``. This is the
    one place tokenguard reads them; ``tests/test_assurance_routing.py`` fails loudly when FastAPI
    changes how it dispatches included routes. Anything unexpected gives no copies (the prediction
    alone then decides for those routes, as it did before the dispatch check).
    """
    candidates_of = getattr(route, "effective_candidates", None)
    if not callable(candidates_of):
        return []
    copies: list[Any] = []
    pending, seen = [candidates_of], 0
    try:
        while pending and seen < _MAX_ROUTE_LISTS:
            seen += 1
            for candidate in pending.pop()():
                nested = getattr(candidate, "effective_candidates", None)
                if callable(nested):
                    pending.append(nested)
                    continue
                copy = getattr(candidate, "starlette_route", None)
                if copy is not None and hasattr(copy, "endpoint"):
                    copies.append(copy)
    except Exception as exc:
        logger.debug("tokenguard: cannot read FastAPI's included routes: %s", type(exc).__name__)
        return copies
    return copies


def _sub_routes(route: Any) -> Sequence[Any] | None:
    """The route list a Mount, Host or FastAPI included router holds (``None`` for an endpoint route).

    ``Mount.routes`` of an app without a route table is a new empty list at each call: the app's own
    table (through its middleware) is looked up then, so the same list object comes back every time.
    """
    included = getattr(route, "original_router", None)  # FastAPI's include_router
    if included is not None:
        return _routes(included)
    sub_routes = _routes(route)
    if not sub_routes and hasattr(route, "app") and not hasattr(route, "endpoint"):
        # A mounted app without a route table (StaticFiles, a raw ASGI app) holds no list at all: its
        # Mount's fresh ``[]`` must not read as a list that changed on every request.
        return _routes(routed_app(route.app))
    return sub_routes


class RouteResolver:
    """Maps an ASGI scope to the ``Requirement`` of the route it will reach."""

    def __init__(self, rules: Sequence[Rule], default: Requirement, *, cache_size: int = 4096) -> None:
        self._rules = tuple(rules)
        self._default = default
        # Request shape -> (the app the scope named, the route table read, the decision); at most
        # ``cache_size`` entries (0: nothing memoised), least recently used first out (see ``decide``).
        self._entries: OrderedDict[_CacheKey, tuple[Any, _RouteTable, RouteDecision]] = OrderedDict()
        self._cache_size = cache_size
        # The app a scope names -> the app whose routes are read (through middleware wrappers); a
        # process has one or two apps, so this stays tiny. The entry keeps the app, so its id is unique.
        self._routed: dict[int, tuple[Any, Any]] = {}
        # The routed app -> its route table fingerprint (same size bound as ``_routed``).
        self._tables: dict[int, _RouteTable] = {}
        #: Set by the guard: applies a requirement at dispatch when the prediction was wrong.
        self.enforce: Enforcer | None = None
        #: Set by the guard: whether a dispatched route needs the guard's own checks beyond its policy
        #: (the MCP endpoint's per-call policy), so an equal requirement is no reason to let it through.
        self.checks_beyond_policy: Callable[[Any, Mapping[str, Any]], bool] | None = None
        #: How many dispatches reached another endpoint than predicted (each one a bug to report).
        self.mismatches = 0

    async def confirm(self, route: Any, scope: MutableMapping[str, Any], receive: Any, send: Any) -> Any:
        """The router is about to run ``route``'s endpoint, not the one predicted: make sure that
        endpoint's own policy was applied; apply it now if not. Returns the ``receive`` to go on with,
        or ``None`` when the request was refused.

        An unmarked endpoint gets the strictest of the rules/default for the path the guard saw and
        for the path the router dispatched (relative to the app's root, which the app may have set
        after the guard ran: FastAPI's ``root_path``).
        """
        self.mismatches += 1
        decision = scope.get(DECISION_KEY)
        # From here on the decision names the route the router runs: what the guard checks for that
        # route (``TokenGuard._at_mcp``) is decided by it, not by the prediction.
        scope[DECISION_KEY] = (
            decision if isinstance(decision, RouteDecision) else RouteDecision(PUBLIC, None)
        )._replace(route=route)
        try:
            required = endpoint_requirement(route.endpoint, scope)
            if required is None:
                predicted = decision.fallback if decision is not None and decision.fallback is not None else None
                required = _strictest([predicted or self._default, self._fallback(_app_route_path(scope), scope)])
        except Exception as exc:  # marks that cannot combine: fail closed
            logger.error("tokenguard: the policy of the dispatched endpoint is unknown: %s", type(exc).__name__)
            required = None
        beyond = self.checks_beyond_policy
        if (
            required is not None
            and decision is not None
            and scope.get(REQUIREMENT_KEY) == required
            and (beyond is None or not beyond(route, scope))
        ):
            logger.info("tokenguard: the router dispatched to another route than predicted, with the same policy")
            return receive
        logger.warning(
            "tokenguard: the router dispatched to %s, not the endpoint the guard predicted; applying its policy now",
            _path_of(route) or type(route).__name__,
        )
        if required is None or self.enforce is None:
            return await _refuse_unknown(scope, receive, send)
        return await self.enforce(scope, receive, send, required)

    def _fallback(self, path: str, scope: Mapping[str, Any]) -> Requirement:
        rule = first_rule(self._rules, path, scope.get("method"))
        return rule if rule is not None else self._default

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def default(self) -> Requirement:
        return self._default

    @property
    def has_sensitive_rules(self) -> bool:
        return any(rule.requirement.sensitive for rule in self._rules)

    def decide_path(
        self, path: str, scope: Mapping[str, Any], fallback_app: Any = None, host: bytes = b""
    ) -> RouteDecision:
        """The decision for a ``POST`` to ``path`` (as the app's routes see it) on this request's app, root
        and host: the route whose endpoint the router would run (``None``: none) and its path parameters.

        Decided, and memoised, as a request to that path is: a route reached through the app's own
        ``root_path``, a template's parameters or a mount's prefix is found the same way for both.
        """
        root_path = scope.get("root_path", "")
        full = root_path + path
        probe: dict[str, Any] = {
            "type": "http",
            "method": "POST",
            "path": full,
            "raw_path": full.encode("utf-8", "surrogateescape"),
            "root_path": root_path,
            "query_string": b"",
            # The request's Host, so that ``Host`` routes send the probe where they send the request.
            "headers": [(b"host", host)] if host else [],
        }
        if "app" in scope:
            probe["app"] = scope["app"]
        return self.decide(probe, fallback_app, host)

    @property
    def cache_entries(self) -> int:
        """How many (request shape → policy) results are memoised now; never above ``cache_size``."""
        return len(self._entries)

    def decide(
        self, scope: MutableMapping[str, Any], fallback_app: Any = None, host: bytes | None = None
    ) -> RouteDecision:
        """The policy for this request, and the matched route's template (``None`` if no route matched).

        ``host``: the value of the request's first ``Host`` header (``b""`` without one) when the caller
        read the headers already (the middleware does, in the same pass as ``Authorization``).
        """
        # The Host header is part of the key: ``Host`` routes send one path to different endpoints.
        if host is None:
            host = host_of(scope)
        scoped = scope.get("app")
        kind = scope["type"]
        method = scope.get("method", "GET") if kind == "http" else "WEBSOCKET"
        key = (kind, method, scope.get("root_path", ""), scope["path"], host, id(scoped))
        # One lookup on a repeated request shape. An entry is (the app the scope named, the route table
        # the decision was made against, the decision), served only while every route list still equals
        # the table's copy. It holds the app, so no other object can take the app's id while it lives.
        entries = self._entries
        entry = entries.get(key)
        if entry is not None and entry[1].unchanged():
            try:  # noqa: SIM105 - a plain try is cheaper than contextlib.suppress on the hot path
                entries.move_to_end(key)  # least recently used goes first
            except KeyError:  # another thread's eviction between the two steps: still this decision
                pass
            return entry[2]
        return self._decide(scope, scoped, fallback_app, key)

    def _decide(self, scope: MutableMapping[str, Any], scoped: Any, fallback_app: Any, key: _CacheKey) -> RouteDecision:
        app = self._routed_app(scoped, fallback_app)
        method, root_path, path, host = key[1], key[2], key[3], key[4]
        # Read first, whatever the key: on first sight it installs the dispatch checks (``_DispatchCheck``).
        # The table is the one validated *before* resolving: a route changed meanwhile (another thread)
        # makes it differ from its copy, so the entry below is never served for the new routes.
        table = self._fresh_table(app)
        decision = self._resolve(scope, app, _routes(app))
        # Keys (and the path parameters a decision keeps) come from anonymous requests: an unusually
        # long method, path or Host is decided afresh each time, so the memo's memory stays bounded by
        # its entry count times a small size, whatever clients send.
        if (
            table is not None
            and self._cache_size
            and len(method) + len(root_path) + len(path) + len(host) <= _MAX_CACHED_KEY
        ):
            entries = self._entries
            entries[key] = (scoped, table, decision)
            while len(entries) > self._cache_size:
                try:
                    entries.popitem(last=False)
                except KeyError:  # emptied by another thread meanwhile
                    break
        return decision

    def _fresh_table(self, app: Any) -> _RouteTable | None:
        """The route table of ``app`` as it is now (memoised decisions for it are dropped when it changed);
        ``None`` when its decisions cannot be memoised (too many route lists to fingerprint)."""
        table = self._tables.get(id(app))
        if table is not None and table.app is app:
            if table.lists is None:
                return None  # too many route lists to fingerprint: decided afresh, never memoised
            if table.unchanged():
                return table
        return self._reread(app)

    def _reread(self, app: Any) -> _RouteTable | None:
        # First sight of this app, or its routes changed: every memoised decision may be wrong now.
        self._entries.clear()
        if len(self._tables) >= 16:
            self._tables.clear()
        table = _RouteTable(app, install_checks=True)
        self._tables[id(app)] = table
        return table if table.lists is not None else None

    def _routed_app(self, app: Any, fallback_app: Any) -> Any:
        """The app whose routes decide: the one the guard wraps, seen through ``scope["app"]`` when
        that is the same app (FastAPI's docs settings live there).

        A guard wrapped around a mounted sub-app sees the parent in ``scope["app"]``; the parent's
        routes must never decide for the sub-app's endpoints, so the wrapped app comes first.
        """
        entry = self._routed.get(id(app))
        if entry is not None and entry[0] is app:
            return entry[1]
        wrapped = routed_app(fallback_app)
        scoped = routed_app(app)
        if wrapped is None:
            routed = scoped if fallback_app is None else None
        elif scoped is not None and _routes(scoped) is _routes(wrapped):
            routed = scoped
        else:
            routed = wrapped
        if len(self._routed) >= 16:
            self._routed.clear()
        self._routed[id(app)] = (app, routed)
        return routed

    def _resolve(self, scope: MutableMapping[str, Any], app: Any, routes: Sequence[Any] | None) -> RouteDecision:
        found = None
        probe = _probe_scope(scope, app)
        if routes is not None:
            try:
                found = _find(routes, probe, 0, "")
            except Exception as exc:  # a custom route that cannot be probed: fall back, never 500
                logger.warning("tokenguard: route matching failed (%s); using rules/default", type(exc).__name__)
        template = found.template if found is not None else None
        params = _frozen(found.path_params) if found is not None else _NO_PARAMS
        options = _answers_options(found)
        # Only an endpoint the router will run decides by its marks: a partial match is answered by
        # the router (405) without running its endpoint, so it gets the rules/default like no match.
        # Rules match the path as the routes see it: without a mount's or server's root_path prefix.
        fallback = self._fallback(route_path(probe), scope)
        if found is not None and found.endpoint is not None and found.full:
            mark = endpoint_requirement(found.endpoint, scope)
            if mark is not None:
                return RouteDecision(mark, template, params, options, found.route, fallback)
            if _is_fastapi_doc_route(app, found.route, scope):
                return RouteDecision(PUBLIC, template, params, options, found.route, fallback)
            return RouteDecision(fallback, template, params, options, found.route, fallback)
        return RouteDecision(fallback, template, params, options, None, fallback)


def host_of(scope: Mapping[str, Any]) -> bytes:
    """The value of the first ``Host`` header (names compared case-insensitively), ``b""`` without one."""
    return host_and_authorization(scope.get("headers", ()))[0]


def _answers_options(found: _Found | None) -> bool:
    if found is None:
        return False  # nothing matched: the router answers 404 itself
    if found.endpoint is None:
        return True  # a mounted app we cannot see into may answer anything
    methods = getattr(found.route, "methods", None)
    if methods:  # an empty set (FastAPI's copies of included Starlette routes) means every method
        return "OPTIONS" in methods
    endpoint = found.endpoint
    if isinstance(endpoint, type) and issubclass(endpoint, HTTPEndpoint) and endpoint.dispatch is HTTPEndpoint.dispatch:
        # Starlette's own dispatch sends OPTIONS to ``options`` (or answers 405 without it).
        return getattr(endpoint, "options", None) is not None
    # Any other ASGI class or app (or a partial of one), an endpoint class with its own dispatch:
    # it gets every method and may answer OPTIONS itself. Fail closed.
    return True


def _frozen(params: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only copy: the decision is cached and shared by every request to this path."""
    return MappingProxyType(dict(params)) if params else _NO_PARAMS


def _routes(app: Any) -> Sequence[Any] | None:
    routes = getattr(app, "routes", None)
    if type(routes) is list or (isinstance(routes, Sequence) and not isinstance(routes, (str, bytes))):
        return routes
    return None


def routed_app(app: Any) -> Any:
    """The first app with a route table, looking through middleware (``.app`` attributes)."""
    for _ in range(_MAX_DEPTH):
        if app is None or _routes(app) is not None:
            return app
        app = getattr(app, "app", None)
    return None


def _probe_scope(scope: MutableMapping[str, Any], app: Any = None) -> dict[str, Any]:
    """A copy safe to hand to ``route.matches``: routers may write into the scope they match.

    A FastAPI app created with ``root_path=`` writes it into the scope when it is called — after a
    guard that wraps it — and its routes match against that: the probe does the same.
    """
    probe = dict(scope)
    probe["fastapi"] = dict(scope.get("fastapi", {}))
    probe.pop("endpoint", None)
    root_path = getattr(app, "root_path", None)
    if isinstance(root_path, str) and root_path:
        probe["root_path"] = root_path
    return probe


def route_path(scope: Mapping[str, Any]) -> str:
    """The path as the app's routes see it: ``path`` without the ``root_path`` prefix.

    The rule Starlette's routers apply (its private ``starlette._utils.get_route_path``), written here
    so no private framework module is imported; ``tests/test_routing.py`` compares the two on many
    inputs and fails loudly if Starlette's rule changes.
    """
    path: str = scope["path"]
    root_path = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


def _app_route_path(scope: Mapping[str, Any]) -> str:
    """At dispatch: the path relative to the app's own root, as rules read it — ``route_path`` with the
    root Starlette keeps as it was before any mount (``app_root_path``; else ``root_path``)."""
    return route_path({"path": scope["path"], "root_path": scope.get("app_root_path", scope.get("root_path", ""))})


def _strictest(requirements: Sequence[Requirement]) -> Requirement:
    """Every non-public requirement applies together (``Requirement.merge``); public only if all are."""
    closed = [requirement for requirement in requirements if not requirement.public]
    if not closed:
        return PUBLIC
    merged = closed[0]
    for requirement in closed[1:]:
        merged = merged.merge(requirement)
    return merged


def _find(routes: Sequence[Any], scope: dict[str, Any], depth: int, prefix: str) -> _Found | None:
    """The first full match, else the first partial one (Starlette answers 405), as the router does.

    ``prefix`` is the path template of the mounts passed on the way (``/t/{tenant}``), so the label a
    decision carries is a template, never a concrete path a client chose.
    """
    if depth > _MAX_DEPTH:
        return None
    partial: _Found | None = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        found = _descend(route, {**scope, **child}, child, depth, prefix)
        if match is Match.FULL:
            return found
        if partial is None:
            found.full = False
            partial = found
    return partial


def _descend(route: Any, scope: dict[str, Any], child: dict[str, Any], depth: int, prefix: str) -> _Found:
    if hasattr(route, "routes"):
        # Mount and Host: their child scope names the mounted app as "endpoint"; look inside it.
        sub_routes = _routes(route) or _routes(routed_app(child.get("endpoint")))
        inner = prefix + _path_of(route)
        found = _find(sub_routes, scope, depth + 1, inner) if sub_routes else None
        # A mounted app without routes: rules decide, and the mount's template is the label.
        return found if found is not None else _Found(template=inner + "/{path}" if _path_of(route) else None)
    if "endpoint" in child:
        found_route = child.get("route", route)
        return _Found(child["endpoint"], found_route, prefix + _path_of(found_route), scope.get("path_params"))
    inner_match = getattr(route, "_match", None)
    if callable(inner_match):
        # FastAPI's included routers (not flattened in recent releases) pick their route in ``_match``.
        return _descend_included(inner_match, scope, depth, prefix)
    return _Found()


def _descend_included(inner_match: Any, scope: dict[str, Any], depth: int, prefix: str) -> _Found:
    if depth > _MAX_DEPTH:
        return _Found()
    try:
        result = inner_match(dict(scope))
    except TypeError:  # another private ``_match`` signature: treat it as an opaque mounted app
        return _Found()
    if not (isinstance(result, tuple) and len(result) == 4) or result[0] is Match.NONE or result[2] is None:
        return _Found()
    full = result[0] is Match.FULL
    # ``_match`` returns (match, child scope, route, context): the route has matched already, so
    # descend into it with its child scope rather than matching it a second time.
    inner_route, child = result[2], result[1]
    if hasattr(inner_route, "endpoint") and not hasattr(inner_route, "routes"):
        context_path = getattr(result[3], "path", None)
        # The include's context knows the route's path with the include prefixes: a template.
        template = prefix + (context_path if isinstance(context_path, str) and context_path else _path_of(inner_route))
        params = child.get("path_params") if isinstance(child, Mapping) else None
        return _Found(inner_route.endpoint, inner_route, template, params, full)
    found = _descend(inner_route, {**scope, **child}, child, depth + 1, prefix)
    found.full = found.full and full
    return found


def _path_of(route: Any) -> str:
    """A route's own path template (``/items/{id}``), or ``""`` for routes without one (``Host``)."""
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else ""


#: The handler names through which a ``WebSocketEndpoint`` serves one connection.
_WEBSOCKET_HANDLERS = ("on_connect", "on_receive", "on_disconnect")
#: The methods Starlette's ``HTTPEndpoint`` dispatches to a handler of that name (1.x adds QUERY),
#: checked for every class endpoint when the app starts.
_HTTP_HANDLER_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "QUERY")


def _handlers(endpoint: type, scope: Mapping[str, Any]) -> tuple[Any, ...]:
    """The handlers of a class endpoint that may serve this request, as Starlette dispatches them.

    ``HTTPEndpoint.dispatch`` calls the attribute named after the method in lower case (HEAD falls
    back to ``get`` when the class has no ``head``), or answers 405. The handler is looked up for any
    method, whatever set a Starlette release dispatches: an extra handler's marks can only add to the
    class's, never loosen them.
    """
    if scope["type"] != "http":
        # A WebSocketEndpoint's connection runs all three: the connection must satisfy every mark.
        return tuple(getattr(endpoint, name, None) for name in _WEBSOCKET_HANDLERS)
    method = scope.get("method", "GET")
    if not isinstance(method, str):
        return ()
    name = "get" if method == "HEAD" and getattr(endpoint, "head", None) is None else method.lower()
    return (getattr(endpoint, name, None),)


def endpoint_requirement(endpoint: Any, scope: Mapping[str, Any]) -> Requirement | None:
    """The merged marks of the endpoint that will serve this request; ``None`` if none is marked.

    For ``HTTPEndpoint``/``WebSocketEndpoint`` classes, the class's marks and the handler's combine
    by ``Requirement.merge`` (scopes: every required set applies; ``@sensitive``: any; step-up: the
    strictest) — a handler's mark adds to the class's, never replaces it. Marks that cannot be
    combined raise ``ConfigurationError`` (checked for every route when the app starts).
    """
    marks = [requirement_of(endpoint)]
    if isinstance(endpoint, type):
        marks += [requirement_of(handler) for handler in _handlers(endpoint, scope) if handler is not None]
    merged: Requirement | None = None
    for mark in marks:
        if mark is not None:
            merged = mark if merged is None else merged.merge(mark)
    return merged


def _is_fastapi_doc_route(app: Any, route: Any, scope: Mapping[str, Any]) -> bool:
    """FastAPI's own documentation routes are public for GET and HEAD, unless marked otherwise.

    Only routes FastAPI itself registered qualify (their endpoints are defined in ``FastAPI.setup``,
    and FastAPI registers them only when the document is on), and only in the app's own top-level
    routes: a user's route at ``/docs`` (any method), a ``/docs`` inside a mounted app, or a docs
    path whose document is turned off keeps the default policy.
    """
    if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
        return False
    path = getattr(route, "path", None)
    routes = _routes(app)
    if path is None or routes is None or not any(candidate is route for candidate in routes):
        return False
    if not any(getattr(app, attr, None) == path for attr in _FASTAPI_DOC_ATTRS):
        return False
    endpoint = getattr(route, "endpoint", None)
    return getattr(endpoint, "__module__", None) == "fastapi.applications" and str(
        getattr(endpoint, "__qualname__", "")
    ).startswith("FastAPI.setup.")


def declared_requirements(app: Any) -> list[Requirement]:
    """Every policy declared on the app's endpoints (recursing into mounts and included routers).

    Used at startup (are there sensitive routes? do all marks combine?) and for RFC 9728
    ``scopes_supported``. Class endpoints contribute the merged policy of each handler, so marks that
    cannot be combined raise ``ConfigurationError`` here, when the app starts.
    """
    found: list[Requirement] = []
    _collect(_routes(routed_app(app)) or (), found, 0)
    return found


def _collect(routes: Sequence[Any], found: list[Requirement], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    for route in routes:
        sub_routes = _sub_routes(route)
        if sub_routes is not None:
            _collect(sub_routes, found, depth + 1)
            continue
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None:
            continue
        if isinstance(endpoint, type):
            scopes: list[Mapping[str, Any]] = [{"type": "http", "method": m} for m in _HTTP_HANDLER_METHODS]
            scopes.append({"type": "websocket"})
            requirements = [endpoint_requirement(endpoint, scope) for scope in scopes]
        else:
            requirements = [requirement_of(endpoint)]
        if (dependency_scopes := _dependency_scopes(getattr(route, "dependant", None))) is not None:
            requirements.append(Requirement(all_scopes=dependency_scopes))
        found.extend(requirement for requirement in dict.fromkeys(requirements) if requirement is not None)


#: Marks ``tokenguard.fastapi.scopes``: a dependency whose ``SecurityScopes`` are required scopes.
SCOPES_DEPENDENCY_MARK = "__tokenguard_scopes_dependency__"


def _dependency_scopes(dependant: Any) -> frozenset[str] | None:
    """The scopes a FastAPI route requires through ``Security(scopes, scopes=[...])``, anywhere in its
    dependency tree; ``None`` when it has none. Read duck-typed, so this module needs no FastAPI.

    The dependency receives its parents' scopes and its own (FastAPI's ``SecurityScopes``), so those
    are what it checks; FastAPI before 0.115 kept the sum in ``security_scopes``.
    """
    found: set[str] = set()
    pending = [dependant] if dependant is not None else []
    seen = 0
    while pending and seen < 4096:  # a dependency tree is finite, but bound the walk all the same
        current = pending.pop()
        seen += 1
        if getattr(getattr(current, "call", None), SCOPES_DEPENDENCY_MARK, False):
            summed = getattr(current, "security_scopes", None)
            if summed is None:
                summed = [*(getattr(current, "parent_oauth_scopes", None) or ()), *(current.own_oauth_scopes or ())]
            found.update(name for name in summed if isinstance(name, str))
        pending.extend(getattr(current, "dependencies", None) or ())
    return frozenset(found) if found else None


async def _refuse_unknown(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """Fail closed when the dispatched endpoint's policy cannot be known: 503, before it runs."""
    if scope["type"] == "websocket":
        message = await receive()
        if message.get("type") == "websocket.connect":
            await send({"type": "websocket.close", "code": 1011, "reason": ""})
        return None
    body = b'{"error":"temporarily_unavailable"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("ascii"))]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return None
