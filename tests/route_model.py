"""The route differential model: generated route trees and requests, the real app behind the real
guard, and an oracle of the policy each request must get.

Shared by ``tests/test_route_differential.py`` (a derandomized hypothesis slice in CI) and
``scripts/route_differential_long.py`` (the long seeded run). Property: *the guard decides exactly
what the router will run*. For each request the real router picks the endpoint (every generated
endpoint records its identity, and for class endpoints the handler, when it runs); the oracle knows
the marks the generator put on that endpoint and computes its policy with its own merge rule
(``Policy.merge``), independently of tokenguard's routing code. Each request is sent:

- with a god token (every scope, an acr every step-up mark accepts, ``auth_time`` now): the guard must
  let it through, and the requirement it applied (``scope["tokenguard.requirement"]``), and the one it
  predicted (``scope["tokenguard.decision"]``, when the guard sets it), must equal the oracle's policy
  for the endpoint that ran — or the rules/default when no endpoint ran (404, 405, redirect);
- anonymously: refused with 401 before anything runs, unless that policy is public;
- with a token missing a required scope (403), a revoked token on @sensitive policies (401: the
  issuer's introspection answers ``{"active": false}``), and a weak token (wrong acr, old auth_time)
  on step-up policies (401); none of them may reach the endpoint.

Two allowances, both never looser: a CORS preflight that runs no handler may go on as public (the
guard's preflight rule), and a class endpoint answering 405 itself for a method Starlette does not
dispatch may get its handler-of-that-name's marks too (``STRICT_HANDLERS``).

Tokens are HS256 JWTs (``shared_secret``); introspection is an ``httpx.MockTransport`` passed as
``http_client``; the clock is fixed. The app is called directly with hand-built ASGI scopes.
"""

import asyncio
import functools
import itertools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote

import httpx
import jwt
from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint, WebSocketEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Host, Mount, Route, Router, WebSocketRoute

import tokenguard
from tokenguard import TokenGuard
from tokenguard.policy import Requirement, Rule

ISSUER = "https://idp.example.com"
AUDIENCE = "https://api.example.com"
INTROSPECTION_URL = f"{ISSUER}/introspect"
CLIENT_ID, CLIENT_SECRET = "route-differential", "route-differential-secret"
SECRET = b"route-differential-shared-secret-0123456789"
T0 = 1_800_000_000

SCOPES = ("read", "write", "admin", "transfer", "ops")
#: Every step-up mark the generator writes accepts GOD_ACR, so marks always combine and the god token
#: satisfies every policy; the other values make the intersections differ.
GOD_ACR = "mfa"
OTHER_ACR = ("loa2", "loa3")
MAX_AGES = (None, 0, 60, 300)

REQUIREMENT_KEY = "tokenguard.requirement"
DECISION_KEY = "tokenguard.decision"
PASSED_KEY = "route_differential.passed"

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
ODD_METHODS = ("QUERY", "PROPFIND", "TRACE", "CONNECT", "get", "DISPATCH", "METHOD_NOT_ALLOWED")
ROUTE_METHOD_SETS: tuple[tuple[str, ...] | None, ...] = (
    None,
    ("GET",),
    ("POST",),
    ("GET", "POST"),
    ("DELETE",),
    ("PUT", "PATCH"),
    ("QUERY",),
    ("OPTIONS", "GET"),
)
HTTP_HANDLERS = ("get", "head", "post", "put", "patch", "delete", "options", "query")
WS_HANDLERS = ("on_connect", "on_receive", "on_disconnect")

#: Path segments: collisions are wanted (same path, other methods; user routes at the docs paths).
SEGMENTS = ("a", "b", "x", "items", "docs", "openapi.json", "redoc", "api-docs", "r", "é", "sp ace")
PARAMS = ("{id:int}", "{p:path}", "{s:str}")
HOSTS = ("api.example.com", "{sub}.example.com")
HOST_HEADERS = (
    "testserver",
    "api.example.com",
    "api.example.com:8443",
    "API.Example.COM",
    "other.example.com",
    "t1.example.com",
    None,
)
ROOT_PATHS = ("", "", "", "/root", "/api")
RULE_PREFIXES = ("/a", "/x", "/r", "/items", "/root")
#: How routes are added after the first requests: the documented ways (append to a route list, or
#: add_route / add_api_route), and two more that change a table without growing a list the guard
#: already fingerprinted (a new list bound to ``router.routes``; a route replaced in place).
LATE_MODES = ("append", "add_route")
EXTRA_LATE_MODES = ("rebind", "replace")

#: Compare the requirement the guard records in the scope (off: only the observable behaviour, for
#: running the property against a guard that does not record it).
CHECK_APPLIED = True
#: When Starlette answers 405 from ``HTTPEndpoint.method_not_allowed`` for a method it does not
#: dispatch (``get`` in lower case, say), the guard may still add the marks of the handler named after
#: the method (stricter, never looser: nothing of the app runs). Accepted unless this is True.
STRICT_HANDLERS = False


# -- a source of choices: hypothesis (CI) or random (the long run) -------------------------------------


class Source(Protocol):
    def choice(self, options: Sequence[Any]) -> Any: ...

    def integer(self, low: int, high: int) -> int: ...

    def chance(self, probability: float) -> bool: ...


class RandomSource:
    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.randint(low, high))

    def chance(self, probability: float) -> bool:
        return bool(self.rng.random() < probability)


# -- the oracle's view of a policy ------------------------------------------------------------------


class Contradiction(Exception):
    """Marks that must not combine (the generator avoids them in the main property)."""


@dataclass(frozen=True)
class Policy:
    """A requirement as the oracle sees it: order-free (acr values and scope groups as sets)."""

    public: bool = False
    all_scopes: frozenset[str] = frozenset()
    any_scopes: frozenset[frozenset[str]] = frozenset()
    sensitive: bool = False
    acr_values: frozenset[str] = frozenset()
    max_age: int | None = None
    details: int = 0

    def merge(self, other: "Policy") -> "Policy":
        """The documented merge rule: every scope set applies, sensitive if any, the strictest step-up."""
        if self.acr_values and other.acr_values:
            acr = self.acr_values & other.acr_values
            if not acr:
                raise Contradiction("acr_values with nothing in common")
        else:
            acr = self.acr_values or other.acr_values
        ages = [age for age in (self.max_age, other.max_age) if age is not None]
        merged = Policy(
            public=self.public or other.public,
            all_scopes=self.all_scopes | other.all_scopes,
            any_scopes=self.any_scopes | other.any_scopes,
            sensitive=self.sensitive or other.sensitive,
            acr_values=acr,
            max_age=min(ages) if ages else None,
            details=self.details + other.details,
        )
        if merged.public and merged != Policy(public=True):
            raise Contradiction("@public with other marks")
        return merged

    @property
    def step_up(self) -> bool:
        return bool(self.acr_values) or self.max_age is not None

    @property
    def needs_scopes(self) -> bool:
        return bool(self.all_scopes or self.any_scopes)

    def describe(self) -> str:
        if self.public:
            return "public"
        parts = []
        if self.all_scopes:
            parts.append("all=" + ",".join(sorted(self.all_scopes)))
        for group in sorted(sorted(g) for g in self.any_scopes):
            parts.append("any=" + "|".join(group))
        if self.sensitive:
            parts.append("sensitive")
        if self.acr_values:
            parts.append("acr=" + ",".join(sorted(self.acr_values)))
        if self.max_age is not None:
            parts.append(f"max_age={self.max_age}")
        if self.details:
            parts.append(f"details={self.details}")
        return "authenticated(" + " ".join(parts) + ")" if parts else "authenticated"


AUTHENTICATED = Policy()
PUBLIC = Policy(public=True)


def policy_of(requirement: Any) -> Policy | None:
    """The oracle's view of a ``Requirement`` the guard applied (``None`` if it is not one)."""
    if not isinstance(requirement, Requirement):
        return None
    return Policy(
        public=requirement.public,
        all_scopes=frozenset(requirement.all_scopes),
        any_scopes=frozenset(frozenset(group) for group in requirement.any_scopes),
        sensitive=requirement.sensitive,
        acr_values=frozenset(requirement.acr_values),
        max_age=requirement.max_age,
        details=len(requirement.details),
    )


def merge_all(policies: Sequence[Policy]) -> Policy | None:
    merged: Policy | None = None
    for policy in policies:
        merged = policy if merged is None else merged.merge(policy)
    return merged


# -- the generated model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """One decorator: public, scopes (require_scopes), any (require_any_scope), sensitive, level."""

    kind: str
    scopes: tuple[str, ...] = ()
    acr: tuple[str, ...] = ()
    max_age: int | None = None

    def policy(self) -> Policy:
        if self.kind == "public":
            return PUBLIC
        if self.kind == "scopes":
            return Policy(all_scopes=frozenset(self.scopes))
        if self.kind == "any":
            return Policy(any_scopes=frozenset({frozenset(self.scopes)}))
        if self.kind == "sensitive":
            return Policy(sensitive=True)
        return Policy(acr_values=frozenset(self.acr), max_age=self.max_age)

    def decorator(self) -> Callable[[Any], Any]:
        if self.kind == "public":
            return tokenguard.public
        if self.kind == "scopes":
            return tokenguard.require_scopes(*self.scopes)
        if self.kind == "any":
            return tokenguard.require_any_scope(*self.scopes)
        if self.kind == "sensitive":
            return tokenguard.sensitive
        return tokenguard.require_auth_level(acr_values=self.acr, max_age=self.max_age)

    def __str__(self) -> str:
        if self.kind == "public":
            return "@public"
        if self.kind == "scopes":
            return f"@require_scopes{self.scopes!r}"
        if self.kind == "any":
            return f"@require_any_scope{self.scopes!r}"
        if self.kind == "sensitive":
            return "@sensitive"
        return f"@require_auth_level(acr_values={self.acr!r}, max_age={self.max_age!r})"


def apply_marks(target: Any, marks: Sequence[Mark]) -> Any:
    for mark in marks:
        target = mark.decorator()(target)
    return target


@dataclass
class Endpoint:
    """``kind``: func, partial (mark on the inner function), partial_outer (on the partial), wrapped
    (``functools.wraps``, mark on the inner function), asgi (an ASGI object as a Route endpoint),
    bound (a bound method, marked in its class),
    http_class, ws_func, ws_class, api_func (FastAPI), api_ws (FastAPI), raw (a mounted ASGI app)."""

    eid: str
    kind: str
    marks: tuple[Mark, ...] = ()
    handlers: dict[str, tuple[Mark, ...]] = field(default_factory=dict)
    mark_after: bool = False  # FastAPI: marks applied after the route is registered

    def policy(self, handler: str | None) -> Policy | None:
        """The merged marks of this endpoint for the handler that ran (the oracle's rule)."""
        if self.kind == "raw":
            return None  # a mounted ASGI app: the guard cannot see its marks; none are put on it
        policies = [mark.policy() for mark in self.marks]
        if self.kind == "http_class":
            if handler is not None and handler != "<405>":
                policies += [mark.policy() for mark in self.handlers.get(handler, ())]
        elif self.kind == "ws_class":
            for name in WS_HANDLERS:
                policies += [mark.policy() for mark in self.handlers.get(name, ())]
        return merge_all(policies)

    def describe(self) -> str:
        text = f"{self.eid}:{self.kind}"
        if self.marks:
            text += " " + " ".join(str(m) for m in self.marks)
        for name, marks in self.handlers.items():
            text += f" [{name}" + "".join(" " + str(m) for m in marks) + "]"
        return text


@dataclass
class Node:
    """``kind``: route, ws, mount, host, include (FastAPI APIRouter), raw (Mount of an ASGI app).

    ``api``: registered the FastAPI way (add_api_route / add_api_websocket_route) rather than as a
    Starlette route. ``app_kind`` (mount): routes (Mount(routes=)), router, starlette, fastapi.
    """

    kind: str
    path: str = ""
    methods: tuple[str, ...] | None = None
    endpoint: Endpoint | None = None
    children: list["Node"] = field(default_factory=list)
    app_kind: str = ""
    redirect_slashes: bool = True
    api: bool = False
    cid: str = ""  # the container this node opens (mount, host, include), for late additions
    late_via: str = ""  # for late routes: how they are added
    router_prefix: str = ""  # include: APIRouter(prefix=...)
    again: str | None = None  # include: the same APIRouter included a second time, at this prefix

    def describe(self, indent: int) -> list[str]:
        pad = "  " * indent
        if self.kind in ("route", "ws"):
            assert self.endpoint is not None
            how = "api" if self.api else "starlette"
            methods = "" if self.methods is None else " methods=" + ",".join(self.methods)
            via = f" (added late via {self.late_via})" if self.late_via else ""
            return [f"{pad}{self.kind}[{how}] {self.path!r}{methods} -> {self.endpoint.describe()}{via}"]
        if self.kind == "raw":
            assert self.endpoint is not None
            return [f"{pad}Mount {self.path!r} app=raw ASGI {self.endpoint.eid}"]
        if self.kind == "host":
            head = f"{pad}Host {self.path!r} (Router redirect_slashes={self.redirect_slashes}) #{self.cid}"
        elif self.kind == "include":
            head = f"{pad}include_router(APIRouter(prefix={self.router_prefix!r}), prefix={self.path!r})"
            head += (f" and again at prefix={self.again!r}" if self.again is not None else "") + f" #{self.cid}"
        else:
            head = f"{pad}Mount {self.path!r} app={self.app_kind} redirect_slashes={self.redirect_slashes} #{self.cid}"
        lines = [head]
        for child in self.children:
            lines += child.describe(indent + 1)
        return lines


@dataclass(frozen=True)
class RuleSpec:
    path: str
    methods: tuple[str, ...] | None = None
    public: bool = False
    scopes: tuple[str, ...] = ()
    sensitive: bool = False
    acr: tuple[str, ...] = ()

    def rule(self) -> Rule:
        return Rule(
            self.path,
            methods=self.methods,
            public=self.public,
            scopes=self.scopes,
            sensitive=self.sensitive,
            acr_values=self.acr,
        )

    def policy(self) -> Policy:
        if self.public:
            return PUBLIC
        return Policy(all_scopes=frozenset(self.scopes), sensitive=self.sensitive, acr_values=frozenset(self.acr))

    def matches(self, route_path: str, method: str | None) -> bool:
        if self.methods is not None and method is not None:
            methods = {m.upper() for m in self.methods}
            if "GET" in methods:
                methods.add("HEAD")
            if method.upper() not in methods:
                return False
        prefix = self.path.rstrip("/") or "/"
        return prefix == "/" or route_path == prefix or route_path.startswith(prefix + "/")


@dataclass
class Docs:
    openapi_url: str | None = "/openapi.json"
    docs_url: str | None = "/docs"
    redoc_url: str | None = "/redoc"
    oauth2_url: str | None = "/docs/oauth2-redirect"

    def paths(self) -> tuple[str, ...]:
        """The routes FastAPI itself registers with these settings."""
        if not self.openapi_url:
            return ()
        found = [self.openapi_url]
        if self.docs_url:
            found.append(self.docs_url)
            if self.oauth2_url:
                found.append(self.oauth2_url)
        if self.redoc_url:
            found.append(self.redoc_url)
        return tuple(found)


@dataclass
class Tree:
    framework: str  # starlette | fastapi
    nodes: list[Node]
    late: list[tuple[str, Node]]
    docs: Docs
    redirect_slashes: bool
    default: str  # authenticated | public
    rules: tuple[RuleSpec, ...]
    deploy: str  # middleware (app.add_middleware) | wrap (TokenGuard(app))

    def endpoints(self) -> dict[str, Endpoint]:
        found: dict[str, Endpoint] = {}

        def walk(nodes: Sequence[Node]) -> None:
            for node in nodes:
                if node.endpoint is not None:
                    found[node.endpoint.eid] = node.endpoint
                walk(node.children)

        walk(self.nodes)
        walk([node for _, node in self.late])
        return found

    def describe(self) -> str:
        head = (
            f"{self.framework} app redirect_slashes={self.redirect_slashes} default={self.default} deploy={self.deploy}"
        )
        if self.framework == "fastapi":
            d = self.docs
            head += (
                f" openapi_url={d.openapi_url!r} docs_url={d.docs_url!r} redoc_url={d.redoc_url!r}"
                f" swagger_ui_oauth2_redirect_url={d.oauth2_url!r}"
            )
        lines = [head]
        if self.rules:
            lines.append("  rules: " + ", ".join(repr(r) for r in self.rules))
        for node in self.nodes:
            lines += node.describe(1)
        for cid, node in self.late:
            lines += [f"  late into #{cid}:", *node.describe(2)]
        return "\n".join(lines)


@dataclass(frozen=True)
class RequestSpec:
    type: str  # http | websocket
    method: str
    path: str  # decoded, as in scope["path"] (root_path included)
    raw_path: bytes
    root_path: str
    host: str | None
    query: bytes = b""
    preflight: bool = False  # OPTIONS with Origin and Access-Control-Request-Method (CORS)

    def describe(self) -> str:
        what = self.method if self.type == "http" else "WEBSOCKET"
        text = f"{what} path={self.path!r} raw_path={self.raw_path!r} root_path={self.root_path!r} host={self.host!r}"
        return text + (" (CORS preflight)" if self.preflight else "")


# -- generation ---------------------------------------------------------------------------------------


class _Ids:
    def __init__(self) -> None:
        self.endpoints = itertools.count(1)
        self.containers = itertools.count(1)

    def eid(self) -> str:
        return f"e{next(self.endpoints)}"

    def cid(self) -> str:
        return f"c{next(self.containers)}"


def gen_scopes(src: Source) -> tuple[str, ...]:
    first = src.choice(SCOPES)
    names = {first}
    if src.chance(0.3):
        names.add(src.choice(SCOPES))
    return tuple(sorted(names))


def gen_mark(src: Source) -> Mark:
    kind = src.choice(("scopes", "any", "sensitive", "level", "scopes"))
    if kind in ("scopes", "any"):
        return Mark(kind, scopes=gen_scopes(src))
    if kind == "sensitive":
        return Mark("sensitive")
    acr: tuple[str, ...] = ()
    if src.chance(0.7):
        extra = [value for value in OTHER_ACR if src.chance(0.5)]
        acr = (GOD_ACR, *extra)
        if src.chance(0.5):
            acr = tuple(reversed(acr))
    max_age = src.choice(MAX_AGES) if acr else src.choice(MAX_AGES[1:])
    return Mark("level", acr=acr, max_age=max_age)


def gen_marks(src: Source, polarity: str) -> tuple[Mark, ...]:
    """No marks, ``@public`` (polarity allowing), or one to three other marks."""
    roll = src.integer(0, 9)
    if roll < 4:
        return ()
    if polarity != "protected" and roll < 6:
        return (Mark("public"),)
    if polarity == "public":
        return ()
    return tuple(gen_mark(src) for _ in range(src.integer(1, 3)))


def _polarity(marks: Sequence[Mark]) -> str:
    if not marks:
        return "any"
    return "public" if marks[0].kind == "public" else "protected"


def gen_endpoint(src: Source, ids: _Ids, kind: str) -> Endpoint:
    eid = ids.eid()
    if kind == "raw":
        return Endpoint(eid, kind)
    if kind == "http_class":
        marks = gen_marks(src, "any")
        polarity = _polarity(marks)
        handlers: dict[str, tuple[Mark, ...]] = {}
        for name in HTTP_HANDLERS:
            if src.chance(0.5 if name in ("get", "post", "delete") else 0.2):
                handlers[name] = gen_marks(src, polarity)
        return Endpoint(eid, kind, marks, handlers)
    if kind == "ws_class":
        marks = gen_marks(src, "any")
        polarity = _polarity(marks)
        handlers = {"on_connect": gen_marks(src, polarity)}
        polarity = polarity if polarity != "any" else _polarity(handlers["on_connect"])
        for name in ("on_receive", "on_disconnect"):
            if src.chance(0.4):
                handlers[name] = gen_marks(src, polarity)
                if polarity == "any":
                    polarity = _polarity(handlers[name])
        return Endpoint(eid, kind, marks, handlers)
    return Endpoint(eid, kind, gen_marks(src, "any"), mark_after=kind == "api_func" and src.chance(0.3))


def gen_path(src: Source, depth: int, *, allow_root: bool = True, allow_trailing: bool = True) -> str:
    if allow_root and src.chance(0.08):
        return "/"
    parts: list[str] = []
    for index in range(src.integer(1, 2)):
        if src.chance(0.25):
            param = src.choice(PARAMS)
            name, conv = param[1:-1].split(":")
            parts.append("{" + f"{name}{depth}{index}:{conv}" + "}")
            if conv == "path":
                break
        else:
            parts.append(src.choice(SEGMENTS))
    path = "/" + "/".join(parts)
    if allow_trailing and not path.endswith("}") and src.chance(0.2):
        path += "/"
    return path


def gen_prefix(src: Source, depth: int) -> str:
    """A mount or include prefix without parameters of the path kind, no trailing slash."""
    if src.chance(0.15):
        return "/t/{" + f"tenant{depth}:int" + "}"
    return "/" + src.choice((*SEGMENTS[:5], "api", "v1", "sub"))


def gen_nodes(src: Source, ids: _Ids, style: str, depth: int, budget: list[int]) -> list[Node]:
    nodes: list[Node] = []
    for _ in range(src.integer(1, 4 if depth == 0 else 3)):
        if budget[0] <= 0:
            break
        nodes.append(gen_node(src, ids, style, depth, budget))
    return nodes


def gen_endpoint_node(src: Source, ids: _Ids, style: str, depth: int) -> Node:
    """A route or websocket route for a container of ``style`` (starlette or fastapi)."""
    api = style == "fastapi" and src.chance(0.6)
    if src.chance(0.2):
        kind = "api_ws" if api else src.choice(("ws_func", "ws_class", "ws_class"))
        return Node("ws", gen_path(src, depth, allow_root=False), endpoint=gen_endpoint(src, ids, kind), api=api)
    if api:
        methods = src.choice(ROUTE_METHOD_SETS[1:])
        return Node("route", gen_path(src, depth), methods, gen_endpoint(src, ids, "api_func"), api=True)
    kind = src.choice(
        ("func", "func", "http_class", "http_class", "partial", "partial_outer", "wrapped", "asgi", "bound")
    )
    methods = src.choice(ROUTE_METHOD_SETS) if kind != "http_class" or src.chance(0.3) else None
    return Node("route", gen_path(src, depth), methods, gen_endpoint(src, ids, kind))


def gen_node(src: Source, ids: _Ids, style: str, depth: int, budget: list[int]) -> Node:
    budget[0] -= 1
    roll = src.integer(0, 9)
    if depth >= 3 or roll < 5:
        return gen_endpoint_node(src, ids, style, depth)
    if roll == 5:
        return Node("raw", gen_prefix(src, depth), endpoint=gen_endpoint(src, ids, "raw"))
    if roll == 6:
        host = src.choice(HOSTS)
        return Node(
            "host",
            host,
            children=gen_nodes(src, ids, "starlette", depth + 1, budget),
            redirect_slashes=src.chance(0.7),
            cid=ids.cid(),
        )
    if style == "fastapi" and roll >= 8:
        prefix = "" if src.chance(0.2) else gen_prefix(src, depth)
        router_prefix = "" if src.chance(0.7) else "/" + src.choice(("v1", "b", "docs"))
        again = None if src.chance(0.8) else src.choice(("/v2", "/x", ""))
        if again == "" and not router_prefix:
            again = None  # FastAPI refuses an empty prefix for a router whose paths could be empty
        return Node(
            "include",
            prefix,
            children=gen_nodes(src, ids, "fastapi", depth + 1, budget),
            cid=ids.cid(),
            router_prefix=router_prefix,
            again=again,
        )
    app_kind = src.choice(
        ("routes", "router", "starlette", "fastapi") if style == "fastapi" else ("routes", "router", "starlette")
    )
    path = gen_prefix(src, depth)
    if app_kind != "fastapi" and src.chance(0.3):
        path += "/"
    if app_kind == "routes" and style == "starlette" and depth == 0 and src.chance(0.1):
        path = ""
    child_style = "fastapi" if app_kind == "fastapi" else "starlette"
    return Node(
        "mount",
        path,
        children=gen_nodes(src, ids, child_style, depth + 1, budget),
        app_kind=app_kind,
        redirect_slashes=src.chance(0.7),
        cid=ids.cid(),
    )


def _containers(tree_nodes: Sequence[Node], style: str) -> list[tuple[str, str]]:
    """(cid, style) of every container, the top one being ``top``."""
    found = [("top", style)]

    def walk(nodes: Sequence[Node]) -> None:
        for node in nodes:
            if node.kind == "include" or (node.kind == "mount" and node.app_kind == "fastapi"):
                found.append((node.cid, "fastapi"))
            elif node.kind in ("mount", "host"):
                found.append((node.cid, "starlette"))
            walk(node.children)

    walk(tree_nodes)
    return found


def gen_rules(src: Source) -> tuple[RuleSpec, ...]:
    rules = []
    for _ in range(src.integer(0, 2) if src.chance(0.3) else 0):
        path = src.choice(RULE_PREFIXES)
        methods = src.choice((None, None, ("POST",), ("GET",)))
        if src.chance(0.3):
            rules.append(RuleSpec(path, methods, public=True))
        else:
            acr = (GOD_ACR,) if src.chance(0.3) else ()
            rules.append(RuleSpec(path, methods, scopes=gen_scopes(src), sensitive=src.chance(0.3), acr=acr))
    return tuple(rules)


def gen_tree(src: Source, late_modes: Sequence[str] = LATE_MODES) -> Tree:
    ids = _Ids()
    framework = src.choice(("fastapi", "starlette"))
    budget = [src.integer(2, 10)]
    nodes = gen_nodes(src, ids, framework, 0, budget)
    docs = Docs()
    if framework == "fastapi":
        docs = Docs(
            openapi_url=src.choice(("/openapi.json", None, "/openapi.json", "/api-docs/openapi.json")),
            docs_url=src.choice(("/docs", "/docs", None, "/api-docs")),
            redoc_url=src.choice(("/redoc", None)),
            oauth2_url=src.choice(("/docs/oauth2-redirect", None)),
        )
    late: list[tuple[str, Node]] = []
    if src.chance(0.5):
        containers = _containers(nodes, framework)
        for _ in range(src.integer(1, 3)):
            cid, style = src.choice(containers)
            node = gen_endpoint_node(src, ids, style, 2)
            node.late_via = src.choice(late_modes)
            late.append((cid, node))
    return Tree(
        framework=framework,
        nodes=nodes,
        late=late,
        docs=docs,
        redirect_slashes=src.chance(0.7),
        default=src.choice(("authenticated", "authenticated", "public")),
        rules=gen_rules(src),
        deploy=src.choice(("middleware", "wrap")),
    )


# -- request generation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    template: str
    host: str | None  # a Host route's pattern on the way, if any
    kind: str  # http | websocket | raw
    methods: tuple[str, ...] | None


def targets(tree: Tree) -> list[Target]:
    found: list[Target] = []
    contexts: dict[str, tuple[str, str | None]] = {"top": ("", None)}

    def walk(nodes: Sequence[Node], prefix: str, host: str | None) -> None:
        for node in nodes:
            if node.kind == "route":
                methods = node.methods
                if methods is None and node.endpoint is not None and node.endpoint.kind == "http_class":
                    methods = tuple(name.upper() for name in node.endpoint.handlers) or None
                found.append(Target(prefix + node.path, host, "http", methods))
            elif node.kind == "ws":
                found.append(Target(prefix + node.path, host, "websocket", None))
            elif node.kind == "raw":
                found.append(Target(prefix + node.path.rstrip("/") + "/z", host, "raw", None))
            elif node.kind == "host":
                contexts[node.cid] = (prefix, node.path)
                walk(node.children, prefix, node.path)
            elif node.kind == "include":
                inner = prefix + node.path + node.router_prefix
                contexts[node.cid] = (inner, host)
                walk(node.children, inner, host)
                if node.again is not None:
                    walk(node.children, prefix + node.again + node.router_prefix, host)
            else:
                inner = prefix + node.path.rstrip("/")
                contexts[node.cid] = (inner, host)
                walk(node.children, inner, host)

    walk(tree.nodes, "", None)
    for cid, node in tree.late:
        prefix, host = contexts.get(cid, ("", None))
        walk([node], prefix, host)
    for path in tree.docs.paths() if tree.framework == "fastapi" else ():
        found.append(Target(path, None, "http", ("GET", "HEAD")))
    return found


def _instantiate(src: Source, template: str) -> str:
    out = []
    for part in template.split("/"):
        if part.startswith("{") and part.endswith("}"):
            conv = part[1:-1].split(":")[1]
            if conv == "int":
                part = src.choice(("7", "0042", "x7", "-1"))
            elif conv == "path":
                part = src.choice(("q", "q/r", "", "docs"))
            else:
                part = src.choice(("s", "é", "a b", "%41"))
        out.append(part)
    return "/".join(out)


def _host_header(src: Source, pattern: str | None) -> str | None:
    if pattern is not None and src.chance(0.8):
        if pattern.startswith("{"):
            return src.choice(("t1.example.com", "api.example.com:8443"))
        return src.choice(("api.example.com", "api.example.com:8443", "API.Example.COM"))
    return src.choice(HOST_HEADERS)


def gen_request(src: Source, tree: Tree, candidates: Sequence[Target]) -> RequestSpec:
    if candidates and src.chance(0.85):
        target = src.choice(candidates)
        path = _instantiate(src, target.template) or "/"
        if not path.startswith("/"):
            path = "/" + path
        host = _host_header(src, target.host)
    else:
        target = None
        path = "/" + "/".join(src.choice(SEGMENTS) for _ in range(src.integer(1, 3)))
        host = src.choice(HOST_HEADERS)
    roll = src.integer(0, 9)
    if roll == 0 and path != "/":
        path = path[:-1] if path.endswith("/") else path + "/"
    elif roll == 1:
        path = path.rstrip("/") + "/" + src.choice(SEGMENTS)
    elif roll == 2 and path.count("/") > 1:
        path = path[: path.rindex("/")] or "/"
    if target is not None and target.kind == "websocket":
        kind = "websocket" if src.chance(0.8) else "http"
    else:
        kind = "websocket" if src.chance(0.07) else "http"
    method = "GET"
    if kind == "http":
        if target is not None and target.methods and src.chance(0.5):
            method = src.choice(target.methods)
        elif src.chance(0.85):
            method = src.choice(HTTP_METHODS)
        else:
            method = src.choice(ODD_METHODS)
    root_path = src.choice(ROOT_PATHS)
    if root_path and src.chance(0.85):
        path = root_path if src.chance(0.05) else root_path + path
    raw_path = quote(path, safe="/").encode("ascii")
    if src.chance(0.05):
        raw_path = raw_path.replace(b"/", b"%2F")
    preflight = kind == "http" and method == "OPTIONS" and src.chance(0.5)
    return RequestSpec(kind, method, path, raw_path, root_path, host, preflight=preflight)


def gen_requests(src: Source, tree: Tree, count: int) -> list[RequestSpec]:
    candidates = targets(tree)
    return [gen_request(src, tree, candidates) for _ in range(count)]


# -- building the real app --------------------------------------------------------------------------


Log = list[tuple[str, str | None]]


def _ok(eid: str) -> Response:
    return Response(b"ok", headers={"x-endpoint": eid})


def _starlette_endpoint(ep: Endpoint, log: Log) -> Any:
    eid = ep.eid
    if ep.kind in ("func", "wrapped"):

        async def endpoint(request: Request) -> Response:
            log.append((eid, None))
            return _ok(eid)

        endpoint.__name__ = endpoint.__qualname__ = f"endpoint_{eid}"
        if ep.kind == "func":
            return apply_marks(endpoint, ep.marks)

        @functools.wraps(endpoint)
        async def wrapper(request: Request) -> Response:
            return await endpoint(request)

        apply_marks(endpoint, ep.marks)  # after wraps: only reachable through __wrapped__
        return wrapper
    if ep.kind in ("partial", "partial_outer"):

        async def inner(request: Request, tag: str) -> Response:
            log.append((tag, None))
            return _ok(tag)

        bound = functools.partial(inner, tag=eid)
        if ep.kind == "partial":
            apply_marks(inner, ep.marks)
        else:
            apply_marks(bound, ep.marks)
        return bound
    if ep.kind == "asgi":
        return apply_marks(_AsgiEndpoint(eid, log), ep.marks)
    if ep.kind == "bound":

        async def handle(self: Any, request: Request) -> Response:
            log.append((eid, None))
            return _ok(eid)

        holder = type(f"Holder_{eid}", (), {"handle": apply_marks(handle, ep.marks)})
        return holder().handle
    if ep.kind == "http_class":
        return _http_class(ep, log)
    if ep.kind == "ws_class":
        return _ws_class(ep, log)
    if ep.kind == "ws_func":

        async def ws(websocket: WebSocket) -> None:
            log.append((eid, None))
            await websocket.accept()
            await websocket.close()

        return apply_marks(ws, ep.marks)
    raise AssertionError(ep.kind)


class _AsgiEndpoint:
    def __init__(self, eid: str, log: Log) -> None:
        self.eid = eid
        self.log = log

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.log.append((self.eid, None))
        await _ok(self.eid)(scope, receive, send)


def _http_handler(eid: str, name: str, log: Log) -> Any:
    async def handler(self: Any, request: Request) -> Response:
        log.append((eid, name))
        return _ok(eid)

    handler.__name__ = handler.__qualname__ = name
    return handler


def _http_class(ep: Endpoint, log: Log) -> type:
    eid = ep.eid
    namespace: dict[str, Any] = {}
    for name, marks in ep.handlers.items():
        namespace[name] = apply_marks(_http_handler(eid, name, log), marks)

    async def method_not_allowed(self: Any, request: Request) -> Response:
        log.append((eid, "<405>"))
        return await HTTPEndpoint.method_not_allowed(self, request)

    namespace["method_not_allowed"] = method_not_allowed
    return apply_marks(type(f"Endpoint_{eid}", (HTTPEndpoint,), namespace), ep.marks)


def _ws_class(ep: Endpoint, log: Log) -> type:
    eid = ep.eid

    async def on_connect(self: Any, websocket: Any) -> None:
        log.append((eid, "on_connect"))
        await websocket.accept()

    async def on_receive(self: Any, websocket: Any, data: Any) -> None:
        return None

    async def on_disconnect(self: Any, websocket: Any, close_code: int) -> None:
        return None

    functions = {"on_connect": on_connect, "on_receive": on_receive, "on_disconnect": on_disconnect}
    namespace = {"encoding": "text"}
    for name, function in functions.items():
        if name == "on_connect" or name in ep.handlers:
            namespace[name] = apply_marks(function, ep.handlers.get(name, ()))
    return apply_marks(type(f"Socket_{eid}", (WebSocketEndpoint,), namespace), ep.marks)


def _api_endpoint(ep: Endpoint, log: Log) -> Any:
    eid = ep.eid
    if ep.kind == "api_ws":

        async def ws(websocket: WebSocket) -> None:
            log.append((eid, None))
            await websocket.accept()
            await websocket.close()

        return apply_marks(ws, ep.marks)

    async def endpoint() -> Response:
        log.append((eid, None))
        return _ok(eid)

    endpoint.__name__ = endpoint.__qualname__ = f"endpoint_{eid}"
    return endpoint if ep.mark_after else apply_marks(endpoint, ep.marks)


def _raw_app(eid: str, log: Log) -> Any:
    async def raw(scope: Any, receive: Any, send: Any) -> None:
        log.append((eid, None))
        if scope["type"] == "http":
            await _ok(eid)(scope, receive, send)
        else:
            await receive()
            await send({"type": "websocket.close", "code": 1000})

    return raw


class _Container:
    """Where nodes go. ``holder`` has the ``routes`` list (a Starlette ``Router``, FastAPI's
    ``APIRouter``); ``owner`` is what a user would call ``add_route`` on (a Starlette app, a Router,
    a FastAPI app or APIRouter)."""

    def __init__(self, style: str, holder: Any, owner: Any) -> None:
        self.style = style
        self.holder = holder
        self.owner = owner


def _container(style: str, app: Any) -> _Container:
    return _Container(style, getattr(app, "router", app), app)


class _Builder:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.containers: dict[str, _Container] = {}

    def add(self, container: _Container, node: Node) -> None:
        if container.style == "fastapi":
            self._add_fastapi(container, node)
        else:
            self._add_starlette(container, node)

    def _children(self, node: Node, container: _Container) -> None:
        self.containers[node.cid] = container
        for child in node.children:
            self.add(container, child)

    def _sub_app(self, node: Node) -> Any:
        """The app a Mount holds: a Router, a Starlette app or a FastAPI app (without docs)."""
        sub: Any
        if node.app_kind == "fastapi":
            sub = FastAPI(openapi_url=None, redirect_slashes=node.redirect_slashes)
            self._children(node, _container("fastapi", sub))
            return sub
        if node.app_kind == "starlette":
            sub = Starlette()
            sub.router.redirect_slashes = node.redirect_slashes
        else:
            sub = Router(redirect_slashes=node.redirect_slashes)
        self._children(node, _container("starlette", sub))
        return sub

    @staticmethod
    def _place(container: _Container, node: Node, route: Any, register: Callable[[], None]) -> None:
        """Put an endpoint route in: registered the usual way, or (late) appended to the list, the
        list replaced by a new one (``rebind``), or an existing endpoint route replaced in place."""
        holder = container.holder
        if node.late_via == "append":
            holder.routes.append(route)
        elif node.late_via == "rebind":
            holder.routes = [*holder.routes, route]
        elif node.late_via == "replace":
            routes = holder.routes
            for index, existing in enumerate(routes):
                if hasattr(existing, "endpoint") and getattr(existing, "original_router", None) is None:
                    routes[index] = route
                    return
            routes.append(route)
        else:
            register()

    def _add_starlette(self, container: _Container, node: Node) -> None:
        routes: list[Any] = container.holder.routes
        ep = node.endpoint
        if node.kind == "route":
            assert ep is not None
            endpoint = _starlette_endpoint(ep, self.log)
            route = Route(node.path, endpoint, methods=node.methods)
            if node.late_via == "add_route":
                container.owner.add_route(node.path, endpoint, methods=node.methods)
            else:
                self._place(container, node, route, lambda: routes.append(route))
        elif node.kind == "ws":
            assert ep is not None
            endpoint = _starlette_endpoint(ep, self.log)
            route = WebSocketRoute(node.path, endpoint)
            if node.late_via == "add_route":
                container.holder.add_websocket_route(node.path, endpoint)
            else:
                self._place(container, node, route, lambda: routes.append(route))
        elif node.kind == "raw":
            assert ep is not None
            routes.append(Mount(node.path, app=_raw_app(ep.eid, self.log)))
        elif node.kind == "host":
            router = Router(redirect_slashes=node.redirect_slashes)
            self._children(node, _container("starlette", router))
            routes.append(Host(node.path, app=router))
        elif node.kind == "mount":
            if node.app_kind == "routes":
                mount = Mount(node.path, routes=[])
                # Mount(routes=...) builds its own Router (mount.app): later additions go there.
                self._children(node, _container("starlette", mount.app))
                routes.append(mount)
            else:
                routes.append(Mount(node.path, app=self._sub_app(node)))
        else:
            raise AssertionError(node.kind)

    def _add_fastapi(self, container: _Container, node: Node) -> None:
        router = container.owner
        ep = node.endpoint
        if node.kind == "route" and node.api:
            assert ep is not None
            endpoint = _api_endpoint(ep, self.log)
            methods = list(node.methods or ("GET",))
            route = _api_route(node.path, endpoint, node.methods) if node.late_via else None
            self._place(container, node, route, lambda: router.add_api_route(node.path, endpoint, methods=methods))
            if ep.mark_after:
                apply_marks(endpoint, ep.marks)
        elif node.kind == "route":
            assert ep is not None
            endpoint = _starlette_endpoint(ep, self.log)
            route = Route(node.path, endpoint, methods=node.methods)
            self._place(container, node, route, lambda: router.add_route(node.path, endpoint, methods=node.methods))
        elif node.kind == "ws" and node.api:
            assert ep is not None
            endpoint = _api_endpoint(ep, self.log)
            self._place(
                container,
                node,
                _api_ws_route(node.path, endpoint),
                lambda: router.add_api_websocket_route(node.path, endpoint),
            )
        elif node.kind == "ws":
            assert ep is not None
            endpoint = _starlette_endpoint(ep, self.log)
            # FastAPI apps have no add_websocket_route of their own: their router does.
            holder = container.holder
            self._place(
                container,
                node,
                WebSocketRoute(node.path, endpoint),
                lambda: holder.add_websocket_route(node.path, endpoint),
            )
        elif node.kind == "raw":
            assert ep is not None
            router.mount(node.path, _raw_app(ep.eid, self.log))
        elif node.kind == "host":
            sub = Router(redirect_slashes=node.redirect_slashes)
            self._children(node, _container("starlette", sub))
            router.host(node.path, sub)
        elif node.kind == "include":
            child = APIRouter(prefix=node.router_prefix)
            self._children(node, _container("fastapi", child))
            router.include_router(child, prefix=node.path)
            if node.again is not None:
                router.include_router(child, prefix=node.again)
        elif node.kind == "mount":
            router.mount(node.path, self._sub_app(node))
        else:
            raise AssertionError(node.kind)


def _api_route(path: str, endpoint: Any, methods: tuple[str, ...] | None) -> Any:
    return APIRoute(path, endpoint, methods=list(methods or ("GET",)))


def _api_ws_route(path: str, endpoint: Any) -> Any:
    return APIWebSocketRoute(path, endpoint)


class _Passed:
    """Inside the guard: notes that the guard let the request through."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[PASSED_KEY] = True
        await self.app(scope, receive, send)


@dataclass
class Built:
    app: Any  # the outermost ASGI callable
    builder: _Builder
    log: Log
    late_applied: bool = False

    def add_late(self, tree: Tree) -> None:
        for cid, node in tree.late:
            container = self.builder.containers[cid]
            self.builder.add(container, node)
        self.late_applied = True


def guard_options(tree: Tree, client: Any) -> dict[str, Any]:
    return guard_kwargs(client, default=tree.default, rules=[rule.rule() for rule in tree.rules])


def guard_kwargs(client: Any = None, *, default: str = "authenticated", rules: Sequence[Rule] = ()) -> dict[str, Any]:
    """TokenGuard's options: HS256 tokens, the mock issuer's introspection, a fixed clock.

    ``client``: an ``httpx.AsyncClient`` on the mock transport, or by default a factory of them (one
    per event loop, for ``TestClient``).
    """
    return {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "shared_secret": SECRET,
        "algorithms": ["HS256"],
        "introspection_endpoint": INTROSPECTION_URL,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "http_client": client if client is not None else issuer_client,
        "clock": lambda: float(T0),
        "default": default,
        "rules": list(rules),
    }


def build(tree: Tree, client: httpx.AsyncClient) -> Built:
    log: Log = []
    builder = _Builder(log)
    if tree.framework == "fastapi":
        d = tree.docs
        app: Any = FastAPI(
            openapi_url=d.openapi_url,
            docs_url=d.docs_url,
            redoc_url=d.redoc_url,
            swagger_ui_oauth2_redirect_url=d.oauth2_url,
            redirect_slashes=tree.redirect_slashes,
        )
        top = _container("fastapi", app)
    else:
        app = Starlette()
        app.router.redirect_slashes = tree.redirect_slashes
        top = _container("starlette", app)
    builder.containers["top"] = top
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for node in tree.nodes:
            builder.add(top, node)
    options = guard_options(tree, client)
    if tree.deploy == "middleware":
        app.add_middleware(_Passed)
        app.add_middleware(TokenGuard, **options)
        outer = app
    else:
        outer = TokenGuard(_Passed(app), **options)
    return Built(outer, builder, log)


# -- tokens and the issuer's introspection endpoint ---------------------------------------------------


REVOKED_JTI = "revoked"


@functools.lru_cache(maxsize=256)
def token(scopes: tuple[str, ...] = SCOPES, acr: str = GOD_ACR, auth_time: int = T0, jti: str = "god") -> str:
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "client_id": "app",
        "scope": " ".join(scopes),
        "iat": T0,
        "exp": T0 + 3600,
        "jti": jti,
        "acr": acr,
        "auth_time": auth_time,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256", headers={"typ": "at+jwt"})


GOD = token()
WEAK = token(acr="low", auth_time=T0 - 10**6, jti="weak")
REVOKED = token(jti=REVOKED_JTI)


def introspection_handler(request: httpx.Request) -> httpx.Response:
    """RFC 7662 as the issuer answers: the token's own claims, or inactive for the revoked one."""
    form = dict(parse_qsl(request.content.decode("ascii")))
    claims = jwt.decode(form["token"], options={"verify_signature": False})
    if claims.get("jti") == REVOKED_JTI or claims.get("jti", "").startswith(REVOKED_JTI + "-"):
        return httpx.Response(200, json={"active": False})
    return httpx.Response(200, json={"active": True, "token_type": "access_token", **claims})


def issuer_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(introspection_handler))


# -- calling the app ---------------------------------------------------------------------------------


_MISSING = object()


@dataclass
class Outcome:
    status: Any  # HTTP status, or ("accept"|"close", code) for a websocket
    ran: tuple[tuple[str, str | None], ...]
    passed: bool
    applied: Any  # scope["tokenguard.requirement"], or _MISSING
    predicted: Any  # scope["tokenguard.decision"].requirement, or _MISSING
    error: str | None = None

    def describe(self) -> str:
        applied = "<not set>" if self.applied is _MISSING else _describe_requirement(self.applied)
        text = f"status={self.status} ran={list(self.ran)} passed_guard={self.passed} applied={applied}"
        if self.predicted is not _MISSING and self.predicted is not self.applied:
            text += f" predicted={_describe_requirement(self.predicted)}"
        if self.error:
            text += f" error={self.error}"
        return text


def _describe_requirement(requirement: Any) -> str:
    policy = policy_of(requirement)
    return policy.describe() if policy is not None else repr(requirement)


def scope_of(request: RequestSpec, bearer: str | None) -> dict[str, Any]:
    headers: list[tuple[bytes, bytes]] = []
    if request.host is not None:
        headers.append((b"host", request.host.encode("latin-1")))
    if bearer is not None:
        headers.append((b"authorization", b"Bearer " + bearer.encode("ascii")))
    if request.preflight:
        headers += [(b"origin", b"https://app.example.com"), (b"access-control-request-method", b"DELETE")]
    scope: dict[str, Any] = {
        "type": request.type,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if request.type == "http" else "ws",
        "path": request.path,
        "raw_path": request.raw_path,
        "root_path": request.root_path,
        "query_string": request.query,
        "headers": headers,
        "client": ("203.0.113.7", 50000),
        "server": ("testserver", 80),
    }
    if request.type == "http":
        scope["method"] = request.method
    else:
        scope["subprotocols"] = []
    return scope


async def call(built: Built, request: RequestSpec, bearer: str | None) -> Outcome:
    built.log.clear()
    scope = scope_of(request, bearer)
    if request.type == "http":
        inbox: list[dict[str, Any]] = [{"type": "http.request", "body": b"", "more_body": False}]
        done: dict[str, Any] = {"type": "http.disconnect"}
    else:
        inbox = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
        done = {"type": "websocket.disconnect", "code": 1000}

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(0)
        return done

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    error = None
    try:
        await built.app(scope, receive, send)
    except Exception as exc:  # the outcome says so; the property fails on it
        error = f"{type(exc).__name__}: {exc}"
    status: Any = None
    for message in sent:
        kind = message["type"]
        if kind in ("http.response.start", "websocket.http.response.start"):
            status = message["status"]
            break
        if kind == "websocket.accept":
            status = ("accept", None)
            break
        if kind == "websocket.close":
            status = ("close", message.get("code", 1000))
            break
    decision = scope.get(DECISION_KEY, _MISSING)
    predicted = getattr(decision, "requirement", _MISSING) if decision is not _MISSING else _MISSING
    return Outcome(
        status=status,
        ran=tuple(built.log),
        passed=bool(scope.get(PASSED_KEY)),
        applied=scope.get(REQUIREMENT_KEY, _MISSING),
        predicted=predicted,
        error=error,
    )


# -- the oracle -------------------------------------------------------------------------------------


def route_path(request: RequestSpec) -> str:
    """The path as the routes see it: without the root_path prefix (ASGI: path includes it)."""
    path, root = request.path, request.root_path
    if root and path.startswith(root):
        if path == root:
            return ""
        if path[len(root)] == "/":
            return path[len(root) :]
    return path


def fallback(tree: Tree, request: RequestSpec) -> Policy:
    """The rules, then the default: the policy of a request that reaches no marked endpoint."""
    method = request.method if request.type == "http" else None
    for rule in tree.rules:
        if rule.matches(route_path(request), method):
            return rule.policy()
    return PUBLIC if tree.default == "public" else AUTHENTICATED


def expected(tree: Tree, endpoints: dict[str, Endpoint], request: RequestSpec, god: Outcome) -> tuple[Policy, str]:
    """The policy the guard must apply, from what the router ran with the god token, and why."""
    if len(god.ran) > 1:
        raise AssertionError(f"more than one endpoint ran: {god.ran}")
    if god.ran:
        eid, handler = god.ran[0]
        endpoint = endpoints[eid]
        policy = endpoint.policy(handler)
        if policy is not None:
            return policy, f"endpoint {eid} ({handler or endpoint.kind}) marks"
        return fallback(tree, request), f"endpoint {eid} ({handler or endpoint.kind}) unmarked: rules/default"
    docs = tree.docs.paths() if tree.framework == "fastapi" else ()
    if (
        god.status == 200
        and request.type == "http"
        and request.method in ("GET", "HEAD")
        and route_path(request) in docs
    ):
        return PUBLIC, "FastAPI's own docs route"
    return fallback(tree, request), "no endpoint ran: rules/default"


def tolerated(tree: Tree, endpoints: dict[str, Endpoint], request: RequestSpec, god: Outcome) -> Policy | None:
    """The stricter policy the guard may apply when a class endpoint answers 405 itself (see
    ``STRICT_HANDLERS``): the class's marks with those of the handler named after the method."""
    if STRICT_HANDLERS or not god.ran or god.ran[0][1] != "<405>" or request.type != "http":
        return None
    endpoint = endpoints[god.ran[0][0]]
    name = request.method.lower()
    if name == "head" and "head" not in endpoint.handlers:
        name = "get"
    if name not in endpoint.handlers:
        return None
    policies = [mark.policy() for mark in (*endpoint.marks, *endpoint.handlers[name])]
    return merge_all(policies) or fallback(tree, request)


@dataclass
class Disagreement:
    tree: Tree
    request: RequestSpec
    phase: str  # before/after the late additions
    problems: list[str]
    history: int  # how many requests ran on this app before

    def tags(self) -> tuple[str, ...]:
        """For triage: the features of the case that often explain a disagreement."""
        found = []
        if self.request.preflight:
            found.append("preflight")
        if self.phase == "after":
            found += sorted({f"late:{node.late_via}" for _, node in self.tree.late})
        found.append(self.request.type)
        return tuple(found)

    def describe(self) -> str:
        lines = [
            f"request: {self.request.describe()} ({self.phase} late additions; {self.history} requests before)",
            *("  - " + problem for problem in self.problems),
            "tree:",
            *("  " + line for line in self.tree.describe().splitlines()),
        ]
        return "\n".join(lines)


def _denied(outcome: Outcome, status: int, request: RequestSpec) -> bool:
    """Refused before any endpoint ran (by the guard, or by its dispatch check)."""
    if outcome.ran:
        return False
    if request.type == "http":
        return bool(outcome.status == status)
    return outcome.status in (("close", 1008), status)


async def check_request(
    tree: Tree, endpoints: dict[str, Endpoint], built: Built, request: RequestSpec, stats: dict[str, int] | None = None
) -> list[str]:
    """Every property for one request; the problems found (empty when the guard agrees)."""
    problems: list[str] = []
    god = await call(built, request, GOD)
    if god.error is not None:
        return [f"the app raised with the god token: {god.describe()}"]
    try:
        want, why = expected(tree, endpoints, request, god)
    except (AssertionError, KeyError, Contradiction) as exc:
        return [f"oracle: {type(exc).__name__}: {exc} (god: {god.describe()})"]
    if stats is not None:
        key = "ran" if god.ran else ("docs" if "docs" in why else "none")
        stats[key] = stats.get(key, 0) + 1
    stricter = tolerated(tree, endpoints, request, god)
    if stricter is not None and stricter != want and policy_of(god.applied) == stricter:
        want, why = stricter, why + "; the guard added the marks of the undispatched handler (tolerated)"
        if stats is not None:
            stats["tolerated"] = stats.get("tolerated", 0) + 1

    if request.preflight and (not god.ran or god.ran[0][1] == "<405>"):
        # A CORS preflight that runs no handler may go on as anonymous (the guard's preflight rule):
        # the rules/default, or public; either way nothing of the app's own may run anonymously.
        anonymous = await call(built, request, None)
        allowed = {want, PUBLIC}
        for label, outcome in (("god token", god), ("anonymous", anonymous)):
            if CHECK_APPLIED and policy_of(outcome.applied) not in allowed:
                problems.append(
                    f"{label} (preflight): applied {outcome.describe()}; expected one of public, {want.describe()}"
                )
        if any(handler != "<405>" for _, handler in anonymous.ran) and not want.public:
            problems.append(f"anonymous preflight ran a handler: {anonymous.describe()}")
        return problems

    flagged: set[Any] = set()

    def compare(label: str, outcome: Outcome) -> None:
        if outcome.error is not None:
            problems.append(f"{label}: the app raised: {outcome.describe()}")
        if not CHECK_APPLIED:
            return
        applied = policy_of(outcome.applied)
        if (applied, policy_of(outcome.predicted)) in flagged:
            return  # the same wrong decision as for an earlier token: said once
        if applied != want or (outcome.predicted is not _MISSING and policy_of(outcome.predicted) != want):
            flagged.add((applied, policy_of(outcome.predicted)))
        if applied != want:
            problems.append(f"{label}: applied {outcome.describe()}; expected {want.describe()} [{why}]")
        elif outcome.predicted is not _MISSING and policy_of(outcome.predicted) != want:
            problems.append(
                f"{label}: predicted {_describe_requirement(outcome.predicted)} (the dispatch check corrected it);"
                f" expected {want.describe()} [{why}]"
            )

    compare("god token", god)
    if not god.passed:
        problems.append(f"god token refused by the guard: {god.describe()}")
    anonymous = await call(built, request, None)
    compare("anonymous", anonymous)
    if want.public:
        if anonymous.ran != god.ran or not anonymous.passed:
            problems.append(f"anonymous on a public policy: {anonymous.describe()}; god: {god.describe()}")
    elif not _denied(anonymous, 401, request):
        problems.append(f"anonymous not refused with 401: {anonymous.describe()} [expected {want.describe()}, {why}]")
    if want.public:
        return problems
    if want.needs_scopes:
        missing = set(want.all_scopes) or set(sorted(want.any_scopes, key=sorted)[0])
        lacking = await call(built, request, token(tuple(s for s in SCOPES if s not in missing), jti="lacking"))
        compare("token lacking a scope", lacking)
        if not _denied(lacking, 403, request):
            problems.append(
                f"token without {sorted(missing)} not refused with 403: {lacking.describe()}"
                f" [expected {want.describe()}]"
            )
    if want.sensitive:
        revoked = await call(built, request, REVOKED)
        compare("revoked token", revoked)
        if not _denied(revoked, 401, request):
            problems.append(f"revoked token not refused with 401: {revoked.describe()} [expected {want.describe()}]")
    if want.step_up:
        weak = await call(built, request, WEAK)
        compare("weak authentication", weak)
        if not _denied(weak, 401, request):
            problems.append(f"weak token (acr=low, old auth_time) not refused with 401: {weak.describe()}")
    return problems


@dataclass
class Plan:
    """Requests before the late additions, and after (the first ones are sent again, then new ones)."""

    before: list[RequestSpec]
    after: list[RequestSpec]


def gen_plan(src: Source, tree: Tree, count: int) -> Plan:
    requests = gen_requests(src, tree, count)
    if not tree.late:
        return Plan(requests, [])
    half = max(1, count // 2)
    before = requests[:half]
    after = before + requests[half:]
    return Plan(before, after)


async def run_plan(
    tree: Tree,
    plan: Plan,
    client: httpx.AsyncClient,
    *,
    stop_at_first: bool = False,
    stats: dict[str, int] | None = None,
) -> tuple[int, list[Disagreement]]:
    """Build the app, send the plan; (cases run, disagreements)."""
    built = build(tree, client)
    endpoints = tree.endpoints()
    found: list[Disagreement] = []
    cases = 0
    for phase, requests in (("before", plan.before), ("after", plan.after)):
        if phase == "after":
            if not tree.late:
                break
            built.add_late(tree)
        for request in requests:
            problems = await check_request(tree, endpoints, built, request, stats)
            cases += 1
            if problems:
                found.append(Disagreement(tree, request, phase, problems, cases - 1))
                if stop_at_first:
                    return cases, found
    return cases, found


def run_plan_sync(tree: Tree, plan: Plan, **options: Any) -> tuple[int, list[Disagreement]]:
    async def main() -> tuple[int, list[Disagreement]]:
        async with issuer_client() as client:
            return await run_plan(tree, plan, client, **options)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return asyncio.run(main())


# -- minimising a disagreement (for the long run) ----------------------------------------------------


def _fails(tree: Tree, plan: Plan) -> bool:
    try:
        _, found = run_plan_sync(tree, plan, stop_at_first=True)
    except Exception:
        return False
    return bool(found)


def _without(nodes: list[Node], target: Node) -> list[Node]:
    out = []
    for node in nodes:
        if node is target:
            continue
        if node.children:
            node = replace(node, children=_without(node.children, target))
        out.append(node)
    return out


def _all_nodes(nodes: Sequence[Node]) -> list[Node]:
    found: list[Node] = []
    for node in nodes:
        found.append(node)
        found += _all_nodes(node.children)
    return found


def shrink(tree: Tree, disagreement: Disagreement, plan: Plan, budget: int = 200) -> tuple[Tree, Plan]:
    """A smaller tree and request history that still disagree (greedy; each try builds a new app)."""
    request = disagreement.request
    candidates = (
        [Plan([], [request]), Plan([request], [request])] if disagreement.phase == "after" else [Plan([request], [])]
    )
    best_plan = next((p for p in candidates if _fails(tree, p)), plan)
    best = tree
    changed = True
    while changed and budget > 0:
        changed = False
        late_ids = {node.endpoint.eid for _, node in best.late if node.endpoint is not None}
        for node in _all_nodes(best.nodes) + [node for _, node in best.late]:
            budget -= 1
            if budget <= 0:
                break
            if node.endpoint is not None and node.endpoint.eid in late_ids:
                smaller = replace(best, late=[(cid, n) for cid, n in best.late if n is not node])
            else:
                smaller = replace(best, nodes=_without(best.nodes, node))
                kept = {n.cid for n in _all_nodes(smaller.nodes)} | {"top"}
                smaller.late = [(cid, n) for cid, n in smaller.late if cid in kept]
            if _fails(smaller, best_plan):
                best, changed = smaller, True
                break
        if not changed and best.rules:
            smaller = replace(best, rules=())
            if _fails(smaller, best_plan):
                best, changed = smaller, True
    return best, best_plan
