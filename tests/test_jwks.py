"""Discovery (RFC 8414, OpenID) and the JWKS cache (docs/ARCHITECTURE.md), through real keys, real tokens and respx.

Time only moves when a test advances the ``ManualClock``; a JWKS fetch that must stay in flight waits on
an ``asyncio.Event`` the test controls, so nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import (
    AUDIENCE,
    ISSUER,
    JWKS_URL,
    METADATA_URL,
    OPENID_URL,
    T0,
    Issuer,
    private_key,
)
from tokenguard import TokenGuard
from tokenguard._discovery import well_known_urls
from tokenguard._http import FetchError
from tokenguard.authenticator import Authenticator
from tokenguard.config import GuardConfig
from tokenguard.errors import InvalidToken, KeysUnavailable
from tokenguard.jwks import KeySet, max_age, parse_jwk, parse_jwks
from tokenguard.models import AccessToken
from tokenguard.testing import ManualClock, SigningKey

TENANT = "https://idp.example.com/tenant"
TENANT_METADATA_URL = "https://idp.example.com/.well-known/oauth-authorization-server/tenant"
TENANT_OPENID_URL = "https://idp.example.com/tenant/.well-known/openid-configuration"
HOUR = 3600.0
DAY = 86400.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def openid_absent(respx_mock: respx.MockRouter) -> respx.Route:
    """The OpenID discovery URL is a 404 unless a test says otherwise (the issuer serves RFC 8414)."""
    return respx_mock.get(OPENID_URL).respond(404)


# -- helpers ------------------------------------------------------------------------------------


def make_auth(clock: ManualClock, **options: Any) -> Authenticator:
    options.setdefault("issuer", ISSUER)
    return Authenticator(GuardConfig(audience=AUDIENCE, clock=clock, **options))


def requests_to(router: respx.MockRouter, url: str) -> int:
    """How many requests the code under test sent to ``url``."""
    return sum(1 for call in router.calls if str(call.request.url) == url)


def random_kid_token(idp: Issuer) -> str:
    """A well-formed token from the right issuer, signed with a real key, naming a kid nobody published."""
    return idp.token(kid=None, headers={"kid": f"k-{uuid.uuid4().hex}"})


def new_key(idp: Issuer, kid: str = "rsa-2", slot: int = 1) -> SigningKey:
    key = SigningKey("RS256", private_key("rsa", slot), kid=kid)
    idp.keys.append(key)
    return key


def gate_jwks(router: respx.MockRouter, idp: Issuer) -> asyncio.Event:
    """Serve the JWKS as ``idp`` does, but hold each answer until the returned event is set."""
    gate = asyncio.Event()

    async def jwks(request: httpx.Request) -> httpx.Response:
        idp.jwks_calls += 1
        await gate.wait()
        if idp.down:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=idp.jwks(), headers=idp.jwks_headers)

    router.get(JWKS_URL).mock(side_effect=jwks)
    return gate


async def run_ready_tasks(rounds: int = 20) -> None:
    """Let ready tasks and callbacks run for a few loop iterations; no clock is involved."""
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        turn = loop.create_future()
        loop.call_soon(turn.set_result, None)
        await turn


async def refusal(auth: Authenticator, token: str) -> Exception:
    """The exception ``validate`` raises for ``token`` (failing the test if it accepts it)."""
    try:
        await auth.validate(token)
    except (InvalidToken, KeysUnavailable) as exc:
        return exc
    raise AssertionError("the token was accepted")


def jwk_of(public_key: Any, **extra: Any) -> dict[str, Any]:
    if isinstance(public_key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        jwk = json.loads(RSAAlgorithm.to_jwk(public_key))
    elif isinstance(public_key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        jwk = json.loads(ECAlgorithm.to_jwk(public_key))
    else:
        jwk = json.loads(OKPAlgorithm.to_jwk(public_key))
    jwk.update(extra)
    return jwk


async def protected(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity})


def make_app(clock: ManualClock, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/me", protected)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, **options)
    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- discovery ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "rfc8414", "openid"),
    [
        (ISSUER, METADATA_URL, OPENID_URL),
        (ISSUER + "/", METADATA_URL, OPENID_URL),
        (TENANT, TENANT_METADATA_URL, TENANT_OPENID_URL),
        (TENANT + "/", TENANT_METADATA_URL, TENANT_OPENID_URL),
        (
            "https://login.example.com:8443/realms/a/b",
            "https://login.example.com:8443/.well-known/oauth-authorization-server/realms/a/b",
            "https://login.example.com:8443/realms/a/b/.well-known/openid-configuration",
        ),
    ],
)
def test_well_known_urls(issuer: str, rfc8414: str, openid: str) -> None:
    """RFC 8414 §3.1 inserts the well-known segment before the issuer's path; OpenID appends it; an issuer
    with a path also gets the appended RFC 8414 form (Keycloak, Okta, Spring) as a last resort."""
    urls = well_known_urls(issuer)
    assert urls[:2] == (rfc8414, openid)
    if urlsplit(issuer).path.strip("/"):
        assert urls[2:] == (issuer.rstrip("/") + "/.well-known/oauth-authorization-server",)
    else:
        assert urls[2:] == ()


@pytest.mark.anyio
async def test_issuer_with_a_path_uses_the_path_inserted_metadata_url(
    respx_mock: respx.MockRouter, clock: ManualClock
) -> None:
    """An issuer https://host/tenant is discovered at https://host/.well-known/oauth-authorization-server/tenant."""
    tenant = Issuer(clock, issuer=TENANT)
    inserted = respx_mock.get(TENANT_METADATA_URL).respond(200, json=tenant.metadata())
    appended = respx_mock.get(TENANT_OPENID_URL).respond(404)
    respx_mock.get(JWKS_URL).respond(200, json=tenant.jwks())
    token = await make_auth(clock, issuer=TENANT).validate(tenant.token())
    assert token.issuer == TENANT
    assert inserted.call_count == 1
    assert not appended.called


@pytest.mark.anyio
async def test_appended_rfc8414_metadata_is_the_last_resort(respx_mock: respx.MockRouter, clock: ManualClock) -> None:
    """A server that serves only {issuer}/.well-known/oauth-authorization-server (Keycloak, Okta) is found."""
    tenant = Issuer(clock, issuer=TENANT)
    inserted = respx_mock.get(TENANT_METADATA_URL).respond(404)
    openid = respx_mock.get(TENANT_OPENID_URL).respond(404)
    appended = respx_mock.get(f"{TENANT}/.well-known/oauth-authorization-server").respond(200, json=tenant.metadata())
    respx_mock.get(JWKS_URL).respond(200, json=tenant.jwks())
    token = await make_auth(clock, issuer=TENANT).validate(tenant.token())
    assert token.issuer == TENANT
    assert (inserted.call_count, openid.call_count, appended.call_count) == (1, 1, 1)


@pytest.mark.anyio
async def test_rfc8414_metadata_is_preferred(respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock) -> None:
    """When the RFC 8414 document answers, the OpenID one is never asked for."""
    await make_auth(clock).validate(idp.token())
    assert (requests_to(respx_mock, METADATA_URL), requests_to(respx_mock, OPENID_URL)) == (1, 0)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "first_answer",
    [
        httpx.Response(404, json={"error": "not_found"}),
        httpx.ConnectError("connection refused"),
        httpx.Response(200, text="<html>Welcome</html>"),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(500),
    ],
    ids=["404", "unreachable", "html", "json-array", "500"],
)
async def test_openid_discovery_is_the_fallback(
    respx_mock: respx.MockRouter, clock: ManualClock, first_answer: Any
) -> None:
    """When the RFC 8414 URL is missing, unreachable or not JSON, issuer + /.well-known/openid-configuration is used."""
    idp = Issuer(clock)
    rfc8414 = respx_mock.get(METADATA_URL).mock(side_effect=[first_answer])
    openid = respx_mock.get(OPENID_URL).respond(200, json=idp.metadata())
    respx_mock.get(JWKS_URL).respond(200, json=idp.jwks())
    token = await make_auth(clock).validate(idp.token())
    assert token.subject == "alice"
    assert (rfc8414.call_count, openid.call_count) == (1, 1)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "named",
    [ISSUER + "/", "https://IDP.example.com", "https://evil.example.com", None, 42],
    ids=["trailing-slash", "case", "other-host", "missing", "not-a-string"],
)
async def test_metadata_naming_another_issuer_is_refused(
    respx_mock: respx.MockRouter, clock: ManualClock, named: Any
) -> None:
    """RFC 8414 §3.3: metadata whose ``issuer`` is not identical to the configured one is never used."""
    idp = Issuer(clock)
    document = {**idp.metadata(), "issuer": named}
    respx_mock.get(METADATA_URL).respond(200, json=document)
    respx_mock.get(OPENID_URL).respond(200, json=document)
    jwks = respx_mock.get(JWKS_URL).respond(200, json=idp.jwks())
    error = await refusal(make_auth(clock), idp.token())
    assert isinstance(error, KeysUnavailable)
    assert "names issuer" in error.cause
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    assert isinstance(chain[-1], FetchError)  # what each well-known URL did stays with the error
    assert not jwks.called


def test_metadata_naming_another_issuer_is_a_503_through_the_app(
    respx_mock: respx.MockRouter, clock: ManualClock
) -> None:
    """Through a real app, refused metadata is a 503 with Retry-After, not a 401: the token may be fine."""
    idp = Issuer(clock)
    respx_mock.get(METADATA_URL).respond(200, json={**idp.metadata(), "issuer": ISSUER + "/"})
    response = TestClient(make_app(clock)).get("/me", headers=bearer(idp.token()))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "temporarily_unavailable"


@pytest.mark.anyio
async def test_explicit_jwks_uri_skips_discovery(respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock) -> None:
    """With ``jwks_uri`` configured, no metadata document is fetched at all."""
    token = await make_auth(clock, jwks_uri=JWKS_URL).validate(idp.token())
    assert token.subject == "alice"
    assert (requests_to(respx_mock, METADATA_URL), requests_to(respx_mock, OPENID_URL)) == (0, 0)
    assert requests_to(respx_mock, JWKS_URL) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jwks_uri", "http://idp.example.com/jwks"),
        ("jwks_uri", "ftp://idp.example.com/jwks"),
        ("jwks_uri", "/jwks"),
        ("jwks_uri", ["https://idp.example.com/jwks"]),
        ("introspection_endpoint", "http://idp.example.com/introspect"),
    ],
    ids=["http-jwks", "ftp-jwks", "relative-jwks", "list-jwks", "http-introspection"],
)
async def test_metadata_with_an_insecure_endpoint_is_refused(
    respx_mock: respx.MockRouter, clock: ManualClock, name: str, value: Any
) -> None:
    """RFC 8414 §2: a metadata endpoint that is not https (http only on loopback) makes the metadata unusable."""
    idp = Issuer(clock)
    respx_mock.get(METADATA_URL).respond(200, json={**idp.metadata(), name: value})
    plain = respx_mock.get("http://idp.example.com/jwks").respond(200, json=idp.jwks())
    error = await refusal(make_auth(clock), idp.token())
    assert isinstance(error, KeysUnavailable)
    assert name in error.cause
    assert not plain.called


@pytest.mark.anyio
async def test_metadata_with_a_loopback_http_jwks_uri_is_used(respx_mock: respx.MockRouter, clock: ManualClock) -> None:
    """Plain http is allowed for a loopback JWKS (local development)."""
    idp = Issuer(clock)
    local = "http://127.0.0.1:9000/jwks"
    respx_mock.get(METADATA_URL).respond(200, json={**idp.metadata(), "jwks_uri": local})
    route = respx_mock.get(local).respond(200, json=idp.jwks())
    assert (await make_auth(clock).validate(idp.token())).subject == "alice"
    assert route.called


@pytest.mark.anyio
async def test_metadata_without_jwks_uri_is_unavailable(respx_mock: respx.MockRouter, clock: ManualClock) -> None:
    """Metadata that names no ``jwks_uri`` leaves no keys to use: 503, with the cause logged."""
    idp = Issuer(clock)
    respx_mock.get(METADATA_URL).respond(200, json={"issuer": ISSUER})
    error = await refusal(make_auth(clock), idp.token())
    assert isinstance(error, KeysUnavailable)
    assert "no jwks_uri" in error.cause


@pytest.mark.anyio
async def test_metadata_is_kept_for_its_own_max_age(respx_mock: respx.MockRouter, clock: ManualClock) -> None:
    """Metadata is cached for its own Cache-Control max-age, not refetched with every JWKS fetch."""
    idp = Issuer(clock)
    metadata = respx_mock.get(METADATA_URL).respond(200, json=idp.metadata(), headers={"Cache-Control": "max-age=7200"})
    jwks = respx_mock.get(JWKS_URL).respond(200, json=idp.jwks(), headers={"Cache-Control": "max-age=300"})
    auth = make_auth(clock)
    await auth.validate(idp.token())
    clock.advance(300)
    await auth.validate(idp.token())
    assert (metadata.call_count, jwks.call_count) == (1, 2)
    clock.advance(7200)
    await auth.validate(idp.token())
    assert (metadata.call_count, jwks.call_count) == (2, 3)


# -- Cache-Control ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "seconds"),
    [
        (None, 3600),
        ("max-age=600", 600),
        ("public, max-age=1200, must-revalidate", 1200),
        ("MAX-AGE=900", 900),
        ('max-age="900"', 900),
        ("max-age=60", 300),
        ("max-age=0", 300),
        ("max-age=604800", 86400),
        ("max-age=99999999999999999999", 86400),
        ("no-store", 300),
        ("no-cache", 300),
        ("max-age=7200, no-store", 300),
        ("max-age=600, max-age=1200", 600),
        ("max-age=abc", 3600),
        ("max-age=-5", 3600),
        ("max-age=1.5", 3600),
        ("s-maxage=60", 3600),
        ("private", 3600),
    ],
)
def test_max_age(cache_control: str | None, seconds: float) -> None:
    """``Cache-Control: max-age`` is honoured, clamped to [5 min, 24 h]; 1 h when absent; no-store is the minimum."""
    headers = {} if cache_control is None else {"cache-control": cache_control}
    assert max_age(headers, default=3600, low=300, high=86400) == seconds


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("cache_control", "ttl"),
    [(None, 3600), ("max-age=600", 600), ("max-age=60", 300), ("max-age=200000", 86400), ("no-store", 300)],
)
async def test_keys_stay_fresh_for_the_clamped_max_age(
    idp: Issuer, clock: ManualClock, cache_control: str | None, ttl: float
) -> None:
    """The JWKS is fresh for exactly the clamped max-age after it was fetched."""
    idp.jwks_headers = {} if cache_control is None else {"Cache-Control": cache_control}
    auth = make_auth(clock)
    await auth.prefetch()
    clock.advance(ttl - 1)
    assert auth.jwks.status()["fresh"]
    clock.advance(1)
    assert not auth.jwks.status()["fresh"]


@pytest.mark.anyio
async def test_expired_keys_are_refetched_before_use(idp: Issuer, clock: ManualClock) -> None:
    """Past its max-age, with the issuer up, the JWKS is fetched again before a token is checked against it."""
    idp.jwks_headers = {"Cache-Control": "max-age=600"}
    auth = make_auth(clock)
    await auth.validate(idp.token())
    removed = idp.keys.pop(0)  # the issuer withdraws rsa-1
    clock.advance(600)
    error = await refusal(auth, idp.token(kid=None, key=removed.private, headers={"kid": "rsa-1"}))
    assert isinstance(error, InvalidToken)
    assert error.reason == "unknown_kid"
    assert idp.jwks_calls >= 2


@pytest.mark.anyio
async def test_background_refresh_at_80_percent_does_not_make_the_request_wait(
    respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock
) -> None:
    """At 80% of the TTL a request is answered from the cache at once while a refresh runs in the background."""
    idp.jwks_headers = {"Cache-Control": "max-age=1000"}
    auth = make_auth(clock)
    await auth.validate(idp.token())
    clock.advance(799)
    await auth.validate(idp.token())
    await run_ready_tasks()
    assert idp.jwks_calls == 1  # not due yet
    gate = gate_jwks(respx_mock, idp)
    clock.advance(1)
    token = await auth.validate(idp.token())  # returns while the refresh is held at the gate
    await run_ready_tasks()
    assert token.subject == "alice"
    assert idp.jwks_calls == 2
    assert auth.jwks.status()["last_fetch"] == T0
    gate.set()
    await run_ready_tasks()
    assert auth.jwks.status()["last_fetch"] == T0 + 800
    clock.advance(799)  # T0 + 1599: past the first TTL, before the refreshed copy's 80% mark
    await auth.validate(idp.token())
    await run_ready_tasks()
    assert idp.jwks_calls == 2


@pytest.mark.anyio
async def test_background_refresh_starts_once_for_many_requests(
    respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock
) -> None:
    """Every request past the 80% mark is served at once, and only one refresh is started."""
    auth = make_auth(clock)
    await auth.validate(idp.token())
    gate = gate_jwks(respx_mock, idp)
    clock.advance(0.8 * HOUR)
    tokens = await asyncio.gather(*(auth.validate(idp.token()) for _ in range(20)))
    await run_ready_tasks()
    assert len(tokens) == 20
    assert idp.jwks_calls == 2
    gate.set()
    await run_ready_tasks()


# -- key rotation and the unknown-kid cool-down -------------------------------------------------


@pytest.mark.anyio
async def test_new_kid_right_after_startup_is_accepted(idp: Issuer, clock: ManualClock) -> None:
    """A key published just after the first fetch is accepted the first time a token names it."""
    auth = make_auth(clock)
    await auth.prefetch()
    new_key(idp)
    token = await auth.validate(idp.token("rsa-2"))
    assert token.key_id == "rsa-2"
    assert idp.jwks_calls == 2


@pytest.mark.anyio
async def test_new_kid_right_after_a_scheduled_refresh_is_accepted(idp: Issuer, clock: ManualClock) -> None:
    """A scheduled refresh does not start the cool-down: a key published after it is fetched at once."""
    auth = make_auth(clock)
    await auth.validate(idp.token())
    clock.advance(0.8 * HOUR)
    await auth.validate(idp.token())  # schedules the refresh
    await run_ready_tasks()
    assert idp.jwks_calls == 2
    new_key(idp)
    assert (await auth.validate(idp.token("rsa-2"))).key_id == "rsa-2"
    assert idp.jwks_calls == 3


@pytest.mark.anyio
async def test_unknown_kid_refetch_starts_the_cool_down(idp: Issuer, clock: ManualClock) -> None:
    """After an unknown-kid refetch, another new kid is refused without a fetch until 30 s have passed."""
    auth = make_auth(clock)
    await auth.validate(idp.token())
    new_key(idp, "rsa-2", 1)
    assert (await auth.validate(idp.token("rsa-2"))).key_id == "rsa-2"
    assert idp.jwks_calls == 2
    new_key(idp, "rsa-3", 2)
    clock.advance(29)
    error = await refusal(auth, idp.token("rsa-3"))
    assert isinstance(error, InvalidToken)
    assert error.reason == "unknown_kid"
    assert idp.jwks_calls == 2
    clock.advance(1)
    assert (await auth.validate(idp.token("rsa-3"))).key_id == "rsa-3"
    assert idp.jwks_calls == 3


@pytest.mark.anyio
async def test_unknown_kid_storm_costs_one_fetch_per_cool_down(idp: Issuer, clock: ManualClock) -> None:
    """200 concurrent tokens with random kids cause one refetch, none more within 30 s, one after; all 401."""
    auth = make_auth(clock)
    await auth.validate(idp.token())
    assert idp.jwks_calls == 1

    async def storm() -> list[Any]:
        tokens = [random_kid_token(idp) for _ in range(200)]
        return await asyncio.gather(*(auth.validate(token) for token in tokens), return_exceptions=True)

    results = await storm()
    assert idp.jwks_calls == 2
    assert all(isinstance(result, InvalidToken) and result.reason == "unknown_kid" for result in results)
    assert {result.status_code for result in results} == {401}
    clock.advance(29)
    results = await storm()
    assert idp.jwks_calls == 2
    assert all(isinstance(result, InvalidToken) and result.reason == "unknown_kid" for result in results)
    clock.advance(1)
    results = await storm()
    assert idp.jwks_calls == 3
    assert all(isinstance(result, InvalidToken) and result.reason == "unknown_kid" for result in results)


@pytest.mark.anyio
async def test_unknown_kid_storm_on_a_cold_cache_is_bounded(idp: Issuer, clock: ManualClock) -> None:
    """Random kids on a cold cache: the first fetch plus at most one refetch, and every request gets a 401."""
    auth = make_auth(clock)
    results = await asyncio.gather(*(auth.validate(random_kid_token(idp)) for _ in range(200)), return_exceptions=True)
    assert idp.jwks_calls <= 2
    assert idp.metadata_calls == 1
    assert all(isinstance(result, InvalidToken) and result.reason == "unknown_kid" for result in results)


def test_unknown_kid_is_a_401_through_the_app(idp: Issuer, clock: ManualClock) -> None:
    """Through a real app, a token naming an unknown kid gets 401 invalid_token, never a 500."""
    client = TestClient(make_app(clock))
    response = client.get("/me", headers=bearer(random_kid_token(idp)))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


# -- single flight ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cold_cache_requests_share_one_fetch(
    respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock
) -> None:
    """100 concurrent requests on a cold cache make exactly one metadata fetch and one JWKS fetch."""
    auth = make_auth(clock)
    gate = gate_jwks(respx_mock, idp)
    requests = [asyncio.ensure_future(auth.validate(idp.token())) for _ in range(100)]
    await run_ready_tasks()
    assert (idp.metadata_calls, idp.jwks_calls) == (1, 1)
    gate.set()
    tokens: list[AccessToken] = await asyncio.gather(*requests)
    assert {token.subject for token in tokens} == {"alice"}
    assert (idp.metadata_calls, idp.jwks_calls) == (1, 1)


@pytest.mark.anyio
async def test_cold_cache_failure_is_shared_too(respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock) -> None:
    """When the one shared fetch fails, every waiting request gets KeysUnavailable from that one attempt."""
    auth = make_auth(clock, jwks_uri=JWKS_URL)
    gate = gate_jwks(respx_mock, idp)
    idp.down = True
    requests = [asyncio.ensure_future(auth.validate(idp.token())) for _ in range(50)]
    await run_ready_tasks()
    gate.set()
    results = await asyncio.gather(*requests, return_exceptions=True)
    assert all(isinstance(result, KeysUnavailable) for result in results)
    assert idp.jwks_calls == 1


# -- the issuer goes down ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_warm_cache_outlives_an_outage_for_the_stale_period(
    respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock
) -> None:
    """With the issuer down, the last keys keep working past their max-age until the stale period ends, then 503."""
    auth = make_auth(clock)
    await auth.validate(idp.token())
    idp.down = True
    clock.advance(HOUR)
    assert (await auth.validate(idp.token())).subject == "alice"
    status = auth.jwks.status()
    assert status["stale"]
    assert status["usable"]
    assert status["keys"] == 3
    # Discovery failed too (both URLs); its last good copy still named the JWKS, which was tried once.
    assert requests_to(respx_mock, METADATA_URL) == 2
    assert requests_to(respx_mock, OPENID_URL) == 1
    assert idp.jwks_calls == 2
    clock.advance(DAY - 1)
    assert (await auth.validate(idp.token())).subject == "alice"
    clock.advance(1)
    error = await refusal(auth, idp.token())
    assert isinstance(error, KeysUnavailable)
    assert error.status_code == 503
    assert auth.jwks.status()["keys"] == 3  # never emptied, only no longer trusted


@pytest.mark.anyio
async def test_idle_cache_past_its_max_age_still_reports_usable(idp: Issuer, clock: ManualClock) -> None:
    """Health checks see keys as usable through the stale period even with no traffic to refresh them."""
    auth = make_auth(clock)
    await auth.prefetch()
    clock.advance(HOUR + DAY - 1)
    assert auth.jwks.status()["usable"]
    clock.advance(1)
    assert not auth.jwks.status()["usable"]
    assert (await auth.validate(idp.token())).subject == "alice"  # the next request simply fetches
    assert auth.jwks.status()["usable"]


@pytest.mark.anyio
async def test_outage_fetches_are_spaced_out(idp: Issuer, clock: ManualClock) -> None:
    """During an outage with a warm cache, requests use the stale keys and the issuer is asked rarely."""
    auth = make_auth(clock, jwks_uri=JWKS_URL)
    await auth.validate(idp.token())
    idp.down = True
    clock.advance(HOUR)
    for _ in range(20):
        await auth.validate(idp.token())
    await run_ready_tasks()
    assert idp.jwks_calls == 2
    clock.advance(5)  # first retry after retry_after (5 s)
    for _ in range(20):
        await auth.validate(idp.token())
    await run_ready_tasks()
    assert idp.jwks_calls == 3
    clock.advance(5)  # the next wait is doubled: 10 s
    await auth.validate(idp.token())
    await run_ready_tasks()
    assert idp.jwks_calls == 3
    clock.advance(5)
    await auth.validate(idp.token())
    await run_ready_tasks()
    assert idp.jwks_calls == 4


@pytest.mark.anyio
async def test_issuer_back_after_an_outage_is_used_again(idp: Issuer, clock: ManualClock) -> None:
    """Once the issuer answers again, fresh keys replace the stale ones and new kids are found."""
    auth = make_auth(clock, jwks_uri=JWKS_URL)
    await auth.validate(idp.token())
    idp.down = True
    clock.advance(HOUR)
    await auth.validate(idp.token())
    idp.down = False
    new_key(idp)
    clock.advance(60)
    assert (await auth.validate(idp.token("rsa-2"))).key_id == "rsa-2"
    assert auth.jwks.status()["fresh"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "garbage",
    [
        lambda idp: httpx.Response(200, text="<html>maintenance</html>"),
        lambda idp: httpx.Response(200, json=idp.jwks()["keys"]),
        lambda idp: httpx.Response(200, json={"keys": "x"}),
        lambda idp: httpx.Response(200, json={}),
        lambda idp: httpx.Response(
            200,
            json={
                "keys": [
                    {"kty": "oct", "kid": "hs", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},
                    {**idp.jwks()["keys"][0], "use": "enc"},
                    {"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "AQAB"},
                ]
            },
        ),
        lambda idp: httpx.Response(200, json={"keys": []}),
        lambda idp: httpx.Response(500, json=idp.jwks()),
        lambda idp: httpx.Response(200, json={**idp.jwks(), "padding": "x" * (600 * 1024)}),
    ],
    ids=["not-json", "json-array", "keys-not-a-list", "no-keys", "no-usable-key", "empty", "status-500", "huge"],
)
async def test_garbage_jwks_keeps_the_old_keys(
    idp: Issuer, clock: ManualClock, garbage: Callable[[Issuer], httpx.Response]
) -> None:
    """A JWKS replaced by garbage (or a body over the size cap) is refused and the last good keys stay in use."""
    auth = make_auth(clock)
    await auth.validate(idp.token())
    idp.jwks_override = garbage(idp)
    clock.advance(HOUR)
    assert (await auth.validate(idp.token("ec-1"))).key_id == "ec-1"
    status = auth.jwks.status()
    assert idp.jwks_calls == 2
    assert status["failures"] == 1
    assert status["kids"] == ["ec-1", "ed-1", "rsa-1"]


@pytest.mark.anyio
async def test_cold_cache_with_the_issuer_down_fails_fast(
    respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock
) -> None:
    """Cold cache and a dead issuer: 503 (KeysUnavailable); right after, requests fail at once without calls."""
    auth = make_auth(clock)
    idp.down = True
    first = await refusal(auth, idp.token())
    assert isinstance(first, KeysUnavailable)
    assert first.retry_after == 5
    assert requests_to(respx_mock, METADATA_URL) == 1
    calls = len(respx_mock.calls)
    for _ in range(50):
        error = await refusal(auth, idp.token())
        assert isinstance(error, KeysUnavailable)
    assert len(respx_mock.calls) == calls
    clock.advance(2)
    later = await refusal(auth, idp.token())
    assert isinstance(later, KeysUnavailable)
    assert later.retry_after == 3  # Retry-After tells the truth about the next attempt
    assert len(respx_mock.calls) == calls
    clock.advance(3)
    await refusal(auth, idp.token())
    assert requests_to(respx_mock, METADATA_URL) == 2


@pytest.mark.anyio
async def test_issuer_that_comes_back_is_used_within_the_backoff(idp: Issuer, clock: ManualClock) -> None:
    """After failures with a cold cache, the next attempt is at most a minute away and then succeeds."""
    auth = make_auth(clock)
    idp.down = True
    for _ in range(12):
        await refusal(auth, idp.token())
        clock.advance(60)
    idp.down = False
    assert (await auth.validate(idp.token())).subject == "alice"


def test_cold_cache_issuer_down_is_a_503_with_retry_after_through_the_app(idp: Issuer, clock: ManualClock) -> None:
    """Through a real app: 503, Retry-After, temporarily_unavailable; the next request costs the issuer nothing."""
    idp.down = True
    client = TestClient(make_app(clock))
    response = client.get("/me", headers=bearer(idp.token()))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "temporarily_unavailable"
    calls = idp.metadata_calls
    again = client.get("/me", headers=bearer(idp.token()))
    assert again.status_code == 503
    assert idp.metadata_calls == calls


@pytest.mark.anyio
async def test_key_rotation_during_an_outage_is_a_503_not_a_401(idp: Issuer, clock: ManualClock) -> None:
    """A token naming a new kid while the issuer is down may well be valid: KeysUnavailable, never unknown_kid."""
    auth = make_auth(clock)
    await auth.validate(idp.token())
    idp.down = True
    new_key(idp)
    first = await refusal(auth, idp.token("rsa-2"))
    second = await refusal(auth, idp.token("rsa-2"))
    assert isinstance(first, KeysUnavailable)
    assert isinstance(second, KeysUnavailable)
    assert (await auth.validate(idp.token("rsa-1"))).key_id == "rsa-1"


@pytest.mark.anyio
async def test_unknown_kid_joining_a_failing_refresh_is_a_503(
    respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock
) -> None:
    """A new kid that waits on a background refresh which then fails gets 503, not 401."""
    auth = make_auth(clock, jwks_uri=JWKS_URL)
    await auth.validate(idp.token())
    gate = gate_jwks(respx_mock, idp)
    clock.advance(0.8 * HOUR)
    await auth.validate(idp.token())  # starts the refresh, held at the gate
    new_key(idp)
    waiting = asyncio.ensure_future(auth.validate(idp.token("rsa-2")))
    await run_ready_tasks()
    idp.down = True
    gate.set()
    with pytest.raises(KeysUnavailable):
        await waiting
    assert idp.jwks_calls == 2


# -- keys ---------------------------------------------------------------------------------------


def test_rsa_key_verifies_rsa_algorithms_only() -> None:
    """An RSA key without ``alg`` may verify RS256/384/512 and PS256/384/512, nothing else."""
    key = parse_jwk(jwk_of(private_key("rsa").public_key(), kid="r"))
    assert key is not None
    assert key.algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert isinstance(key.key, rsa.RSAPublicKey)


@pytest.mark.parametrize(
    ("make", "alg"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "ES512"),
        (lambda: private_key("ed25519"), "EdDSA"),
        (lambda: ed448.Ed448PrivateKey.generate(), "EdDSA"),
    ],
    ids=["P-256", "P-384", "P-521", "Ed25519", "Ed448"],
)
def test_curve_keys_map_to_their_algorithm(make: Callable[[], Any], alg: str) -> None:
    """EC P-256/P-384/P-521 verify ES256/ES384/ES512; Ed25519 and Ed448 verify EdDSA."""
    key = parse_jwk(jwk_of(make().public_key(), kid="c"))
    assert key is not None
    assert key.algorithms == {alg}


@pytest.mark.parametrize(
    "entry",
    [
        {"kty": "oct", "kid": "hs", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "alg": "HS256"},
        {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"},
        {"kty": "EC", "crv": ["P-256"], "x": "AA", "y": "AA"},
        {"kty": "OKP", "crv": {"name": "Ed25519"}, "x": "AA"},
        {"kty": ["RSA"], "n": "AQAB", "e": "AQAB"},
        {"kty": "RSA", "kid": "r", "n": "not base64!", "e": "AQAB"},
        {"kty": "RSA", "kid": "r", "e": "AQAB"},
        {"kty": "RSA", "kid": "r", "n": 12345, "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        "not an object",
        None,
    ],
    ids=[
        "oct",
        "unknown-curve",
        "crv-list",
        "crv-object",
        "kty-list",
        "bad-base64",
        "no-modulus",
        "numeric-modulus",
        "point-off-curve",
        "string",
        "null",
    ],
)
def test_unusable_entries_are_skipped_without_error(entry: object) -> None:
    """Symmetric keys, unknown curves and malformed members are skipped, never an exception."""
    assert parse_jwk(entry) is None


@pytest.mark.parametrize(
    ("extra", "usable"),
    [
        ({"use": "enc"}, False),
        ({"use": None}, False),
        ({"use": "sig"}, True),
        ({"key_ops": ["encrypt", "wrapKey"]}, False),
        ({"key_ops": "verify"}, False),
        ({"key_ops": ["sign", "verify"]}, True),
        ({"kid": 7}, False),
    ],
)
def test_use_and_key_ops_decide_whether_a_key_verifies(extra: dict[str, Any], usable: bool) -> None:
    """RFC 7517 §4.2/§4.3: ``use`` must be ``sig`` and ``key_ops`` must list ``verify`` when present."""
    entry = {**jwk_of(private_key("ec256").public_key(), kid="e"), **extra}
    assert (parse_jwk(entry) is not None) is usable


@pytest.mark.parametrize(
    ("alg", "algorithms"),
    [("RS256", {"RS256"}), ("PS512", {"PS512"}), ("ES256", None), ("HS256", None), ("none", None), (["RS256"], None)],
)
def test_alg_on_a_key_restricts_it(alg: Any, algorithms: set[str] | None) -> None:
    """A key's ``alg`` limits it to that algorithm; an ``alg`` its type cannot do makes it unusable."""
    key = parse_jwk(jwk_of(private_key("rsa").public_key(), kid="r", alg=alg))
    assert (key.algorithms if key is not None else None) == algorithms


def test_private_jwk_marked_for_signing_is_ignored() -> None:
    """A leaked private JWK whose ``key_ops`` is ``["sign"]`` is not a verification key at all."""
    entry = jwk_of(private_key("rsa"), kid="leaked")
    assert entry["key_ops"] == ["sign"]
    assert parse_jwk(entry) is None


def test_short_rsa_key_is_ignored() -> None:
    """RFC 7518 §3.3: an RSA key under 2048 bits is never used."""
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert parse_jwk(jwk_of(short.public_key(), kid="short")) is None


@pytest.mark.parametrize("kind", ["rsa", "ec256", "ed25519"])
def test_private_members_are_never_used(kind: str) -> None:
    """A JWK that leaks its private members still loads as a public key only."""
    entry = jwk_of(private_key(kind), kid="leaked")
    entry.pop("key_ops", None)  # PyJWT marks private JWKs key_ops ["sign"], which alone would exclude them
    assert "d" in entry
    key = parse_jwk(entry)
    assert key is not None
    assert not hasattr(key.key, "sign")
    assert hasattr(key.key, "verify")


def test_duplicate_kids_are_all_candidates() -> None:
    """Two keys under one kid are both kept, and both are tried for a token naming it."""
    first = jwk_of(private_key("rsa").public_key(), kid="dup")
    second = jwk_of(private_key("rsa", 1).public_key(), kid="dup")
    keys = parse_jwks({"keys": [first, second]}, max_keys=10)
    assert len(keys.candidates("dup", "RS256")) == 2
    assert keys.kids == {"dup"}


def test_keys_without_kid_serve_tokens_without_kid_only() -> None:
    """A key without kid is a candidate for a token without kid, never for a token naming a kid."""
    keys = parse_jwks(
        {"keys": [jwk_of(private_key("ec256").public_key()), jwk_of(private_key("rsa").public_key(), kid="r")]},
        max_keys=10,
    )
    assert len(keys.candidates(None, "ES256")) == 1
    assert keys.candidates("r", "ES256") == ()
    assert not keys.knows("anything")


def test_max_keys_bounds_the_work() -> None:
    """Only the first ``max_keys`` entries of a JWKS are looked at."""
    entries = [jwk_of(private_key("ec256").public_key(), kid=f"k{i}") for i in range(10)]
    assert parse_jwks({"keys": entries}, max_keys=3).kids == {"k0", "k1", "k2"}
    junk_then_good = [{"kty": "oct", "k": "AA"}] * 3 + entries
    with pytest.raises(ValueError, match="no usable"):
        parse_jwks({"keys": junk_then_good}, max_keys=3)


@pytest.mark.parametrize("document", [[], {"keys": {}}, {"keys": None}, "keys", {"keys": []}])
def test_jwks_without_usable_keys_is_an_error(document: object) -> None:
    """A document that is not a JWKS, or has no usable key, raises ValueError (and the cache keeps its keys)."""
    with pytest.raises(ValueError, match="JWKS"):
        parse_jwks(document, max_keys=10)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_jwk_like = st.fixed_dictionaries(
    {},
    optional={
        "kty": st.sampled_from(["RSA", "EC", "OKP", "oct"]) | _json,
        "crv": st.sampled_from(["P-256", "P-384", "P-521", "Ed25519"]) | _json,
        "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "HS256"]) | _json,
        "use": st.sampled_from(["sig", "enc"]) | _json,
        "key_ops": _json,
        "kid": _json,
        "n": _json,
        "e": _json,
        "x": _json,
        "y": _json,
    },
)


@settings(max_examples=150, deadline=None)
@given(entry=_jwk_like | _json)
def test_parse_jwk_never_raises(entry: object) -> None:
    """Whatever JSON an issuer publishes as a key, parsing it yields a key or None, never an exception."""
    key = parse_jwk(entry)
    assert key is None or key.algorithms


@pytest.mark.anyio
async def test_symmetric_and_encryption_keys_in_the_jwks_are_not_found(
    respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock
) -> None:
    """Tokens naming an oct key or a use=enc key of the JWKS are refused as unknown_kid: those keys do not exist."""
    rsa_jwk = idp.key("rsa-1").public_jwk()
    document = {
        "keys": [
            {"kty": "oct", "kid": "hs", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},
            {**rsa_jwk, "kid": "enc-1", "use": "enc"},
            rsa_jwk,
        ]
    }
    respx_mock.get(JWKS_URL).respond(200, json=document)
    auth = make_auth(clock)
    for kid in ("hs", "enc-1"):
        error = await refusal(auth, idp.token(kid=None, headers={"kid": kid}))
        assert isinstance(error, InvalidToken)
        assert error.reason == "unknown_kid"


@pytest.mark.anyio
async def test_key_alg_restriction_applies_to_tokens(
    respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock
) -> None:
    """A key published with alg RS256 does not verify a PS256 token, even one signed with that very key."""
    respx_mock.get(JWKS_URL).respond(200, json={"keys": [{**idp.key("rsa-1").public_jwk(), "alg": "RS256"}]})
    auth = make_auth(clock)
    assert (await auth.validate(idp.token("rsa-1"))).key_id == "rsa-1"
    error = await refusal(auth, idp.token("rsa-1", alg="PS256"))
    assert isinstance(error, InvalidToken)
    assert error.reason == "key_mismatch"


@pytest.mark.anyio
async def test_token_signed_by_the_second_of_two_keys_sharing_a_kid(
    respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock
) -> None:
    """With two keys under one kid, a token signed by either verifies."""
    other = private_key("rsa", 1)
    respx_mock.get(JWKS_URL).respond(
        200, json={"keys": [idp.key("rsa-1").public_jwk(), jwk_of(other.public_key(), kid="rsa-1")]}
    )
    token = await make_auth(clock).validate(idp.token(kid=None, key=other, headers={"kid": "rsa-1"}))
    assert token.key_id == "rsa-1"


@pytest.mark.anyio
async def test_token_without_kid_verifies_against_a_key_without_kid(
    respx_mock: respx.MockRouter, idp: Issuer, clock: ManualClock
) -> None:
    """An issuer with one kid-less key: its tokens without kid verify."""
    respx_mock.get(JWKS_URL).respond(200, json={"keys": [jwk_of(private_key("ec256").public_key())]})
    token = await make_auth(clock).validate(idp.token(kid=None, alg="ES256", key=private_key("ec256")))
    assert token.key_id is None


def test_keyset_of_indexes_by_kid() -> None:
    """``KeySet.of`` groups keys by kid and keeps the order of the document."""
    keys = parse_jwks({"keys": [jwk_of(private_key("ec256").public_key(), kid=k) for k in "ab"]}, max_keys=5)
    assert isinstance(keys, KeySet)
    assert [key.kid for key in keys.keys] == ["a", "b"]
    assert keys.knows("a")
    assert not keys.knows("c")


# -- event loops --------------------------------------------------------------------------------


def test_same_authenticator_from_two_event_loops(idp: Issuer, clock: ManualClock) -> None:
    """One Authenticator used from two ``asyncio.run`` calls in turn: keys are shared, a client per loop."""
    auth = make_auth(clock)

    async def check() -> tuple[str, httpx.AsyncClient]:
        token = await auth.validate(idp.token())
        return token.identity, auth.http.client()

    first_identity, first_client = asyncio.run(check())
    clock.advance(HOUR)  # expired: the second loop must fetch with its own client
    second_identity, second_client = asyncio.run(check())
    assert first_identity == second_identity == "alice"
    assert second_client is not first_client
    assert idp.jwks_calls == 2


def test_refresh_pending_on_another_loop_is_not_awaited(respx_mock: respx.MockRouter, clock: ManualClock) -> None:
    """A refresh still pending on a loop that stopped running is not joined by requests on a new loop."""
    idp = Issuer(clock)
    idp.install(respx_mock)
    auth = make_auth(clock, jwks_uri=JWKS_URL)
    first_loop = asyncio.new_event_loop()
    try:

        async def start_refresh_on_first_loop() -> asyncio.Event:
            await auth.validate(idp.token())
            gate = gate_jwks(respx_mock, idp)
            clock.advance(0.8 * HOUR)
            await auth.validate(idp.token())  # the refresh now waits at the gate, on this loop
            await run_ready_tasks()
            return gate

        gate = first_loop.run_until_complete(start_refresh_on_first_loop())
        assert idp.jwks_calls == 2
        idp.install(respx_mock)  # the second loop gets an ungated JWKS
        clock.advance(0.2 * HOUR)  # expired: a request must fetch before it can check a token

        async def on_second_loop() -> str:
            return (await auth.validate(idp.token())).identity

        assert asyncio.run(on_second_loop()) == "alice"
        assert idp.jwks_calls == 3
        gate.set()
        pending = asyncio.all_tasks(first_loop)
        first_loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    finally:
        first_loop.close()


def test_two_test_client_blocks_share_the_cache(idp: Issuer, clock: ManualClock) -> None:
    """The same app driven by two TestClient blocks (two loops) authorises in both, fetching keys once."""
    app = make_app(clock)
    for _ in range(2):
        with TestClient(app) as client:
            response = client.get("/me", headers=bearer(idp.token()))
            assert response.status_code == 200
            assert response.json() == {"identity": "alice"}
    assert idp.jwks_calls == 1


def test_requests_each_on_a_new_loop(idp: Issuer, clock: ManualClock) -> None:
    """Without a ``with`` block every TestClient request runs on a fresh loop; refreshes keep working."""
    client = TestClient(make_app(clock))
    for _ in range(3):
        assert client.get("/me", headers=bearer(idp.token())).status_code == 200
        clock.advance(HOUR)
    assert idp.jwks_calls == 3


@pytest.mark.parametrize(
    ("kid_old", "kid_new"), [(None, None), ("k1", "k1"), ("k1", "k2")], ids=["no-kid", "reused", "new"]
)
def test_a_withdrawn_key_drops_the_tokens_it_verified(
    idp: Issuer, clock: ManualClock, kid_old: str | None, kid_new: str | None
) -> None:
    """Rotation is judged by key material, not kid: a withdrawn key's tokens leave the verified cache."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from conftest import private_key
    from tokenguard import TokenGuard

    async def me(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.user.identity)

    idp.jwks_headers = {"Cache-Control": "max-age=300"}
    # kid None: the key is published without a kid
    old = SigningKey("RS256", private_key("rsa", 1), kid=kid_old or "", jwk_extra={"kid": kid_old})
    new = SigningKey("RS256", private_key("rsa", 2), kid=kid_new or "", jwk_extra={"kid": kid_new})
    idp.keys = [old]
    old_token = idp.token(kid=None, key=old.private, headers={"kid": kid_old}, exp=int(clock()) + 7200)
    app = Starlette(routes=[Route("/me", me)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with TestClient(app) as client:
        assert client.get("/me", headers={"Authorization": f"Bearer {old_token}"}).status_code == 200
        idp.keys = [new]
        clock.advance(400)  # past max-age: the next request refetches the JWKS
        new_token = idp.token(kid=None, key=new.private, headers={"kid": kid_new})
        assert client.get("/me", headers={"Authorization": f"Bearer {new_token}"}).status_code == 200
        assert client.get("/me", headers={"Authorization": f"Bearer {old_token}"}).status_code == 401
