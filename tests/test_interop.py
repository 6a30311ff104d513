"""Interoperability: discovery documents, JWKS, access tokens and introspection answers shaped as real
authorization servers publish them (Keycloak, Auth0, Okta, Microsoft Entra ID, Amazon Cognito,
node-oidc-provider, ORY Hydra, Google), served through respx to a real Starlette app guarded by TokenGuard.

Each server is reproduced from its public documentation: issuer form (path, trailing slash), where its
metadata lives (the RFC 8414 path-inserted URL answers 404, an HTML page or a redirect), the extra JWKS
members it publishes, its Cache-Control, and the claims of the tokens it issues.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import T0, b64url, private_key
from tokenguard import TokenGuard, require_scopes, sensitive
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

CLIENT_ID = "photos-api"
CLIENT_SECRET = "resource-server-secret"
HTML = "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Not here</body></html>"


# -- keys and JWKS members as servers publish them ---------------------------------------------


def _cert_members(private: Any, name: str) -> dict[str, Any]:
    """x5c / x5t / x5t#S256 of a self-signed certificate over the key (Keycloak, Auth0, Entra publish them)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(private, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return {
        "x5c": [base64.b64encode(der).decode("ascii")],
        "x5t": b64url(hashlib.sha1(der).digest()),  # RFC 7517 §4.8: the member is defined as SHA-1
        "x5t#S256": b64url(hashlib.sha256(der).digest()),
    }


def rsa_jwk(private: Any, kid: str, *, certificate: bool = False, zero_padded_n: bool = False, **members: Any) -> dict:
    """The public RSA JWK of ``private`` with the members a server adds (``None`` drops a member)."""
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, use="sig", alg="RS256")
    if zero_padded_n:
        # Some servers encode the modulus with a leading 0x00 octet (a signed big-endian integer).
        numbers = private.public_key().public_numbers()
        jwk["n"] = b64url(b"\x00" + numbers.n.to_bytes(256, "big"))
    if certificate:
        jwk.update(_cert_members(private, kid))
    jwk.update(members)
    return {k: v for k, v in jwk.items() if v is not None}


def ec_jwk(private: Any, kid: str, **members: Any) -> dict:
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, use="sig")
    jwk.update(members)
    return {k: v for k, v in jwk.items() if v is not None}


RSA = private_key("rsa", 0)
RSA_ENC = private_key("rsa", 1)
EC = private_key("ec256", 0)


# -- one authorization server, as it publishes itself ------------------------------------------


@dataclass
class Server:
    """An authorization server's public face: discovery at the OpenID path only, a JWKS, maybe introspection."""

    name: str
    issuer: str
    jwks_uri: str
    keys: list[dict[str, Any]]
    jwks_cache_control: str | None = "max-age=3600"
    introspection_endpoint: str | None = None
    rfc8414: str = "404"  # what the RFC 8414 path-inserted URL answers: "404", "html" or "redirect"
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    jwks_calls: int = 0

    @property
    def origin(self) -> str:
        parts = httpx.URL(self.issuer)
        return f"{parts.scheme}://{parts.host}"

    def discovery(self) -> dict[str, Any]:
        document = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer.rstrip("/") + "/authorize",
            "token_endpoint": self.issuer.rstrip("/") + "/token",
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            **self.extra_metadata,
        }
        if self.introspection_endpoint is not None:
            document["introspection_endpoint"] = self.introspection_endpoint
        return document

    def install(self, router: respx.MockRouter) -> None:
        path = httpx.URL(self.issuer).path.rstrip("/")
        rfc8414_url = f"{self.origin}/.well-known/oauth-authorization-server{path}"
        openid_url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        if self.rfc8414 == "html":
            rfc8414 = httpx.Response(200, text=HTML, headers={"Content-Type": "text/html; charset=utf-8"})
        elif self.rfc8414 == "redirect":
            rfc8414 = httpx.Response(302, headers={"Location": f"{self.origin}/error?code=404"})
        else:
            rfc8414 = httpx.Response(404, text=HTML, headers={"Content-Type": "text/html"})
        router.get(rfc8414_url).mock(return_value=rfc8414)
        router.get(openid_url).mock(return_value=httpx.Response(200, json=self.discovery()))
        if path:  # discovery reads on for a missing introspection_endpoint: these servers answer 404 there
            appended = self.issuer.rstrip("/") + "/.well-known/oauth-authorization-server"
            router.get(appended).mock(
                return_value=httpx.Response(404, text=HTML, headers={"Content-Type": "text/html"})
            )

        def jwks(request: httpx.Request) -> httpx.Response:
            self.jwks_calls += 1
            headers = {"Cache-Control": self.jwks_cache_control} if self.jwks_cache_control is not None else {}
            return httpx.Response(200, json={"keys": self.keys}, headers=headers)

        router.get(self.jwks_uri).mock(side_effect=jwks)

    def token(
        self,
        claims: dict[str, Any],
        *,
        kid: str,
        typ: str | None = "JWT",
        key: Any = RSA,
        alg: str = "RS256",
        **header: Any,
    ) -> str:
        head: dict[str, Any] = {"kid": kid, **header}
        if typ is not None:
            head["typ"] = typ
        return jwt.encode(claims, key, algorithm=alg, headers=head)


def introspection(router: respx.MockRouter, url: str, response: httpx.Response) -> respx.Route:
    return router.post(url).mock(return_value=response)


# -- the protected app ---------------------------------------------------------------------------


def describe(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "identity": request.user.identity,
            "subject": request.user.subject,
            "client_id": request.user.client_id,
            "source": request.auth.source,
            "scopes": sorted(request.auth.scopes),
        }
    )


async def me(request: Request) -> JSONResponse:
    return describe(request)


@require_scopes("photos.read")
async def photos(request: Request) -> JSONResponse:
    return describe(request)


@sensitive
async def transfer(request: Request) -> JSONResponse:
    return describe(request)


def client(server: Server, clock: ManualClock, audience: str, **options: Any) -> TestClient:
    app = Starlette(routes=[Route("/me", me), Route("/photos", photos), Route("/transfer", transfer)])
    app.add_middleware(
        TokenGuard,
        **{
            "issuer": server.issuer,
            "audience": audience,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "clock": clock,
            **options,
        },
    )
    return TestClient(app)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(response: httpx.Response, status: int, error: str) -> str:
    """Assert an RFC 6750 refusal (or a 503); return the error_description."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    if status == 503:
        assert int(response.headers["retry-after"]) >= 1
    else:
        assert f'error="{error}"' in response.headers["www-authenticate"]
    return str(body["error_description"])


def times(clock: ManualClock, lifetime: int = 300) -> dict[str, int]:
    now = int(clock())
    return {"iat": now, "exp": now + lifetime}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


# -- Keycloak ----------------------------------------------------------------------------------

KC_ISSUER = "https://sso.example.com/realms/demo"
KC_OIDC = f"{KC_ISSUER}/protocol/openid-connect"


@pytest.fixture
def keycloak(respx_mock: respx.MockRouter) -> Server:
    server = Server(
        "keycloak",
        KC_ISSUER,
        f"{KC_OIDC}/certs",
        keys=[
            rsa_jwk(RSA, "kc-sig", certificate=True),
            # Keycloak publishes its encryption key in the same document.
            rsa_jwk(RSA_ENC, "kc-enc", certificate=True, use="enc", alg="RSA-OAEP"),
        ],
        jwks_cache_control="no-cache",
        introspection_endpoint=f"{KC_OIDC}/token/introspect",
        extra_metadata={"end_session_endpoint": f"{KC_OIDC}/logout"},
    )
    server.install(respx_mock)
    return server


def keycloak_claims(clock: ManualClock, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        **times(clock),
        "jti": str(uuid.uuid4()),
        "iss": KC_ISSUER,
        "aud": ["photos-api", "account"],
        "sub": "6f1c2a4e-5b1d-4c1e-9d8e-0a1b2c3d4e5f",
        "typ": "Bearer",
        "azp": "photos-web",
        "sid": "0c7e1f3a-aaaa-bbbb-cccc-1234567890ab",
        "session_state": "0c7e1f3a-aaaa-bbbb-cccc-1234567890ab",
        "acr": "1",
        "allowed-origins": ["https://photos.example.com"],
        "realm_access": {"roles": ["offline_access", "uma_authorization", "default-roles-demo"]},
        "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
        "scope": "openid profile email photos.read",
        "email_verified": True,
        "preferred_username": "alice",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_keycloak_user_token_passes_ordinary_and_scoped_routes(keycloak: Server, clock: ManualClock) -> None:
    """A Keycloak user token (typ JWT, payload typ Bearer, aud list, scope string) reaches scoped routes as sub."""
    token = keycloak.token(keycloak_claims(clock), kid="kc-sig")
    with client(keycloak, clock, "photos-api") as http:
        assert http.get("/me", headers=bearer(token)).status_code == 200
        body = http.get("/photos", headers=bearer(token)).json()
    assert body["identity"] == "6f1c2a4e-5b1d-4c1e-9d8e-0a1b2c3d4e5f"
    assert body["source"] == "jwt"
    assert body["scopes"] == ["email", "openid", "photos.read", "profile"]


def test_keycloak_default_account_audience_is_refused(keycloak: Server, clock: ManualClock) -> None:
    """Keycloak's default aud "account" (no audience mapper) is not this API's audience: 401 invalid_token."""
    token = keycloak.token(keycloak_claims(clock, aud="account"), kid="kc-sig")
    with client(keycloak, clock, "photos-api") as http:
        description = refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert "not meant for this resource" in description


def test_keycloak_missing_scope_is_403_naming_the_scope(keycloak: Server, clock: ManualClock) -> None:
    """A valid Keycloak token without the route's scope gets 403 insufficient_scope with scope="photos.read"."""
    token = keycloak.token(keycloak_claims(clock, scope="openid profile"), kid="kc-sig")
    with client(keycloak, clock, "photos-api") as http:
        response = http.get("/photos", headers=bearer(token))
    refused(response, 403, "insufficient_scope")
    assert 'scope="photos.read"' in response.headers["www-authenticate"]


def test_keycloak_service_account_identity_is_its_sub(keycloak: Server, clock: ManualClock) -> None:
    """A Keycloak client-credentials token carries sub (the service-account user) and client_id: identity is sub."""
    claims = keycloak_claims(
        clock,
        sub="9a8b7c6d-0000-1111-2222-333344445555",
        azp="reports-job",
        client_id="reports-job",
        preferred_username="service-account-reports-job",
        scope="profile email photos.read",
        sid=None,
        session_state=None,
    )
    token = keycloak.token(claims, kid="kc-sig")
    with client(keycloak, clock, "photos-api") as http:
        body = http.get("/photos", headers=bearer(token)).json()
    assert body["identity"] == "9a8b7c6d-0000-1111-2222-333344445555"
    assert body["client_id"] == "reports-job"


def test_keycloak_id_token_is_not_an_access_token(keycloak: Server, clock: ManualClock) -> None:
    """A Keycloak ID token (payload typ "ID", at_hash) whose aud is the API is refused with 401 invalid_token."""
    claims = keycloak_claims(
        clock,
        typ="ID",
        aud="photos-api",
        azp="photos-api",
        at_hash="x4XyQ1rS6bvAx0lZ6l8lmw",
        scope=None,
        realm_access=None,
        resource_access=None,
    )
    token = keycloak.token(claims, kid="kc-sig")
    with client(keycloak, clock, "photos-api") as http:
        description = refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert "not an access token" in description


def test_keycloak_token_signed_with_its_encryption_key_is_refused(keycloak: Server, clock: ManualClock) -> None:
    """A token naming Keycloak's use=enc RSA-OAEP key is never verified with it: 401 invalid_token, not 500."""
    token = keycloak.token(keycloak_claims(clock), kid="kc-enc", key=RSA_ENC)
    with client(keycloak, clock, "photos-api") as http:
        description = refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert "unknown key" in description


def test_keycloak_sensitive_route_accepts_its_introspection_answer(
    keycloak: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """Keycloak's introspection answer (whole claim set + active, client_id, username, token_type Bearer) → 200."""
    claims = keycloak_claims(clock)
    token = keycloak.token(claims, kid="kc-sig")
    answer = {**claims, "active": True, "client_id": "photos-web", "username": "alice", "token_type": "Bearer"}
    route = introspection(respx_mock, f"{KC_OIDC}/token/introspect", httpx.Response(200, json=answer))
    with client(keycloak, clock, "photos-api") as http:
        body = http.get("/transfer", headers=bearer(token)).json()
    assert body["source"] == "introspection"
    assert body["identity"] == claims["sub"]
    sent = route.calls.last.request
    expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert sent.headers["Authorization"] == f"Basic {expected}"
    assert b"token_type_hint=access_token" in sent.content


def test_keycloak_inactive_answer_is_401(keycloak: Server, clock: ManualClock, respx_mock: respx.MockRouter) -> None:
    """Keycloak answers {"active": false} for a revoked token: the sensitive route gives 401 invalid_token."""
    token = keycloak.token(keycloak_claims(clock), kid="kc-sig")
    introspection(respx_mock, f"{KC_OIDC}/token/introspect", httpx.Response(200, json={"active": False}))
    with client(keycloak, clock, "photos-api") as http:
        assert http.get("/me", headers=bearer(token)).status_code == 200
        refused(http.get("/transfer", headers=bearer(token)), 401, "invalid_token")


def test_keycloak_tokens_fail_rfc9068_strict_mode(keycloak: Server, clock: ManualClock) -> None:
    """Keycloak types its access tokens "JWT", not "at+jwt": strict RFC 9068 mode refuses them (401)."""
    token = keycloak.token(keycloak_claims(clock, client_id="photos-web"), kid="kc-sig")
    with client(keycloak, clock, "photos-api", strict_rfc9068=True) as http:
        description = refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert "wrong type" in description


# -- Auth0 -------------------------------------------------------------------------------------

AUTH0_ISSUER = "https://tenant.eu.auth0.com/"
AUTH0_API = "https://photos.example.com/api"


@pytest.fixture
def auth0(respx_mock: respx.MockRouter) -> Server:
    server = Server(
        "auth0",
        AUTH0_ISSUER,
        "https://tenant.eu.auth0.com/.well-known/jwks.json",
        keys=[rsa_jwk(RSA, "auth0-kid-1", certificate=True)],
        jwks_cache_control="public, max-age=15, stale-while-revalidate=15, stale-if-error=86400",
        rfc8414="html",
    )
    server.install(respx_mock)
    return server


def auth0_claims(clock: ManualClock, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": AUTH0_ISSUER,
        "sub": "auth0|64f1c0ffee",
        "aud": [AUTH0_API, "https://tenant.eu.auth0.com/userinfo"],
        **times(clock, 86400),
        "azp": "Web1Client2Id3",
        "scope": "openid profile email photos.read",
    }
    claims.update(overrides)
    return claims


def test_auth0_user_token_with_trailing_slash_issuer(auth0: Server, clock: ManualClock) -> None:
    """Auth0: issuer with a trailing slash, aud [api, userinfo], discovery only at the OpenID path → 200 as sub."""
    token = auth0.token(auth0_claims(clock), kid="auth0-kid-1")
    with client(auth0, clock, AUTH0_API) as http:
        body = http.get("/photos", headers=bearer(token)).json()
    assert body["identity"] == "auth0|64f1c0ffee"
    assert "photos.read" in body["scopes"]


def test_auth0_machine_to_machine_token(auth0: Server, clock: ManualClock) -> None:
    """An Auth0 client-credentials token (gty, sub "<id>@clients", no client_id claim): identity is that sub."""
    claims = auth0_claims(
        clock,
        sub="M2mClientId@clients",
        aud=AUTH0_API,
        azp="M2mClientId",
        gty="client-credentials",
        scope="photos.read",
    )
    token = auth0.token(claims, kid="auth0-kid-1")
    with client(auth0, clock, AUTH0_API) as http:
        body = http.get("/photos", headers=bearer(token)).json()
    assert body["identity"] == "M2mClientId@clients"
    assert body["client_id"] == "M2mClientId"  # Auth0 names the client in azp, read when client_id is absent


def test_auth0_issuer_configured_without_trailing_slash_is_401(auth0: Server, clock: ManualClock) -> None:
    """Issuer configured as "https://tenant.eu.auth0.com" (no slash): every Auth0 token is 401 "another issuer"."""
    token = auth0.token(auth0_claims(clock), kid="auth0-kid-1")
    misconfigured = Server("auth0", AUTH0_ISSUER.rstrip("/"), auth0.jwks_uri, auth0.keys)
    with client(misconfigured, clock, AUTH0_API) as http:
        description = refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert "another issuer" in description
    assert auth0.jwks_calls == 0  # iss is compared exactly (RFC 9068 §4) before any key is fetched


def test_auth0_sensitive_route_has_no_introspection(auth0: Server, clock: ManualClock) -> None:
    """Auth0 publishes no introspection_endpoint: a @sensitive route fails closed with 503, never 200 or 401."""
    token = auth0.token(auth0_claims(clock), kid="auth0-kid-1")
    with client(auth0, clock, AUTH0_API) as http:
        assert http.get("/me", headers=bearer(token)).status_code == 200
        refused(http.get("/transfer", headers=bearer(token)), 503, "temporarily_unavailable")


# -- Okta --------------------------------------------------------------------------------------

OKTA_ISSUER = "https://dev-123456.okta.com/oauth2/default"


@pytest.fixture
def okta(respx_mock: respx.MockRouter) -> Server:
    server = Server(
        "okta",
        OKTA_ISSUER,
        f"{OKTA_ISSUER}/v1/keys",
        keys=[rsa_jwk(RSA, "okta-kid", zero_padded_n=True)],
        jwks_cache_control="max-age=3612, must-revalidate",
        introspection_endpoint=f"{OKTA_ISSUER}/v1/introspect",
    )
    server.install(respx_mock)
    return server


def okta_claims(clock: ManualClock, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "ver": 1,
        "jti": "AT.q1w2e3r4t5y6",
        "iss": OKTA_ISSUER,
        "aud": "api://default",
        **times(clock, 3600),
        "cid": "0oa1webapp",
        "uid": "00u1alice",
        "scp": ["openid", "photos.read"],
        "auth_time": int(clock()) - 60,
        "sub": "alice@example.com",
    }
    claims.update(overrides)
    return claims


def test_okta_scp_list_satisfies_scoped_route(okta: Server, clock: ManualClock) -> None:
    """Okta: no header typ, scp as a list, cid/uid, n with a leading zero octet in the JWKS → 200 as sub."""
    token = okta.token(okta_claims(clock), kid="okta-kid", typ=None)
    with client(okta, clock, "api://default") as http:
        body = http.get("/photos", headers=bearer(token)).json()
    assert body == {
        "identity": "alice@example.com",
        "subject": "alice@example.com",
        "client_id": "0oa1webapp",  # Okta's cid, read when client_id is absent
        "source": "jwt",
        "scopes": ["openid", "photos.read"],
    }


def test_okta_scp_list_without_the_scope_is_403(okta: Server, clock: ManualClock) -> None:
    """An Okta token whose scp list lacks the route's scope gets 403 insufficient_scope."""
    token = okta.token(okta_claims(clock, scp=["openid", "photos.write"]), kid="okta-kid", typ=None)
    with client(okta, clock, "api://default") as http:
        refused(http.get("/photos", headers=bearer(token)), 403, "insufficient_scope")


def test_okta_client_credentials_identity(okta: Server, clock: ManualClock) -> None:
    """An Okta client-credentials token has sub equal to cid and no uid: identity is that client id."""
    claims = okta_claims(clock, cid="0oa1batchjob", sub="0oa1batchjob", uid=None, scp=["photos.read"])
    token = okta.token({k: v for k, v in claims.items() if v is not None}, kid="okta-kid", typ=None)
    with client(okta, clock, "api://default") as http:
        assert http.get("/photos", headers=bearer(token)).json()["identity"] == "0oa1batchjob"


def test_okta_sensitive_route_introspects(okta: Server, clock: ManualClock, respx_mock: respx.MockRouter) -> None:
    """Okta's /v1/introspect answer (scope string, username, uid, token_type Bearer) confirms the token → 200."""
    claims = okta_claims(clock)
    token = okta.token(claims, kid="okta-kid", typ=None)
    answer = {
        "active": True,
        "scope": "openid photos.read",
        "username": "alice@example.com",
        "exp": claims["exp"],
        "iat": claims["iat"],
        "sub": "alice@example.com",
        "aud": "api://default",
        "iss": OKTA_ISSUER,
        "jti": claims["jti"],
        "token_type": "Bearer",
        "client_id": "0oa1webapp",
        "uid": "00u1alice",
    }
    introspection(respx_mock, f"{OKTA_ISSUER}/v1/introspect", httpx.Response(200, json=answer))
    with client(okta, clock, "api://default") as http:
        body = http.get("/transfer", headers=bearer(token)).json()
    assert body["source"] == "introspection"
    assert body["client_id"] == "0oa1webapp"


# -- Microsoft Entra ID (v2 endpoint) ------------------------------------------------------------

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ENTRA_ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
ENTRA_API = "6e74172b-be56-4843-9ff4-e66a39bb12e3"


@pytest.fixture
def entra(respx_mock: respx.MockRouter) -> Server:
    key = rsa_jwk(RSA, "nOo3ZDrODXEK1jKWhXslHR_KXEg", certificate=True, alg=None, issuer=ENTRA_ISSUER)
    key["x5t"] = key["kid"]
    server = Server(
        "entra",
        ENTRA_ISSUER,
        f"https://login.microsoftonline.com/{TENANT}/discovery/v2.0/keys",
        keys=[key],
        jwks_cache_control="max-age=86400, private",
        rfc8414="redirect",
        extra_metadata={"tenant_region_scope": "WW", "cloud_instance_name": "microsoftonline.com"},
    )
    server.install(respx_mock)
    return server


def entra_claims(clock: ManualClock, **overrides: Any) -> dict[str, Any]:
    now = int(clock())
    claims: dict[str, Any] = {
        "aud": ENTRA_API,
        "iss": ENTRA_ISSUER,
        "iat": now,
        "nbf": now,
        "exp": now + 4000,
        "aio": "AWQAm/8TAAAA",
        "azp": "b0a4a5e1-web-client",
        "azpacr": "0",
        "name": "Alice Example",
        "oid": "00000000-0000-0000-66f3-3332eca7ea81",
        "preferred_username": "alice@contoso.com",
        "rh": "0.AAAA.",
        "scp": "photos.read User.Read",
        "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        "tid": TENANT,
        "uti": "fqiBqXLPj0eQa82S-IYFAA",
        "ver": "2.0",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_entra_delegated_token_scp_string(entra: Server, clock: ManualClock) -> None:
    """Entra v2 delegated token: scp space-separated, key without alg but with x5c, redirecting RFC 8414 path → 200."""
    kid = "nOo3ZDrODXEK1jKWhXslHR_KXEg"
    token = entra.token(entra_claims(clock), kid=kid, x5t=kid)
    with client(entra, clock, ENTRA_API) as http:
        body = http.get("/photos", headers=bearer(token)).json()
    assert body["identity"] == "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ"
    assert body["scopes"] == ["User.Read", "photos.read"]


def test_entra_app_token_roles_are_not_scopes(entra: Server, clock: ManualClock) -> None:
    """An Entra app-only token (roles, no scp, sub == oid) passes ordinary routes but gets 403 on scoped ones."""
    oid = "a1b2c3d4-0000-4000-8000-00000000abcd"
    claims = entra_claims(
        clock, scp=None, roles=["Photos.Read.All"], sub=oid, oid=oid, name=None, preferred_username=None, azpacr="1"
    )
    token = entra.token(claims, kid="nOo3ZDrODXEK1jKWhXslHR_KXEg")
    with client(entra, clock, ENTRA_API) as http:
        body = http.get("/me", headers=bearer(token)).json()
        assert body["identity"] == oid
        assert body["client_id"] == claims["azp"]  # Entra v2 names the client in azp
        assert body["scopes"] == []
        refused(http.get("/photos", headers=bearer(token)), 403, "insufficient_scope")


# -- Amazon Cognito ------------------------------------------------------------------------------

POOL = "eu-west-1_AbCdEf123"
COGNITO_ISSUER = f"https://cognito-idp.eu-west-1.amazonaws.com/{POOL}"
COGNITO_CLIENT = "4a5b6c7d8e9f0g1h2i3j4k5l6m"


@pytest.fixture
def cognito(respx_mock: respx.MockRouter) -> Server:
    server = Server(
        "cognito",
        COGNITO_ISSUER,
        f"{COGNITO_ISSUER}/.well-known/jwks.json",
        keys=[rsa_jwk(RSA, "cognito-kid=")],
        jwks_cache_control=None,
    )
    server.install(respx_mock)
    return server


def cognito_access_claims(clock: ManualClock) -> dict[str, Any]:
    return {
        "sub": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "cognito:groups": ["admins"],
        "iss": COGNITO_ISSUER,
        "version": 2,
        "client_id": COGNITO_CLIENT,
        "origin_jti": str(uuid.uuid4()),
        "event_id": str(uuid.uuid4()),
        "token_use": "access",
        "scope": "photos/photos.read openid",
        "auth_time": int(clock()),
        **times(clock, 3600),
        "jti": str(uuid.uuid4()),
        "username": "alice",
    }


@pytest.mark.parametrize("audience", [COGNITO_CLIENT, "photos"])
def test_cognito_access_token_without_aud_is_refused(cognito: Server, clock: ManualClock, audience: str) -> None:
    """Cognito access tokens carry client_id and no aud: whatever audience is configured, they get 401."""
    token = cognito.token(cognito_access_claims(clock), kid="cognito-kid=", typ=None)
    with client(cognito, clock, audience) as http:
        description = refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert "not meant for this resource" in description


def test_cognito_id_token_with_matching_aud_is_refused(cognito: Server, clock: ManualClock) -> None:
    """A Cognito ID token (token_use id) whose aud equals the configured app client id is refused: 401."""
    claims = {**cognito_access_claims(clock), "aud": COGNITO_CLIENT, "token_use": "id", "email": "a@example.com"}
    del claims["client_id"], claims["scope"]
    token = cognito.token(claims, kid="cognito-kid=", typ=None)
    with client(cognito, clock, COGNITO_CLIENT) as http:
        description = refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
    assert "not an access token" in description


# -- node-oidc-provider (panva) ---------------------------------------------------------------------

OP_ISSUER = "https://op.example.com"
OP_API = "https://photos.example.com"


@pytest.fixture
def node_oidc(respx_mock: respx.MockRouter) -> Server:
    server = Server(
        "node-oidc-provider",
        OP_ISSUER,
        f"{OP_ISSUER}/jwks",
        keys=[rsa_jwk(RSA, "op-rsa", alg=None), ec_jwk(EC, "op-ec")],  # no alg members, as it publishes them
        jwks_cache_control="max-age=0",
        introspection_endpoint=f"{OP_ISSUER}/token/introspection",
    )
    server.install(respx_mock)
    return server


def op_claims(clock: ManualClock, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "jti": "tZ7ZP8d0m8sJ9r2QqfE1a",
        "sub": "alice",
        **times(clock, 3600),
        "scope": "openid photos.read",
        "client_id": "photos-web",
        "iss": OP_ISSUER,
        "aud": OP_API,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize("strict", [False, True])
def test_node_oidc_provider_at_jwt_passes_strict_and_lenient(
    node_oidc: Server, clock: ManualClock, strict: bool
) -> None:
    """node-oidc-provider JWT access tokens (typ at+jwt, client_id, jti, iat) pass, in strict RFC 9068 mode too."""
    token = node_oidc.token(op_claims(clock), kid="op-rsa", typ="at+jwt")
    with client(node_oidc, clock, OP_API, strict_rfc9068=strict) as http:
        body = http.get("/photos", headers=bearer(token)).json()
    assert body["identity"] == "alice"
    assert body["client_id"] == "photos-web"


def test_node_oidc_provider_es256_key_without_alg(node_oidc: Server, clock: ManualClock) -> None:
    """An ES256 token verified by an EC P-256 JWK that has no alg member → 200."""
    token = node_oidc.token(op_claims(clock), kid="op-ec", typ="at+jwt", key=EC, alg="ES256")
    with client(node_oidc, clock, OP_API) as http:
        assert http.get("/photos", headers=bearer(token)).status_code == 200


def test_node_oidc_provider_client_credentials_identity_is_client_id(node_oidc: Server, clock: ManualClock) -> None:
    """A client-credentials at+jwt with client_id and no sub: identity is client_id; strict mode wants sub (401)."""
    token = node_oidc.token(
        op_claims(clock, sub=None, scope="photos.read", client_id="batch"), kid="op-rsa", typ="at+jwt"
    )
    with client(node_oidc, clock, OP_API) as http:
        body = http.get("/photos", headers=bearer(token)).json()
    assert body["identity"] == "batch"
    assert body["subject"] is None
    with client(node_oidc, clock, OP_API, strict_rfc9068=True) as http:
        description = refused(http.get("/photos", headers=bearer(token)), 401, "invalid_token")
    assert "lacks a required claim" in description


def test_node_oidc_provider_sensitive_route(
    node_oidc: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """node-oidc-provider's introspection answer (token_type Bearer, scope, sub, aud, client_id) → 200."""
    claims = op_claims(clock)
    token = node_oidc.token(claims, kid="op-rsa", typ="at+jwt")
    answer = {
        "active": True,
        "client_id": "photos-web",
        "exp": claims["exp"],
        "iat": claims["iat"],
        "iss": OP_ISSUER,
        "jti": claims["jti"],
        "scope": "openid photos.read",
        "sub": "alice",
        "token_type": "Bearer",
        "aud": OP_API,
    }
    introspection(respx_mock, f"{OP_ISSUER}/token/introspection", httpx.Response(200, json=answer))
    with client(node_oidc, clock, OP_API) as http:
        body = http.get("/transfer", headers=bearer(token)).json()
    assert body["source"] == "introspection"
    assert body["identity"] == "alice"


@pytest.mark.parametrize(
    ("cache_control", "ttl"),
    [
        ("public, max-age=86400", 86400),
        ("no-cache", 300),  # "no-cache" → the minimum TTL (jwks_min_ttl, 300 s)
        (None, 3600),  # nothing said → jwks_cache_ttl (3600 s)
        ("max-age=0", 300),  # clamped up to the minimum
    ],
)
def test_jwks_cache_control_variations(
    node_oidc: Server, clock: ManualClock, cache_control: str | None, ttl: int
) -> None:
    """JWKS kept for the issuer's Cache-Control (clamped to [300 s, 1 day]): no refetch before, one after."""
    node_oidc.jwks_cache_control = cache_control
    with client(node_oidc, clock, OP_API) as http:
        assert http.get("/me", headers=bearer(node_oidc.token(op_claims(clock), kid="op-rsa"))).status_code == 200
        clock.advance(ttl * 0.5)
        assert http.get("/me", headers=bearer(node_oidc.token(op_claims(clock), kid="op-rsa"))).status_code == 200
        assert node_oidc.jwks_calls == 1
        clock.advance(ttl * 0.5 + 1)
        assert http.get("/me", headers=bearer(node_oidc.token(op_claims(clock), kid="op-rsa"))).status_code == 200
        assert node_oidc.jwks_calls == 2


# -- ORY Hydra (opaque tokens, introspection on the admin API) ---------------------------------------

HYDRA_ISSUER = "https://hydra.example.com/"
HYDRA_INTROSPECT = "https://hydra-admin.internal.example.com/admin/oauth2/introspect"
HYDRA_TOKEN = "ory_at_Xq2m8JbXk1c4T5s6v7w8y9z0AbCdEfGhIjKlMnOpQrS.tUvWxYz0123456789AbCdEfGh"


@pytest.fixture
def hydra(respx_mock: respx.MockRouter) -> Server:
    # Hydra's public discovery document does not advertise the admin introspection endpoint.
    server = Server("hydra", HYDRA_ISSUER, f"{HYDRA_ISSUER}.well-known/jwks.json", keys=[rsa_jwk(RSA, "hydra-kid")])
    server.install(respx_mock)
    return server


def hydra_answer(clock: ManualClock, **overrides: Any) -> dict[str, Any]:
    now = int(clock())
    answer: dict[str, Any] = {
        "active": True,
        "scope": "offline photos.read",
        "client_id": "photos-web",
        "sub": "alice",
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "aud": [OP_API],
        "iss": HYDRA_ISSUER,
        "token_type": "Bearer",
        "token_use": "access_token",
        "ext": {"tenant": "acme"},
        "obfuscated_subject": "",
    }
    answer.update(overrides)
    return answer


def hydra_client(hydra: Server, clock: ManualClock, **options: Any) -> TestClient:
    return client(hydra, clock, OP_API, introspection_endpoint=HYDRA_INTROSPECT, **options)


def test_hydra_opaque_token_is_introspected_on_any_route(
    hydra: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """Hydra's ory_at_ opaque token is introspected at the configured admin endpoint: 200, then cached."""
    route = introspection(respx_mock, HYDRA_INTROSPECT, httpx.Response(200, json=hydra_answer(clock)))
    with hydra_client(hydra, clock) as http:
        body = http.get("/photos", headers=bearer(HYDRA_TOKEN)).json()
        assert http.get("/me", headers=bearer(HYDRA_TOKEN)).status_code == 200
    assert body["source"] == "introspection"
    assert body["identity"] == "alice"
    assert route.call_count == 1  # the second request was answered from the cache


def test_hydra_empty_audience_list_is_refused(hydra: Server, clock: ManualClock, respx_mock: respx.MockRouter) -> None:
    """Hydra answers aud [] for a token granted no audience: with audience required, 401 invalid_token."""
    introspection(respx_mock, HYDRA_INTROSPECT, httpx.Response(200, json=hydra_answer(clock, aud=[])))
    with hydra_client(hydra, clock) as http:
        refused(http.get("/me", headers=bearer(HYDRA_TOKEN)), 401, "invalid_token")


def test_hydra_empty_audience_list_with_aud_relaxed(
    hydra: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """With introspection_requires_aud=False, Hydra's aud [] (no audience granted) is treated as absent → 200."""
    introspection(respx_mock, HYDRA_INTROSPECT, httpx.Response(200, json=hydra_answer(clock, aud=[])))
    with hydra_client(hydra, clock, introspection_requires_aud=False) as http:
        assert http.get("/me", headers=bearer(HYDRA_TOKEN)).status_code == 200


def test_hydra_refresh_token_introspected_active_is_refused(
    hydra: Server, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """Hydra says active for a refresh token (token_use refresh_token): it is not an access token, 401."""
    answer = hydra_answer(clock, token_use="refresh_token")
    introspection(respx_mock, HYDRA_INTROSPECT, httpx.Response(200, json=answer))
    with hydra_client(hydra, clock) as http:
        refused(http.get("/me", headers=bearer(HYDRA_TOKEN)), 401, "invalid_token")


@pytest.mark.parametrize(
    ("response", "status", "error"),
    [
        (httpx.Response(200, json={"active": False}), 401, "invalid_token"),
        (
            httpx.Response(401, json={"error": "invalid_client", "error_description": "Client authentication failed"}),
            503,
            "temporarily_unavailable",
        ),
        (httpx.Response(400, text=HTML, headers={"Content-Type": "text/html"}), 503, "temporarily_unavailable"),
        (httpx.Response(200, text=HTML, headers={"Content-Type": "text/html"}), 503, "temporarily_unavailable"),
    ],
    ids=["inactive", "401-invalid_client", "400-html", "200-html"],
)
def test_hydra_introspection_answers(
    hydra: Server, clock: ManualClock, respx_mock: respx.MockRouter, response: httpx.Response, status: int, error: str
) -> None:
    """Inactive → 401; our credentials refused (401 JSON), a 400 HTML page, an HTML 200 → 503 (fail closed)."""
    introspection(respx_mock, HYDRA_INTROSPECT, response)
    with hydra_client(hydra, clock) as http:
        refused(http.get("/me", headers=bearer(HYDRA_TOKEN)), status, error)


# -- Google ----------------------------------------------------------------------------------------


@pytest.fixture
def google(respx_mock: respx.MockRouter) -> Server:
    server = Server(
        "google",
        "https://accounts.google.com",
        "https://www.googleapis.com/oauth2/v3/certs",
        keys=[rsa_jwk(RSA, "google-kid")],
        jwks_cache_control="public, max-age=20826, must-revalidate, no-transform",
    )
    server.install(respx_mock)
    return server


def test_google_opaque_access_token(google: Server, clock: ManualClock) -> None:
    """Google access tokens are opaque and Google has no RFC 7662 endpoint: 401 on ordinary, 503 on sensitive routes."""
    token = "ya29.a0AfB_byC1d2E3f4G5h6I7j8K9l0MnOpQrStUvWxYz"
    with client(google, clock, "https://photos.example.com") as http:
        assert "not a JWT" in refused(http.get("/me", headers=bearer(token)), 401, "invalid_token")
        refused(http.get("/transfer", headers=bearer(token)), 503, "temporarily_unavailable")
