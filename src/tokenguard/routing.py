"""Finding, before the app runs, the endpoint an ASGI scope will reach, and so its policy. [adapter]

The request is matched against the app's own routes (``scope["app"].routes``), recursing into
``Mount``/``Host`` and FastAPI's included routers, the way the router itself will match it. The
endpoint's marks decide; then the ``rules``; then the default. Results are memoised in a bounded
LRU keyed by (type, method, root_path, path).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from typing import Any

from cachetools import LRUCache
from starlette.routing import Match

from tokenguard.policy import PUBLIC, Requirement, Rule, first_rule, requirement_of

logger = logging.getLogger("tokenguard")

_MAX_DEPTH = 16
_FASTAPI_DOC_ATTRS = ("openapi_url", "docs_url", "redoc_url", "swagger_ui_oauth2_redirect_url")


class _Found:
    """What matching found: an endpoint (and the route that holds it), or a mounted app."""

    def __init__(self, endpoint: Any = None, route: Any = None) -> None:
        self.endpoint = endpoint
        self.route = route


class RouteResolver:
    """Maps an ASGI scope to the ``Requirement`` of the route it will reach."""

    def __init__(self, rules: Sequence[Rule], default: Requirement, *, cache_size: int = 4096) -> None:
        self._rules = tuple(rules)
        self._default = default
        self._cache: LRUCache[tuple[str, str, str, str, int], Requirement] = LRUCache(maxsize=cache_size)

    def requirement(self, scope: MutableMapping[str, Any], fallback_app: Any = None) -> Requirement:
        app = scope.get("app")
        if getattr(app, "routes", None) is None:
            app = fallback_app
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        key = (scope["type"], method, scope.get("root_path", ""), scope["path"], id(app))
        cached = self._cache.get(key)
        if cached is None:
            cached = self._resolve(scope, app)
            self._cache[key] = cached
        return cached

    def _resolve(self, scope: MutableMapping[str, Any], app: Any) -> Requirement:
        found = None
        routes = getattr(app, "routes", None)
        if routes is not None:
            try:
                found = _find(routes, _probe_scope(scope), 0)
            except Exception as exc:  # a custom route that cannot be probed: fall back, never 500
                logger.warning("tokenguard: route matching failed (%s); using rules/default", type(exc).__name__)
        if found is not None and found.endpoint is not None:
            mark = _mark_of(found.endpoint, scope)
            if mark is not None:
                return mark
            if _is_fastapi_doc_route(app, found.route):
                return PUBLIC
        rule = first_rule(self._rules, scope["path"], scope.get("method"))
        return rule if rule is not None else self._default


def _probe_scope(scope: MutableMapping[str, Any]) -> dict[str, Any]:
    """A copy safe to hand to ``route.matches``: routers may write into the scope they match."""
    probe = dict(scope)
    probe["fastapi"] = dict(scope.get("fastapi", {}))
    probe.pop("endpoint", None)
    return probe


def _find(routes: Sequence[Any], scope: dict[str, Any], depth: int) -> _Found | None:
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
            partial = found  # e.g. the path matches but not the method: Starlette answers 405
    return partial


def _descend(route: Any, scope: dict[str, Any], child: dict[str, Any], depth: int) -> _Found:
    if "endpoint" in child:
        return _Found(child["endpoint"], child.get("route", route))
    inner_match = getattr(route, "_match", None)
    if callable(inner_match):
        # FastAPI's included routers (not flattened in recent releases) pick their route in ``_match``.
        result = inner_match(dict(scope))
        if isinstance(result, tuple) and len(result) == 4 and result[0] is not Match.NONE:
            inner_route = result[2]
            inner_scope = {**scope, **result[1]}
            if hasattr(inner_route, "endpoint"):
                return _Found(inner_route.endpoint, inner_route)
            if inner_route is not None:
                found = _find([inner_route], inner_scope, depth + 1)
                if found is not None:
                    return found
        return _Found()
    sub_routes = getattr(route, "routes", None)
    if sub_routes:
        found = _find(sub_routes, scope, depth + 1)
        if found is not None:
            return found
    return _Found()  # a mounted app with no routes to read: rules and default decide


def _mark_of(endpoint: Any, scope: MutableMapping[str, Any]) -> Requirement | None:
    """Marks on the endpoint; for class-based endpoints, on the method handler first."""
    if isinstance(endpoint, type):
        name = scope.get("method", "GET").lower() if scope["type"] == "http" else "websocket_connect"
        handler = getattr(endpoint, name, None)
        if name == "head" and handler is None:
            handler = getattr(endpoint, "get", None)
        mark = requirement_of(handler) if handler is not None else None
        if mark is not None:
            return mark
    return requirement_of(endpoint)


def _is_fastapi_doc_route(app: Any, route: Any) -> bool:
    """FastAPI's own documentation routes are public unless the user decides otherwise."""
    path = getattr(route, "path", None)
    if path is None:
        return False
    return any(getattr(app, attr, None) == path for attr in _FASTAPI_DOC_ATTRS)
