"""The core pipeline: extract → validate locally → introspect? → check scopes, and the introspection
configuration checks. Real signed JWTs and a real JWKS; the issuer's endpoints are served by respx."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from conftest import AUDIENCE, ISSUER, JWKS_URL, OPENID_URL, Issuer, private_key
from test_introspection import CLIENT_ID, CLIENT_SECRET, IntrospectionEndpoint, opaque
from tokenguard.authenticator import Authenticator
from tokenguard.config import GuardConfig, IntrospectionOptions
from tokenguard.errors import (
    InsufficientScope,
    IntrospectionUnavailable,
    InvalidToken,
    MissingToken,
    UnavailableError,
)
from tokenguard.policy import Requirement
from tokenguard.testing import ManualClock

pytestmark = [pytest.mark.anyio, pytest.mark.respx(assert_all_called=False)]

ORDINARY = Requirement()
SENSITIVE = Requirement(sensitive=True)
TRANSFER = Requirement(sensitive=True, all_scopes=frozenset({"write:transfers"}))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def endpoint(respx_mock: respx.MockRouter, clock: ManualClock, idp: Issuer) -> IntrospectionEndpoint:
    return IntrospectionEndpoint(respx_mock, clock)


@pytest.fixture
async def build(clock: ManualClock, idp: Issuer) -> AsyncIterator[Callable[..., Authenticator]]:
    made: list[Authenticator] = []

    def factory(*, credentials: bool = True, **introspection: Any) -> Authenticator:
        if credentials:
            introspection = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **introspection}
        config = GuardConfig(
            issuer=ISSUER, audience=AUDIENCE, clock=clock, introspection=IntrospectionOptions(**introspection)
        )
        made.append(Authenticator(config))
        return made[-1]

    yield factory
    for authenticator in made:
        await authenticator.aclose()


@pytest.fixture
def auth(build: Callable[..., Authenticator]) -> Authenticator:
    return build()


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"api.example.com"), (b"authorization", f"Bearer {token}".encode())]


def issuer_down(idp: Issuer, respx_mock: respx.MockRouter) -> None:
    """Metadata (both well-known URLs) and JWKS fail like a dead host."""
    idp.down = True
    respx_mock.get(OPENID_URL).mock(side_effect=httpx.ConnectError)


def without_introspection_endpoint(monkeypatch: pytest.MonkeyPatch, idp: Issuer) -> None:
    metadata = {"issuer": ISSUER, "jwks_uri": JWKS_URL}
    monkeypatch.setattr(idp, "metadata", lambda: metadata)


# -- the pipeline ------------------------------------------------------------------------------


async def test_ordinary_route_validates_a_jwt_locally_only(
    auth: Authenticator, endpoint: IntrospectionEndpoint, idp: Issuer
) -> None:
    """Without @sensitive a JWT is decided by local validation: source "jwt", no introspection call."""
    token = idp.token()
    result = await auth.authenticate(bearer(token), ORDINARY)
    assert result.source == "jwt"
    assert result.identity == "alice"
    assert endpoint.calls == 0


async def test_sensitive_route_introspects_the_jwt_and_takes_the_answers_scopes(
    auth: Authenticator, endpoint: IntrospectionEndpoint, idp: Issuer
) -> None:
    """On a sensitive route the JWT is sent to the issuer; its answer decides source and scopes."""
    token = idp.token(scope="read:photos")
    endpoint.activate(token, scope="read:photos write:transfers")
    result = await auth.authenticate(bearer(token), TRANSFER)
    assert result.source == "introspection"
    assert result.scopes == frozenset({"read:photos", "write:transfers"})
    assert result.identity == "alice"
    assert endpoint.forms[0]["token"] == token


async def test_sensitive_jwt_keeps_its_own_scopes_when_the_answer_has_none(
    auth: Authenticator, endpoint: IntrospectionEndpoint, idp: Issuer
) -> None:
    """RFC 7662 makes scope optional: without one in the answer, the verified JWT's scopes stand."""
    token = idp.token(scope="read:photos write:transfers")
    endpoint.activate(token, scope=None)
    result = await auth.authenticate(bearer(token), TRANSFER)
    assert result.scopes == frozenset({"read:photos", "write:transfers"})
    assert result.source == "introspection"


async def test_sensitive_jwt_keeps_its_identity_when_the_answer_names_nobody(
    auth: Authenticator, endpoint: IntrospectionEndpoint, idp: Issuer
) -> None:
    """An answer without sub and client_id (both optional) confirms a JWT that names its subject."""
    token = idp.token()
    endpoint.activate(token, sub=None, client_id=None)
    result = await auth.validate(token, sensitive=True)
    assert result.identity == "alice"
    assert result.client_id == "photos-app"


async def test_revoked_jwt_is_refused_on_sensitive_routes_only(
    auth: Authenticator, endpoint: IntrospectionEndpoint, idp: Issuer
) -> None:
    """A revoked (inactive) JWT still passes local validation, but a sensitive route refuses it."""
    token = idp.token()
    with pytest.raises(InvalidToken) as caught:
        await auth.authenticate(bearer(token), SENSITIVE)
    assert caught.value.reason == "inactive"
    assert (await auth.authenticate(bearer(token), ORDINARY)).source == "jwt"


@pytest.mark.parametrize(
    ("mint", "reason"),
    [
        (lambda idp: idp.token(key=private_key("rsa", 1)), "bad_signature"),
        (lambda idp: idp.token(exp=int(idp.clock()) - 3600), "expired"),
        (lambda idp: idp.token(iss="https://evil.example.com"), "wrong_issuer"),
        (lambda idp: idp.token(aud="https://other.example.com"), "wrong_audience"),
        (lambda idp: idp.token(kid="nope", key=private_key("rsa", 1)), "unknown_kid"),
    ],
    ids=["forged", "expired", "wrong_iss", "wrong_aud", "unknown_kid"],
)
async def test_locally_invalid_jwt_on_sensitive_route_costs_no_introspection(
    auth: Authenticator,
    endpoint: IntrospectionEndpoint,
    idp: Issuer,
    mint: Callable[[Issuer], str],
    reason: str,
) -> None:
    """A JWT is validated locally first: a forgery gets 401 without any round trip to the issuer."""
    token = mint(idp)
    endpoint.activate(token)
    with pytest.raises(InvalidToken) as caught:
        await auth.authenticate(bearer(token), TRANSFER)
    assert caught.value.reason == reason
    assert endpoint.calls == 0


async def test_missing_scope_after_introspection_is_403(
    auth: Authenticator, endpoint: IntrospectionEndpoint, idp: Issuer
) -> None:
    """An active token whose answer lacks the route's scope is 403 insufficient_scope naming it."""
    token = idp.token(scope="read:photos write:transfers")
    endpoint.activate(token, scope="read:photos")
    with pytest.raises(InsufficientScope) as caught:
        await auth.authenticate(bearer(token), TRANSFER)
    assert caught.value.required == ("write:transfers",)
    assert caught.value.status_code == 403


async def test_inactive_token_lacking_the_scope_is_401_not_403(
    auth: Authenticator, endpoint: IntrospectionEndpoint, idp: Issuer
) -> None:
    """Scopes are looked at only after the issuer said active: a revoked token gets 401."""
    token = idp.token(scope="read:photos")
    with pytest.raises(InvalidToken):
        await auth.authenticate(bearer(token), TRANSFER)


async def test_missing_token_is_refused_before_anything_is_fetched(
    auth: Authenticator, endpoint: IntrospectionEndpoint, idp: Issuer
) -> None:
    """No Authorization header is a bare 401 with no JWKS fetch and no introspection."""
    with pytest.raises(MissingToken):
        await auth.authenticate([(b"host", b"api.example.com")], TRANSFER)
    assert endpoint.calls == 0
    assert idp.jwks_calls == 0


async def test_jwe_shaped_token_is_refused_without_introspection(
    auth: Authenticator, endpoint: IntrospectionEndpoint
) -> None:
    """A JOSE header with five segments (a JWE) is refused, never sent to the issuer as opaque."""
    token = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a.b.c.d"
    with pytest.raises(InvalidToken) as caught:
        await auth.validate(token, sensitive=True)
    assert caught.value.reason == "unsupported_token"
    assert endpoint.calls == 0


# -- opaque tokens -----------------------------------------------------------------------------


async def test_opaque_token_is_introspected_on_an_ordinary_route(
    auth: Authenticator, endpoint: IntrospectionEndpoint
) -> None:
    """With an endpoint (from metadata) and credentials, an opaque token is introspected anywhere."""
    token = opaque()
    endpoint.activate(token, scope="read:photos")
    result = await auth.authenticate(bearer(token), ORDINARY)
    assert result.source == "introspection"
    assert result.scopes == frozenset({"read:photos"})


async def test_opaque_token_without_credentials_is_401_without_a_call(
    build: Callable[..., Authenticator], endpoint: IntrospectionEndpoint
) -> None:
    """With no client credentials, an opaque token on an ordinary route cannot be checked: 401."""
    auth = build(credentials=False)
    with pytest.raises(InvalidToken) as caught:
        await auth.authenticate(bearer(opaque()), ORDINARY)
    assert caught.value.reason == "opaque_not_supported"
    assert endpoint.calls == 0


async def test_opaque_token_without_any_endpoint_is_401(
    auth: Authenticator, endpoint: IntrospectionEndpoint, idp: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No introspection_endpoint configured or advertised: an opaque token on an ordinary route is 401."""
    without_introspection_endpoint(monkeypatch, idp)
    with pytest.raises(InvalidToken) as caught:
        await auth.authenticate(bearer(opaque()), ORDINARY)
    assert caught.value.reason == "opaque_not_supported"
    assert endpoint.calls == 0


async def test_opaque_token_when_metadata_is_unreachable_is_503(
    auth: Authenticator, endpoint: IntrospectionEndpoint, idp: Issuer, respx_mock: respx.MockRouter
) -> None:
    """Whether the issuer can introspect is unknown while its metadata is down: 503, not 401."""
    issuer_down(idp, respx_mock)
    with pytest.raises(UnavailableError):
        await auth.authenticate(bearer(opaque()), ORDINARY)
    assert endpoint.calls == 0


# -- configuration that makes introspection impossible -------------------------------------------


async def test_sensitive_route_without_credentials_is_503_naming_the_setting(
    build: Callable[..., Authenticator],
    endpoint: IntrospectionEndpoint,
    idp: Issuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A valid JWT on a sensitive route with no client_id/client_secret: 503 and an error log, no call."""
    caplog.set_level(logging.ERROR, logger="tokenguard")
    auth = build(credentials=False)
    token = idp.token()
    with pytest.raises(IntrospectionUnavailable) as caught:
        await auth.authenticate(bearer(token), SENSITIVE)
    assert "client_id and client_secret" in caught.value.cause
    assert any("client_id and client_secret" in r.getMessage() for r in caplog.records)
    assert endpoint.calls == 0


async def test_opaque_token_on_sensitive_route_without_credentials_is_503(
    build: Callable[..., Authenticator], endpoint: IntrospectionEndpoint
) -> None:
    """On a sensitive route the missing setting is the route's fault, so even an opaque token gets 503."""
    auth = build(credentials=False)
    with pytest.raises(IntrospectionUnavailable, match="client_id and client_secret"):
        await auth.authenticate(bearer(opaque()), SENSITIVE)


async def test_sensitive_route_without_endpoint_is_503_naming_the_setting(
    auth: Authenticator,
    endpoint: IntrospectionEndpoint,
    idp: Issuer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No endpoint configured nor advertised in metadata: 503 with an error log naming the setting."""
    caplog.set_level(logging.ERROR, logger="tokenguard")
    without_introspection_endpoint(monkeypatch, idp)
    with pytest.raises(IntrospectionUnavailable) as caught:
        await auth.authenticate(bearer(idp.token()), SENSITIVE)
    assert "introspection_endpoint" in caught.value.cause
    assert any("introspection_endpoint is not set" in r.getMessage() for r in caplog.records)
    assert endpoint.calls == 0


async def test_introspection_problem_names_the_missing_credentials(build: Callable[..., Authenticator]) -> None:
    """introspection_problem() is None when credentials are set, and names client_id/secret otherwise."""
    assert build().introspection_problem() is None
    problem = build(credentials=False).introspection_problem()
    assert problem is not None
    assert "client_id and client_secret" in problem


async def test_check_introspection_is_quiet_when_everything_is_there(
    auth: Authenticator, idp: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    """check_introspection() finds the endpoint in the metadata and reports no problem."""
    caplog.set_level(logging.WARNING, logger="tokenguard")
    assert await auth.check_introspection() is None
    assert caplog.records == []
    assert idp.metadata_calls == 1


async def test_check_introspection_reports_a_missing_endpoint(
    auth: Authenticator, idp: Issuer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """check_introspection() asks the metadata and logs an error when no endpoint is advertised."""
    caplog.set_level(logging.ERROR, logger="tokenguard")
    without_introspection_endpoint(monkeypatch, idp)
    problem = await auth.check_introspection()
    assert problem is not None
    assert "introspection_endpoint" in problem
    assert any(problem in r.getMessage() for r in caplog.records)


async def test_check_introspection_reports_missing_credentials_without_a_fetch(
    build: Callable[..., Authenticator], idp: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    """Missing credentials are found from the configuration alone and logged as an error."""
    caplog.set_level(logging.ERROR, logger="tokenguard")
    problem = await build(credentials=False).check_introspection()
    assert problem is not None
    assert "client_id and client_secret" in problem
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert idp.metadata_calls == 0


async def test_check_introspection_does_not_blame_config_for_an_unreachable_issuer(
    auth: Authenticator, idp: Issuer, respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """An issuer that is down says nothing about the configuration: a warning, and no problem reported."""
    caplog.set_level(logging.WARNING, logger="tokenguard")
    issuer_down(idp, respx_mock)
    assert await auth.check_introspection() is None
    assert any(r.levelno == logging.WARNING and "introspection endpoint" in r.getMessage() for r in caplog.records)


async def test_configured_endpoint_without_credentials_is_reported_at_construction(
    build: Callable[..., Authenticator], caplog: pytest.LogCaptureFixture
) -> None:
    """Setting introspection_endpoint without client credentials logs an error when the guard is built."""
    caplog.set_level(logging.ERROR, logger="tokenguard")
    build(credentials=False)
    assert caplog.records == []
    build(credentials=False, endpoint="https://idp.example.com/introspect")
    assert any("client_id/client_secret are not" in r.getMessage() for r in caplog.records)


# -- outage ---------------------------------------------------------------------------------------


async def test_ordinary_routes_keep_working_while_introspection_is_down(
    auth: Authenticator, endpoint: IntrospectionEndpoint, idp: Issuer
) -> None:
    """An introspection outage (even an open breaker) leaves locally validated JWT routes untouched."""
    endpoint.failure = httpx.ConnectError
    token = idp.token()
    for _ in range(6):
        with pytest.raises(IntrospectionUnavailable):
            await auth.authenticate(bearer(token), SENSITIVE)
    assert auth.introspector.breaker.state == "open"
    for _ in range(3):
        assert (await auth.authenticate(bearer(token), ORDINARY)).source == "jwt"
    assert endpoint.calls == 5
