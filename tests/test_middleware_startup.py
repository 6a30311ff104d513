"""Startup checks: a sensitive route that cannot be introspected is reported when the app starts."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient, WebSocketDenialResponse

from conftest import AUDIENCE, ISSUER, Issuer
from tokenguard import ConfigurationError, Rule, TokenGuard, public, require_scopes, sensitive
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


# --- A wrong option stops the app at startup, with the option named (tests/test_server_startup.py
# runs the same with real uvicorn, hypercorn and gunicorn processes).


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"issuer": ISSUER}, "audience is required: this API's identifier"),
        ({"audience": AUDIENCE}, "issuer is required: the authorization server's issuer identifier"),
        (
            {"issuer": ISSUER, "audience": AUDIENCE, "leway": 5},
            "'leway' is not a TokenGuard option (did you mean 'leeway'?)",
        ),
        ({"issuer": ISSUER, "audience": AUDIENCE, "xyzzy": 1}, "'xyzzy' is not a TokenGuard option; README"),
        ({"issuer": "http://idp.example.com", "audience": AUDIENCE}, "issuer must use https://"),
    ],
)
def test_built_directly_a_wrong_option_raises_configuration_error(options: dict[str, object], message: str) -> None:
    """``TokenGuard(app, ...)``: a ConfigurationError naming the option, never a bare TypeError."""
    with pytest.raises(ConfigurationError) as raised:
        TokenGuard(Starlette(), **options)  # type: ignore[arg-type]
    assert message in str(raised.value)


def test_options_are_keyword_only() -> None:
    with pytest.raises(ConfigurationError, match="keyword-only"):
        TokenGuard(Starlette(), ISSUER, AUDIENCE)  # type: ignore[misc]


def _lazily_guarded(**options: object) -> Starlette:
    app = Starlette(routes=[Route("/health", health), Route("/transfers", transfer)])
    app.add_middleware(TokenGuard, **options)  # type: ignore[arg-type]
    return app


@pytest.mark.parametrize("options", [{"issuer": ISSUER}, {"issuer": ISSUER, "audience": AUDIENCE, "leeway": -1}])
def test_built_by_the_app_a_wrong_option_fails_the_lifespan_startup(options: dict[str, object]) -> None:
    """The ASGI lifespan answer is ``startup.failed`` with the message (what makes a server exit)."""
    app = _lazily_guarded(**options)
    sent: list[dict[str, object]] = []
    incoming = [{"type": "lifespan.startup"}]

    async def receive() -> dict[str, object]:
        return incoming.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def run() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    import anyio

    with pytest.raises(ConfigurationError):
        anyio.run(run)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "TokenGuard is misconfigured" in str(sent[0]["message"])
    field = "audience" if "audience" not in options else "leeway"
    assert field in str(sent[0]["message"])


def test_built_by_the_app_a_wrong_option_is_raised_by_the_test_client() -> None:
    """In a test, ``with TestClient(app)`` raises the ConfigurationError itself."""
    with pytest.raises(ConfigurationError, match="audience is required"), TestClient(_lazily_guarded(issuer=ISSUER)):
        pass


def test_without_lifespan_a_misconfigured_guard_refuses_every_request(caplog: pytest.LogCaptureFixture) -> None:
    """A server run without lifespan: every request is a 500 without details, never the app's answer."""
    client = TestClient(_lazily_guarded(issuer=ISSUER, audience=AUDIENCE, leeway=-1))  # no ``with``: no lifespan
    with caplog.at_level(logging.ERROR, logger="tokenguard"):
        for path in ("/health", "/transfers"):  # the public route too: nothing is served
            response = client.get(path)
            assert response.status_code == 500
            assert response.json() == {
                "error": "server_error",
                "error_description": "The request could not be authorized.",
            }
            assert "leeway" not in response.text
    assert any("leeway must be greater than or equal to 0" in r.getMessage() for r in caplog.records)
    assert all(r.exc_info is None for r in caplog.records)
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/health"):
        pass
    assert denied.value.status_code == 500


def test_a_conflict_found_at_startup_fails_the_lifespan_startup() -> None:
    """Marks that cannot be combined (class + method) are found when the guard walks the routes."""
    from starlette.endpoints import HTTPEndpoint

    @public
    class Photos(HTTPEndpoint):
        @require_scopes("write:photos")
        async def post(self, request: Request) -> JSONResponse:
            return JSONResponse({})

    app = Starlette(routes=[Route("/photos", Photos)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ConfigurationError, match="@public cannot be combined"), TestClient(app):
        pass


def test_a_guard_built_elsewhere_than_the_lazy_builder_still_raises() -> None:
    """Only Starlette's own ``build_middleware_stack`` defers the error: a look-alike function does not."""

    class NotStarlette:
        def build_middleware_stack(self) -> object:
            return TokenGuard(Starlette(), issuer=ISSUER)  # type: ignore[call-arg]

    with pytest.raises(ConfigurationError, match="audience is required"):
        NotStarlette().build_middleware_stack()


def test_a_subclass_with_its_own_options_and_a_copy_still_work() -> None:
    """``__new__`` checks TokenGuard's own options only: a subclass's ``__init__`` takes its own, and
    ``copy.copy`` (which calls ``__new__`` with no arguments) is left alone."""
    import copy

    class AuditedGuard(TokenGuard):
        def __init__(self, app: object, *, audit: object = None, **options: object) -> None:
            super().__init__(app, **options)  # type: ignore[arg-type]
            self.audit = audit

    guard = AuditedGuard(Starlette(), audit="yes", issuer=ISSUER, audience=AUDIENCE)
    assert guard.audit == "yes"
    assert guard.issuers == (ISSUER,)
    assert copy.copy(guard).issuers == (ISSUER,)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"route_cache_size": "4096"}, "route_cache_size must be an integer"),
        ({"route_cache_size": -1}, "route_cache_size must be"),
        ({"rules": 5}, "rules must be a list of tokenguard.Rule objects"),
        ({"rules": ["/x"]}, "rules must be a list of tokenguard.Rule objects"),
        ({"audience": 5}, "audience must be a non-empty string"),
        ({"algorithms": 5}, "algorithms must be a non-empty string"),
        ({"introspection_credentials": 5}, "introspection_credentials must map issuers"),
    ],
)
def test_a_value_of_the_wrong_type_is_a_configuration_error(options: dict[str, object], message: str) -> None:
    """Values from the environment are strings: a wrong type is named, never a bare TypeError; built by
    the app, it fails the startup like any other wrong option."""
    settings: dict[str, object] = {"issuer": ISSUER, "audience": AUDIENCE, **options}
    with pytest.raises(ConfigurationError, match=message):
        TokenGuard(Starlette(), **settings)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=message), TestClient(_lazily_guarded(**settings)):
        pass


@pytest.mark.parametrize(
    "option", ["issuer", "jwks_uri", "introspection_endpoint"], ids=["issuer", "jwks_uri", "introspection"]
)
def test_credentials_in_a_url_are_refused_and_never_echoed(option: str, caplog: pytest.LogCaptureFixture) -> None:
    url = "https://api:S3cr3tPW@idp.example.com/path?key=hunter2"
    settings: dict[str, object] = {"issuer": ISSUER, "audience": AUDIENCE, option: url}
    with pytest.raises(ConfigurationError) as refused:
        TokenGuard(Starlette(), **settings)  # type: ignore[arg-type]
    text = str(refused.value)
    assert option in text
    assert "S3cr3tPW" not in text
    assert "hunter2" not in text
    lazily = _lazily_guarded(**settings)
    with caplog.at_level(logging.DEBUG, logger="tokenguard"), pytest.raises(ConfigurationError), TestClient(lazily):
        pass
    assert "S3cr3tPW" not in caplog.text


def test_without_lifespan_the_misconfiguration_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Every request is refused, but unauthenticated traffic cannot flood the log with the message."""
    client = TestClient(_lazily_guarded(issuer=ISSUER, audience=AUDIENCE, leeway=-1))
    with caplog.at_level(logging.ERROR, logger="tokenguard"):
        for _ in range(5):
            assert client.get("/health").status_code == 500
    per_request = [r for r in caplog.records if "every request is refused" in r.getMessage()]
    assert len(per_request) == 1
