"""Differential test of the middleware's fast lane (``TokenGuard.__call__`` → ``Authenticator.hit``).

A repeated ``Bearer`` token on a ``plain`` route (not public, not sensitive, not sender-constrained, no
authorization_details), without an MCP policy, is allowed straight from the verified cache when
``Authenticator.hit`` says so; everything else goes down the full path (``_enforce`` →
``authenticate_request``). The full path is the reference: the same app behind the same guard, with the
fast lane switched off on that guard instance (``guard.authenticator.hit = lambda digest, requirement: None``).

The property runs once per defect a request can have (``DEFECTS``: dates, audience, ``cnf``, forged,
opaque or garbage tokens, header shapes, revocations) and once without; hypothesis draws the rest: the
marks of one route (alone or two combined) next to fixed routes with one mark each, the token's claims
(scopes, ``acr``, ``act``, ``auth_time``, signing key), the casing of header name and scheme, the guard's
options (default, ``dpop="required"``, ``dpop="off"``, ``default="public"``, a decision hook, two
issuers), maybe a second defect, a priming request, how far the clock moves after the first request, and
the routes asked. Every request is sent twice to each guard (the second time the verified cache holds the
token); each answer (status, every response header, the body: what ``request.user`` and ``request.auth``
hold) must be the same from both guards, and so must their decision counters and the decision events they
report. Requests are driven as raw ASGI calls, so header names keep their case (Starlette's ``TestClient``
lowercases them).

Then: the fast lane does fire (``hit`` returns the token for a repeated one), revocations switch it off,
and a cached token that expires gets the full path's 401, never an exception.

Sensitive routes are in: the guard has ``client_id``/``client_secret``, the issuer's metadata names its
introspection endpoint, and an RFC 7662 endpoint is served through respx (it answers from the token's own
claims).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx
import pytest
import respx
from hypothesis import HealthCheck, assume, example, given, seed, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Host, Route, Router
from starlette.testclient import TestClient

from conftest import AUDIENCE, INTROSPECTION_URL, ISSUER, Issuer
from tokenguard import (
    TokenGuard,
    public,
    refuse_delegation,
    require_any_scope,
    require_auth_level,
    require_delegation,
    require_scopes,
    sender_constrained,
    sensitive,
)
from tokenguard.credentials import TokenCredentials
from tokenguard.errors import ConfigurationError
from tokenguard.events import DecisionEvent
from tokenguard.models import AccessToken
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

ALPHABET = ("read", "write", "admin")
#: A syntactically fine RFC 7638 thumbprint (43 base64url characters) no proof will ever match.
JKT = "A" * 21 + "-_" + "b" * 20

Headers = list[tuple[bytes, bytes]]


# -- the app: a route with the drawn marks, routes with fixed ones, and what the endpoint saw -----------------


async def _seen(request: Request) -> JSONResponse:
    """Everything the guard put in the request, as JSON (compared byte for byte between the guards)."""
    auth, user = request.auth, request.user
    token = isinstance(auth, TokenCredentials)
    binding = getattr(auth, "binding", None)
    return JSONResponse(
        {
            "authenticated": user.is_authenticated,
            "identity": user.identity if token else None,
            "identity_source": user.identity_source if token else None,
            "scopes": list(auth.scopes),
            "source": getattr(auth, "source", None),
            "binding": binding.method if binding is not None else None,
            "actor": auth.actor.sub if token and auth.actor is not None else None,
            "claims": auth.claims if token else None,
        }
    )


def _endpoint() -> Callable[[Request], Any]:
    """A new function each time: marks are attributes of the function object."""

    async def endpoint(request: Request) -> JSONResponse:
        return await _seen(request)

    return endpoint


#: A mark by name and argument, applied to a fresh endpoint.
MARKS: dict[str, Callable[[Any], Callable[[Any], Any]]] = {
    "require_scopes": lambda scopes: require_scopes(*scopes),
    "require_any_scope": lambda scopes: require_any_scope(*scopes),
    "require_auth_level": lambda _: require_auth_level(acr_values=["mfa"]),
    "require_auth_level_max_age": lambda _: require_auth_level(max_age=60),
    "require_delegation": lambda _: require_delegation(),
    "require_delegation_actors": lambda _: require_delegation(actors=["agent"]),
    "refuse_delegation": lambda _: refuse_delegation,
    "public": lambda _: public,
    "sensitive": lambda _: sensitive,
    "sender_constrained": lambda _: sender_constrained,
}
Mark = tuple[str, tuple[str, ...]]


#: Routes every app has, besides ``/r`` (the drawn marks) and ``/prime``: one mark each, and ``/plain``
#: (unmarked: the guard's default policy). ``/missing`` matches no route (the default policy, then 404).
FIXED: dict[str, list[Mark]] = {
    "/plain": [],
    "/read": [("require_scopes", ("read",))],
    "/read-write": [("require_scopes", ("read", "write"))],
    "/write-or-admin": [("require_any_scope", ("write", "admin"))],
    "/mfa": [("require_auth_level", ())],
    "/recent": [("require_auth_level_max_age", ())],
    "/delegated": [("require_delegation", ())],
    "/agent": [("require_delegation_actors", ())],
    "/in-person": [("refuse_delegation", ())],
    "/public": [("public", ())],
    "/sensitive": [("sensitive", ())],
    "/bound": [("sender_constrained", ())],
    "/read-mfa": [("require_scopes", ("read",)), ("require_auth_level", ())],
    "/two-groups": [("require_any_scope", ("read", "write")), ("require_any_scope", ("admin",))],
}
PATHS = ["/r", "/r", "/r", *FIXED, "/missing"]


def _marked(marks: list[Mark]) -> Callable[[Request], Any]:
    endpoint = _endpoint()
    for name, argument in marks:
        endpoint = MARKS[name](argument)(endpoint)
    return endpoint


#: One HTTP client for every guard the property builds: respx answers its requests, and an
#: ``httpx.AsyncClient`` of each guard's own would build an SSL context per guard (most of an example's time).
_HTTP = httpx.AsyncClient()


def _build(marks: list[Mark], clock: ManualClock, options: dict[str, Any]) -> Starlette:
    routes = [Route(path, _marked(path_marks)) for path, path_marks in {"/r": marks, **FIXED}.items()]
    # The priming route validates (and so caches) any token the issuer signed: it is never public.
    routes.append(Route("/prime", _marked([("require_any_scope", (*ALPHABET, "other"))])))
    app = Starlette(routes=routes)
    app.add_middleware(
        TokenGuard,
        **{
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "clock": clock,
            "client_id": "api",
            "client_secret": "secret",
            "http_client": _HTTP,
        }
        | options,
    )
    return app


def _guard_of(app: Starlette) -> TokenGuard:
    """The ``TokenGuard`` instance inside the built middleware stack (built by the lifespan startup)."""
    layer: Any = app.middleware_stack
    while layer is not None and not isinstance(layer, TokenGuard):
        layer = getattr(layer, "app", None)
    assert isinstance(layer, TokenGuard), app.middleware_stack
    return layer


def _count_signatures(validator: Any, counts: dict[str, int], name: str) -> None:
    """Count every signature check ``validator`` makes, in ``counts[name]``."""
    check = validator._verify_signature

    def counted(*args: Any) -> Any:
        counts[name] += 1
        return check(*args)

    validator._verify_signature = counted


def _switch_off_fast_lane(guard: TokenGuard) -> None:
    guard.authenticator.hit = lambda digest, requirement: None  # type: ignore[method-assign]
    guard.authenticator.miss = lambda raw, digest, requirement: None  # type: ignore[method-assign]


# -- raw ASGI requests (header names keep their case) ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    www_authenticate: str | None
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    error: str | None = None  # an exception out of the app (Starlette answered 500 and raised it again)


async def _asgi_get(app: Starlette, path: str, headers: Headers, *, default_host: bool = True) -> Answer:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [*([(b"host", b"testserver")] if default_host else []), *headers],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    done = anyio.Event()
    requested = False
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    error = None
    try:
        await app(scope, receive, send)
    except Exception as exc:  # compared like any answer: a crash on one side only is a disagreement
        error = f"{type(exc).__name__}: {exc}"
    done.set()
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    raw = tuple((bytes(k), bytes(v)) for k, v in start.get("headers", ()))
    challenge = next((v.decode("latin-1") for k, v in raw if k.lower() == b"www-authenticate"), None)
    return Answer(start["status"], challenge, raw, body, error)


def _get(client: TestClient, path: str, headers: Headers) -> Answer:
    assert client.portal is not None
    return client.portal.call(_asgi_get, client.app, path, headers)


# -- the issuer's RFC 7662 endpoint ---------------------------------------------------------------------------


def _payload(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def _serve_introspection(respx_mock: respx.MockRouter, clock: ManualClock, opaque: dict[str, dict[str, Any]]) -> None:
    """Active while the token's own ``exp`` has not passed; an opaque token's answer is registered when made."""

    def introspect(request: httpx.Request) -> httpx.Response:
        token = parse_qs(request.content.decode()).get("token", [""])[0]
        claims = opaque.get(token) or _payload(token)
        if claims is None or not isinstance(claims.get("exp"), (int, float)) or claims["exp"] <= clock():
            return httpx.Response(200, json={"active": False})
        return httpx.Response(200, json={"active": True, **claims})

    respx_mock.post(INTROSPECTION_URL).mock(side_effect=introspect)


# -- what hypothesis draws ------------------------------------------------------------------------------------

scope_sets = st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=2, unique=True).map(tuple)

#: Scope marks are drawn most often: they are the fast lane's own routes.
mark = st.one_of(
    st.tuples(st.sampled_from(["require_scopes", "require_any_scope"]), scope_sets),
    st.tuples(st.sampled_from(["require_scopes", "require_any_scope"]), scope_sets),
    st.tuples(st.sampled_from(sorted(set(MARKS) - {"require_scopes", "require_any_scope"})), st.just(())),
)

#: Route marks: none (the guard's default policy), one, or two combined (a combination ``merge`` refuses is
#: not a route anyone can write: rejected).
marks = st.lists(mark, max_size=2)


#: What can be wrong with a request, each on top of a valid token in a well-formed header. The property runs
#: once per defect (and once without), a few examples each, and hypothesis may add a second defect: so every
#: defect is tried, and most requests are still ones the fast lane could answer. Token: dates (past, within
#: the leeway, expiring between the two rounds when the clock moves), audience, a ``cnf`` binding, a forged
#: signature, an opaque token (introspected), garbage. Header: two Authorization fields, none, another scheme
#: (Basic, DPoP), other whitespace. Revocation after the first request, on both guards: this token's ``jti``,
#: its ``sub``, or another token's ``jti`` (revocations in use).
TOKEN_DEFECTS = (
    "expired",
    "expired_within_leeway",
    "expires_soon",
    "nbf_future",
    "nbf_within_leeway",
    "iat_future",
    "iat_within_leeway",
    "wrong_aud",
    "cnf",
    "forged",
    "opaque",
    "garbage",
)
HEADER_DEFECTS = ("two_headers", "no_header", "basic", "dpop_scheme", "two_spaces", "tab", "trailing_space")
REVOCATIONS = ("revoke_jti", "revoke_sub", "revoke_other")
DEFECTS = TOKEN_DEFECTS + HEADER_DEFECTS + REVOCATIONS


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    """The claims a valid token may or may not have; none makes it invalid on its own."""

    scope: tuple[str, ...] | None  # None: no scope claim
    acr: str | None
    actor: str | None
    sub: bool  # without sub, the identity is the client_id
    auth_time: int | None  # seconds from now
    kid: str


token_specs = st.builds(
    TokenSpec,
    scope=st.sampled_from(
        [None, (), ("read",), ("write",), ("admin",), ("read", "write"), ("write", "admin"), ALPHABET]
    ),
    acr=st.sampled_from([None, "mfa", "pwd"]),
    actor=st.sampled_from([None, "agent", "robot"]),
    sub=st.booleans(),
    auth_time=st.sampled_from([None, -30, -100]),
    kid=st.sampled_from(["rsa-1", "ec-1", "ed-1"]),
)


def _mint(idp: Issuer, spec: TokenSpec, flaws: tuple[str, ...], opaque: dict[str, dict[str, Any]]) -> str:
    now = int(idp.clock())
    exp = {"expired": -100, "expired_within_leeway": -10, "expires_soon": 10}
    nbf = {"nbf_future": 100, "nbf_within_leeway": 10}
    iat = {"iat_future": 100, "iat_within_leeway": 20}
    claims: dict[str, Any] = {
        "scope": " ".join(spec.scope) if spec.scope is not None else None,
        "acr": spec.acr,
        "act": {"sub": spec.actor} if spec.actor is not None else None,
        "sub": "alice" if spec.sub else None,
        "auth_time": now + spec.auth_time if spec.auth_time is not None else None,
        # Of two defects of one claim, the first drawn wins.
        "exp": now + next((exp[flaw] for flaw in flaws if flaw in exp), 300),
        "nbf": next((now + nbf[flaw] for flaw in flaws if flaw in nbf), None),
        "iat": now + next((iat[flaw] for flaw in flaws if flaw in iat), 0),
        "cnf": {"jkt": JKT} if "cnf" in flaws else None,
        "aud": "https://other.example" if "wrong_aud" in flaws else AUDIENCE,
    }
    if "garbage" in flaws:
        return "not.a-token.at-all"
    if "opaque" in flaws:
        token = f"opaque-{len(opaque)}-{now}"
        opaque[token] = idp.claims(**claims)
        return token
    token = idp.token(spec.kid, **claims)
    if "forged" in flaws:
        head, body, signature = token.split(".")
        token = f"{head}.{body}.{signature[:-3]}{'A' if signature[-3] != 'A' else 'B'}{signature[-2:]}"
    return token


@dataclasses.dataclass(frozen=True)
class Shape:
    """How the token is sent, when nothing is wrong with the header: any casing of name and scheme."""

    name: str
    scheme: str
    second_name: str  # the name of a second Authorization field ("two_headers")

    def headers(self, token: str, flaws: tuple[str, ...]) -> Headers:
        scheme = "Basic" if "basic" in flaws else "DPoP" if "dpop_scheme" in flaws else self.scheme
        separator = "  " if "two_spaces" in flaws else "\t" if "tab" in flaws else " "
        trailing = " " if "trailing_space" in flaws else ""
        value = f"{scheme}{separator}{token}{trailing}".encode("latin-1")
        if "no_header" in flaws:
            return []
        if "two_headers" in flaws:
            return [(self.name.encode(), value), (self.second_name.encode(), value)]
        return [(self.name.encode(), value)]


header_names = st.sampled_from(["authorization", "Authorization", "AUTHORIZATION"])
shapes = st.builds(
    Shape,
    name=header_names,
    scheme=st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
    second_name=header_names,
)

#: "no_cache": ``verified_cache_size=0``, so every request of a Bearer token on a plain route is decided by
#: ``miss`` (or the full path), never by ``hit``.
guard_options = st.sampled_from(
    ["default", "dpop_required", "default_public", "dpop_off", "hooked", "two_issuers", "no_cache", "no_cache_dpop_off"]
)


@dataclasses.dataclass
class Case:
    marks: list[Mark]  # on /r
    paths: list[str]  # each requested twice from both guards, in this order
    token: TokenSpec
    shape: Shape
    second: str | None  # a second defect, besides the one the test is parametrized with
    options: str
    # First send a well-formed token to /prime: this one ("same": the verified cache holds it), or another
    # one ("other": the keys are fetched, so this token is validated by ``miss``), or none.
    prime: str | None
    advance: int  # seconds the clock moves after the first request (then the revocation, if any)


cases = st.builds(
    Case,
    marks=marks,
    paths=st.lists(st.sampled_from(PATHS), min_size=1, max_size=4),
    token=token_specs,
    shape=shapes,
    second=st.sampled_from((None,) * (2 * len(DEFECTS)) + DEFECTS),
    options=guard_options,
    prime=st.sampled_from([None, "same", "other", "other", "other"]),
    advance=st.sampled_from([0, 15, 45]),
)


def _options(name: str, events: list[DecisionEvent]) -> dict[str, Any]:
    if name == "dpop_required":
        return {"dpop": "required"}
    if name == "default_public":
        return {"default": "public"}
    if name == "dpop_off":
        return {"dpop": "off"}
    if name == "hooked":
        return {"on_decision": events.append}
    if name == "no_cache":  # proofs may be checked (dpop="allowed"): ``miss`` must leave every token to the full path
        return {"verified_cache_size": 0}
    if name == "no_cache_dpop_off":  # no proof can be asked for: ``miss`` decides every Bearer request
        return {"verified_cache_size": 0, "dpop": "off"}
    if name == "two_issuers":  # a MultiIssuerAuthenticator; the second issuer is never asked (no token names it)
        return {"issuer": [ISSUER, "https://idp-b.example.com"]}
    return {}


def _revocation(flaws: tuple[str, ...], token: str) -> dict[str, str] | None:
    if "revoke_sub" in flaws:
        return {"sub": "alice"}
    if "revoke_other" in flaws:
        return {"jti": "some-other-token"}
    claims = _payload(token) if "revoke_jti" in flaws else None
    return {"jti": str(claims["jti"])} if claims is not None else None


def _call(client: TestClient, function: Callable[..., Any], **kwargs: Any) -> Any:
    """Await ``function(**kwargs)`` in the client's event loop (the one its app runs in)."""
    assert client.portal is not None
    return client.portal.call(functools.partial(function, **kwargs))


def _event_fields(events: list[DecisionEvent]) -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(event), "latency": None} for event in events]


# -- the property ---------------------------------------------------------------------------------------------


#: Header defects with which the fast lane is never even asked (not one ``Bearer `` value).
NOT_ASKED = frozenset({"two_headers", "no_header", "basic", "dpop_scheme", "tab"})
#: Defects of a token that parses as a compact JWS: ``miss`` raises the full path's refusal itself.
MISS_REFUSES = frozenset({"expired", "nbf_future", "iat_future", "wrong_aud", "forged"})


@pytest.mark.parametrize("defect", [None, *DEFECTS])
def test_the_fast_lane_decides_exactly_as_the_full_path(
    idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter, defect: str | None
) -> None:
    opaque: dict[str, dict[str, Any]] = {}
    _serve_introspection(respx_mock, clock, opaque)
    fired: Counter[str] = Counter()

    @settings(
        max_examples=150 if defect is None else 8,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @seed(zlib.crc32(str(defect).encode()))  # reproducible, and other cases for each defect
    @given(case=cases)
    def check(case: Case) -> None:
        fast_events: list[DecisionEvent] = []
        reference_events: list[DecisionEvent] = []
        try:
            fast_app = _build(case.marks, clock, _options(case.options, fast_events))
            reference_app = _build(case.marks, clock, _options(case.options, reference_events))
        except ConfigurationError:
            assume(False)  # marks that cannot be combined on one route (e.g. @public with scopes)
        flaws = tuple(dict.fromkeys(flaw for flaw in (defect, case.second) if flaw is not None))
        token = _mint(idp, case.token, flaws, opaque)
        headers = case.shape.headers(token, flaws)
        revocation = _revocation(flaws, token)
        with TestClient(fast_app) as fast, TestClient(reference_app) as reference:
            fast_guard, reference_guard = _guard_of(fast_app), _guard_of(reference_app)
            _switch_off_fast_lane(reference_guard)
            real_hit = fast_guard.authenticator.hit

            def counted_hit(digest: bytes, requirement: Any) -> AccessToken | None:
                result = real_hit(digest, requirement)
                fired["asked"] += 1
                if result is not None:
                    fired["hit, scopes only" if requirement.scopes_only else "hit, step-up or delegation"] += 1
                return result

            fast_guard.authenticator.hit = counted_hit  # type: ignore[method-assign]
            real_miss = fast_guard.authenticator.miss

            def counted_miss(raw: bytes, digest: bytes, requirement: Any) -> AccessToken | None:
                fired["miss asked"] += 1
                try:
                    result = real_miss(raw, digest, requirement)
                except Exception:
                    fired["miss refused"] += 1
                    raise
                fired["miss allowed" if result is not None else "miss deferred"] += 1
                return result

            fast_guard.authenticator.miss = counted_miss  # type: ignore[method-assign]
            verified = {"fast": 0, "reference": 0}
            for name, guard in (("fast", fast_guard), ("reference", reference_guard)):
                validator = getattr(guard.authenticator, "validator", None)  # a MultiIssuerAuthenticator has none
                if validator is not None:
                    _count_signatures(validator, verified, name)
            answers: list[tuple[str, Answer, Answer]] = []
            if case.prime is not None:
                primed = token if case.prime == "same" else idp.token(case.token.kid, scope="read")
                primer = [(b"authorization", f"Bearer {primed}".encode("latin-1"))]
                answers.append(("prime", _get(fast, "/prime", primer), _get(reference, "/prime", primer)))
            for index, path in enumerate(case.paths):
                for round_ in ("first", "second"):
                    label = f"{path} #{index} ({round_})"
                    answers.append((label, _get(fast, path, headers), _get(reference, path, headers)))
                    if index == 0 and round_ == "first":
                        clock.advance(case.advance)
                        if revocation is not None:
                            for guard, client in ((fast_guard, fast), (reference_guard, reference)):
                                _call(client, guard.revoke, **revocation)
            for label, fast_answer, reference_answer in answers:
                assert fast_answer == reference_answer, (label, flaws, case, headers, fast_answer, reference_answer)
                assert fast_answer.error is None, (label, flaws, case, headers, fast_answer)  # never a 500
            assert fast_guard.metrics.decisions == reference_guard.metrics.decisions, (
                flaws,
                case,
                fast_guard.metrics.decisions,
                reference_guard.metrics.decisions,
            )
            assert _event_fields(fast_events) == _event_fields(reference_events), (flaws, case)
            # Neither half of the lane checks a signature the full path would not: no token is verified twice.
            assert verified["fast"] == verified["reference"], (flaws, case, verified)

    check()
    # Not vacuous: the fast lane was asked, and without a defect it answered requests of both kinds of route.
    if defect not in NOT_ASKED:
        assert fired["asked"] >= 4, fired
    if defect is None:
        assert fired["hit, scopes only"] >= 10, fired
        assert fired["hit, step-up or delegation"] >= 3, fired
        assert fired["miss allowed"] >= 10, fired
    if defect in MISS_REFUSES:
        assert fired["miss refused"] >= 1, fired


# -- the fast lane fires --------------------------------------------------------------------------------------


@require_scopes("read")
async def reading(request: Request) -> JSONResponse:
    return await _seen(request)


def _reading_app(clock: ManualClock, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/read", reading)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, **options)
    return app


def test_the_fast_lane_answers_a_repeated_token(idp: Issuer, clock: ManualClock) -> None:
    """The first request fills the verified cache (a miss); the second is allowed by ``hit`` alone."""
    app = _reading_app(clock)
    token = idp.token(scope="read write")
    headers = [(b"authorization", f"Bearer {token}".encode())]
    returned: list[AccessToken | None] = []
    with TestClient(app) as client:
        guard = _guard_of(app)
        real_hit = guard.authenticator.hit

        def recording_hit(digest: bytes, requirement: Any) -> AccessToken | None:
            returned.append(real_hit(digest, requirement))
            return returned[-1]

        guard.authenticator.hit = recording_hit  # type: ignore[method-assign]
        first, second = _get(client, "/read", headers), _get(client, "/read", headers)
    assert first == second
    assert first.status == 200
    assert json.loads(second.body)["identity"] == "alice"
    assert returned[0] is None
    assert isinstance(returned[1], AccessToken)
    assert returned[1].scopes == frozenset({"read", "write"})
    assert guard.metrics.decisions == Counter({("allow", "ok"): 2})


# -- revocations turn the fast lane off -----------------------------------------------------------------------


@pytest.mark.parametrize("by", ["jti", "sub"])
def test_a_revoked_token_in_the_verified_cache_is_refused(idp: Issuer, clock: ManualClock, by: str) -> None:
    """After ``revoke``, a token the verified cache holds gets 401 on an ordinary route, every time, as from
    the reference guard; and ``hit`` no longer allows anything."""
    jti = "token-to-revoke"
    token = idp.token(scope="read", jti=jti)
    headers = [(b"authorization", f"Bearer {token}".encode())]
    fast_app, reference_app = _reading_app(clock), _reading_app(clock)
    with TestClient(fast_app) as fast, TestClient(reference_app) as reference:
        fast_guard, reference_guard = _guard_of(fast_app), _guard_of(reference_app)
        _switch_off_fast_lane(reference_guard)
        returned: list[AccessToken | None] = []
        real_hit = fast_guard.authenticator.hit

        def recording_hit(digest: bytes, requirement: Any) -> AccessToken | None:
            returned.append(real_hit(digest, requirement))
            return returned[-1]

        fast_guard.authenticator.hit = recording_hit  # type: ignore[method-assign]
        for _ in range(2):  # the second request is a verified-cache hit on the fast lane
            fast_answer, reference_answer = _get(fast, "/read", headers), _get(reference, "/read", headers)
            assert fast_answer == reference_answer
            assert fast_answer.status == 200
        assert [answer is not None for answer in returned] == [False, True]
        assert returned[-1] is not None
        for guard, client in ((fast_guard, fast), (reference_guard, reference)):
            _call(client, guard.revoke, **({"jti": jti} if by == "jti" else {"sub": "alice"}))
        returned.clear()
        # Three times: revoke() empties the verified cache, the next request validates (and caches) the token
        # again, and the one after finds it there: the fast lane must still say no.
        for _ in range(3):
            fast_answer, reference_answer = _get(fast, "/read", headers), _get(reference, "/read", headers)
            assert fast_answer == reference_answer
            assert fast_answer.status == 401
            assert 'error="invalid_token"' in (fast_answer.www_authenticate or "")
        assert returned == [None, None, None]
        assert fast_guard.metrics.decisions == reference_guard.metrics.decisions
        # A token issued after the revocation (another jti, or a later iat for sub=) is allowed again, by the
        # full path: the fast lane stays off while revocations are in use.
        clock.advance(2)
        fresh = [(b"authorization", f"Bearer {idp.token(scope='read')}".encode())]
        for _ in range(2):
            fast_answer, reference_answer = _get(fast, "/read", fresh), _get(reference, "/read", fresh)
            assert fast_answer == reference_answer
            assert fast_answer.status == 200
        assert returned[3:] == [None, None]
        assert fast_guard.metrics.decisions == reference_guard.metrics.decisions


# -- a token the verified cache holds expires ---------------------------------------------------------------


@pytest.mark.parametrize(("exp", "advance"), [(60, 91), (-10, 45)], ids=["expires-in-cache", "past-the-leeway"])
def test_a_cached_token_that_expired_gets_the_full_paths_401(
    idp: Issuer, clock: ManualClock, exp: int, advance: int
) -> None:
    """The verified cache refuses an entry past exp + leeway by raising ``InvalidToken("expired")``: the fast
    lane must leave that refusal to the full path (401, reason ``expired``), not let it out of the middleware
    (a 500). The first version of ``Authenticator.hit`` let it out; the property above finds that too."""
    token = idp.token(scope="read", exp=int(clock()) + exp)
    headers = [(b"authorization", f"Bearer {token}".encode())]
    fast_app, reference_app = _reading_app(clock), _reading_app(clock)
    with TestClient(fast_app) as fast, TestClient(reference_app) as reference:
        _switch_off_fast_lane(_guard_of(reference_app))
        assert _get(fast, "/read", headers) == _get(reference, "/read", headers)
        clock.advance(advance)
        fast_answer, reference_answer = _get(fast, "/read", headers), _get(reference, "/read", headers)
        assert fast_answer == reference_answer
        assert fast_answer.error is None
        assert fast_answer.status == 401
        assert 'error_description="The access token has expired."' in (fast_answer.www_authenticate or "")
        assert _guard_of(fast_app).metrics.decisions == _guard_of(reference_app).metrics.decisions
        assert _guard_of(fast_app).metrics.decisions[("deny", "expired")] == 1


# -- hostile bytes where the token goes ------------------------------------------------------------------------

#: Bytes a mutation puts into a real token: the other base64 alphabet, padding, dots, whitespace, controls,
#: non-ASCII, and characters b64token allows but base64url does not.
_HOSTILE = [b"+", b"/", b"=", b".", b" ", b"\t", b"\x00", b"\x7f", b"\xc3\xa9", b"\xff", b"~", b"A", b"_", b"-"]


@st.composite
def _mutated(draw: st.DrawFn, token: bytes) -> bytes:
    """``token`` with a few bytes replaced, inserted or removed, or a segment cut short or repeated."""
    value = bytearray(token)
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(value)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "cut", "repeat"]))
        piece = draw(st.sampled_from(_HOSTILE))
        if kind == "replace" and position < len(value):
            value[position : position + 1] = piece
        elif kind == "insert":
            value[position:position] = piece
        elif kind == "delete" and position < len(value):
            del value[position]
        elif kind == "cut":
            del value[position:]
        else:
            value += value[:position]
    return bytes(value)


def test_hostile_bytes_get_the_full_paths_answer(idp: Issuer, clock: ManualClock) -> None:
    """Whatever bytes follow ``Bearer ``, with the keys fetched and the header memo warm, the guard with the
    fast lane answers exactly as the full path does (never a 500, never an allow the full path refuses)."""
    good = idp.token(scope="read")
    fast_app, reference_app = _reading_app(clock), _reading_app(clock)
    with TestClient(fast_app) as fast, TestClient(reference_app) as reference:
        _switch_off_fast_lane(_guard_of(reference_app))
        primer = [(b"authorization", f"Bearer {idp.token(scope='read')}".encode())]
        for client in (fast, reference):  # keys fetched, the issuer's header remembered
            assert _get(client, "/read", primer).status == 200
        statuses: Counter[int] = Counter()
        authenticator = _guard_of(fast_app).authenticator
        real_miss, asked = authenticator.miss, Counter[str]()

        def counted_miss(raw: bytes, digest: bytes, requirement: Any) -> AccessToken | None:
            asked["miss"] += 1
            return real_miss(raw, digest, requirement)

        authenticator.miss = counted_miss  # type: ignore[method-assign]

        @settings(max_examples=150, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @seed(16)
        @given(value=_mutated(good.encode()))
        @example(value=good.encode())
        def check(value: bytes) -> None:
            headers = [(b"authorization", b"Bearer " + value)]
            fast_answer = _get(fast, "/read", headers)
            assert fast_answer == _get(reference, "/read", headers), value
            assert fast_answer.error is None, value
            assert fast_answer.status in (200, 400, 401), value
            statuses[fast_answer.status] += 1

        check()
        # Not vacuous: refusals of both kinds, and allowed requests, were compared.
        assert statuses[401] >= 10, statuses
        assert statuses[400] >= 3, statuses
        assert statuses[200] >= 1, statuses
        assert asked["miss"] >= 100, asked  # and the fast lane was asked about most of them


# -- a bound token goes to the full path, verified once ----------------------------------------------------------


@pytest.mark.parametrize("cache", [0, 100], ids=["no-verified-cache", "verified-cache"])
def test_a_bound_bearer_token_is_verified_once(idp: Issuer, clock: ManualClock, cache: int) -> None:
    """A ``cnf``-bound token sent as ``Bearer`` needs the full path (the proof rules decide). ``miss`` must
    not validate it first when nothing keeps the result for that path: without a verified cache, that would
    verify its signature twice (found by review). Same answer as the full path, one signature check each."""
    bound = idp.token(scope="read", cnf={"jkt": JKT})
    other = idp.token(scope="read")
    fast_app, reference_app = (
        _reading_app(clock, verified_cache_size=cache),
        _reading_app(clock, verified_cache_size=cache),
    )
    with TestClient(fast_app) as fast, TestClient(reference_app) as reference:
        fast_guard, reference_guard = _guard_of(fast_app), _guard_of(reference_app)
        _switch_off_fast_lane(reference_guard)
        for client in (fast, reference):  # the keys are fetched: the bound token is a first sight with keys at hand
            assert _get(client, "/read", [(b"authorization", f"Bearer {other}".encode())]).status == 200
        verified = {"fast": 0, "reference": 0}
        _count_signatures(fast_guard.authenticator.validator, verified, "fast")
        _count_signatures(reference_guard.authenticator.validator, verified, "reference")
        headers = [(b"authorization", f"Bearer {bound}".encode())]
        fast_answer, reference_answer = _get(fast, "/read", headers), _get(reference, "/read", headers)
        assert fast_answer == reference_answer
        assert fast_answer.status == 401
        assert verified == {"fast": 1, "reference": 1}


# -- a Host the router reads otherwise --------------------------------------------------------------------------


def test_two_host_fields_never_let_a_cached_token_reach_the_other_hosts_endpoint(
    idp: Issuer, clock: ManualClock
) -> None:
    """Starlette's ``Host`` routes read the first field named exactly ``host``; the guard keys its memoised
    decisions on the first ``Host`` in any case. Once a plain request to ``public.example`` has memoised the
    public endpoint's decision, ``HOST: public.example`` then ``host: admin.example`` finds that decision
    while the router runs the admin endpoint: the dispatch check applies the admin endpoint's own policy,
    on the first such request and on the repeated ones the verified cache could answer."""

    @public
    async def open_page(request: Request) -> JSONResponse:
        return JSONResponse({"page": "public"})

    @require_scopes("admin")
    async def admin_page(request: Request) -> JSONResponse:
        return JSONResponse({"page": "admin"})

    app = Starlette(
        routes=[
            Host("public.example", Router(routes=[Route("/x", open_page)])),
            Host("admin.example", Router(routes=[Route("/x", admin_page)])),
        ]
    )
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, http_client=_HTTP)
    hosts = [(b"HOST", b"public.example"), (b"host", b"admin.example")]
    reader, admin = idp.token(scope="read"), idp.token(scope="admin")
    with TestClient(app) as client:
        assert client.portal is not None

        def get(token: str | None) -> Answer:
            bearer = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
            assert client.portal is not None
            return client.portal.call(functools.partial(_asgi_get, app, "/x", [*hosts, *bearer], default_host=False))

        primed = client.portal.call(
            functools.partial(_asgi_get, app, "/x", [(b"host", b"public.example")], default_host=False)
        )
        assert json.loads(primed.body) == {"page": "public"}
        for _ in range(3):
            assert get(None).status == 401
            refused = get(reader)
            assert refused.status == 403, refused
            assert "insufficient_scope" in (refused.www_authenticate or "")
            allowed = get(admin)
            assert allowed.status == 200
            assert json.loads(allowed.body) == {"page": "admin"}
    assert _guard_of(app).resolver.mismatches >= 9  # every request was predicted wrong, and caught
