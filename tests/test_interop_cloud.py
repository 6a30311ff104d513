"""Cloud issuers whose tokens need more than one exact ``iss`` and ``aud``: Amazon Cognito access tokens
(no ``aud``; ``allowed_client_ids``) and Microsoft Entra multi-tenant apps (one issuer per tenant; an
issuer template holding ``{tenantid}`` with ``tenants``).

Discovery documents, JWKS and tokens are shaped as the issuers publish them (Cognito's user-pool
metadata and tokens, from the Amazon Cognito Developer Guide; Entra's ``common`` and ``organizations``
OpenID documents, which name ``"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"``, and its
v1/v2 access tokens), served through respx to a real Starlette app guarded by TokenGuard. respx refuses
any URL not mocked here, so a fetch anywhere else would turn into a 503.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import T0
from test_interop import RSA, RSA_ENC, Server, bearer, refused, rsa_jwk, times
from tokenguard import TokenGuard, sensitive
from tokenguard._discovery import well_known_urls
from tokenguard.errors import ConfigurationError
from tokenguard.events import DecisionEvent
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


# -- the protected app ---------------------------------------------------------------------------


async def me(request: Request) -> JSONResponse:
    claims = request.auth.claims
    return JSONResponse(
        {
            "identity": request.user.identity,
            "client_id": request.user.client_id,
            "issuer": request.auth.token.issuer,
            "iss": claims.get("iss"),
            "tid": claims.get("tid"),
            "source": request.auth.source,
            "scopes": sorted(request.auth.scopes),
            "groups": claims.get("cognito:groups"),
            "roles": claims.get("roles"),
        }
    )


@sensitive
async def transfer(request: Request) -> JSONResponse:
    return await me(request)


def guarded(clock: ManualClock, events: list[DecisionEvent] | None = None, **options: Any) -> TestClient:
    app = Starlette(routes=[Route("/me", me), Route("/transfer", transfer)])
    hook = events.append if events is not None else None
    app.add_middleware(TokenGuard, clock=clock, on_decision=hook, **options)
    return TestClient(app)


def reasons(events: list[DecisionEvent]) -> list[str]:
    return [str(event.reason) for event in events]


# -- Amazon Cognito --------------------------------------------------------------------------------

REGION = "eu-west-1"
POOL = f"{REGION}_AbCdEf123"
COGNITO_ISSUER = f"https://cognito-idp.{REGION}.amazonaws.com/{POOL}"
COGNITO_DOMAIN = f"https://photos-app.auth.{REGION}.amazoncognito.com"
APP_CLIENT = "4a5b6c7d8e9f0g1h2i3j4k5l6m"
OTHER_CLIENT = "7z8y9x0w1v2u3t4s5r6q7p8o9n"
KID = "abcdEFGH1234ijklMNOP5678qrstUVWX9012yzAB+cd="  # Cognito kids are base64 with padding


@pytest.fixture
def cognito(respx_mock: respx.MockRouter) -> Server:
    """A user pool's metadata at the OpenID path only; its JWKS at ``{issuer}/.well-known/jwks.json``."""
    server = Server(
        "cognito",
        COGNITO_ISSUER,
        f"{COGNITO_ISSUER}/.well-known/jwks.json",
        keys=[rsa_jwk(RSA, KID)],
        jwks_cache_control=None,
        extra_metadata={
            "authorization_endpoint": f"{COGNITO_DOMAIN}/oauth2/authorize",
            "token_endpoint": f"{COGNITO_DOMAIN}/oauth2/token",
            "userinfo_endpoint": f"{COGNITO_DOMAIN}/oauth2/userInfo",
            "end_session_endpoint": f"{COGNITO_DOMAIN}/logout",
            "response_types_supported": ["code", "token"],
            "scopes_supported": ["openid", "email", "phone", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        },
    )
    server.install(respx_mock)
    return server


def cognito_access(clock: ManualClock, **overrides: Any) -> dict[str, Any]:
    """An access token as a user pool issues it: client_id and token_use access, never aud."""
    claims: dict[str, Any] = {
        "sub": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "cognito:groups": ["admins", "photographers"],
        "iss": COGNITO_ISSUER,
        "version": 2,
        "client_id": APP_CLIENT,
        "origin_jti": str(uuid.uuid4()),
        "event_id": str(uuid.uuid4()),
        "token_use": "access",
        "scope": "photos/photos.read openid profile",
        "auth_time": int(clock()),
        **times(clock, 3600),
        "jti": str(uuid.uuid4()),
        "username": "alice",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def cognito_id(clock: ManualClock, **overrides: Any) -> dict[str, Any]:
    """An ID token of the same pool: aud is the app client id, token_use id, at_hash."""
    claims = cognito_access(clock, client_id=None, scope=None, version=None, jti=None, username=None)
    claims.update(
        {
            "aud": APP_CLIENT,
            "token_use": "id",
            "at_hash": "x4XyQ1rS6bvAx0lZ6l8lmw",
            "email": "alice@example.com",
            "email_verified": True,
            "cognito:username": "alice",
        }
    )
    claims.update(overrides)
    return claims


def cognito_token(claims: dict[str, Any], key: Any = RSA) -> str:
    return Server.token(None, claims, kid=KID, typ=None, key=key)  # type: ignore[arg-type]


@pytest.mark.parametrize("allowed", [APP_CLIENT, [OTHER_CLIENT, APP_CLIENT]], ids=["string", "list"])
def test_cognito_access_token_passes_by_its_client_id(cognito: Server, clock: ManualClock, allowed: Any) -> None:
    """allowed_client_ids: a Cognito access token (no aud) of an allowed app client → 200, its claims intact."""
    token = cognito_token(cognito_access(clock))
    with guarded(
        clock, issuer=COGNITO_ISSUER, audience="https://photos.example.com", allowed_client_ids=allowed
    ) as http:
        response = http.get("/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["identity"] == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    assert body["client_id"] == APP_CLIENT
    assert body["scopes"] == ["openid", "photos/photos.read", "profile"]
    assert body["groups"] == ["admins", "photographers"]
    assert cognito.jwks_calls == 1


def test_cognito_access_token_of_another_app_client_is_refused(cognito: Server, clock: ManualClock) -> None:
    """A client_id not in allowed_client_ids: 401 wrong_audience, as without the option."""
    events: list[DecisionEvent] = []
    token = cognito_token(cognito_access(clock, client_id=OTHER_CLIENT))
    with guarded(clock, events, issuer=COGNITO_ISSUER, audience="photos", allowed_client_ids=[APP_CLIENT]) as http:
        description = refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert "not meant for this resource" in description
    assert reasons(events) == ["wrong_audience"]


@pytest.mark.parametrize("client_id", [None, 12345, [APP_CLIENT], ""], ids=["absent", "number", "list", "empty"])
def test_cognito_token_without_a_usable_client_id_is_refused(
    cognito: Server, clock: ManualClock, client_id: Any
) -> None:
    """No aud and no client_id string in the list (absent, another type, empty): 401, never a pass."""
    claims = cognito_access(clock)
    claims.pop("client_id")
    if client_id is not None:
        claims["client_id"] = client_id
    with guarded(clock, issuer=COGNITO_ISSUER, audience="photos", allowed_client_ids=APP_CLIENT) as http:
        response = http.get("/me", headers=bearer(cognito_token(claims)))
    assert response.status_code == 401, response.text


def test_without_the_option_cognito_access_tokens_stay_refused(cognito: Server, clock: ManualClock) -> None:
    """Off by default: the same token is 401 wrong_audience even when the audience is the app client id."""
    events: list[DecisionEvent] = []
    with guarded(clock, events, issuer=COGNITO_ISSUER, audience=APP_CLIENT) as http:
        refused(http.get("/me", headers=bearer(cognito_token(cognito_access(clock)))), 401, "invalid_token")
    assert reasons(events) == ["wrong_audience"]


@pytest.mark.parametrize("audience", [APP_CLIENT, "photos"])
def test_cognito_id_token_stays_refused_with_the_option(cognito: Server, clock: ManualClock, audience: str) -> None:
    """An ID token (token_use id, aud = the allowed app client): 401 whatever the audience; never accepted."""
    events: list[DecisionEvent] = []
    token = cognito_token(cognito_id(clock))
    with guarded(clock, events, issuer=COGNITO_ISSUER, audience=audience, allowed_client_ids=APP_CLIENT) as http:
        refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    # With aud = the configured audience, the token kind refuses it; otherwise its aud is foreign.
    assert reasons(events) == (["unsupported_token"] if audience == APP_CLIENT else ["wrong_audience"])


def test_a_foreign_aud_is_refused_even_with_an_allowed_client_id(cognito: Server, clock: ManualClock) -> None:
    """A token that names an audience is judged by it alone: a foreign aud + allowed client_id → 401."""
    events: list[DecisionEvent] = []
    token = cognito_token(cognito_access(clock, aud="https://other-api.example.com"))
    with guarded(clock, events, issuer=COGNITO_ISSUER, audience="photos", allowed_client_ids=APP_CLIENT) as http:
        refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert reasons(events) == ["wrong_audience"]


def test_a_token_naming_the_audience_passes_as_before(cognito: Server, clock: ManualClock) -> None:
    """With the option on, an aud naming the configured audience passes whatever its client_id."""
    token = cognito_token(cognito_access(clock, aud="photos", client_id="some-other-client"))
    with guarded(clock, issuer=COGNITO_ISSUER, audience="photos", allowed_client_ids=APP_CLIENT) as http:
        assert http.get("/me", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda claims, clock: claims.update(exp=int(clock()) - 120), "expired"),
        (
            lambda claims, clock: claims.update(iss=f"https://cognito-idp.{REGION}.amazonaws.com/{REGION}_Other"),
            "wrong_issuer",
        ),
        (lambda claims, clock: claims.update(token_use="refresh"), "unsupported_token"),
        (lambda claims, clock: None, "bad_signature"),
    ],
    ids=["expired", "other-pool", "not-access", "forged"],
)
def test_every_other_check_still_applies(
    cognito: Server, clock: ManualClock, change: Callable[[dict[str, Any], ManualClock], None], reason: str
) -> None:
    """allowed_client_ids relaxes the audience only: lifetime, issuer, token kind and signature still refuse."""
    events: list[DecisionEvent] = []
    claims = cognito_access(clock)
    change(claims, clock)
    token = cognito_token(claims, key=RSA_ENC if reason == "bad_signature" else RSA)
    with guarded(clock, events, issuer=COGNITO_ISSUER, audience="photos", allowed_client_ids=APP_CLIENT) as http:
        refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert reasons(events) == [reason]


# -- allowed_client_ids in RFC 7662 introspection answers -------------------------------------------

AS_ISSUER = "https://as.example.com"
AS_INTROSPECT = f"{AS_ISSUER}/oauth2/introspect"


@pytest.fixture
def introspecting(respx_mock: respx.MockRouter) -> Server:
    server = Server(
        "as", AS_ISSUER, f"{AS_ISSUER}/jwks", keys=[rsa_jwk(RSA, "as-kid")], introspection_endpoint=AS_INTROSPECT
    )
    server.install(respx_mock)
    return server


@pytest.mark.parametrize(("client_id", "status"), [(APP_CLIENT, 200), (OTHER_CLIENT, 401)])
def test_introspection_answer_without_aud_is_judged_by_its_client_id(
    introspecting: Server, clock: ManualClock, respx_mock: respx.MockRouter, client_id: str, status: int
) -> None:
    """An active answer with no aud passes on a sensitive route only if its client_id is allowed (same rule)."""
    token = introspecting.token({"iss": AS_ISSUER, "aud": "photos", "sub": "alice", **times(clock)}, kid="as-kid")
    answer = {"active": True, "iss": AS_ISSUER, "sub": "alice", "client_id": client_id, "scope": "a", **times(clock)}
    route = respx_mock.post(AS_INTROSPECT).mock(return_value=httpx.Response(200, json=answer))
    options = {"client_id": "rs", "client_secret": "rs-secret", "allowed_client_ids": APP_CLIENT}
    with guarded(clock, issuer=AS_ISSUER, audience="photos", **options) as http:
        response = http.get("/transfer", headers=bearer(token))
    assert response.status_code == status, response.text
    assert route.call_count == 1
    if status == 200:
        assert response.json()["source"] == "introspection"


# -- Microsoft Entra multi-tenant ---------------------------------------------------------------------

V2_TEMPLATE = "https://login.microsoftonline.com/{tenantid}/v2.0"
V1_TEMPLATE = "https://sts.windows.net/{tenantid}/"
CONTOSO = "72f988bf-86f1-41af-91ab-2d7cd011db47"
FABRIKAM = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"
INTRUDER = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d"
APP_ID = "6e74172b-be56-4843-9ff4-e66a39bb12e3"
APP_ID_URI = "api://photos.example.com"
ENTRA_KID = "nOo3ZDrODXEK1jKWhXslHR_KXEg"


class Entra:
    """login.microsoftonline.com as it serves multi-tenant apps: the common v2 and v1 OpenID documents and keys."""

    V2_METADATA = "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration"
    V1_METADATA = "https://login.microsoftonline.com/common/.well-known/openid-configuration"
    V2_KEYS = "https://login.microsoftonline.com/common/discovery/v2.0/keys"
    V1_KEYS = "https://login.microsoftonline.com/common/discovery/keys"

    def __init__(self, router: respx.MockRouter, *, v2_issuer: str = V2_TEMPLATE) -> None:
        key = rsa_jwk(RSA, ENTRA_KID, certificate=True, alg=None, issuer=V2_TEMPLATE)
        key["x5t"] = key["kid"]
        self.key = key
        self.calls: list[str] = []
        self.v2 = router.get(self.V2_METADATA).mock(side_effect=self._serve(self._v2_document(v2_issuer)))
        self.v1 = router.get(self.V1_METADATA).mock(side_effect=self._serve(self._v1_document()))
        keys = {"keys": [self.key]}
        router.get(self.V2_KEYS).mock(side_effect=self._serve(keys, "max-age=86400, private"))
        router.get(self.V1_KEYS).mock(side_effect=self._serve({"keys": [{**self.key, "issuer": V1_TEMPLATE}]}))

    def _serve(self, document: dict[str, Any], cache: str | None = None) -> Callable[[httpx.Request], httpx.Response]:
        def answer(request: httpx.Request) -> httpx.Response:
            self.calls.append(str(request.url))
            return httpx.Response(200, json=document, headers={"Cache-Control": cache} if cache else {})

        return answer

    @staticmethod
    def _v2_document(issuer: str) -> dict[str, Any]:
        base = "https://login.microsoftonline.com/common"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "ver", "at_hash", "c_hash", "email"],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": None,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }

    @staticmethod
    def _v1_document() -> dict[str, Any]:
        base = "https://login.microsoftonline.com/common"
        return {
            "token_endpoint": f"{base}/oauth2/token",
            "jwks_uri": f"{base}/discovery/keys",
            "issuer": V1_TEMPLATE,
            "authorization_endpoint": f"{base}/oauth2/authorize",
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "microsoft_multi_refresh_token": True,
            "tenant_region_scope": None,
            "cloud_instance_name": "microsoftonline.com",
        }


@pytest.fixture
def entra(respx_mock: respx.MockRouter) -> Entra:
    return Entra(respx_mock)


def v2_claims(clock: ManualClock, tenant: str = CONTOSO, **overrides: Any) -> dict[str, Any]:
    """A v2 delegated access token: iss login.microsoftonline.com/{tid}/v2.0, aud the app's client id."""
    now = int(clock())
    claims: dict[str, Any] = {
        "aud": APP_ID,
        "iss": f"https://login.microsoftonline.com/{tenant}/v2.0",
        "iat": now,
        "nbf": now,
        "exp": now + 4000,
        "aio": "AWQAm/8TAAAA",
        "azp": "b0a4a5e1-0000-4000-8000-00000000c11e",
        "azpacr": "0",
        "name": "Alice Example",
        "oid": "00000000-0000-0000-66f3-3332eca7ea81",
        "preferred_username": "alice@contoso.com",
        "rh": "0.AAAA.",
        "scp": "photos.read User.Read",
        "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        "tid": tenant,
        "uti": "fqiBqXLPj0eQa82S-IYFAA",
        "ver": "2.0",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def v1_claims(clock: ManualClock, tenant: str = CONTOSO, **overrides: Any) -> dict[str, Any]:
    """A v1 app-only access token: iss sts.windows.net/{tid}/, aud the app id URI, roles, appid."""
    now = int(clock())
    oid = "a1b2c3d4-0000-4000-8000-00000000abcd"
    claims: dict[str, Any] = {
        "aud": APP_ID_URI,
        "iss": f"https://sts.windows.net/{tenant}/",
        "iat": now,
        "nbf": now,
        "exp": now + 3599,
        "aio": "E2ZgYDi6dPv4",
        "appid": "c0ffee00-1111-4222-8333-444455556666",
        "appidacr": "1",
        "idp": f"https://sts.windows.net/{tenant}/",
        "oid": oid,
        "rh": "0.AAAA.",
        "roles": ["Photos.Read.All"],
        "sub": oid,
        "tid": tenant,
        "uti": "ZS6Z4sLzR0e2yBo0hOQcAA",
        "ver": "1.0",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def entra_token(claims: dict[str, Any], key: Any = RSA) -> str:
    return Server.token(None, claims, kid=ENTRA_KID, x5t=ENTRA_KID, key=key)  # type: ignore[arg-type]


def entra_guard(clock: ManualClock, events: list[DecisionEvent] | None = None, **options: Any) -> TestClient:
    settings: dict[str, Any] = {"issuer": V2_TEMPLATE, "audience": [APP_ID, APP_ID_URI], "tenants": [CONTOSO]}
    settings.update(options)
    return guarded(clock, events, **settings)


def test_entra_v2_token_of_an_allowed_tenant(entra: Entra, clock: ManualClock) -> None:
    """Template issuer + tenants: a v2 token of an allowed tenant → 200; metadata and keys from the common tenant."""
    with entra_guard(clock) as http:
        response = http.get("/me", headers=bearer(entra_token(v2_claims(clock))))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tid"] == CONTOSO
    assert body["iss"] == f"https://login.microsoftonline.com/{CONTOSO}/v2.0"
    assert body["issuer"] == V2_TEMPLATE  # request.auth.issuer is the configured issuer, the template
    assert body["scopes"] == ["User.Read", "photos.read"]
    assert entra.calls == [Entra.V2_METADATA, Entra.V2_KEYS]  # nothing tenant-specific, no RFC 8414 URL


def test_entra_v1_and_v2_templates_together(entra: Entra, clock: ManualClock) -> None:
    """Both templates configured: a v1 app token (app id URI aud, roles, appid) and a v2 token both pass."""
    with entra_guard(clock, issuer=[V2_TEMPLATE, V1_TEMPLATE], tenants=[CONTOSO, FABRIKAM]) as http:
        v1 = http.get("/me", headers=bearer(entra_token(v1_claims(clock, FABRIKAM))))
        v2 = http.get("/me", headers=bearer(entra_token(v2_claims(clock))))
    assert v1.status_code == 200, v1.text
    assert v1.json()["issuer"] == V1_TEMPLATE
    assert v1.json()["client_id"] == "c0ffee00-1111-4222-8333-444455556666"  # v1's appid
    assert v1.json()["roles"] == ["Photos.Read.All"]
    assert v2.status_code == 200, v2.text
    assert v2.json()["issuer"] == V2_TEMPLATE
    assert set(entra.calls) == {Entra.V1_METADATA, Entra.V1_KEYS, Entra.V2_METADATA, Entra.V2_KEYS}


def test_v1_token_is_refused_when_only_the_v2_template_is_configured(entra: Entra, clock: ManualClock) -> None:
    """The shape of iss picks the template: sts.windows.net is no configured shape → 401 wrong_issuer."""
    events: list[DecisionEvent] = []
    with entra_guard(clock, events) as http:
        refused(http.get("/me", headers=bearer(entra_token(v1_claims(clock)))), 401, "invalid_token")
    assert reasons(events) == ["wrong_issuer"]


@pytest.mark.parametrize("issuers", [[V2_TEMPLATE], [V2_TEMPLATE, V1_TEMPLATE]], ids=["one", "two"])
def test_a_tenant_not_allowed_is_refused_with_wrong_tenant(
    entra: Entra, clock: ManualClock, issuers: list[str]
) -> None:
    """A genuine token of another tenant (tid and iss agree): 401 invalid_token, reason wrong_tenant, no key fetch."""
    events: list[DecisionEvent] = []
    with entra_guard(clock, events, issuer=issuers) as http:
        description = refused(
            http.get("/me", headers=bearer(entra_token(v2_claims(clock, INTRUDER)))), 401, "invalid_token"
        )
    assert "tenant" in description
    assert reasons(events) == ["wrong_tenant"]
    assert Entra.V2_KEYS not in entra.calls  # an allow-list decides before any key is looked up


def test_tid_of_one_tenant_with_the_issuer_of_another_is_refused(entra: Entra, clock: ManualClock) -> None:
    """Tenant A's tid under tenant B's iss (both allowed): 401 wrong_issuer; iss is the template filled with tid."""
    events: list[DecisionEvent] = []
    claims = v2_claims(clock, CONTOSO, iss=f"https://login.microsoftonline.com/{FABRIKAM}/v2.0")
    with entra_guard(clock, events, tenants=[CONTOSO, FABRIKAM]) as http:
        refused(http.get("/me", headers=bearer(entra_token(claims))), 401, "invalid_token")
    assert reasons(events) == ["wrong_issuer"]


@pytest.mark.parametrize(
    ("tid", "reason"),
    [
        (None, "missing_claim"),
        (CONTOSO.upper(), "bad_claim"),
        (f"{CONTOSO}/x", "bad_claim"),
        (42, "bad_claim"),
    ],
    ids=["missing", "uppercase", "slash", "number"],
)
def test_missing_or_malformed_tid_is_refused(entra: Entra, clock: ManualClock, tid: Any, reason: str) -> None:
    """No tid, or a tid that is not a lowercase GUID (even one whose iss agrees): 401 with the reason."""
    events: list[DecisionEvent] = []
    claims = v2_claims(clock)
    claims.pop("tid")
    if tid is not None:
        claims["tid"] = tid
        if isinstance(tid, str):
            claims["iss"] = f"https://login.microsoftonline.com/{tid}/v2.0"
    with entra_guard(clock, events, tenants=[CONTOSO]) as http:
        refused(http.get("/me", headers=bearer(entra_token(claims))), 401, "invalid_token")
    assert reasons(events) == [reason]


def test_the_template_itself_as_iss_is_refused(entra: Entra, clock: ManualClock) -> None:
    """A token whose iss is literally the template (as the metadata spells it): 401 wrong_issuer, never a match."""
    events: list[DecisionEvent] = []
    with entra_guard(clock, events, issuer=[V2_TEMPLATE, V1_TEMPLATE]) as http:
        refused(http.get("/me", headers=bearer(entra_token(v2_claims(clock, iss=V2_TEMPLATE)))), 401, "invalid_token")
    assert reasons(events) == ["wrong_issuer"]


def test_callable_allow_list_sees_only_verified_tokens(entra: Entra, clock: ManualClock) -> None:
    """tenants=callable: asked with the tid after the signature verified; True → 200, False → 401 wrong_tenant."""
    asked: list[str] = []

    def allowed(tid: str) -> bool:
        asked.append(tid)
        return tid == FABRIKAM

    events: list[DecisionEvent] = []
    with entra_guard(clock, events, tenants=allowed) as http:
        assert http.get("/me", headers=bearer(entra_token(v2_claims(clock, FABRIKAM)))).status_code == 200
        refused(http.get("/me", headers=bearer(entra_token(v2_claims(clock, CONTOSO)))), 401, "invalid_token")
        forged = entra_token(v2_claims(clock, INTRUDER), key=RSA_ENC)
        refused(http.get("/me", headers=bearer(forged)), 401, "invalid_token")
    assert asked == [FABRIKAM, CONTOSO]  # the forged token never reached the callable
    assert reasons(events) == ["ok", "wrong_tenant", "bad_signature"]


@pytest.mark.parametrize("answer", ["yes", 1, None], ids=["string", "one", "none"])
def test_callable_must_say_true(entra: Entra, clock: ManualClock, answer: Any) -> None:
    """Only True allows: a truthy string or 1 (or None) from the callable refuses the tenant."""
    with entra_guard(clock, tenants=lambda tid: answer) as http:
        refused(http.get("/me", headers=bearer(entra_token(v2_claims(clock)))), 401, "invalid_token")


def test_callable_that_raises_refuses_and_logs_without_the_token(
    entra: Entra, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A callable that raises: 401 wrong_tenant (never a 500, never a pass), logged with the tid, not the token."""

    def broken(tid: str) -> bool:
        raise RuntimeError("tenant database down")

    events: list[DecisionEvent] = []
    token = entra_token(v2_claims(clock))
    with caplog.at_level(logging.ERROR, logger="tokenguard"), entra_guard(clock, events, tenants=broken) as http:
        refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert reasons(events) == ["wrong_tenant"]
    logged = [record.getMessage() for record in caplog.records if "tenants callable" in record.getMessage()]
    assert len(logged) == 1
    assert "RuntimeError" in logged[0]
    assert CONTOSO in logged[0]
    assert all(
        token not in record.getMessage() and token.split(".")[1] not in record.getMessage() for record in caplog.records
    )


def test_metadata_naming_a_concrete_tenant_is_not_used(respx_mock: respx.MockRouter, clock: ManualClock) -> None:
    """The exact-issuer rule of discovery holds for templates: a document naming another issuer → 503, no keys."""
    entra = Entra(respx_mock, v2_issuer=f"https://login.microsoftonline.com/{CONTOSO}/v2.0")
    with entra_guard(clock) as http:
        refused(http.get("/me", headers=bearer(entra_token(v2_claims(clock)))), 503, "temporarily_unavailable")
    assert Entra.V2_KEYS not in entra.calls


def test_entra_template_beside_cognito(entra: Entra, cognito: Server, clock: ManualClock) -> None:
    """Exact issuers and templates together: each token goes to its issuer (exact first, then by shape)."""
    options = {
        "issuer": [COGNITO_ISSUER, V2_TEMPLATE],
        "audience": [APP_ID, "photos"],
        "tenants": [CONTOSO],
        "allowed_client_ids": {COGNITO_ISSUER: APP_CLIENT},  # several issuers: whose tokens may lack aud
    }
    with guarded(clock, **options) as http:
        cognito_response = http.get("/me", headers=bearer(cognito_token(cognito_access(clock))))
        entra_response = http.get("/me", headers=bearer(entra_token(v2_claims(clock))))
        intruder = http.get("/me", headers=bearer(entra_token(v2_claims(clock, INTRUDER))))
    assert cognito_response.json()["issuer"] == COGNITO_ISSUER
    assert entra_response.json()["issuer"] == V2_TEMPLATE
    assert intruder.status_code == 401


# -- options, checked at startup -----------------------------------------------------------------------


def build(**options: Any) -> TokenGuard:
    settings: dict[str, Any] = {"issuer": COGNITO_ISSUER, "audience": "photos"}
    settings.update(options)
    return TokenGuard(Starlette(), **settings)


@pytest.mark.parametrize("value", ["", [], [""], ["ok", "bad\nid"], [APP_CLIENT, 7], 7, ["\x00"]])
def test_allowed_client_ids_must_be_printable_strings(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="allowed_client_ids"):
        build(allowed_client_ids=value)


def test_allowed_client_ids_conflicts_with_strict_rfc9068() -> None:
    with pytest.raises(ConfigurationError, match=r"allowed_client_ids.*strict_rfc9068"):
        build(allowed_client_ids=APP_CLIENT, strict_rfc9068=True)


def test_allowed_client_ids_are_kept_as_a_set() -> None:
    guard = build(allowed_client_ids=[APP_CLIENT, OTHER_CLIENT, APP_CLIENT])
    assert guard.config.allowed_client_ids == frozenset({APP_CLIENT, OTHER_CLIENT})
    assert build().config.allowed_client_ids is None


@pytest.mark.parametrize("issuer", [V2_TEMPLATE, [V2_TEMPLATE, V1_TEMPLATE], [COGNITO_ISSUER, V1_TEMPLATE]])
def test_a_template_needs_tenants(issuer: Any) -> None:
    with pytest.raises(ConfigurationError, match="tenants"):
        build(issuer=issuer)


def test_tenants_without_a_template_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="tenants"):
        build(tenants=[CONTOSO])


@pytest.mark.parametrize("value", [[], ["contoso.onmicrosoft.com"], [CONTOSO, "not-a-guid"], 42, [None], ""])
def test_tenants_must_be_guids_or_a_callable(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="tenants"):
        build(issuer=V2_TEMPLATE, tenants=value)


def test_tenant_ids_are_kept_lowercase() -> None:
    guard = build(issuer=V2_TEMPLATE, tenants=[CONTOSO.upper(), FABRIKAM])
    assert guard.config.tenants == frozenset({CONTOSO, FABRIKAM})


@pytest.mark.parametrize(
    "issuer",
    [
        "https://{tenantid}.login.example.com/v2.0",
        "https://login.microsoftonline.com/{tenantid}/{tenantid}/v2.0",
        "https://login.microsoftonline.com/t-{tenantid}/v2.0",
        "https://login.microsoftonline.com/{tenant}/v2.0/{tenantid}",
        "http://login.microsoftonline.com/{tenantid}/v2.0",
        "https://login.microsoftonline.com/{tenantid}/v2.0?x=1",
    ],
)
def test_malformed_templates_are_refused(issuer: str) -> None:
    with pytest.raises(ConfigurationError, match="issuer"):
        build(issuer=issuer, tenants=[CONTOSO])


@pytest.mark.parametrize(
    "options",
    [
        {"introspection_endpoint": "https://login.microsoftonline.com/introspect"},
        {"client_id": "rs", "client_secret": "secret"},
    ],
    ids=["endpoint", "credentials"],
)
def test_a_template_cannot_be_introspected(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="introspect"):
        build(issuer=V2_TEMPLATE, tenants=[CONTOSO], **options)


def test_introspection_credentials_for_a_template_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="introspect"):
        build(
            issuer=[COGNITO_ISSUER, V2_TEMPLATE],
            tenants=[CONTOSO],
            introspection_credentials={V2_TEMPLATE: ("rs", "secret")},
        )


def test_shared_credentials_go_to_the_other_issuers_only() -> None:
    guard = build(issuer=[AS_ISSUER, V2_TEMPLATE], tenants=[CONTOSO], client_id="rs", client_secret="secret")
    by_issuer = {config.issuer: config for config in guard.configs}
    assert by_issuer[AS_ISSUER].introspection.has_credentials
    assert not by_issuer[V2_TEMPLATE].introspection.has_credentials
    assert by_issuer[AS_ISSUER].tenants is None
    assert by_issuer[V2_TEMPLATE].tenants == frozenset({CONTOSO})


def test_template_metadata_urls() -> None:
    """The common tenant's OpenID document: v2 from the template, v1 (sts.windows.net) at login.microsoftonline.com."""
    assert well_known_urls(V2_TEMPLATE) == (Entra.V2_METADATA,)
    assert well_known_urls(V1_TEMPLATE) == (Entra.V1_METADATA,)
    assert well_known_urls("https://login.microsoftonline.us/{tenantid}/v2.0") == (
        "https://login.microsoftonline.us/common/v2.0/.well-known/openid-configuration",
    )


def _served_metadata(clock: ManualClock, **options: Any) -> dict[str, Any]:
    app = TokenGuard(Starlette(), audience="https://photos.example", clock=clock, **options)
    with TestClient(app) as http:
        response = http.get("/.well-known/oauth-protected-resource")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def test_rfc9728_metadata_lists_each_allowed_tenants_issuer_never_the_template(clock: ManualClock) -> None:
    """RFC 9728 §2: authorization_servers are issuers a client can discover; a template is none."""
    document = _served_metadata(
        clock, issuer=[V2_TEMPLATE, V1_TEMPLATE, "https://idp.example.com"], tenants=[FABRIKAM, CONTOSO]
    )
    assert document["authorization_servers"] == [
        f"https://login.microsoftonline.com/{CONTOSO}/v2.0",
        f"https://login.microsoftonline.com/{FABRIKAM}/v2.0",
        "https://idp.example.com",
    ]
    assert "{tenantid}" not in str(document)


def test_rfc9728_metadata_with_a_callable_allow_list_names_no_template(clock: ManualClock) -> None:
    document = _served_metadata(clock, issuer=V2_TEMPLATE, tenants=lambda tid: True)
    assert "authorization_servers" not in document
    assert document["resource"] == "https://photos.example"


def test_allowed_client_ids_with_several_issuers_must_say_which_issuer() -> None:
    """A client id is unique only at its issuer: a bare list with two issuers is refused."""
    with pytest.raises(ConfigurationError, match="allowed_client_ids with several issuers"):
        build(issuer=[COGNITO_ISSUER, "https://idp.example.com"], allowed_client_ids=APP_CLIENT)
    with pytest.raises(ConfigurationError, match="configured issuers"):
        build(issuer=[COGNITO_ISSUER, "https://idp.example.com"], allowed_client_ids={"https://x.example": "a"})


def test_another_issuers_aud_less_token_does_not_pass_by_a_cognito_client_id(
    cognito: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """The mapping scopes the exception: the same client_id from another issuer is still wrong_audience."""
    other = Server(
        "other", "https://other-idp.example.com", "https://other-idp.example.com/jwks", keys=[rsa_jwk(RSA, "o-1")]
    )
    other.install(respx_mock)
    options = {
        "issuer": [COGNITO_ISSUER, other.issuer],
        "audience": "photos",
        "allowed_client_ids": {COGNITO_ISSUER: APP_CLIENT},
    }
    claims = {"iss": other.issuer, "client_id": APP_CLIENT, "sub": "mallory", "scope": "photos/read", **times(clock)}
    with guarded(clock, **options) as http:
        assert http.get("/me", headers=bearer(cognito_token(cognito_access(clock)))).status_code == 200
        refused = http.get("/me", headers=bearer(other.token(claims, kid="o-1")))
    assert refused.status_code == 401
