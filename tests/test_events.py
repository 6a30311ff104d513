"""Decision events and counters (``tokenguard.events``) through real guarded apps.

Every reason code that the middleware can produce is triggered by a real request: real signed tokens
from conftest's ``Issuer``, its metadata and JWKS and an RFC 7662 endpoint served through respx, time
moved by a ``ManualClock``. Each test checks the HTTP answer (status and ``error``) and the event.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

import tokenguard.events
from conftest import AUDIENCE, ISSUER, T0, Issuer, b64url, private_key
from test_introspection import CLIENT_ID, CLIENT_SECRET, IntrospectionEndpoint
from tokenguard import TokenGuard, public, require_scopes, sensitive
from tokenguard.events import REASON_CODES, DecisionEvent, Metrics, emit, subject_hash
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


@require_scopes("read:photos")
async def photos(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.user.identity})


@sensitive
@require_scopes("write:transfers")
async def transfer(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.user.identity})


@public
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.close()


ROUTES = [
    Route("/photos/{album}", photos),
    Route("/transfers", transfer, methods=["POST"]),
    Route("/health", health, methods=["GET", "OPTIONS"]),
    WebSocketRoute("/chat", chat),
]


class Recorder:
    """An ``on_decision`` hook that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[DecisionEvent] = []

    def __call__(self, event: DecisionEvent) -> None:
        self.events.append(event)

    @property
    def last(self) -> DecisionEvent:
        assert self.events, "no decision was reported"
        return self.events[-1]


def make_guard(clock: ManualClock, *hooks: Any, **options: Any) -> TokenGuard:
    settings: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **options}
    return TokenGuard(
        Starlette(routes=ROUTES), issuer=ISSUER, audience=AUDIENCE, clock=clock, on_decision=list(hooks), **settings
    )


@pytest.fixture
def endpoint(respx_mock: respx.MockRouter, clock: ManualClock, idp: Issuer) -> IntrospectionEndpoint:
    return IntrospectionEndpoint(respx_mock, clock)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(response: httpx.Response) -> str | None:
    error = response.json().get("error")
    assert error is None or isinstance(error, str)
    return error


# -- one case per reason code ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """A request that makes the guard decide ``reason``; ``prepare`` may change the issuer first."""

    reason: str
    status: int
    error: str | None
    headers: Callable[[Issuer, IntrospectionEndpoint], dict[str, str]] = lambda idp, endpoint: {}
    method: str = "GET"
    path: str = "/photos/summer"
    route: str = "/photos/{album}"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    prepare: Callable[[Issuer, IntrospectionEndpoint], None] = lambda idp, endpoint: None

    @property
    def outcome(self) -> str:
        return "allow" if self.status == 200 else "unavailable" if self.status == 503 else "deny"


def _header(**members: Any) -> dict[str, Any]:
    return {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1", **members}


def _jwe_shaped() -> str:
    head = b64url(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM"}).encode())
    return ".".join([head, *(b64url(secrets.token_bytes(16)) for _ in range(4))])


def _hs256(idp: Issuer) -> str:
    """HS256 while no shared secret is configured: not on the allow-list (RFC 8725 §3.1)."""
    return jwt.encode(idp.claims(), "k" * 32, algorithm="HS256", headers={"kid": "rsa-1", "typ": "at+jwt"})


def _transfer_token(idp: Issuer, endpoint: IntrospectionEndpoint) -> str:
    token = idp.token(scope="write:transfers")
    endpoint.activate(token)
    return token


def _take_issuer_down(idp: Issuer, endpoint: IntrospectionEndpoint) -> None:
    idp.down = True


def _fail_introspection(idp: Issuer, endpoint: IntrospectionEndpoint) -> None:
    endpoint.failure = httpx.Response(500, json={"error": "server_error"})


def _broken_http_client() -> httpx.AsyncClient:
    raise ZeroDivisionError("a factory with a bug")


CASES = [
    Case("ok", 200, None, lambda idp, e: bearer(idp.token())),
    Case("public", 200, None, path="/health", route="/health"),
    Case("missing_token", 401, None),
    Case("missing_token", 401, None, lambda idp, e: {"Authorization": "Basic YWxpY2U6c2VjcmV0"}),
    Case("malformed_header", 400, "invalid_request", lambda idp, e: {"Authorization": f"Bearer {idp.token()} x"}),
    Case("token_too_large", 401, "invalid_token", lambda idp, e: bearer(idp.token(pad="x" * 20_000))),
    Case("malformed_token", 401, "invalid_token", lambda idp, e: bearer("a.b.c")),
    Case("unsupported_token", 401, "invalid_token", lambda idp, e: bearer(_jwe_shaped())),
    Case("disallowed_alg", 401, "invalid_token", lambda idp, e: bearer(_hs256(idp))),
    Case("bad_typ", 401, "invalid_token", lambda idp, e: bearer(idp.token(headers={"typ": "dpop+jwt"}))),
    Case(
        "bad_header",
        401,
        "invalid_token",
        lambda idp, e: bearer(idp.raw_token(_header(crit=["exp"]), {**idp.claims(), "exp": int(T0) + 60})),
    ),
    Case(
        "unknown_kid",
        401,
        "invalid_token",
        lambda idp, e: bearer(idp.token(None, key=private_key("rsa"), headers={"kid": "retired-1"})),
    ),
    Case(
        "key_mismatch",
        401,
        "invalid_token",
        lambda idp, e: bearer(idp.token(None, key=private_key("rsa"), alg="RS256", headers={"kid": "ec-1"})),
    ),
    Case("bad_signature", 401, "invalid_token", lambda idp, e: bearer(idp.token(key=private_key("rsa", slot=1)))),
    Case("expired", 401, "invalid_token", lambda idp, e: bearer(idp.token(exp=int(T0) - 3600))),
    Case("not_yet_valid", 401, "invalid_token", lambda idp, e: bearer(idp.token(nbf=int(T0) + 3600))),
    Case("wrong_issuer", 401, "invalid_token", lambda idp, e: bearer(idp.token(iss="https://evil.example"))),
    Case("wrong_audience", 401, "invalid_token", lambda idp, e: bearer(idp.token(aud="https://other.example"))),
    Case("missing_claim", 401, "invalid_token", lambda idp, e: bearer(idp.token(exp=None))),
    Case(
        "bad_claim",
        401,
        "invalid_token",
        lambda idp, e: bearer(idp.raw_token(_header(), {**idp.claims(), "exp": str(int(T0) + 300)})),
    ),
    Case("no_identity", 401, "invalid_token", lambda idp, e: bearer(idp.token(sub=None, client_id=None))),
    Case("bad_act", 401, "invalid_token", lambda idp, e: bearer(idp.token(act={"client_id": "no-sub"}))),
    Case(
        "inactive",
        401,
        "invalid_token",
        lambda idp, e: bearer(idp.token(scope="write:transfers")),  # the endpoint does not know it
        method="POST",
        path="/transfers",
        route="/transfers",
    ),
    Case(
        "opaque_not_supported",
        401,
        "invalid_token",
        lambda idp, e: bearer(secrets.token_urlsafe(24)),
        options={"client_id": None, "client_secret": None},
    ),
    Case("insufficient_scope", 403, "insufficient_scope", lambda idp, e: bearer(idp.token(scope="profile"))),
    Case(
        "issuer_unavailable",
        503,
        "temporarily_unavailable",
        lambda idp, e: bearer(idp.token()),
        prepare=_take_issuer_down,
    ),
    Case(
        "introspection_unavailable",
        503,
        "temporarily_unavailable",
        lambda idp, e: bearer(_transfer_token(idp, e)),
        method="POST",
        path="/transfers",
        route="/transfers",
        prepare=_fail_introspection,
    ),
    Case(
        "internal_error",
        503,
        "temporarily_unavailable",
        lambda idp, e: bearer(idp.token()),
        options={"http_client": _broken_http_client},
    ),
]

#: Codes in the closed set that no request can produce through the middleware today.
RESERVED = {"invalid_token"}  # the generic code: every refusal names a more precise one
#: Codes of features whose own end-to-end tests trigger them (step-up, RFC 9396 authorization_details).
TESTED_ELSEWHERE = {
    "insufficient_user_authentication",
    "insufficient_authorization_details",
    "authorization_details_check_failed",
    "bad_request_body",
    "method_not_allowed",  # test_metadata_document_refuses_other_methods_with_its_own_code, below
    # Sender-constrained tokens: tests/test_dpop_*.py and tests/test_mtls.py.
    "bad_dpop_proof",
    "dpop_replay",
    "dpop_htu_mismatch",
    "dpop_htm_mismatch",
    "dpop_iat_out_of_window",
    "dpop_ath_mismatch",
    "dpop_nonce_required",
    "dpop_binding_mismatch",
    "certificate_mismatch",
    "sender_constraint_required",
    "replay_store_unavailable",
    # Fleet mode: tests/test_revocation.py and tests/test_fleet.py.
    "revoked",
    "revocations_stale",
    # Tenant template issuers (Entra multi-tenant): tests/test_interop_cloud.py.
    "wrong_tenant",
    # Delegation (RFC 8693): tests/test_delegation.py.
    "delegation_required",
    "delegation_refused",
    "actor_not_allowed",
}


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.reason}-{case.status}")
def test_each_reason_code_is_reported_with_its_answer(
    case: Case, clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """The request gets the exact status and ``error``; the hook gets one event with the matching fields."""
    recorder = Recorder()
    guard = make_guard(clock, recorder, **case.options)
    headers = case.headers(idp, endpoint)
    case.prepare(idp, endpoint)
    with TestClient(guard) as client:
        response = client.request(case.method, case.path, headers=headers)
    assert response.status_code == case.status
    if case.status != 200:
        assert error_of(response) == case.error
    assert len(recorder.events) == 1
    event = recorder.last
    assert (event.outcome, event.reason, event.status) == (case.outcome, case.reason, case.status)
    assert event.reason in REASON_CODES
    assert (event.method, event.route) == (case.method, case.route)
    assert event.latency > 0


def test_metadata_document_refuses_other_methods_with_its_own_code(clock: ManualClock, idp: Issuer) -> None:
    """POST to the RFC 9728 document is a 405 whose event says method_not_allowed, not a token reason."""
    recorder = Recorder()
    guard = make_guard(clock, recorder)
    with TestClient(guard) as client:
        response = client.post("/.well-known/oauth-protected-resource")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert (recorder.last.outcome, recorder.last.reason, recorder.last.status) == ("deny", "method_not_allowed", 405)


def test_every_reason_code_is_either_triggered_above_or_reserved() -> None:
    """A new code in the closed set needs a case here (or a reason to be reserved)."""
    triggered = {case.reason for case in CASES}
    assert triggered <= REASON_CODES
    assert REASON_CODES - triggered == RESERVED | TESTED_ELSEWHERE


def test_every_reason_code_is_documented() -> None:
    """The table in ``tokenguard.events``' docstring lists every code of the closed set."""
    doc = tokenguard.events.__doc__ or ""
    documented = {line.split()[0] for line in doc.splitlines() if line.startswith("    ") and line.split()}
    assert documented >= REASON_CODES


# -- the event's content -----------------------------------------------------------------------------------


def test_an_allow_event_carries_the_token_context_without_the_token(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """kid, iss, client_id, scopes and a short hash of sub; nothing of the token itself."""
    recorder = Recorder()
    token = idp.token("ec-1", scope="read:photos profile")
    with TestClient(make_guard(clock, recorder)) as client:
        assert client.get("/photos/summer", headers=bearer(token)).status_code == 200
    event = recorder.last
    assert event.source == "jwt"
    assert (event.kid, event.issuer, event.client_id) == ("ec-1", ISSUER, "photos-app")
    assert event.subject_hash == subject_hash("alice")
    assert event.scopes == ("profile", "read:photos")
    text = repr(event) + json.dumps(event.log_fields())
    for part in token.split("."):
        assert part not in text
    assert "alice" not in text


def test_an_introspected_allow_names_introspection_as_the_source(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """On a @sensitive route the event's source is "introspection", with the key that signed the JWT."""
    recorder = Recorder()
    token = _transfer_token(idp, endpoint)
    with TestClient(make_guard(clock, recorder)) as client:
        assert client.post("/transfers", headers=bearer(token)).status_code == 200
    assert (recorder.last.reason, recorder.last.source, recorder.last.kid) == ("ok", "introspection", "rsa-1")


def test_events_are_frozen(clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint) -> None:
    """A hook cannot change what other hooks (or the log) see."""
    recorder = Recorder()
    with TestClient(make_guard(clock, recorder)) as client:
        client.get("/health")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recorder.last.reason = "ok"  # type: ignore[misc]


def test_unmatched_paths_preflights_and_websockets_are_reported(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """A path with no route is "<unmatched>"; a CORS preflight is public; a refused WebSocket is "WEBSOCKET"."""
    recorder = Recorder()
    with TestClient(make_guard(clock, recorder)) as client:
        assert client.get("/no/such/path").status_code == 401
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
        assert client.options("/health", headers=preflight).status_code == 200
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/chat"):
            pass
    summary = [(e.method, e.route, e.outcome, e.reason, e.status) for e in recorder.events]
    assert summary[0] == ("GET", "<unmatched>", "deny", "missing_token", 401)
    # A preflight is public, and reported under the route it asks about.
    assert summary[1] == ("OPTIONS", "/health", "allow", "public", 200)
    assert summary[2] == ("WEBSOCKET", "/chat", "deny", "missing_token", 401)


def test_decisions_are_logged_with_structured_fields(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """An allow is logged at DEBUG, a refusal at INFO, on the ``tokenguard`` logger with ``tg_`` fields."""
    caplog.set_level(logging.DEBUG, logger="tokenguard")
    with TestClient(make_guard(clock)) as client:
        client.get("/photos/summer", headers=bearer(idp.token()))
        client.get("/photos/summer", headers=bearer(idp.token(scope="profile")))
    decisions = [r for r in caplog.records if r.name == "tokenguard" and hasattr(r, "tg_decision")]
    assert [(r.levelno, r.tg_decision, r.tg_reason, r.tg_status) for r in decisions] == [  # type: ignore[attr-defined]
        (logging.DEBUG, "allow", "ok", 200),
        (logging.INFO, "deny", "insufficient_scope", 403),
    ]
    allow = decisions[0]
    assert allow.tg_route == "/photos/{album}"  # type: ignore[attr-defined]
    assert (allow.tg_kid, allow.tg_iss, allow.tg_client_id) == ("rsa-1", ISSUER, "photos-app")  # type: ignore[attr-defined]
    assert allow.tg_sub_hash == subject_hash("alice")  # type: ignore[attr-defined]
    assert allow.tg_latency_ms > 0  # type: ignore[attr-defined]


def test_a_repeated_token_is_counted_always_and_logged_once_someone_listens(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """The verified-cache hit counts its allow without building an event while nobody listens, and
    logs it as soon as DEBUG is on for the ``tokenguard`` logger (checked per request, not at startup)."""
    token = idp.token()
    guard = make_guard(clock)
    with TestClient(guard) as client:
        caplog.set_level(logging.INFO, logger="tokenguard")
        for _ in range(3):
            assert client.get("/photos/summer", headers=bearer(token)).status_code == 200
        assert guard.metrics_snapshot()["decisions"]["allow"] == 3
        assert not [r for r in caplog.records if hasattr(r, "tg_decision")]
        caplog.set_level(logging.DEBUG, logger="tokenguard")
        for _ in range(2):
            assert client.get("/photos/summer", headers=bearer(token)).status_code == 200
    allows = [r for r in caplog.records if getattr(r, "tg_decision", None) == "allow"]
    assert [(r.levelno, r.tg_reason, r.tg_route) for r in allows] == [(logging.DEBUG, "ok", "/photos/{album}")] * 2  # type: ignore[attr-defined]
    assert guard.metrics_snapshot()["decisions"]["allow"] == 5


# -- hooks -------------------------------------------------------------------------------------------------


def test_every_hook_gets_the_same_event(clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint) -> None:
    """Several hooks are called in order with one shared event per decision."""
    first, second = Recorder(), Recorder()
    with TestClient(make_guard(clock, first, second)) as client:
        client.get("/health")
        client.get("/photos/summer", headers=bearer(idp.token()))
    assert len(first.events) == len(second.events) == 2
    assert all(a is b for a, b in zip(first.events, second.events, strict=True))


def test_a_single_callable_is_accepted(clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint) -> None:
    """``on_decision=hook`` (not a list) works too."""
    recorder = Recorder()
    guard = TokenGuard(Starlette(routes=ROUTES), issuer=ISSUER, audience=AUDIENCE, clock=clock, on_decision=recorder)
    with TestClient(guard) as client:
        client.get("/health")
    assert [event.reason for event in recorder.events] == ["public"]


def test_a_failing_hook_breaks_nothing(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises: the request is answered, later hooks still run, the error is counted and
    logged by the hook's name and the exception type only (its message could hold anything)."""
    token = idp.token()

    def exploding_hook(event: DecisionEvent) -> None:
        raise RuntimeError(f"cannot ship {token}")

    recorder = Recorder()
    guard = make_guard(clock, exploding_hook, recorder)
    with TestClient(guard) as client:
        assert client.get("/photos/summer", headers=bearer(token)).status_code == 200
        assert client.get("/photos/summer").status_code == 401
    assert [event.reason for event in recorder.events] == ["ok", "missing_token"]
    assert guard.metrics_snapshot()["hook_errors"] == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "tokenguard"]
    assert len(errors) == 2
    assert all("exploding_hook" in message and "RuntimeError" in message for message in errors)
    assert token not in caplog.text


# -- counters ----------------------------------------------------------------------------------------------


def test_decisions_and_jwks_counters_move(clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint) -> None:
    """Decisions by outcome and reason; JWKS fetches (first use, unknown-kid refetch) and a failed refresh."""
    guard = make_guard(clock)
    with TestClient(guard) as client:
        client.get("/health")
        client.get("/photos/summer")
        client.get("/photos/summer", headers=bearer(idp.token()))
        client.get("/photos/summer", headers=bearer(idp.token(exp=int(T0) - 3600)))
        assert guard.metrics_snapshot()["jwks_fetches"] == 1
        client.get("/photos/summer", headers=bearer(idp.token(None, key=private_key("rsa"), headers={"kid": "x"})))
        snapshot = guard.metrics_snapshot()
        assert snapshot["decisions"] == {"allow": 2, "deny": 3}
        assert snapshot["decisions_by_reason"] == {
            "public": 1,
            "missing_token": 1,
            "ok": 1,
            "expired": 1,
            "unknown_kid": 1,
        }
        assert (snapshot["jwks_fetches"], snapshot["jwks_fetch_failures"]) == (2, 0)
        idp.down = True
        clock.advance(3601)  # past the JWKS max-age: the next token triggers a fetch, which fails
        assert client.get("/photos/summer", headers=bearer(idp.token())).status_code == 200  # stale keys
        snapshot = guard.metrics_snapshot()
    assert (snapshot["jwks_fetches"], snapshot["jwks_fetch_failures"]) == (3, 1)
    assert snapshot["decisions_by_reason"]["ok"] == 2
    json.dumps(snapshot)


def test_introspection_counters_and_breaker_state_move(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """Calls, cache hits and misses, and the breaker going open and closed again."""
    guard = make_guard(clock, breaker_threshold=2, breaker_cooldown=10.0)

    def counters() -> tuple[int, int, int, str]:
        snapshot = guard.metrics_snapshot()
        return (
            snapshot["introspection_calls"],
            snapshot["introspection_cache_hits"],
            snapshot["introspection_cache_misses"],
            snapshot["breaker_state"],
        )

    with TestClient(guard) as client:
        token = _transfer_token(idp, endpoint)
        assert client.post("/transfers", headers=bearer(token)).status_code == 200
        assert counters() == (1, 0, 1, "closed")
        assert client.post("/transfers", headers=bearer(token)).status_code == 200
        assert counters() == (1, 1, 1, "closed")
        endpoint.failure = httpx.Response(500)
        for _ in range(3):
            assert client.post("/transfers", headers=bearer(_transfer_token(idp, endpoint))).status_code == 503
        assert counters() == (3, 1, 4, "open")  # the third was refused by the open breaker, without a call
        clock.advance(10.0)
        endpoint.failure = None
        assert client.post("/transfers", headers=bearer(_transfer_token(idp, endpoint))).status_code == 200
        assert counters() == (4, 1, 5, "closed")
    assert guard.metrics_snapshot()["decisions_by_reason"] == {"ok": 3, "introspection_unavailable": 3}


def test_counters_move_with_no_hook_and_no_logging(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """With nobody listening no event is built, but every decision is still counted."""
    caplog.set_level(logging.WARNING, logger="tokenguard")
    guard = make_guard(clock)
    with TestClient(guard) as client:
        client.get("/health")
        client.get("/photos/summer", headers=bearer(idp.token()))
        client.get("/photos/summer", headers=bearer(idp.token(aud="https://other.example")))
    snapshot = guard.metrics_snapshot()
    assert snapshot["decisions"] == {"allow": 2, "deny": 1}
    assert snapshot["decisions_by_reason"] == {"public": 1, "ok": 1, "wrong_audience": 1}


# -- the module's own pieces -------------------------------------------------------------------------------


def test_subject_hash_is_short_stable_and_not_the_subject() -> None:
    """Twelve hex digits of SHA-256: the same for one subject, different for another, None for None."""
    tag = subject_hash("alice")
    assert tag is not None
    assert len(tag) == 12
    assert int(tag, 16) >= 0
    assert tag == subject_hash("alice")
    assert tag != subject_hash("alicf")
    assert "alice" not in tag
    assert subject_hash(None) is None


def _event(**fields: Any) -> DecisionEvent:
    base: dict[str, Any] = {
        "outcome": "deny",
        "reason": "expired",
        "status": 401,
        "method": "GET",
        "route": "/x",
        "latency": 0.001,
    }
    return DecisionEvent(**{**base, **fields})


def test_metrics_snapshot_groups_by_outcome_and_reason() -> None:
    """``record`` (an event) and ``count`` (the fast path) feed the same counters."""
    metrics = Metrics()
    metrics.record(_event())
    metrics.count("deny", "expired")
    metrics.count("allow", "ok")
    assert metrics.snapshot() == {
        "decisions": {"deny": 2, "allow": 1},
        "decisions_by_reason": {"expired": 2, "ok": 1},
        "hook_errors": 0,
    }


def test_emit_counts_logs_and_contains_hook_errors(caplog: pytest.LogCaptureFixture) -> None:
    """``emit`` counts once, logs once, and a raising hook does not stop the next one."""
    caplog.set_level(logging.INFO, logger="tokenguard")
    metrics = Metrics()
    seen: list[DecisionEvent] = []

    class Exploding:
        def __call__(self, event: DecisionEvent) -> None:
            raise ValueError("no")

    event = _event()
    emit(event, metrics, (Exploding(), seen.append))
    assert seen == [event]
    assert metrics.snapshot()["decisions"] == {"deny": 1}
    assert metrics.hook_errors == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "tokenguard"]
    assert messages == [
        "tokenguard: deny GET /x: expired (401)",
        "tokenguard: on_decision hook test_emit_counts_logs_and_contains_hook_errors.<locals>.Exploding failed: "
        "ValueError",
    ]


def test_the_event_is_reported_before_the_endpoint_runs(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """The decision is reported when it is made, before the app runs (not after the response)."""
    recorder = Recorder()
    seen_before_endpoint: list[int] = []

    @public
    async def probe(request: Request) -> Response:
        seen_before_endpoint.append(len(recorder.events))
        return Response("ok")

    guard = TokenGuard(
        Starlette(routes=[Route("/probe", probe)]), issuer=ISSUER, audience=AUDIENCE, clock=clock, on_decision=recorder
    )
    with TestClient(guard) as client:
        client.get("/probe")
    assert seen_before_endpoint == [1]
