"""Discovery reads on until it has what the configuration needs, and merges the issuer's documents.

Issue 17: django-oauth-toolkit with OpenID Connect on (issuer ``https://as.example/o``) answers 404 at
RFC 8414's path-inserted URL, serves an OpenID document without ``introspection_endpoint`` (that member
belongs to RFC 8414 / RFC 7662), and an appended ``/o/.well-known/oauth-authorization-server`` that has
it. The documents below are shaped like each server family's real ones; every test counts requests.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
import respx
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import private_key
from tokenguard import TokenGuard, sensitive
from tokenguard._discovery import Attempt, Discovered, discover, well_known_urls
from tokenguard._http import HttpClientPool
from tokenguard.cli import main
from tokenguard.config import GuardConfig, IntrospectionOptions
from tokenguard.jwks import IssuerMetadata
from tokenguard.testing import ManualClock

BOTH = frozenset({"jwks_uri", "introspection_endpoint"})
KEYS = frozenset({"jwks_uri"})
NOT_FOUND = httpx.Response(404, text="<h1>Not Found</h1>", headers={"Content-Type": "text/html"})


async def run_discovery(issuer: str, needs: frozenset[str] = BOTH) -> tuple[Discovered, list[Attempt]]:
    seen: list[Attempt] = []
    found = await discover(HttpClientPool(None, timeout=1), issuer, timeout=1, needs=needs, on_attempt=seen.append)
    return found, seen


# -- the server families' documents --------------------------------------------------------------

DOT = "https://as.example/o"  # django-oauth-toolkit 3.x, OIDC_ENABLED, mounted at /o/
DOT_INSERTED, DOT_OPENID, DOT_APPENDED = well_known_urls(DOT)


def dot_openid() -> dict[str, Any]:
    """oauth2_provider.views.oidc.ConnectDiscoveryInfoView: no introspection or revocation endpoint."""
    return {
        "issuer": DOT,
        "authorization_endpoint": f"{DOT}/authorize/",
        "token_endpoint": f"{DOT}/token/",
        "userinfo_endpoint": f"{DOT}/userinfo/",
        "jwks_uri": f"{DOT}/.well-known/jwks.json",
        "scopes_supported": ["openid", "read", "write"],
        "response_types_supported": ["code", "token", "id_token", "id_token token", "code token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "HS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "code_challenge_methods_supported": ["plain", "S256"],
        "claims_supported": ["sub"],
    }


def dot_rfc8414() -> dict[str, Any]:
    """The appended RFC 8414 document: the OAuth endpoints, introspection and revocation included."""
    return {
        "issuer": DOT,
        "authorization_endpoint": f"{DOT}/authorize/",
        "token_endpoint": f"{DOT}/token/",
        "introspection_endpoint": f"{DOT}/introspect/",
        "revocation_endpoint": f"{DOT}/revoke_token/",
        "jwks_uri": f"{DOT}/.well-known/jwks.json",
        "scopes_supported": ["read", "write"],
        "response_types_supported": ["code", "token"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }


def install_dot(router: respx.MockRouter, *, appended: dict[str, Any] | None = None) -> list[respx.Route]:
    return [
        router.get(DOT_INSERTED).mock(return_value=NOT_FOUND),
        router.get(DOT_OPENID).mock(return_value=httpx.Response(200, json=dot_openid())),
        router.get(DOT_APPENDED).mock(return_value=httpx.Response(200, json=appended or dot_rfc8414())),
    ]


KC = "https://kc.example/realms/x"  # Keycloak: both documents at /realms/x, both with introspection
KC_INSERTED, KC_OPENID, KC_APPENDED = well_known_urls(KC)


def keycloak() -> dict[str, Any]:
    oidc = f"{KC}/protocol/openid-connect"
    return {
        "issuer": KC,
        "authorization_endpoint": f"{oidc}/auth",
        "token_endpoint": f"{oidc}/token",
        "introspection_endpoint": f"{oidc}/token/introspect",
        "userinfo_endpoint": f"{oidc}/userinfo",
        "end_session_endpoint": f"{oidc}/logout",
        "jwks_uri": f"{oidc}/certs",
        "revocation_endpoint": f"{oidc}/revoke",
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types_supported": ["code", "none", "id_token", "token", "id_token token", "code id_token"],
        "subject_types_supported": ["public", "pairwise"],
        "id_token_signing_alg_values_supported": ["PS384", "RS256", "ES256"],
    }


AUTH0 = "https://tenant.eu.auth0.com/"  # Auth0: OpenID only, the issuer ends with "/"
AUTH0_INSERTED, AUTH0_OPENID = well_known_urls(AUTH0)


def auth0() -> dict[str, Any]:
    return {
        "issuer": AUTH0,
        "authorization_endpoint": f"{AUTH0}authorize",
        "token_endpoint": f"{AUTH0}oauth/token",
        "userinfo_endpoint": f"{AUTH0}userinfo",
        "jwks_uri": f"{AUTH0}.well-known/jwks.json",
        "revocation_endpoint": f"{AUTH0}oauth/revoke",
        "scopes_supported": ["openid", "profile", "offline_access", "email"],
        "response_types_supported": ["code", "token", "id_token", "code token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["HS256", "RS256", "PS256"],
    }


OKTA = "https://dev-1.okta.com/oauth2/default"  # Okta custom authorization server: both documents
OKTA_INSERTED, OKTA_OPENID, OKTA_APPENDED = well_known_urls(OKTA)


def okta(*, openid: bool) -> dict[str, Any]:
    document = {
        "issuer": OKTA,
        "authorization_endpoint": f"{OKTA}/v1/authorize",
        "token_endpoint": f"{OKTA}/v1/token",
        "jwks_uri": f"{OKTA}/v1/keys",
        "introspection_endpoint": f"{OKTA}/v1/introspect",
        "revocation_endpoint": f"{OKTA}/v1/revoke",
        "response_types_supported": ["code", "token", "id_token"],
    }
    if openid:
        document |= {"userinfo_endpoint": f"{OKTA}/v1/userinfo", "subject_types_supported": ["public"]}
    return document


PLAIN = "https://as.example/tenant"  # an RFC 8414-only server (path-inserted, §3.1)
PLAIN_INSERTED, PLAIN_OPENID, PLAIN_APPENDED = well_known_urls(PLAIN)


def plain() -> dict[str, Any]:
    return {
        "issuer": PLAIN,
        "token_endpoint": f"{PLAIN}/token",
        "jwks_uri": f"{PLAIN}/jwks",
        "introspection_endpoint": f"{PLAIN}/introspect",
    }


# -- each layout ----------------------------------------------------------------------------------

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_path_inserted_only_one_document_with_everything_is_one_fetch(respx_mock: respx.MockRouter) -> None:
    inserted = respx_mock.get(PLAIN_INSERTED).respond(200, json=plain())
    others = [respx_mock.get(PLAIN_OPENID).mock(return_value=NOT_FOUND), respx_mock.get(PLAIN_APPENDED)]
    found, seen = await run_discovery(PLAIN)
    assert (found.url, found.urls, found.missing) == (PLAIN_INSERTED, (PLAIN_INSERTED,), frozenset())
    assert found.document == plain()
    assert [attempt.url for attempt in seen] == [PLAIN_INSERTED]
    assert inserted.call_count == 1
    assert [route.call_count for route in others] == [0, 0]


async def test_appended_only_is_found_after_two_misses(respx_mock: respx.MockRouter) -> None:
    respx_mock.get(PLAIN_INSERTED).mock(return_value=NOT_FOUND)
    respx_mock.get(PLAIN_OPENID).mock(return_value=NOT_FOUND)
    respx_mock.get(PLAIN_APPENDED).respond(200, json=plain())
    found, seen = await run_discovery(PLAIN)
    assert (found.url, found.missing) == (PLAIN_APPENDED, frozenset())
    assert found.sources["introspection_endpoint"] == PLAIN_APPENDED
    assert [(a.url, a.status, a.problem is None) for a in seen] == [
        (PLAIN_INSERTED, 404, False),
        (PLAIN_OPENID, 404, False),
        (PLAIN_APPENDED, 200, True),
    ]


async def test_openid_only_auth0_returns_what_it_has_and_names_what_is_missing(respx_mock: respx.MockRouter) -> None:
    """An issuer without a path has two well-known URLs; no document has an introspection endpoint."""
    inserted = respx_mock.get(AUTH0_INSERTED).mock(return_value=NOT_FOUND)
    openid = respx_mock.get(AUTH0_OPENID).respond(200, json=auth0())
    found, _ = await run_discovery(AUTH0)
    assert (found.url, found.document, found.missing) == (AUTH0_OPENID, auth0(), frozenset({"introspection_endpoint"}))
    assert (inserted.call_count, openid.call_count) == (1, 1)
    found, _ = await run_discovery(AUTH0, KEYS)  # what a guard without introspection asks for
    assert found.missing == frozenset()
    assert (inserted.call_count, openid.call_count) == (2, 2)


async def test_rfc8414_only_server_with_a_path_is_not_asked_twice(respx_mock: respx.MockRouter) -> None:
    """A path-inserted document lacking introspection: the others are tried, then it is used alone."""
    document = {key: value for key, value in plain().items() if key != "introspection_endpoint"}
    respx_mock.get(PLAIN_INSERTED).respond(200, json=document)
    openid = respx_mock.get(PLAIN_OPENID).mock(return_value=NOT_FOUND)
    appended = respx_mock.get(PLAIN_APPENDED).mock(return_value=NOT_FOUND)
    found, seen = await run_discovery(PLAIN)
    assert (found.document, found.urls, found.missing) == (document, (PLAIN_INSERTED,), {"introspection_endpoint"})
    assert (openid.call_count, appended.call_count, len(seen)) == (1, 1, 3)


async def test_keycloak_openid_document_has_everything_so_the_appended_one_is_never_asked(
    respx_mock: respx.MockRouter,
) -> None:
    inserted = respx_mock.get(KC_INSERTED).mock(return_value=NOT_FOUND)
    openid = respx_mock.get(KC_OPENID).respond(200, json=keycloak())
    appended = respx_mock.get(KC_APPENDED).respond(200, json=keycloak())
    found, _ = await run_discovery(KC)
    assert (found.url, found.missing, found.document) == (KC_OPENID, frozenset(), keycloak())
    assert [inserted.call_count, openid.call_count, appended.call_count] == [1, 1, 0]


async def test_okta_both_documents_the_first_usable_one_is_enough(respx_mock: respx.MockRouter) -> None:
    respx_mock.get(OKTA_INSERTED).mock(return_value=NOT_FOUND)
    respx_mock.get(OKTA_OPENID).respond(200, json=okta(openid=True))
    appended = respx_mock.get(OKTA_APPENDED).respond(200, json=okta(openid=False))
    found, _ = await run_discovery(OKTA)
    assert found.document["introspection_endpoint"] == f"{OKTA}/v1/introspect"
    assert appended.call_count == 0


async def test_django_oauth_toolkit_documents_are_merged(respx_mock: respx.MockRouter) -> None:
    """The OpenID document lacks introspection, the appended RFC 8414 one has it: both are read and merged."""
    routes = install_dot(respx_mock)
    found, seen = await run_discovery(DOT)
    assert [route.call_count for route in routes] == [1, 1, 1]
    assert found.missing == frozenset()
    assert found.document["introspection_endpoint"] == f"{DOT}/introspect/"
    assert found.document["userinfo_endpoint"] == f"{DOT}/userinfo/"  # from the OpenID document
    assert found.document["grant_types_supported"] == dot_rfc8414()["grant_types_supported"]
    # On a member both give, the earlier document (RFC 8414's order) wins.
    assert found.document["scopes_supported"] == ["openid", "read", "write"]
    assert found.sources["jwks_uri"] == DOT_OPENID
    assert found.sources["introspection_endpoint"] == DOT_APPENDED
    assert (found.url, found.urls) == (DOT_OPENID, (DOT_OPENID, DOT_APPENDED))
    assert [(a.url, a.status, a.problem is None) for a in seen] == [
        (DOT_INSERTED, 404, False),
        (DOT_OPENID, 200, True),
        (DOT_APPENDED, 200, True),
    ]


async def test_both_with_different_endpoints_the_earlier_document_wins(respx_mock: respx.MockRouter) -> None:
    later = dot_rfc8414() | {"jwks_uri": f"{DOT}/other-keys/", "token_endpoint": f"{DOT}/other-token/"}
    install_dot(respx_mock, appended=later)
    found, _ = await run_discovery(DOT)
    assert found.document["jwks_uri"] == f"{DOT}/.well-known/jwks.json"
    assert found.document["token_endpoint"] == f"{DOT}/token/"
    assert found.document["introspection_endpoint"] == f"{DOT}/introspect/"


async def test_a_null_member_does_not_hide_a_later_documents_value(respx_mock: respx.MockRouter) -> None:
    respx_mock.get(DOT_INSERTED).mock(return_value=NOT_FOUND)
    respx_mock.get(DOT_OPENID).respond(200, json=dot_openid() | {"introspection_endpoint": None})
    respx_mock.get(DOT_APPENDED).respond(200, json=dot_rfc8414())
    found, _ = await run_discovery(DOT)
    assert found.document["introspection_endpoint"] == f"{DOT}/introspect/"


@pytest.mark.parametrize(
    "later",
    [
        dot_rfc8414() | {"issuer": "https://evil.example/o"},
        dot_rfc8414() | {"issuer": DOT + "/"},
        dot_rfc8414() | {"introspection_endpoint": "http://as.example/o/introspect/"},
    ],
    ids=["another issuer", "trailing slash", "plain http endpoint"],
)
async def test_a_later_document_that_fails_the_rules_is_never_merged(
    respx_mock: respx.MockRouter, later: dict[str, Any]
) -> None:
    """RFC 8414 §3.3 holds for each document: the OpenID one is used alone, the refusal is recorded."""
    install_dot(respx_mock, appended=later)
    found, seen = await run_discovery(DOT)
    assert found.document == dot_openid()
    assert found.missing == frozenset({"introspection_endpoint"})
    assert found.urls == (DOT_OPENID,)
    assert seen[-1].url == DOT_APPENDED
    assert seen[-1].document == later
    assert seen[-1].problem is not None


async def test_a_later_document_that_cannot_be_had_leaves_what_was_found(respx_mock: respx.MockRouter) -> None:
    respx_mock.get(DOT_INSERTED).mock(return_value=NOT_FOUND)
    respx_mock.get(DOT_OPENID).respond(200, json=dot_openid())
    respx_mock.get(DOT_APPENDED).mock(side_effect=httpx.ConnectTimeout("slow"))
    found, seen = await run_discovery(DOT)
    assert (found.document, found.missing) == (dot_openid(), frozenset({"introspection_endpoint"}))
    assert seen[-1].status is None
    assert seen[-1].problem is not None


async def test_without_needs_the_first_usable_document_is_used(respx_mock: respx.MockRouter) -> None:
    routes = install_dot(respx_mock)
    found, _ = await run_discovery(DOT, frozenset())
    assert found.document == dot_openid()
    assert [route.call_count for route in routes] == [1, 1, 0]


async def test_a_guard_that_needs_only_keys_reads_one_document_less(respx_mock: respx.MockRouter) -> None:
    routes = install_dot(respx_mock)
    found, _ = await run_discovery(DOT, KEYS)
    assert found.document == dot_openid()
    assert [route.call_count for route in routes] == [1, 1, 0]


# -- what the guard needs, and how long a merged document is kept ----------------------------------


def config(**options: Any) -> GuardConfig:
    introspection = options.pop("introspection", IntrospectionOptions())
    return GuardConfig(issuer=DOT, audience=("api",), introspection=introspection, **options)


WITH_CREDENTIALS = IntrospectionOptions(client_id="rs", client_secret="s3cret")


@pytest.mark.parametrize(
    ("options", "needs"),
    [
        ({}, KEYS),
        ({"introspection": WITH_CREDENTIALS}, BOTH),
        ({"jwks_uri": f"{DOT}/keys"}, frozenset()),
        ({"jwks_uri": f"{DOT}/keys", "introspection": WITH_CREDENTIALS}, frozenset({"introspection_endpoint"})),
        (
            {"introspection": IntrospectionOptions(endpoint=f"{DOT}/i/", client_id="rs", client_secret="s3cret")},
            KEYS,
        ),
    ],
    ids=["keys", "keys and introspection", "nothing", "introspection", "explicit introspection endpoint"],
)
def test_what_the_configuration_needs(options: dict[str, Any], needs: frozenset[str]) -> None:
    assert IssuerMetadata(config(**options), HttpClientPool(None, timeout=1)).needs() == needs


async def test_a_merged_document_is_kept_as_long_as_its_shortest_lived_part(respx_mock: respx.MockRouter) -> None:
    clock = ManualClock()
    respx_mock.get(DOT_INSERTED).mock(return_value=NOT_FOUND)
    respx_mock.get(DOT_OPENID).respond(200, json=dot_openid(), headers={"Cache-Control": "max-age=7200"})
    respx_mock.get(DOT_APPENDED).respond(200, json=dot_rfc8414(), headers={"Cache-Control": "max-age=600"})
    metadata = IssuerMetadata(config(introspection=WITH_CREDENTIALS, clock=clock), HttpClientPool(None, timeout=1))
    assert await metadata.endpoint("introspection_endpoint") == f"{DOT}/introspect/"
    clock.advance(599)
    await metadata.get()
    assert metadata.fetches == 1
    clock.advance(2)
    await metadata.get()  # past the shorter max-age: refreshed (in the background)
    assert metadata.fetches == 2


async def test_a_document_lacking_a_needed_endpoint_is_looked_at_again_soon(respx_mock: respx.MockRouter) -> None:
    """The appended document failed just now: the guard does not wait a full max-age to find it."""
    clock = ManualClock()
    respx_mock.get(DOT_INSERTED).mock(return_value=NOT_FOUND)
    respx_mock.get(DOT_OPENID).respond(200, json=dot_openid(), headers={"Cache-Control": "max-age=7200"})
    appended = respx_mock.get(DOT_APPENDED).mock(
        side_effect=[httpx.Response(503), httpx.Response(200, json=dot_rfc8414())]
    )
    guard_config = config(introspection=WITH_CREDENTIALS, clock=clock)
    metadata = IssuerMetadata(guard_config, HttpClientPool(None, timeout=1))
    assert await metadata.endpoint("introspection_endpoint") is None
    clock.advance(guard_config.jwks.min_ttl + 1)
    await metadata.get()  # starts the refresh
    await metadata.get()
    for _ in range(50):
        if appended.call_count == 2:
            break
        await anyio.sleep(0.01)
    assert await metadata.endpoint("introspection_endpoint") == f"{DOT}/introspect/"


# -- end to end: the django-oauth-toolkit layout through TokenGuard -------------------------------

OPAQUE = "Zr8bQ0mX1yV3nA6cT9uL2pK5dE7hJ4"


async def transfer(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity, "source": request.auth.source})


def dot_app(clock: ManualClock) -> Starlette:
    app = Starlette(routes=[Route("/transfer", sensitive(transfer)), Route("/me", transfer)])
    app.add_middleware(
        TokenGuard,
        issuer=DOT,
        audience="https://api.example",
        client_id="resource-server",
        client_secret="s3cret",
        introspection_requires_aud=False,  # django-oauth-toolkit's answers carry no aud
        clock=clock,
    )
    return app


def test_an_opaque_token_on_a_sensitive_route_passes_against_the_django_oauth_toolkit_layout(
    respx_mock: respx.MockRouter,
) -> None:
    clock = ManualClock()
    routes = install_dot(respx_mock)
    jwk = json.loads(RSAAlgorithm.to_jwk(private_key("rsa", 0).public_key()))
    keys = respx_mock.get(f"{DOT}/.well-known/jwks.json").respond(200, json={"keys": [jwk | {"kid": "k1"}]})
    answer = {
        "active": True,
        "scope": "read write",
        "exp": int(clock()) + 3600,
        "client_id": "photos-web",
        "username": "alice",
    }
    introspect = respx_mock.post(f"{DOT}/introspect/").respond(200, json=answer)
    with TestClient(dot_app(clock)) as http:
        sensitive_answer = http.get("/transfer", headers={"Authorization": f"Bearer {OPAQUE}"})
        ordinary_answer = http.get("/me", headers={"Authorization": f"Bearer {OPAQUE}"})
    assert sensitive_answer.status_code == 200, sensitive_answer.text
    assert sensitive_answer.json()["source"] == "introspection"
    assert ordinary_answer.status_code == 200, ordinary_answer.text
    assert [route.call_count for route in routes] == [1, 1, 1]  # discovered once, both documents
    assert keys.call_count <= 1
    assert introspect.call_count >= 1


def test_check_says_which_document_gave_each_endpoint(
    respx_mock: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    install_dot(respx_mock)
    jwk = json.loads(RSAAlgorithm.to_jwk(private_key("rsa", 0).public_key()))
    respx_mock.get(f"{DOT}/.well-known/jwks.json").respond(200, json={"keys": [jwk | {"kid": "k1", "alg": "RS256"}]})
    main(["check", "--issuer", DOT], clock=ManualClock())
    out = capsys.readouterr().out
    assert f"introspection_endpoint  {DOT}/introspect/  (from {DOT_APPENDED})" in out
    assert f"jwks_uri                {DOT}/.well-known/jwks.json\n" in out
    assert "no introspection_endpoint" not in out
    main(["check", "--issuer", DOT, "--json"], clock=ManualClock())
    report = json.loads(capsys.readouterr().out)
    assert report["metadata_url"] == DOT_OPENID
    assert report["metadata_sources"]["introspection_endpoint"] == DOT_APPENDED
    assert report["metadata"]["introspection_endpoint"] == f"{DOT}/introspect/"
