"""Startup checks: a sensitive route that cannot be introspected is reported when the app starts."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from conftest import AUDIENCE, ISSUER, Issuer
from tokenguard import Rule, TokenGuard, public, require_scopes, sensitive
from tokenguard.routing import declared_requirements
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


@sensitive
@require_scopes("write:transfers")
async def transfer(request: Request) -> JSONResponse:
    return JSONResponse({})


@public
async def health(request: Request) -> JSONResponse:
    return JSONResponse({})


def _app(**options: object) -> Starlette:
    app = Starlette(routes=[Route("/health", health), Mount("/v1", routes=[Route("/transfers", transfer)])])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, **options)
    return app


def test_declared_requirements_finds_marks_inside_mounts() -> None:
    """The route walk sees marks of endpoints inside a Mount."""
    app = _app()
    found = declared_requirements(app)
    assert any(r.sensitive and r.all_scopes == {"write:transfers"} for r in found)
    assert any(r.public for r in found)


def test_sensitive_route_without_credentials_is_logged_at_startup(
    caplog: pytest.LogCaptureFixture, idp: Issuer, clock: ManualClock
) -> None:
    """No client credentials + a @sensitive route: an error names the missing setting at startup."""
    with caplog.at_level(logging.ERROR, logger="tokenguard"), TestClient(_app(clock=clock)):
        pass
    assert any("client_id" in record.getMessage() for record in caplog.records)


def test_sensitive_rule_without_credentials_is_logged_at_startup(
    caplog: pytest.LogCaptureFixture, idp: Issuer, clock: ManualClock
) -> None:
    """A sensitive Rule counts as a sensitive route for the startup check."""
    app = Starlette(routes=[Route("/health", health)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, rules=[Rule("/admin", sensitive=True)])
    with caplog.at_level(logging.ERROR, logger="tokenguard"), TestClient(app):
        pass
    assert any("client_id" in record.getMessage() for record in caplog.records)


def test_configured_credentials_log_nothing_at_startup(
    caplog: pytest.LogCaptureFixture, idp: Issuer, clock: ManualClock
) -> None:
    """With credentials and an advertised endpoint, startup (with prefetch) logs no error."""
    app = _app(clock=clock, client_id="api", client_secret="secret", prefetch=True)
    with caplog.at_level(logging.ERROR, logger="tokenguard"), TestClient(app):
        pass
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert idp.jwks_calls == 1


@public
async def ready(request: Request) -> JSONResponse:
    guard = request.scope["tokenguard"]
    is_ready = guard.ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


def test_ready_warms_the_keys_in_the_background(idp: Issuer, clock: ManualClock) -> None:
    """ready() is false on a cold cache but starts a fetch, so the next call is true."""
    app = Starlette(routes=[Route("/ready", ready)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with TestClient(app) as client:
        assert client.get("/ready").json() == {"ready": False}
        for _ in range(3):  # the background fetch completes on the client's loop between requests
            if client.get("/ready").json() == {"ready": True}:
                break
        assert client.get("/ready").json() == {"ready": True}
    assert idp.jwks_calls == 1


def test_ready_turns_false_after_the_stale_period(idp: Issuer, clock: ManualClock) -> None:
    """Keys older than the stale period with the issuer down: not ready (and no 500)."""
    app = Starlette(routes=[Route("/ready", ready)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, prefetch=True)
    with TestClient(app) as client:
        assert client.get("/ready").json() == {"ready": True}
        idp.down = True
        clock.advance(3600 + 86400 + 1)
        assert client.get("/ready").status_code == 503
