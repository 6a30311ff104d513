"""Token-safe logging and readiness, end to end through real guarded apps.

Every failure path is driven through a real Starlette app: real signed JWTs and opaque tokens, the
issuer's metadata, JWKS and RFC 7662 endpoint served through respx, time moved by a ``ManualClock``.
Two proofs about logs: tokenguard's own records never hold a token and carry the structured ``tg_``
fields; and ``TokenRedactingFilter`` on a handler keeps every token out of what the process writes,
including uvicorn's access log (``uvicorn.logging.AccessFormatter``, its default format, records made
exactly as uvicorn's HTTP protocols make them). Then readiness: health endpoints built on
``ready()``/``status()`` through warm-up, an outage, the stale period and recovery.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import respx
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from conftest import AUDIENCE, ISSUER, T0, Issuer, private_key
from test_introspection import CLIENT_ID, CLIENT_SECRET, IntrospectionEndpoint
from tokenguard import TokenGuard, public, require_scopes, sensitive
from tokenguard.events import DecisionEvent, subject_hash
from tokenguard.redaction import REDACTED, TokenRedactingFilter
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

ACCESS_FORMAT = LOGGING_CONFIG["formatters"]["access"]["fmt"]
GENERAL_FORMAT = "%(levelname)s %(name)s %(message)s"
TG_FIELDS = ("tg_decision", "tg_reason", "tg_route", "tg_status", "tg_kid", "tg_iss", "tg_client_id", "tg_sub_hash")


@require_scopes("read:photos")
async def photos(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.user.identity})


@sensitive
@require_scopes("write:transfers")
async def transfer(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.user.identity})


@require_scopes("read:photos")
async def crash(request: Request) -> JSONResponse:
    # An app bug that puts the credential into an exception message.
    raise RuntimeError(f"upstream rejected {request.headers['authorization']}")


@public
async def health(request: Request) -> JSONResponse:
    guard: TokenGuard = request.scope["tokenguard"]
    is_ready = guard.ready()
    return JSONResponse({"ready": is_ready, "status": guard.status()}, status_code=200 if is_ready else 503)


ROUTES = [
    Route("/photos/{album}", photos),
    Route("/transfers", transfer, methods=["POST"]),
    Route("/crash", crash),
    Route("/health", health),
]


def make_app(clock: ManualClock, **options: Any) -> Starlette:
    app = Starlette(routes=ROUTES)
    settings: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **options}
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, **settings)
    return app


@pytest.fixture
def endpoint(respx_mock: respx.MockRouter, clock: ManualClock, idp: Issuer) -> IntrospectionEndpoint:
    return IntrospectionEndpoint(respx_mock, clock)


def secrets_of(token: str) -> list[str]:
    """What must never be logged: the token, and each JWT segment that is not the (public) header."""
    parts = token.split(".")
    return [token, *parts[1:]] if len(parts) == 3 else [token]


# -- the failure paths -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FailurePath:
    """One way a request can go wrong; ``request`` sets the scene and returns the token it sends."""

    name: str
    status: int
    reason: str
    request: Callable[[Issuer, IntrospectionEndpoint], tuple[str, str, dict[str, str], str]]

    @property
    def outcome(self) -> str:
        return "allow" if self.status == 200 else "unavailable" if self.status == 503 else "deny"


def _photos(token: str, header: str | None = None) -> tuple[str, str, dict[str, str], str]:
    return "GET", "/photos/summer", {"Authorization": header or f"Bearer {token}"}, token


def _transfers(token: str) -> tuple[str, str, dict[str, str], str]:
    return "POST", "/transfers", {"Authorization": f"Bearer {token}"}, token


def _activated(idp: Issuer, endpoint: IntrospectionEndpoint) -> str:
    token = idp.token(scope="write:transfers")
    endpoint.activate(token)
    return token


def _introspection_fails(idp: Issuer, endpoint: IntrospectionEndpoint) -> tuple[str, str, dict[str, str], str]:
    token = _activated(idp, endpoint)
    endpoint.failure = httpx.ConnectError
    return _transfers(token)


def _introspection_echoes(idp: Issuer, endpoint: IntrospectionEndpoint) -> tuple[str, str, dict[str, str], str]:
    token = _activated(idp, endpoint)
    # An issuer that writes the token back into its error body.
    endpoint.failure = httpx.Response(400, json={"error": "invalid_request", "error_description": token})
    return _transfers(token)


def _jwks_down(idp: Issuer, endpoint: IntrospectionEndpoint) -> tuple[str, str, dict[str, str], str]:
    idp.down = True
    return _photos(idp.token())


PATHS = [
    FailurePath("valid", 200, "ok", lambda idp, e: _photos(idp.token())),
    FailurePath("missing header", 401, "missing_token", lambda idp, e: ("GET", "/photos/summer", {}, "")),
    FailurePath(
        "other scheme", 401, "missing_token", lambda idp, e: _photos("YWxpY2U6czNjcmV0", "Basic YWxpY2U6czNjcmV0")
    ),
    FailurePath("empty bearer", 400, "malformed_header", lambda idp, e: _photos("", "Bearer ")),
    FailurePath(
        "malformed header",
        400,
        "malformed_header",
        lambda idp, e: (lambda t: _photos(t, f"Bearer  {t} extra"))(idp.token()),
    ),
    FailurePath(
        "malformed jwt",
        401,
        "malformed_token",
        lambda idp, e: (lambda h, _, sig: _photos(f"{h}.bm90LWpzb24.{sig}"))(*idp.token().split(".")),
    ),
    FailurePath("bad signature", 401, "bad_signature", lambda idp, e: _photos(idp.token(key=private_key("rsa", 1)))),
    FailurePath("expired", 401, "expired", lambda idp, e: _photos(idp.token(exp=int(T0) - 3600))),
    FailurePath(
        "unknown kid",
        401,
        "unknown_kid",
        lambda idp, e: _photos(idp.token(None, key=private_key("rsa"), headers={"kid": "retired-1"})),
    ),
    FailurePath("wrong aud", 401, "wrong_audience", lambda idp, e: _photos(idp.token(aud="https://other.example"))),
    FailurePath("insufficient scope", 403, "insufficient_scope", lambda idp, e: _photos(idp.token(scope="profile"))),
    FailurePath(
        "opaque token unknown to the issuer",
        401,
        "inactive",  # an opaque token is introspected even on an ordinary route
        lambda idp, e: _photos(secrets.token_urlsafe(32)),
    ),
    FailurePath(
        "introspection inactive", 401, "inactive", lambda idp, e: _transfers(idp.token(scope="write:transfers"))
    ),
    FailurePath("introspection down", 503, "introspection_unavailable", _introspection_fails),
    FailurePath("introspection echoes the token", 503, "introspection_unavailable", _introspection_echoes),
    FailurePath("jwks down", 503, "issuer_unavailable", _jwks_down),
]


def tokenguard_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name.startswith("tokenguard")]


@pytest.mark.parametrize("path", PATHS, ids=lambda path: path.name)
def test_tokenguards_own_records_hold_no_token_and_carry_structured_fields(
    path: FailurePath,
    clock: ManualClock,
    idp: Issuer,
    endpoint: IntrospectionEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At DEBUG, with no filter anywhere: no tokenguard record (message, args, extras, traceback) holds
    the token, and the decision record carries decision, reason, route template, status, kid, iss,
    client_id and the sub hash."""
    caplog.set_level(logging.DEBUG)
    method, url, headers, token = path.request(idp, endpoint)
    with TestClient(make_app(clock)) as client:
        response = client.request(method, url, headers=headers)
    assert response.status_code == path.status
    records = tokenguard_records(caplog)
    formatter = logging.Formatter(GENERAL_FORMAT)
    for record in records:
        text = formatter.format(record) + repr(vars(record))
        for secret in secrets_of(token) if token else []:
            assert secret not in text, f"{path.name}: {record.getMessage()}"
    decisions = [record for record in records if hasattr(record, "tg_decision")]
    assert len(decisions) == 1
    fields = {name: getattr(decisions[0], name) for name in TG_FIELDS}
    route = "/transfers" if method == "POST" else "/photos/{album}"
    assert fields["tg_decision"] == path.outcome
    assert (fields["tg_reason"], fields["tg_route"], fields["tg_status"]) == (path.reason, route, path.status)
    if path.status == 200 or path.reason == "insufficient_scope":  # a 403's token passed validation too
        assert (fields["tg_kid"], fields["tg_iss"], fields["tg_client_id"]) == ("rsa-1", ISSUER, "photos-app")
        assert fields["tg_sub_hash"] == subject_hash("alice")
    else:  # nothing from an unvalidated token is repeated in the log
        assert (fields["tg_kid"], fields["tg_iss"], fields["tg_client_id"], fields["tg_sub_hash"]) == (None,) * 4
    if path.status == 503:
        causes = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
        assert causes, "a 503 is logged as an error naming its cause"


# -- the filter on a handler, through a leaky app and uvicorn's access log ---------------------------------


def uvicorn_style(app: ASGIApp) -> ASGIApp:
    """What a server and a careless app log around each request, the way uvicorn's HTTP protocols do it:
    the access line ``'%s - "%s %s HTTP/%s" %d'`` with uvicorn's own helpers, the request headers at
    DEBUG, and an unhandled exception with its traceback."""
    access = logging.getLogger("uvicorn.access")
    server = logging.getLogger("observability.server")

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        server.debug("request headers: %r", scope["headers"])

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                access.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(scope),
                    scope["method"],
                    get_path_with_query_string(scope),
                    scope["http_version"],
                    message["status"],
                )
            await send(message)

        try:
            await app(scope, receive, logged_send)
        except Exception as exc:
            server.error("Exception in ASGI application\n", exc_info=exc)

    return wrapped


@pytest.fixture
def sinks() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Two outputs for every record: ``raw`` (no filter, the control) and ``clean`` (with the filter).

    The access logger gets uvicorn's AccessFormatter with its default format, as uvicorn configures it.
    """
    raw, clean = io.StringIO(), io.StringIO()
    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    saved = (root.level, access.level, access.propagate)
    added: list[tuple[logging.Logger, logging.Handler]] = []
    for logger, formatter in (
        (root, lambda: logging.Formatter(GENERAL_FORMAT)),
        (access, lambda: AccessFormatter(ACCESS_FORMAT, use_colors=False)),
    ):
        for stream, redacting in ((raw, False), (clean, True)):  # raw first: the filter rewrites in place
            handler = logging.StreamHandler(stream)
            handler.setFormatter(formatter())
            if redacting:
                handler.addFilter(TokenRedactingFilter())
            logger.addHandler(handler)
            added.append((logger, handler))
    root.setLevel(logging.DEBUG)
    access.setLevel(logging.INFO)
    access.propagate = False
    yield raw, clean
    for logger, handler in added:
        logger.removeHandler(handler)
    root.setLevel(saved[0])
    access.setLevel(saved[1])
    access.propagate = saved[2]


def test_the_filter_keeps_every_token_out_of_every_log_line(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint, sinks: tuple[io.StringIO, io.StringIO]
) -> None:
    """Every failure path, a token in the query string and in an exception: the unfiltered output leaks
    them all (the control), the filtered one none, and uvicorn's access lines still come out whole."""
    raw, clean = sinks
    sent: list[str] = []
    with TestClient(uvicorn_style(make_app(clock)), raise_server_exceptions=False) as client:
        for path in PATHS:
            if path.name == "jwks down":
                continue  # needs a cold cache: below, on its own app
            method, url, headers, token = path.request(idp, endpoint)
            assert client.request(method, url, headers=headers).status_code == path.status, path.name
            sent.append(token)
        query_token = idp.token()
        assert client.get(f"/photos/summer?access_token={query_token}&format=json").status_code == 401
        crash_token = idp.token()
        assert client.get("/crash", headers={"Authorization": f"Bearer {crash_token}"}).status_code == 500
    idp.down = True
    with TestClient(uvicorn_style(make_app(clock))) as client:
        down_token = idp.token()
        assert client.get("/photos/summer", headers={"Authorization": f"Bearer {down_token}"}).status_code == 503
    tokens = [token for token in [*sent, query_token, crash_token, down_token] if token]
    raw_text, clean_text = raw.getvalue(), clean.getvalue()
    for token in tokens:
        assert token in raw_text, "the control: without the filter the token is logged"
        for secret in secrets_of(token):
            assert secret not in clean_text
    lines = clean_text.splitlines()
    query_line = f'"GET /photos/summer?access_token={REDACTED}&format=json HTTP/1.1" 401 Unauthorized'
    assert f"INFO:     testclient:50000 - {query_line}" in lines
    assert 'INFO:     testclient:50000 - "POST /transfers HTTP/1.1" 503 Service Unavailable' in lines
    assert 'INFO:     testclient:50000 - "GET /crash HTTP/1.1" 500 Internal Server Error' in lines
    assert f"RuntimeError: upstream rejected Bearer {REDACTED}" in lines
    assert "INFO tokenguard tokenguard: deny GET /photos/{album}: expired (401)" in lines
    assert any(line.startswith("DEBUG observability.server request headers: [") and REDACTED in line for line in lines)


# -- readiness ---------------------------------------------------------------------------------------------


def health_of(client: TestClient, *, attempts: int = 3) -> httpx.Response:
    """GET /health; a background fetch that ready() started completes on the client's loop between calls,
    so when the answer is about to change, a few calls in a row see it settle."""
    response = client.get("/health")
    for _ in range(attempts - 1):
        following = client.get("/health")
        if following.json()["status"]["jwks"] == response.json()["status"]["jwks"]:
            return following
        response = following
    return response


def test_health_endpoint_follows_the_keys_through_an_outage_and_back(clock: ManualClock, idp: Issuer) -> None:
    """Warm after prefetch; past max-age with the issuer down: stale but ready, last good fetch kept;
    the issuer back: fresh again with a new fetch time. Every stage is served as JSON."""
    with TestClient(make_app(clock, prefetch=True)) as client:
        warm = client.get("/health")
        assert warm.status_code == 200
        jwks = warm.json()["status"]["jwks"]
        assert (jwks["keys"], jwks["kids"], jwks["last_fetch"]) == (3, ["ec-1", "ed-1", "rsa-1"], T0)
        assert (jwks["fresh"], jwks["stale"], jwks["usable"]) == (True, False, True)

        idp.down = True
        clock.advance(3600 + 1)  # past the JWKS max-age
        outage = health_of(client)
        assert outage.status_code == 200
        jwks = outage.json()["status"]["jwks"]
        assert (jwks["fresh"], jwks["stale"], jwks["usable"], jwks["last_fetch"]) == (False, True, True, T0)
        assert jwks["failures"] >= 1
        assert outage.json()["ready"] is True
        assert client.get("/photos/summer", headers={"Authorization": f"Bearer {idp.token()}"}).status_code == 200

        idp.down = False
        clock.advance(120)  # past the retry delay after the failed fetch
        back = health_of(client)
        jwks = back.json()["status"]["jwks"]
        assert back.status_code == 200
        assert (jwks["fresh"], jwks["stale"], jwks["last_fetch"]) == (True, False, T0 + 3601 + 120)


def test_a_failed_prefetch_becomes_ready_once_the_issuer_answers(clock: ManualClock, idp: Issuer) -> None:
    """The issuer down at startup: 503 with a cold snapshot (no keys, no fetch); once it answers and
    the retry delay has passed, the health endpoint itself warms the keys and turns 200."""
    idp.down = True
    with TestClient(make_app(clock, prefetch=True)) as client:
        cold = client.get("/health")
        assert cold.status_code == 503
        jwks = cold.json()["status"]["jwks"]
        assert (jwks["keys"], jwks["last_fetch"], jwks["usable"]) == (0, None, False)
        assert client.get("/photos/summer", headers={"Authorization": f"Bearer {idp.token()}"}).status_code == 503
        idp.down = False
        clock.advance(120)
        assert health_of(client).status_code == 200
        assert client.get("/health").json()["status"]["jwks"]["last_fetch"] == T0 + 120


def test_the_health_endpoint_is_public_and_reported_as_such(clock: ManualClock, idp: Issuer) -> None:
    """No token needed for /health, even with the issuer down; its decision is "public", not a refusal."""
    seen: list[DecisionEvent] = []
    idp.down = True
    with TestClient(make_app(clock, on_decision=seen.append)) as client:
        assert client.get("/health").status_code == 503
        assert client.get("/photos/summer").status_code == 401
    assert [(event.route, event.reason) for event in seen] == [
        ("/health", "public"),
        ("/photos/{album}", "missing_token"),
    ]


def test_a_fastapi_health_endpoint_reads_the_guard_from_the_scope(clock: ManualClock, idp: Issuer) -> None:
    """FastAPI: ``request.scope["tokenguard"]`` gives the guard; prefetch makes it ready before any request."""
    app = FastAPI()

    @app.get("/healthz")
    @public
    async def healthz(request: FastAPIRequest) -> JSONResponse:
        guard: TokenGuard = request.scope["tokenguard"]
        status = guard.status()
        return JSONResponse({"ready": guard.ready(), "keys": status["jwks"]["keys"]}, status_code=200)

    @app.get("/me")
    async def me(request: FastAPIRequest) -> dict[str, str]:
        return {"sub": request.user.identity}

    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, prefetch=True)
    with TestClient(app) as client:
        assert idp.jwks_calls == 1
        assert client.get("/healthz").json() == {"ready": True, "keys": 3}
        assert client.get("/me").status_code == 401
        assert client.get("/me", headers={"Authorization": f"Bearer {idp.token()}"}).json() == {"sub": "alice"}
    assert idp.jwks_calls == 1


def test_a_metrics_endpoint_serves_the_snapshot(clock: ManualClock, idp: Issuer) -> None:
    """``metrics_snapshot()`` is plain JSON an endpoint can serve; it counts what came before it."""

    @public
    async def metrics(request: Request) -> JSONResponse:
        return JSONResponse(request.scope["tokenguard"].metrics_snapshot())

    app = Starlette(routes=[*ROUTES, Route("/metrics", metrics)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, prefetch=True)
    with TestClient(app) as client:
        client.get("/photos/summer", headers={"Authorization": f"Bearer {idp.token()}"})
        client.get("/photos/summer")
        snapshot = client.get("/metrics").json()
    assert snapshot["decisions"] == {"allow": 2, "deny": 1}  # the /metrics request itself is counted first
    assert snapshot["decisions_by_reason"] == {"ok": 1, "missing_token": 1, "public": 1}
    assert (snapshot["jwks_fetches"], snapshot["jwks_fetch_failures"], snapshot["breaker_state"]) == (1, 0, "closed")
