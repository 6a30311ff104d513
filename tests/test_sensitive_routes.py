"""@sensitive routes end to end: real Starlette and FastAPI apps guarded by TokenGuard, real signed
JWTs, the issuer's metadata, JWKS and RFC 7662 endpoint served by respx, time moved by a ManualClock."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import anyio.lowlevel
import httpx
import pytest
import respx
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from conftest import AUDIENCE, ISSUER, JWKS_URL, T0, Issuer, private_key
from test_introspection import CLIENT_ID, CLIENT_SECRET, FAILURES, IntrospectionEndpoint, opaque
from tokenguard import Rule, TokenGuard, public, require_scopes, sensitive
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

GUARD: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def endpoint(respx_mock: respx.MockRouter, clock: ManualClock, idp: Issuer) -> IntrospectionEndpoint:
    return IntrospectionEndpoint(respx_mock, clock)


def describe(request: StarletteRequest) -> JSONResponse:
    return JSONResponse(
        {"identity": request.user.identity, "source": request.auth.source, "scopes": sorted(request.auth.scopes)}
    )


@require_scopes("read:photos")
async def photos(request: StarletteRequest) -> JSONResponse:
    return describe(request)


@sensitive
@require_scopes("write:transfers")
async def transfer(request: StarletteRequest) -> JSONResponse:
    return describe(request)


@require_scopes("write:transfers")
@sensitive
async def transfer_reversed(request: StarletteRequest) -> JSONResponse:
    return describe(request)


@public
async def health(request: StarletteRequest) -> JSONResponse:
    return JSONResponse({"ok": True})


async def admin_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A mounted ASGI app that cannot be decorated: its policy comes from rules=[...]."""
    await describe(StarletteRequest(scope, receive))(scope, receive, send)


def starlette_routes() -> Starlette:
    return Starlette(
        routes=[
            Route("/photos", photos),
            Route("/transfers", transfer, methods=["POST"]),
            Route("/transfers-reversed", transfer_reversed, methods=["POST"]),
            Route("/health", health),
            Mount("/admin", app=admin_app),
        ]
    )


def starlette_app(clock: ManualClock, **options: Any) -> Starlette:
    app = starlette_routes()
    rules = [Rule("/admin", sensitive=True, scopes=["write:transfers"])]
    app.add_middleware(TokenGuard, **{**GUARD, "clock": clock, "rules": rules, **options})
    return app


def fastapi_app(clock: ManualClock, **options: Any) -> FastAPI:
    api = FastAPI()

    @api.post("/transfers")
    @sensitive
    @require_scopes("write:transfers")
    async def fastapi_transfer(request: Request) -> JSONResponse:
        return describe(request)

    @sensitive
    @require_scopes("write:transfers")
    @api.post("/transfers-reversed")
    async def fastapi_transfer_reversed(request: Request) -> JSONResponse:
        return describe(request)

    @api.get("/photos")
    @require_scopes("read:photos")
    async def fastapi_photos(request: Request) -> JSONResponse:
        return describe(request)

    api.add_middleware(TokenGuard, **{**GUARD, "clock": clock, **options})
    return api


AppFactory = Callable[..., Starlette]
APPS = [
    pytest.param(starlette_app, "/transfers", id="starlette-sensitive-outer"),
    pytest.param(starlette_app, "/transfers-reversed", id="starlette-sensitive-inner"),
    pytest.param(starlette_app, "/admin/wire", id="starlette-rule"),
    pytest.param(fastapi_app, "/transfers", id="fastapi-sensitive-inner"),
    pytest.param(fastapi_app, "/transfers-reversed", id="fastapi-sensitive-outer"),
]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def transfer_token(idp: Issuer, endpoint: IntrospectionEndpoint, **answer: Any) -> str:
    """A valid JWT whose introspection answer grants write:transfers (changed by ``answer``)."""
    token = idp.token(scope="read:photos write:transfers")
    endpoint.activate(token, **answer)
    return token


def error_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- deciding by introspection -----------------------------------------------------------------


@pytest.mark.parametrize(("factory", "path"), APPS)
def test_sensitive_route_is_decided_by_introspection(
    factory: AppFactory, path: str, clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """Both decorator orders, Starlette and FastAPI, and rules=[...]: the answer decides source and scopes."""
    token = idp.token(scope="read:photos write:transfers")
    endpoint.activate(token, scope="write:transfers audit")
    with TestClient(factory(clock)) as client:
        response = client.post(path, headers=auth(token))
    assert response.status_code == 200, response.text
    assert response.json() == {"identity": "alice", "source": "introspection", "scopes": ["audit", "write:transfers"]}
    assert endpoint.forms == [{"token": token, "token_type_hint": "access_token"}]


@pytest.mark.parametrize(("factory", "path"), APPS)
def test_revoked_token_is_refused_on_every_kind_of_sensitive_route(
    factory: AppFactory, path: str, clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """A locally valid JWT the issuer no longer knows is 401 invalid_token on each sensitive route."""
    token = idp.token(scope="read:photos write:transfers")
    with TestClient(factory(clock)) as client:
        response = client.post(path, headers=auth(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert endpoint.calls == 1


def test_ordinary_route_does_not_introspect_a_jwt(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """Undecorated-for-sensitivity routes decide locally: source "jwt", no call, even if revoked."""
    with TestClient(starlette_app(clock)) as client:
        response = client.get("/photos", headers=auth(idp.token()))
    assert response.status_code == 200
    assert response.json()["source"] == "jwt"
    assert endpoint.calls == 0


@pytest.mark.parametrize(
    "answer",
    [
        {"active": False},
        {"active": "true"},
        {"active": 1},
        {"exp": int(T0 - 3600)},
        {"exp": str(int(T0 + 300))},
        {"nbf": int(T0 + 3600)},
        {"aud": "https://other.example.com"},
        {"aud": None},
        {"iss": "https://evil.example.com"},
        {"token_type": "refresh_token"},
    ],
    ids=[
        "inactive",
        "active_string",
        "active_one",
        "expired",
        "exp_string",
        "nbf_future",
        "wrong_aud",
        "missing_aud",
        "wrong_iss",
        "refresh_token",
    ],
)
def test_unacceptable_answers_are_401_invalid_token(
    answer: dict[str, Any], clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """Anything but an active, current access token for this issuer and audience is a 401 challenge."""
    token = transfer_token(idp, endpoint, **answer)
    with TestClient(starlette_app(clock)) as client:
        response = client.post("/transfers", headers=auth(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(f'Bearer realm="{AUDIENCE}", error="invalid_token"')
    assert response.json()["error"] == "invalid_token"


def test_missing_aud_is_accepted_with_the_relaxing_option(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """introspection_requires_aud=False lets an issuer that omits aud through."""
    token = transfer_token(idp, endpoint, aud=None)
    with TestClient(starlette_app(clock, introspection_requires_aud=False)) as client:
        assert client.post("/transfers", headers=auth(token)).status_code == 200
        wrong = transfer_token(idp, endpoint, aud="https://other.example.com")
        assert client.post("/transfers", headers=auth(wrong)).status_code == 401


def test_missing_scope_in_the_answer_is_403(clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint) -> None:
    """The answer's scopes are checked against the route: 403 insufficient_scope naming the one needed."""
    token = transfer_token(idp, endpoint, scope="read:photos")
    with TestClient(starlette_app(clock)) as client:
        response = client.post("/transfers", headers=auth(token))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert 'scope="write:transfers"' in response.headers["www-authenticate"]


def test_forged_jwt_on_sensitive_route_gets_401_without_a_call(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """A JWT signed by a stranger's key is refused locally: 401, and the issuer is never asked."""
    forged = idp.token(key=private_key("rsa", 1), scope="write:transfers")
    endpoint.activate(forged)
    with TestClient(starlette_app(clock)) as client:
        response = client.post("/transfers", headers=auth(forged))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert endpoint.calls == 0


def test_opaque_token_is_introspected_on_an_ordinary_route(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """An opaque token is not a JWT: with an endpoint and credentials it is introspected anywhere."""
    token = opaque()
    endpoint.activate(token, scope="read:photos")
    with TestClient(starlette_app(clock)) as client:
        response = client.get("/photos", headers=auth(token))
    assert response.status_code == 200
    assert response.json()["source"] == "introspection"


# -- the cache -------------------------------------------------------------------------------------


def test_revocation_takes_effect_once_the_cache_entry_expires(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """A revoked token keeps working from the cache for under 30 s, then is refused."""
    token = transfer_token(idp, endpoint)
    with TestClient(starlette_app(clock)) as client:
        assert client.post("/transfers", headers=auth(token)).status_code == 200
        endpoint.revoke(token)
        clock.advance(29)
        assert client.post("/transfers", headers=auth(token)).status_code == 200
        assert endpoint.calls == 1
        clock.advance(1.5)
        assert client.post("/transfers", headers=auth(token)).status_code == 401
    assert endpoint.calls == 2


def test_cache_ttl_zero_checks_every_request(clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint) -> None:
    """introspection_cache_ttl=0: a revocation is seen by the very next request."""
    token = transfer_token(idp, endpoint)
    with TestClient(starlette_app(clock, introspection_cache_ttl=0)) as client:
        assert client.post("/transfers", headers=auth(token)).status_code == 200
        endpoint.revoke(token)
        assert client.post("/transfers", headers=auth(token)).status_code == 401
    assert endpoint.calls == 2


@pytest.mark.anyio
async def test_concurrent_requests_with_one_token_make_one_call(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """100 concurrent requests through ASGI carrying one token share a single upstream call."""
    guard = TokenGuard(starlette_routes(), **GUARD, clock=clock)
    token = transfer_token(idp, endpoint)
    endpoint.hold()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(guard), base_url="https://api.example.com") as client:
        tasks = [asyncio.ensure_future(client.post("/transfers", headers=auth(token))) for _ in range(100)]
        for _ in range(100_000):
            if guard.authenticator.introspector.cache_misses == 100:
                break
            await anyio.lowlevel.checkpoint()
        endpoint.release()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200] * 100
    assert endpoint.calls == 1
    assert idp.jwks_calls == 1
    await guard.authenticator.aclose()


# -- failing closed ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("failure", "cause"), [(f, c) for _, f, c in FAILURES], ids=[i for i, _, _ in FAILURES])
def test_introspection_failures_are_503_with_retry_after(
    failure: httpx.Response | type[Exception],
    cause: str,
    clock: ManualClock,
    idp: Issuer,
    endpoint: IntrospectionEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No clear answer is 503 + Retry-After + a body saying the check could not be made, never 401/200."""
    caplog.set_level(logging.INFO, logger="tokenguard")
    token = transfer_token(idp, endpoint)
    endpoint.failure = failure
    with TestClient(starlette_app(clock)) as client:
        response = client.post("/transfers", headers=auth(token))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "www-authenticate" not in response.headers
    assert response.json() == {
        "error": "temporarily_unavailable",
        "error_description": "The access token could not be checked right now; retry later.",
    }
    assert any(cause in message for message in error_logs(caplog)), error_logs(caplog)
    assert all(token not in record.getMessage() for record in caplog.records)


def test_breaker_opens_after_five_failures_and_recovers_after_the_cooldown(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """5 failures open the breaker; the 6th request makes no call and waits out the cool-down; a probe closes it."""
    token = transfer_token(idp, endpoint)
    endpoint.failure = httpx.ConnectError
    with TestClient(starlette_app(clock)) as client:
        statuses = [client.post("/transfers", headers=auth(token)).status_code for _ in range(5)]
        assert statuses == [503] * 5
        assert endpoint.calls == 5
        sixth = client.post("/transfers", headers=auth(token))
        assert (sixth.status_code, sixth.headers["retry-after"], endpoint.calls) == (503, "10", 5)
        clock.advance(4)
        assert client.post("/transfers", headers=auth(token)).headers["retry-after"] == "6"
        assert endpoint.calls == 5
        endpoint.failure = None
        clock.advance(6)
        assert client.post("/transfers", headers=auth(token)).status_code == 200
        assert endpoint.calls == 6
        other = transfer_token(idp, endpoint)
        assert client.post("/transfers", headers=auth(other)).status_code == 200
    assert endpoint.calls == 7


def test_ordinary_routes_keep_answering_while_introspection_is_down(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """With the introspection endpoint dead and the breaker open, JWT routes still answer 200."""
    token = transfer_token(idp, endpoint)
    endpoint.failure = httpx.ConnectError
    with TestClient(starlette_app(clock)) as client:
        for _ in range(6):
            assert client.post("/transfers", headers=auth(token)).status_code == 503
        for _ in range(3):
            response = client.get("/photos", headers=auth(token))
            assert (response.status_code, response.json()["source"]) == (200, "jwt")
        assert client.get("/health").status_code == 200
    assert endpoint.calls == 5


# -- no way to introspect ----------------------------------------------------------------------------


def test_sensitive_route_without_credentials_is_503_naming_the_setting(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """No client_id/client_secret: a clear 503 and an error log naming them, never a 500."""
    caplog.set_level(logging.ERROR, logger="tokenguard")
    app = starlette_routes()
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with TestClient(app) as client:
        response = client.post("/transfers", headers=auth(idp.token(scope="write:transfers")))
        assert client.get("/photos", headers=auth(idp.token())).status_code == 200
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert any("client_id and client_secret" in message for message in error_logs(caplog))
    assert endpoint.calls == 0


def test_sensitive_route_without_an_endpoint_is_503_naming_the_setting(
    clock: ManualClock,
    idp: Issuer,
    endpoint: IntrospectionEndpoint,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No introspection_endpoint configured nor in the metadata: 503 and an error log naming it."""
    caplog.set_level(logging.ERROR, logger="tokenguard")
    monkeypatch.setattr(idp, "metadata", lambda: {"issuer": ISSUER, "jwks_uri": JWKS_URL})
    with TestClient(starlette_app(clock)) as client:
        response = client.post("/transfers", headers=auth(idp.token(scope="write:transfers")))
        opaque_response = client.get("/photos", headers=auth(opaque()))
    assert response.status_code == 503
    assert any("introspection_endpoint is not set" in message for message in error_logs(caplog))
    assert opaque_response.status_code == 401
    assert endpoint.calls == 0


# -- secrecy ------------------------------------------------------------------------------------------


def test_the_token_never_appears_in_logs_or_responses(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """Through 200, 401, 403 and 503 answers, no log record, response or status snapshot holds a token."""
    caplog.set_level(logging.DEBUG)
    good = transfer_token(idp, endpoint)
    revoked = idp.token(scope="write:transfers")
    narrow = transfer_token(idp, endpoint, scope="read:photos")
    garbage = opaque()
    failing = transfer_token(idp, endpoint)
    app = starlette_app(clock)
    with TestClient(app) as client:
        responses = [client.post("/transfers", headers=auth(t)) for t in (good, revoked, narrow, garbage)]
        endpoint.failure = httpx.Response(500, json={"error": "server_error", "token": failing})
        responses.append(client.post("/transfers", headers=auth(failing)))
    assert [r.status_code for r in responses] == [200, 401, 403, 401, 503]
    texts = [r.text + json.dumps(dict(r.headers)) for r in responses]
    texts += [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    for token in (good, revoked, narrow, garbage, failing):
        assert not [text for text in texts if token in text]
