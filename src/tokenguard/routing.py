"""Finding, before the app runs, the endpoint an ASGI scope will reach, and so its policy. [adapter]

The request is matched against the app's own routes (``scope["app"].routes``), recursing into
``Mount``/``Host`` and FastAPI's included routers, the way the router itself will match it. The
endpoint's marks decide; then the ``rules``; then the default. Results are memoised in a bounded
LRU keyed by everything the routers look at: type, method, root_path, path and Host header.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from starlette._utils import get_route_path
from starlette.routing import Match

from tokenguard._lru import LRU
from tokenguard.policy import PUBLIC, Requirement, Rule, first_rule, requirement_of

logger = logging.getLogger("tokenguard")

_MAX_DEPTH = 16
#: Requests whose path + root_path + Host are longer than this are not memoised.
_MAX_CACHED_KEY = 1024
_FASTAPI_DOC_ATTRS = ("openapi_url", "docs_url", "redoc_url", "swagger_ui_oauth2_redirect_url")

_CacheKey = tuple[str, str, str, str, bytes, int, int]
_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})


class _Found:
    """What matching found: an endpoint (and the route that holds it), or a mounted app."""

    def __init__(
        self,
        endpoint: Any = None,
        route: Any = None,
        template: str | None = None,
        path_params: Mapping[str, Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.route = route
        self.template = template
        self.path_params = path_params


class RouteDecision(NamedTuple):
    """A route's policy, its path template (a low-cardinality label for logs and metrics), and the
    path parameters the router will hand the endpoint (for ``authorization_details`` checks)."""

    requirement: Requirement
    template: str | None
    path_params: Mapping[str, Any] = _NO_PARAMS
    #: The matched endpoint may itself answer OPTIONS (it lists the method, defines ``options``, or is
    #: a mounted app we cannot see into): a CORS preflight is then no reason to skip its policy.
    answers_options: bool = False


class RouteResolver:
    """Maps an ASGI scope to the ``Requirement`` of the route it will reach."""

    def __init__(self, rules: Sequence[Rule], default: Requirement, *, cache_size: int = 4096) -> None:
        self._rules = tuple(rules)
        self._default = default
        self._cache: LRU[_CacheKey, RouteDecision] = LRU(cache_size)
        # The app a scope names -> the app whose routes are read (through middleware wrappers); a
        # process has one or two apps, so this stays tiny. The entry keeps the app, so its id is unique.
        self._routed: dict[int, tuple[Any, Any]] = {}

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def default(self) -> Requirement:
        return self._default

    @property
    def has_sensitive_rules(self) -> bool:
        return any(rule.requirement.sensitive for rule in self._rules)

    @property
    def cache_entries(self) -> int:
        """How many (request shape → policy) results are memoised now; never above ``cache_size``."""
        return len(self._cache)

    def requirement(self, scope: MutableMapping[str, Any], fallback_app: Any = None) -> Requirement:
        return self.decide(scope, fallback_app).requirement

    def decide(self, scope: MutableMapping[str, Any], fallback_app: Any = None) -> RouteDecision:
        """The policy for this request, and the matched route's template (``None`` if no route matched)."""
        app = self._routed_app(scope.get("app"), fallback_app)
        routes = _routes(app)
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        # The Host header is part of the key: ``Host`` routes send one path to different endpoints.
        host = b""
        for name, value in scope.get("headers", ()):
            if name == b"host" or name.lower() == b"host":
                host = value
                break
        # The number of top-level routes too: a route added after the first requests is seen.
        size = len(routes) if routes is not None else -1
        root_path, path = scope.get("root_path", ""), scope["path"]
        if len(path) + len(root_path) + len(host) > _MAX_CACHED_KEY:
            # Keys (and the path parameters a decision keeps) come from anonymous requests: an
            # unusually long path or Host is decided afresh each time, so the cache's memory stays
            # bounded by its entry count times a small size, whatever clients send.
            return self._resolve(scope, app, routes)
        key = (scope["type"], method, root_path, path, host, id(app), size)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._resolve(scope, app, routes)
            self._cache[key] = cached
        return cached

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
        if routes is not None:
            try:
                found = _find(routes, _probe_scope(scope), 0)
            except Exception as exc:  # a custom route that cannot be probed: fall back, never 500
                logger.warning("tokenguard: route matching failed (%s); using rules/default", type(exc).__name__)
        template = found.template if found is not None else None
        params = _frozen(found.path_params) if found is not None else _NO_PARAMS
        options = _answers_options(found)
        if found is not None and found.endpoint is not None:
            mark = _mark_of(found.endpoint, scope)
            if mark is not None:
                return RouteDecision(mark, template, params, options)
            if _is_fastapi_doc_route(app, found.route):
                return RouteDecision(PUBLIC, template, params, options)
        # Rules match the path as the routes see it: without a mount's or server's root_path prefix.
        rule = first_rule(self._rules, get_route_path(scope), scope.get("method"))
        return RouteDecision(rule if rule is not None else self._default, template, params, options)


def _answers_options(found: _Found | None) -> bool:
    if found is None:
        return False  # nothing matched: the router answers 404 itself
    if found.endpoint is None:
        return True  # a mounted app we cannot see into may answer anything
    methods = getattr(found.route, "methods", None)
    if methods is not None:
        return "OPTIONS" in methods
    if isinstance(found.endpoint, type):
        return hasattr(found.endpoint, "options")  # HTTPEndpoint dispatches OPTIONS to ``options``
    return True  # an ASGI app (or a partial of one) as the endpoint gets every method: fail closed


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


def _probe_scope(scope: MutableMapping[str, Any]) -> dict[str, Any]:
    """A copy safe to hand to ``route.matches``: routers may write into the scope they match."""
    probe = dict(scope)
    probe["fastapi"] = dict(scope.get("fastapi", {}))
    probe.pop("endpoint", None)
    probe["tokenguard.root_path"] = scope.get("root_path", "")
    return probe


def _find(routes: Sequence[Any], scope: dict[str, Any], depth: int) -> _Found | None:
    """The first full match, else the first partial one (Starlette answers 405), as the router does."""
    if depth > _MAX_DEPTH:
        return None
    partial: _Found | None = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        found = _descend(route, {**scope, **child}, child, depth)
        if match is Match.FULL:
            return found
        if partial is None:
            partial = found
    return partial


def _descend(route: Any, scope: dict[str, Any], child: dict[str, Any], depth: int) -> _Found:
    if hasattr(route, "routes"):
        # Mount and Host: their child scope names the mounted app as "endpoint"; look inside it.
        sub_routes = _routes(route) or _routes(routed_app(child.get("endpoint")))
        found = _find(sub_routes, scope, depth + 1) if sub_routes else None
        return found if found is not None else _Found()  # a mounted app without routes: rules decide
    if "endpoint" in child:
        found_route = child.get("route", route)
        return _Found(child["endpoint"], found_route, _template(scope, found_route), scope.get("path_params"))
    inner_match = getattr(route, "_match", None)
    if callable(inner_match):
        # FastAPI's included routers (not flattened in recent releases) pick their route in ``_match``.
        return _descend_included(inner_match, scope, depth)
    return _Found()


def _descend_included(inner_match: Any, scope: dict[str, Any], depth: int) -> _Found:
    if depth > _MAX_DEPTH:
        return _Found()
    try:
        result = inner_match(dict(scope))
    except TypeError:  # another private ``_match`` signature: treat it as an opaque mounted app
        return _Found()
    if not (isinstance(result, tuple) and len(result) == 4) or result[0] is Match.NONE or result[2] is None:
        return _Found()
    # ``_match`` returns (match, child scope, route, context): the route has matched already, so
    # descend into it with its child scope rather than matching it a second time.
    inner_route, child = result[2], result[1]
    if hasattr(inner_route, "endpoint") and not hasattr(inner_route, "routes"):
        context_path = getattr(result[3], "path", None)
        template = context_path if isinstance(context_path, str) and context_path else _template(scope, inner_route)
        params = child.get("path_params") if isinstance(child, Mapping) else None
        return _Found(inner_route.endpoint, inner_route, template, params)
    return _descend(inner_route, {**scope, **child}, child, depth + 1)


def _template(scope: dict[str, Any], route: Any) -> str | None:
    """The route's path template with its mount prefix: a low-cardinality label for logs and metrics."""
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    root_path, original = str(scope.get("root_path", "")), str(scope.get("tokenguard.root_path", ""))
    return root_path[len(original) :] + path


def _mark_of(endpoint: Any, scope: MutableMapping[str, Any]) -> Requirement | None:
    """Marks on the endpoint; for class-based endpoints, on the method handler first."""
    if isinstance(endpoint, type):
        # HTTPEndpoint dispatches to the method's name (HEAD falls back to get); WebSocketEndpoint
        # accepts in ``on_connect``.
        name = scope.get("method", "GET").lower() if scope["type"] == "http" else "on_connect"
        handler = getattr(endpoint, name, None)
        if name == "head" and handler is None:
            handler = getattr(endpoint, "get", None)
        mark = requirement_of(handler) if handler is not None else None
        if mark is not None:
            return mark
    return requirement_of(endpoint)


def _is_fastapi_doc_route(app: Any, route: Any) -> bool:
    """FastAPI's own documentation routes are public unless the user decides otherwise.

    Only the app's own top-level routes qualify: a route at ``/docs`` inside a mounted app is not
    FastAPI's documentation and keeps the default policy.
    """
    path = getattr(route, "path", None)
    routes = _routes(app)
    if path is None or routes is None or not any(candidate is route for candidate in routes):
        return False
    return any(getattr(app, attr, None) == path for attr in _FASTAPI_DOC_ATTRS)


def declared_requirements(app: Any) -> list[Requirement]:
    """Every mark declared on the app's endpoints (recursing into mounts and included routers).

    Used at startup (are there sensitive routes?) and for RFC 9728 ``scopes_supported``.
    """
    found: list[Requirement] = []
    _collect(_routes(routed_app(app)) or (), found, 0)
    return found


def _collect(routes: Sequence[Any], found: list[Requirement], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router
        sub_routes = _routes(included) if included is not None else _routes(route)
        if sub_routes is None and hasattr(route, "app") and not hasattr(route, "endpoint"):
            sub_routes = _routes(routed_app(route.app))
        if sub_routes is not None:
            _collect(sub_routes, found, depth + 1)
            continue
        endpoint = getattr(route, "endpoint", None)
        handlers = [getattr(endpoint, name, None) for name in _HANDLER_NAMES] if isinstance(endpoint, type) else []
        for candidate in (endpoint, *handlers):
            mark = requirement_of(candidate) if candidate is not None else None
            if mark is not None:
                found.append(mark)


_HANDLER_NAMES = ("get", "head", "post", "put", "patch", "delete", "options", "on_connect")
