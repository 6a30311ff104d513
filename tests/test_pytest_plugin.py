"""The pytest plugin: ``dev_idp``, ``issue_token`` and ``guarded_app``, used the way a user would.

The first tests run small test files through ``pytester``: they import nothing from the plugin,
exactly as in a user's project, and rely on the ``pytest11`` entry point to provide the fixtures.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tokenguard import ConfigurationError, TokenGuard, public
from tokenguard.testing import DEFAULT_AUDIENCE, DevIdP, KeyRing, ManualClock
from tokenguard.testing.pytest_plugin import GuardedAppFactory

pytest_plugins = ["pytester"]

STARLETTE_USER_TESTS = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tokenguard import require_scopes, sensitive


@require_scopes("read:photos")
async def photos(request):
    return JSONResponse({"owner": request.user.identity, "source": request.auth.source})


@sensitive
@require_scopes("write:photos")
async def upload(request):
    return JSONResponse({"owner": request.user.identity, "source": request.auth.source})


def make_app():
    return Starlette(routes=[Route("/photos", photos), Route("/photos", upload, methods=["POST"])])


def test_token_with_the_scope_is_served(guarded_app, issue_token):
    app = guarded_app(make_app())
    with TestClient(app) as client:
        response = client.get("/photos", headers={"Authorization": f"Bearer {issue_token(scopes=['read:photos'])}"})
    assert response.json() == {"owner": "alice", "source": "jwt"}


def test_missing_scope_is_403_and_missing_token_401(guarded_app, issue_token):
    app = guarded_app(make_app())
    with TestClient(app) as client:
        assert client.get("/photos", headers={"Authorization": f"Bearer {issue_token()}"}).status_code == 403
        assert client.get("/photos").status_code == 401


def test_expiry_without_sleeping(guarded_app, issue_token, dev_idp):
    app = guarded_app(make_app())
    token = issue_token(scopes=["read:photos"], expires_in=60)
    with TestClient(app) as client:
        assert client.get("/photos", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        dev_idp.clock.advance(120)
        assert client.get("/photos", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_sensitive_route_sees_revocation(guarded_app, issue_token, dev_idp):
    app = guarded_app(make_app(), introspection_cache_ttl=0)
    token = issue_token(scopes=["write:photos"], subject="bob")
    with TestClient(app) as client:
        ok = client.post("/photos", headers={"Authorization": f"Bearer {token}"})
        assert ok.json() == {"owner": "bob", "source": "introspection"}
        dev_idp.revoke(token)
        assert client.post("/photos", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_each_test_gets_a_fresh_idp(dev_idp):
    assert dev_idp.events == []
    assert dev_idp.stored()["access_tokens"] == 0
"""

FASTAPI_USER_TESTS = """
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from tokenguard import require_scopes

app = FastAPI()


@app.get("/me")
@require_scopes("profile")
async def me(request: Request):
    return {"me": request.user.identity, "aud": request.auth.claims["aud"]}


def test_fastapi_route(guarded_app, issue_token):
    guarded = guarded_app(app, audience="https://fastapi.example")
    token = issue_token(scopes="profile", subject="carol", audience="https://fastapi.example")
    with TestClient(guarded) as client:
        assert client.get("/me", headers={"Authorization": f"Bearer {token}"}).json() == {
            "me": "carol",
            "aud": "https://fastapi.example",
        }
        wrong_audience = issue_token(scopes="profile")
        assert client.get("/me", headers={"Authorization": f"Bearer {wrong_audience}"}).status_code == 401
"""


def test_a_users_starlette_tests_need_only_the_fixtures(pytester: pytest.Pytester) -> None:
    """A test file that imports no plugin code gets dev_idp, issue_token and guarded_app, and its tests pass."""
    pytester.makepyfile(test_photos=STARLETTE_USER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_a_users_fastapi_tests_need_only_the_fixtures(pytester: pytest.Pytester) -> None:
    """guarded_app works on a FastAPI app, with another audience, the same way."""
    pytester.makepyfile(test_me=FASTAPI_USER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_fixtures_are_listed_with_their_docs(pytester: pytest.Pytester) -> None:
    """pytest --fixtures lists the plugin's fixtures with their one-line descriptions."""
    pytester.makepyfile(test_nothing="def test_nothing(): pass")
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    for pattern in (
        "*dev_idp*",
        "*A fresh development identity provider with a controllable clock*",
        "*issue_token*",
        "*guard_options*",
        "*TokenGuard`` options trusting ``dev_idp``*",
        "*guarded_app*",
    ):  # one by one: pytest orders the list by its own rules
        result.stdout.fnmatch_lines([pattern])


def test_the_plugin_yields_to_a_users_own_fixture(pytester: pytest.Pytester) -> None:
    """A user's conftest fixture of the same name overrides the plugin's (no collision surprises)."""
    pytester.makeconftest("import pytest\n\n@pytest.fixture\ndef issue_token():\n    return 'mine'\n")
    pytester.makepyfile(test_mine="def test_mine(issue_token):\n    assert issue_token == 'mine'\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_fixtures_share_one_idp_and_clock(
    dev_idp: DevIdP, dev_idp_keys: KeyRing, issue_token: Callable[..., str]
) -> None:
    """issue_token mints with dev_idp, whose clock is a ManualClock and whose keys are the session's."""
    token = issue_token(scopes=["read"], team="blue")
    grant = dev_idp.grant_of(token)
    assert grant is not None
    assert grant.scopes == {"read"}
    assert isinstance(dev_idp.clock, ManualClock)
    assert dev_idp.keys is dev_idp_keys


def test_guarded_app_options_override_the_defaults(guarded_app: GuardedAppFactory) -> None:
    """Options given to guarded_app go to TokenGuard: default="public" opens undecorated routes."""

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    app = guarded_app(Starlette(routes=[Route("/", hello)]), default="public")
    with TestClient(app) as client:
        assert client.get("/").status_code == 200


def test_guarded_app_wraps_a_plain_asgi_app(guarded_app: GuardedAppFactory, issue_token: Callable[..., str]) -> None:
    """An ASGI app without add_middleware comes back wrapped in a TokenGuard trusting dev_idp."""

    @public
    async def open_door(request: Request) -> JSONResponse:
        return JSONResponse({"open": True})

    async def inner(scope: dict[str, object], receive: object, send: object) -> None:
        await Starlette(routes=[Route("/", open_door)])(scope, receive, send)  # type: ignore[arg-type]

    guarded = guarded_app(inner)
    assert isinstance(guarded, TokenGuard)
    assert guarded.config.audience == (DEFAULT_AUDIENCE,)
    with TestClient(guarded) as client:
        assert client.get("/").status_code == 401  # the guard cannot see marks through a plain callable
        token = issue_token(scopes="read")
        assert client.get("/", headers={"Authorization": f"Bearer {token}"}).json() == {"open": True}


@pytest.mark.parametrize("how", ["added", "added_by_guarded_app", "wrapping"])
def test_guarded_app_refuses_an_app_that_already_has_a_guard(guarded_app: GuardedAppFactory, how: str) -> None:
    """A second guard would refuse every dev_idp token ("another issuer"): refuse, show the factory pattern."""
    app: object = Starlette()
    if how == "added":
        app.add_middleware(TokenGuard, issuer="https://idp.example.com", audience="https://photos.example")  # type: ignore[attr-defined]
    elif how == "added_by_guarded_app":
        app = guarded_app(app)
    else:
        app = TokenGuard(app, issuer="https://idp.example.com", audience="https://photos.example")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as refused:
        guarded_app(app)
    message = str(refused.value)
    assert "already has a TokenGuard" in message
    assert "create_app(**guard_options())" in message


def test_guard_options_feed_an_app_factory(
    guard_options: Callable[..., dict[str, object]], issue_token: Callable[..., str]
) -> None:
    """The factory pattern the refusal shows works: the app's own guard, pointed at dev_idp."""

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"owner": request.user.identity})

    def create_app(**options: object) -> Starlette:
        app = Starlette(routes=[Route("/", hello)])
        app.add_middleware(TokenGuard, **options)  # type: ignore[arg-type]
        return app

    with TestClient(create_app(**guard_options(default="authenticated"))) as client:
        assert client.get("/").status_code == 401
        token = issue_token(scopes=["read"])
        assert client.get("/", headers={"Authorization": f"Bearer {token}"}).json() == {"owner": "alice"}
