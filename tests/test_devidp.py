"""The development identity provider: keys, metadata, grants, PKCE, errors, introspection, revocation, storage.

Driven over HTTP through its real ASGI app, by a real OAuth client (Authlib) where a client is
involved, and checked by a real ``TokenGuard`` where a resource server is involved.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import httpx2
import jwt
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import ConfigurationError, TokenGuard, require_scopes, sensitive
from tokenguard.testing import (
    DEFAULT_AUDIENCE,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_ISSUER,
    DEV_USER_GRANT,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
    KeyRing,
    ManualClock,
    OAuthError,
)

pytestmark = pytest.mark.anyio

CLIENT = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
RESOURCE = (RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET)
CALLBACK = "http://127.0.0.1:8765/callback"
VERIFIER = "v" * 20 + "-._~" + "0123456789abcdefghijKLMN"  # 48 unreserved characters (RFC 7636 §4.1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


async def post(idp: DevIdP, path: str, data: Mapping[str, str], auth: Any = CLIENT, **kwargs: Any) -> httpx.Response:
    async with idp.http_client() as client:
        return await client.post(path, data=data, auth=auth, **kwargs)


async def get(idp: DevIdP, path: str, **kwargs: Any) -> httpx.Response:
    async with idp.http_client() as client:
        return await client.get(path, **kwargs)


async def token(idp: DevIdP, auth: Any = CLIENT, **form: str) -> httpx.Response:
    return await post(idp, "/token", form, auth)


async def introspect(idp: DevIdP, value: str, **form: str) -> dict[str, Any]:
    response = await post(idp, "/introspect", {"token": value, **form}, RESOURCE)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def verify(idp: DevIdP, value: str, audience: str = DEFAULT_AUDIENCE) -> dict[str, Any]:
    """Verify a JWT the way any resource server would: against the published JWKS only."""
    header = jwt.get_unverified_header(value)
    jwks = jwt.PyJWKSet.from_dict(idp.jwks())
    key = next(k for k in jwks.keys if k.key_id == header["kid"])
    return jwt.decode(value, key.key, algorithms=[header["alg"]], audience=audience, issuer=idp.issuer)


async def authorize(idp: DevIdP, **params: str) -> httpx.Response:
    query = {
        "response_type": "code",
        "client_id": DEFAULT_CLIENT_ID,
        "redirect_uri": CALLBACK,
        "state": "xyz",
        "code_challenge": challenge(VERIFIER),
        "code_challenge_method": "S256",
        **params,
    }
    return await get(idp, "/authorize?" + urlencode({k: v for k, v in query.items() if v is not None}))


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(CALLBACK + "?")
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


async def code_for(idp: DevIdP, **params: str) -> str:
    return redirect_params(await authorize(idp, **params))["code"]


def guarded(idp: DevIdP, audience: str = DEFAULT_AUDIENCE, **options: Any) -> httpx.AsyncClient:
    """A client of a real Starlette API guarded by TokenGuard, which trusts ``idp``."""

    @require_scopes("read")
    async def read(request: Request) -> JSONResponse:
        return JSONResponse({"who": request.user.identity, "source": request.auth.source})

    @sensitive
    async def vault(request: Request) -> JSONResponse:
        return JSONResponse({"who": request.user.identity, "source": request.auth.source})

    app = Starlette(routes=[Route("/read", read), Route("/vault", vault)])
    app.add_middleware(
        TokenGuard,
        issuer=idp.issuer,
        audience=audience,
        http_client=idp.http_client,
        client_id=RESOURCE_CLIENT_ID,
        client_secret=RESOURCE_CLIENT_SECRET,
        clock=idp.clock,
        **options,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://api.tokenguard.test")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# -- keys and metadata --------------------------------------------------------------------------


async def test_metadata_is_served_at_both_discovery_paths(dev_idp: DevIdP) -> None:
    """RFC 8414 metadata is at /.well-known/oauth-authorization-server and the OpenID path, identical."""
    rfc8414 = await get(dev_idp, "/.well-known/oauth-authorization-server")
    openid = await get(dev_idp, "/.well-known/openid-configuration")
    assert rfc8414.status_code == openid.status_code == 200
    document = rfc8414.json()
    assert document == openid.json()
    assert document["issuer"] == DEFAULT_ISSUER
    assert document["token_endpoint"] == f"{DEFAULT_ISSUER}/token"
    assert document["authorization_endpoint"] == f"{DEFAULT_ISSUER}/authorize"
    assert document["introspection_endpoint"] == f"{DEFAULT_ISSUER}/introspect"
    assert document["revocation_endpoint"] == f"{DEFAULT_ISSUER}/revoke"
    assert document["jwks_uri"] == f"{DEFAULT_ISSUER}/jwks"
    assert document["response_types_supported"] == ["code"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert set(document["grant_types_supported"]) == {
        "authorization_code",
        "client_credentials",
        "refresh_token",
        DEV_USER_GRANT,
        "urn:ietf:params:oauth:grant-type:token-exchange",  # RFC 8693
    }
    methods = ["client_secret_basic", "client_secret_post"]
    assert document["token_endpoint_auth_methods_supported"] == [*methods, "none"]  # public clients too
    assert document["revocation_endpoint_auth_methods_supported"] == [*methods, "none"]
    assert document["introspection_endpoint_auth_methods_supported"] == methods
    assert document["scopes_supported"] == ["admin", "read", "write"]


async def test_jwks_publishes_rsa_and_ec_public_keys_with_kids(dev_idp: DevIdP) -> None:
    """The JWKS holds an RS256 RSA key and an ES256 P-256 key, each with kid/alg/use and no private part."""
    keys = (await get(dev_idp, "/jwks")).json()["keys"]
    assert {(k["kty"], k["alg"], k["use"]) for k in keys} == {("RSA", "RS256", "sig"), ("EC", "ES256", "sig")}
    assert all(k["kid"] for k in keys)
    assert len({k["kid"] for k in keys}) == 2
    assert not any({"d", "p", "q", "dp", "dq", "qi"} & k.keys() for k in keys)
    assert next(k for k in keys if k["kty"] == "EC")["crv"] == "P-256"


async def test_issuer_with_a_path_serves_path_inserted_metadata(dev_idp_keys: KeyRing) -> None:
    """An issuer with a path gets metadata at /.well-known/oauth-authorization-server/<path> (RFC 8414 §3.1)."""
    idp = DevIdP("https://idp.tokenguard.test/realms/dev", keys=dev_idp_keys)
    response = await get(idp, "https://idp.tokenguard.test/.well-known/oauth-authorization-server/realms/dev")
    assert response.json()["token_endpoint"] == "https://idp.tokenguard.test/realms/dev/token"
    openid = await get(idp, "https://idp.tokenguard.test/realms/dev/.well-known/openid-configuration")
    assert openid.json() == response.json()
    async with idp.http_client() as client:
        outside = await client.post("https://idp.tokenguard.test/token", data={"grant_type": "client_credentials"})
        minted = await client.post(idp.endpoint("token"), data={"grant_type": "client_credentials"}, auth=CLIENT)
    assert outside.status_code == 404  # the endpoints live under the issuer's path
    assert verify(idp, minted.json()["access_token"])["iss"] == "https://idp.tokenguard.test/realms/dev"


def test_key_file_is_created_private_and_reloaded(tmp_path: Path) -> None:
    """key_file= generates keys once (mode 0600) and a second DevIdP reloads them: old tokens still verify."""
    path = tmp_path / "keys.json"
    first = DevIdP(key_file=path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert all("d" in key for key in saved["keys"])
    issued = first.issue_token(scopes=["read"])
    second = DevIdP(key_file=path)
    assert second.keys.kids == first.keys.kids
    assert verify(second, issued)["scope"] == "read"


def test_save_keys_and_keyring_load_round_trip(dev_idp: DevIdP, tmp_path: Path) -> None:
    """save_keys writes the private JWKS; KeyRing.load restores the same kids and signs verifiable tokens."""
    path = tmp_path / "saved.json"
    dev_idp.save_keys(path)
    loaded = DevIdP(keys=KeyRing.load(path))
    assert loaded.jwks() == dev_idp.jwks()
    assert verify(dev_idp, loaded.issue_token(scopes="read"))["sub"] == "alice"


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_a_key_file_others_may_write_is_refused_and_a_planted_symlink_is_never_followed(
    dev_idp: DevIdP, tmp_path: Path
) -> None:
    """Found by review: a key file was loaded whatever its mode (one planted world-writable in a shared /tmp
    lets its planter sign tokens the DevIdP's JWKS vouches for), and saving followed a symlink planted at the
    key path, writing the private keys wherever it pointed."""
    path = tmp_path / "keys.json"
    dev_idp.save_keys(path)
    for mode in (0o666, 0o620, 0o602):
        os.chmod(path, mode)
        with pytest.raises(ConfigurationError, match="others may write it"):
            DevIdP(key_file=path)
    os.chmod(path, 0o644)  # readable by others, as a mounted secret is: loaded
    assert DevIdP(key_file=path).keys.kids == dev_idp.keys.kids
    elsewhere, link = tmp_path / "elsewhere.json", tmp_path / "linked.json"
    link.symlink_to(elsewhere)  # dangling: DevIdP(key_file=link) generates keys and saves them
    made = DevIdP(key_file=link)
    assert not elsewhere.exists()  # the link was replaced, not followed
    assert not link.is_symlink()
    assert stat.S_IMODE(os.stat(link).st_mode) == 0o600
    assert DevIdP(key_file=link).keys.kids == made.keys.kids


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"keys": "nope"}, "'keys' list"),
        ({"keys": [{"kty": "RSA", "alg": "HS256", "k": "c2VjcmV0"}]}, "'alg' must be one of"),
        ("public", "no private part"),
    ],
)
def test_key_ring_refuses_bad_key_files(dev_idp: DevIdP, tmp_path: Path, document: Any, message: str) -> None:
    """Loading a key file without private keys, with a wrong alg, or of the wrong shape is a ConfigurationError."""
    if document == "public":
        document = dev_idp.jwks()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigurationError, match=message):
        KeyRing.load(path)


def test_configuration_is_validated_when_built(dev_idp_keys: KeyRing, tmp_path: Path) -> None:
    """A plain-http issuer off loopback, keys plus key_file, and bad client settings are refused at once."""
    with pytest.raises(ConfigurationError, match="https"):
        DevIdP("http://idp.example.com", keys=dev_idp_keys)
    with pytest.raises(ConfigurationError, match="not both"):
        DevIdP(keys=dev_idp_keys, key_file=tmp_path / "k.json")
    idp = DevIdP(keys=dev_idp_keys)
    with pytest.raises(ConfigurationError, match="grant_types"):
        idp.register_client("c", "s", grant_types=["password"])
    with pytest.raises(ConfigurationError, match="fragment"):
        idp.register_client("c", "s", redirect_uris=["https://app.example/cb#frag"])
    with pytest.raises(ConfigurationError, match="format"):
        idp.add_audience("https://x.example", format="saml")  # type: ignore[arg-type]
    assert DevIdP.local(9123, keys=dev_idp_keys).issuer == "http://127.0.0.1:9123"


# -- access tokens ------------------------------------------------------------------------------


async def test_jwt_access_tokens_follow_rfc9068_and_pass_a_tokenguard(dev_idp: DevIdP) -> None:
    """A JWT access token has typ at+jwt, a published kid, the RFC 9068 claims, and TokenGuard accepts it."""
    value = dev_idp.issue_token(scopes=["read", "write"], tenant="acme")
    header = jwt.get_unverified_header(value)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "RS256"
    assert header["kid"] in dev_idp.keys.kids
    claims = verify(dev_idp, value)
    assert {"iss", "aud", "sub", "client_id", "scope", "iat", "exp", "jti"} <= claims.keys()
    assert (claims["sub"], claims["client_id"], claims["scope"], claims["tenant"]) == (
        "alice",
        DEFAULT_CLIENT_ID,
        "read write",
        "acme",
    )
    assert claims["exp"] - claims["iat"] == 300
    async with guarded(dev_idp) as api:
        response = await api.get("/read", headers=bearer(value))
    assert response.json() == {"who": "alice", "source": "jwt"}


async def test_es256_audience_signs_with_the_ec_key(dev_idp: DevIdP) -> None:
    """add_audience(alg="ES256") makes tokens for that audience ES256-signed, and a guard accepts them."""
    dev_idp.add_audience("https://ec.example", alg="ES256")
    value = dev_idp.issue_token(scopes="read", audience="https://ec.example")
    assert jwt.get_unverified_header(value)["alg"] == "ES256"
    async with guarded(dev_idp, audience="https://ec.example") as api:
        assert (await api.get("/read", headers=bearer(value))).status_code == 200


async def test_opaque_audience_gets_opaque_tokens_that_a_guard_introspects(dev_idp: DevIdP) -> None:
    """An audience registered as opaque gets random strings; TokenGuard accepts them through introspection."""
    dev_idp.add_audience("https://opaque.example", format="opaque")
    value = dev_idp.issue_token(scopes=["read"], audience="https://opaque.example", subject="bob")
    assert value.count(".") == 0
    assert len(value) >= 43
    answer = await introspect(dev_idp, value)
    assert answer["active"] is True
    assert answer["aud"] == "https://opaque.example"
    assert answer["username"] == "bob"
    async with guarded(dev_idp, audience="https://opaque.example") as api:
        response = await api.get("/read", headers=bearer(value))
    assert response.json() == {"who": "bob", "source": "introspection"}


async def test_tokens_expire_by_the_injected_clock(dev_idp: DevIdP) -> None:
    """expires_in sets the lifetime; advancing the ManualClock past it makes the guard and introspection refuse."""
    value = dev_idp.issue_token(scopes="read", expires_in=60)
    assert verify(dev_idp, value)["exp"] - verify(dev_idp, value)["iat"] == 60
    async with guarded(dev_idp) as api:
        assert (await api.get("/read", headers=bearer(value))).status_code == 200
        assert isinstance(dev_idp.clock, ManualClock)
        dev_idp.clock.advance(60 + 31)  # past exp and the guard's 30 s leeway
        assert (await api.get("/read", headers=bearer(value))).status_code == 401
    assert (await introspect(dev_idp, value)) == {"active": False}


def test_token_reprs_and_events_never_hold_a_token(dev_idp: DevIdP) -> None:
    """TokenSet and Grant reprs, and every event, name tokens by id only, never by value."""
    tokens = dev_idp.issue_user_tokens("alice", ["read"])
    assert tokens.refresh_token is not None
    grant = dev_idp.grant_of(tokens.refresh_token)
    assert grant is not None
    dumped = repr(tokens) + repr(grant) + repr(dev_idp.events) + repr(grant.refresh_tokens) + repr(grant.access_tokens)
    assert tokens.access_token not in dumped
    assert tokens.refresh_token not in dumped
    assert dev_idp.events[-1].detail["refresh_token"] == grant.chain[0]


# -- client credentials and client authentication -----------------------------------------------


async def test_client_credentials_issues_an_access_token_without_refresh_token(dev_idp: DevIdP) -> None:
    """client_credentials (RFC 6749 §4.4) answers a no-store JSON token, no refresh token, sub = client id."""
    response = await token(dev_idp, grant_type="client_credentials", scope="read")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body.keys() == {"access_token", "token_type", "expires_in", "scope"}
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 300, "read")
    claims = verify(dev_idp, body["access_token"])
    assert claims["sub"] == claims["client_id"] == DEFAULT_CLIENT_ID
    answer = await introspect(dev_idp, body["access_token"])
    assert answer["active"] is True
    assert "username" not in answer


async def test_client_credentials_without_scope_gets_the_clients_default(dev_idp: DevIdP) -> None:
    """With no scope parameter the client's allowed scopes are granted (RFC 6749 §3.3 default)."""
    dev_idp.register_client("narrow", "narrow-secret", scopes=["read"])
    body = (await token(dev_idp, ("narrow", "narrow-secret"), grant_type="client_credentials")).json()
    assert body["scope"] == "read"


async def test_client_secret_post_is_accepted(dev_idp: DevIdP) -> None:
    """client_id and client_secret in the form body authenticate the client (client_secret_post)."""
    form = {"grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}
    response = await post(dev_idp, "/token", form, auth=None)
    assert response.status_code == 200


async def test_basic_credentials_are_form_decoded(dev_idp: DevIdP) -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded inside Basic; the raw form is also accepted."""
    dev_idp.register_client("app:1", "s3cr+t%&:x")
    encoded = base64.b64encode(b"app%3A1:s3cr%2Bt%25%26%3Ax").decode()
    response = await post(dev_idp, "/token", {"grant_type": "client_credentials"}, None,
                          headers={"Authorization": f"Basic {encoded}"})  # fmt: skip
    assert response.status_code == 200
    assert verify(dev_idp, response.json()["access_token"])["client_id"] == "app:1"
    dev_idp.register_client("plain", "a+b")
    raw = base64.b64encode(b"plain:a+b").decode()  # what Authlib sends: not form-encoded
    response = await post(dev_idp, "/token", {"grant_type": "client_credentials"}, None,
                          headers={"Authorization": f"Basic {raw}"})  # fmt: skip
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("auth", "headers", "form"),
    [
        ((DEFAULT_CLIENT_ID, "wrong"), {}, {}),
        (("nobody", DEFAULT_CLIENT_SECRET), {}, {}),
        (None, {}, {}),
        (None, {"Authorization": "Bearer abc"}, {}),
        (None, {"Authorization": "Basic !!!"}, {}),
        (None, {}, {"client_id": DEFAULT_CLIENT_ID, "client_secret": "wrong"}),
    ],
    ids=["wrong-secret", "unknown-client", "no-credentials", "bearer-scheme", "bad-base64", "wrong-post-secret"],
)
async def test_failed_client_authentication_is_401_invalid_client(
    dev_idp: DevIdP, auth: Any, headers: dict[str, str], form: dict[str, str]
) -> None:
    """Bad, missing or unsupported client credentials are 401 invalid_client with a Basic challenge (§5.2)."""
    response = await post(dev_idp, "/token", {"grant_type": "client_credentials", **form}, auth, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic realm=")
    assert response.headers["cache-control"] == "no-store"


# -- token endpoint errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({}, "invalid_request"),
        ({"grant_type": "password", "username": "alice", "password": "x"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "scope": "delete:everything"}, "invalid_scope"),
        ({"grant_type": "client_credentials", "scope": "read  write"}, "invalid_scope"),
        ({"grant_type": "authorization_code"}, "invalid_request"),
        ({"grant_type": "authorization_code", "code": "forged"}, "invalid_grant"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "forged"}, "invalid_grant"),
        ({"grant_type": DEV_USER_GRANT}, "invalid_request"),
        ({"grant_type": DEV_USER_GRANT, "username": "alice", "scope": "nope"}, "invalid_scope"),
    ],
    ids=lambda value: value if isinstance(value, str) else ",".join(f"{k}={v}" for k, v in value.items()),
)
async def test_token_endpoint_error_codes(dev_idp: DevIdP, form: dict[str, str], error: str) -> None:
    """Each malformed or refused token request gets its RFC 6749 §5.2 error code, as no-store JSON 400."""
    response = await token(dev_idp, **form)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert response.json()["error_description"]
    assert response.headers["cache-control"] == "no-store"


async def test_repeated_parameters_and_two_auth_methods_are_invalid_request(dev_idp: DevIdP) -> None:
    """A parameter sent twice (§3.2) and Basic plus client_secret in the body (§2.3) are invalid_request."""
    async with dev_idp.http_client() as client:
        twice = await client.post(
            "/token",
            content="grant_type=client_credentials&scope=read&scope=write",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=CLIENT,
        )
        both = await client.post(
            "/token", data={"grant_type": "client_credentials", "client_secret": DEFAULT_CLIENT_SECRET}, auth=CLIENT
        )
        as_json = await client.post("/token", json={"grant_type": "client_credentials"}, auth=CLIENT)
    assert [r.json()["error"] for r in (twice, both, as_json)] == ["invalid_request"] * 3


async def test_disallowed_grant_types_are_unauthorized_client(dev_idp: DevIdP) -> None:
    """A client using a grant type it was not registered for gets unauthorized_client."""
    resource = await token(dev_idp, RESOURCE, grant_type="client_credentials")
    dev_idp.register_client("machine", "machine-secret", grant_types=["client_credentials"])
    machine = await token(dev_idp, ("machine", "machine-secret"), grant_type=DEV_USER_GRANT, username="alice")
    assert [(r.status_code, r.json()["error"]) for r in (resource, machine)] == [(400, "unauthorized_client")] * 2


async def test_disallowed_scope_is_invalid_scope(dev_idp: DevIdP) -> None:
    """A supported scope the client may not ask for is invalid_scope, like an unknown one."""
    dev_idp.register_client("reader", "reader-secret", scopes=["read"])
    response = await token(dev_idp, ("reader", "reader-secret"), grant_type="client_credentials", scope="read write")
    assert response.json() == {
        "error": "invalid_scope",
        "error_description": "Scope not allowed for this client: write.",
    }


async def test_dev_user_grant_issues_a_users_pair_for_chosen_scopes(dev_idp: DevIdP) -> None:
    """The development grant returns access + refresh tokens for the named user and scopes."""
    response = await token(dev_idp, grant_type=DEV_USER_GRANT, username="carol", scope="read")
    body = response.json()
    assert body["scope"] == "read"
    assert body["refresh_token"]
    assert verify(dev_idp, body["access_token"])["sub"] == "carol"
    restricted = DevIdP(keys=dev_idp.keys, users=["alice"])
    refused = await token(restricted, grant_type=DEV_USER_GRANT, username="mallory")
    assert refused.json()["error"] == "invalid_grant"


# -- authorization code + PKCE -------------------------------------------------------------------


async def test_authlib_client_runs_authorization_code_with_pkce_and_refresh(dev_idp: DevIdP) -> None:
    """Authlib's httpx client completes code + PKCE S256 (following the redirect by hand) and rotates on refresh."""
    transport = httpx2.ASGITransport(app=dev_idp.app)
    async with AsyncOAuth2Client(
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        scope="read write",
        redirect_uri=CALLBACK,
        code_challenge_method="S256",
        transport=transport,
    ) as client:
        verifier = generate_token(64)
        url, state = client.create_authorization_url(
            dev_idp.endpoint("authorize"), code_verifier=verifier, login_hint="bob"
        )
        answer = await client.request("GET", url, withhold_token=True)
        assert answer.status_code == 302
        location = answer.headers["location"]
        assert parse_qs(urlsplit(location).query)["iss"] == [DEFAULT_ISSUER]  # RFC 9207
        first = await client.fetch_token(
            dev_idp.endpoint("token"), authorization_response=location, code_verifier=verifier, state=state
        )
        assert first["scope"] == "read write"
        assert first["token_type"] == "Bearer"
        claims = verify(dev_idp, first["access_token"])
        assert (claims["sub"], claims["client_id"]) == ("bob", DEFAULT_CLIENT_ID)
        second = await client.refresh_token(dev_idp.endpoint("token"))
    assert second["refresh_token"] != first["refresh_token"]
    grant = dev_idp.grant_of(second["refresh_token"])
    assert grant is not None
    assert grant.kind == "authorization_code"
    assert [(s.status, s.successor) for s in grant.refresh_tokens] == [("used", grant.chain[1]), ("active", None)]
    async with guarded(dev_idp) as api:
        response = await api.get("/vault", headers=bearer(second["access_token"]))
    assert response.json() == {"who": "bob", "source": "introspection"}


async def test_authlib_client_revokes_and_introspects(dev_idp: DevIdP) -> None:
    """Authlib's revoke_token and introspect_token interoperate with the RFC 7009 and RFC 7662 endpoints."""
    pair = dev_idp.issue_user_tokens("alice", ["read"])
    transport = httpx2.ASGITransport(app=dev_idp.app)
    async with AsyncOAuth2Client(RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET, transport=transport) as resource:
        before = (await resource.introspect_token(dev_idp.endpoint("introspect"), token=pair.access_token)).json()
    async with AsyncOAuth2Client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, transport=transport) as client:
        revoked = await client.revoke_token(dev_idp.endpoint("revoke"), token=pair.access_token)
    assert before["active"] is True
    assert revoked.status_code == 200
    assert (await introspect(dev_idp, pair.access_token)) == {"active": False}


async def test_code_exchange_issues_tokens_for_the_login_hint_user(dev_idp: DevIdP) -> None:
    """A code from /authorize (login_hint=dave) exchanges, with the right verifier, for dave's tokens."""
    params = redirect_params(await authorize(dev_idp, login_hint="dave", scope="read"))
    assert params["state"] == "xyz"
    response = await token(
        dev_idp, grant_type="authorization_code", code=params["code"], redirect_uri=CALLBACK, code_verifier=VERIFIER
    )
    body = response.json()
    assert body["scope"] == "read"
    assert "refresh_token" in body
    assert verify(dev_idp, body["access_token"])["sub"] == "dave"


async def test_default_user_is_alice(dev_idp: DevIdP) -> None:
    """Without login_hint, /authorize approves alice."""
    code = await code_for(dev_idp)
    response = await token(
        dev_idp, grant_type="authorization_code", code=code, redirect_uri=CALLBACK, code_verifier=VERIFIER
    )
    assert verify(dev_idp, response.json()["access_token"])["sub"] == "alice"


async def test_wrong_pkce_verifier_is_invalid_grant_and_burns_the_code(dev_idp: DevIdP) -> None:
    """RFC 7636 §4.6: a verifier that does not hash to the challenge is invalid_grant; the code is then gone."""
    code = await code_for(dev_idp)
    wrong = await token(
        dev_idp, grant_type="authorization_code", code=code, redirect_uri=CALLBACK, code_verifier="w" * 43
    )
    right = await token(
        dev_idp, grant_type="authorization_code", code=code, redirect_uri=CALLBACK, code_verifier=VERIFIER
    )
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    assert right.json()["error"] == "invalid_grant"


async def test_missing_or_malformed_verifier_is_invalid_request(dev_idp: DevIdP) -> None:
    """No code_verifier, or one outside RFC 7636 §4.1 syntax, is invalid_request."""
    code = await code_for(dev_idp)
    missing = await token(dev_idp, grant_type="authorization_code", code=code, redirect_uri=CALLBACK)
    short = await token(
        dev_idp, grant_type="authorization_code", code=code, redirect_uri=CALLBACK, code_verifier="short"
    )
    assert [missing.json()["error"], short.json()["error"]] == ["invalid_request", "invalid_request"]


async def test_code_reuse_is_refused_and_revokes_what_the_code_issued(dev_idp: DevIdP) -> None:
    """RFC 6749 §4.1.2: a code used twice is invalid_grant, and the tokens it issued are revoked."""
    code = await code_for(dev_idp)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "code_verifier": VERIFIER}
    first = await token(dev_idp, **form)
    again = await token(dev_idp, **form)
    assert first.status_code == 200
    assert again.json()["error"] == "invalid_grant"
    assert [e.kind for e in dev_idp.events][-2:] == ["code_reuse_detected", "chain_revoked"]
    assert (await introspect(dev_idp, first.json()["access_token"])) == {"active": False}
    assert (await introspect(dev_idp, first.json()["refresh_token"])) == {"active": False}


async def test_code_is_short_lived(dev_idp: DevIdP) -> None:
    """A code older than code_ttl (60 s) is invalid_grant."""
    code = await code_for(dev_idp)
    assert isinstance(dev_idp.clock, ManualClock)
    dev_idp.clock.advance(61)
    response = await token(
        dev_idp, grant_type="authorization_code", code=code, redirect_uri=CALLBACK, code_verifier=VERIFIER
    )
    assert response.json()["error"] == "invalid_grant"


async def test_code_is_bound_to_client_and_redirect_uri(dev_idp: DevIdP) -> None:
    """Another client, or another redirect_uri than at /authorize, cannot redeem the code (§4.1.3)."""
    dev_idp.register_client("other", "other-secret", redirect_uris=[CALLBACK])
    code = await code_for(dev_idp)
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER}
    other = await token(dev_idp, ("other", "other-secret"), redirect_uri=CALLBACK, **form)
    elsewhere = await token(dev_idp, redirect_uri="http://127.0.0.1:8765/elsewhere", **form)
    omitted = await token(dev_idp, **form)
    assert [r.json()["error"] for r in (other, elsewhere, omitted)] == ["invalid_grant"] * 3
    assert (await token(dev_idp, redirect_uri=CALLBACK, **form)).status_code == 200


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain", "code_challenge": VERIFIER}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge": "tooshort"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "invalid_request"),
        ({"scope": "read launch:missiles"}, "invalid_scope"),
        ({"login_hint": "bad user"}, "invalid_request"),
    ],
    ids=["no-challenge", "plain", "no-method", "bad-challenge", "implicit", "no-response-type", "scope", "user"],
)
async def test_authorize_errors_are_redirected_with_state(dev_idp: DevIdP, params: dict[str, Any], error: str) -> None:
    """With a valid client and redirect URI, errors go back to the client (RFC 6749 §4.1.2.1), state included."""
    answer = redirect_params(await authorize(dev_idp, **params))
    assert answer["error"] == error
    assert answer["state"] == "xyz"
    assert "code" not in answer


async def test_authorize_refusals_for_clients_and_users(dev_idp_keys: KeyRing) -> None:
    """A client without the code grant gets unauthorized_client; a user outside users= gets access_denied."""
    idp = DevIdP(keys=dev_idp_keys, users=["alice"])
    idp.register_client("machine", "s", redirect_uris=[CALLBACK], grant_types=["client_credentials"])
    machine = redirect_params(await authorize(idp, client_id="machine"))
    denied = redirect_params(await authorize(idp, login_hint="mallory"))
    assert (machine["error"], denied["error"]) == ("unauthorized_client", "access_denied")


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": "nobody"},
        {"client_id": None},
        {"redirect_uri": "https://attacker.example/callback"},
        {"redirect_uri": "http://127.0.0.1.attacker.example/callback"},
        {"redirect_uri": "http://127.0.0.1:8765/callback/../steal"},
        {"redirect_uri": "http://[::1/callback"},
        {"redirect_uri": "http://127.0.0.1:99999/callback"},
    ],
    ids=["unknown-client", "no-client", "foreign-uri", "lookalike-host", "other-path", "unclosed-ipv6", "bad-port"],
)
async def test_authorize_never_redirects_to_an_unverified_uri(dev_idp: DevIdP, params: dict[str, Any]) -> None:
    """An unknown client or unregistered redirect_uri gets a 400 page, never a redirect (RFC 6749 §4.1.2.1);
    one urlsplit refuses (an unclosed IPv6 literal) is no exception (found by review: a 500)."""
    response = await authorize(dev_idp, **params)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.json()["error"] == "invalid_request"


async def test_loopback_redirect_uri_may_use_any_port(dev_idp: DevIdP) -> None:
    """A registered http://127.0.0.1/callback matches any port (RFC 8252 §7.3); a lone URI may be omitted."""
    response = await authorize(dev_idp, redirect_uri="http://127.0.0.1:50123/callback")
    assert response.headers["location"].startswith("http://127.0.0.1:50123/callback?code=")
    dev_idp.register_client("single", "s", redirect_uris=["https://app.example/cb?x=1"])
    omitted = await authorize(dev_idp, client_id="single", redirect_uri=None)
    location = urlsplit(omitted.headers["location"])
    assert (location.netloc, location.path) == ("app.example", "/cb")
    assert parse_qs(location.query)["x"] == ["1"]  # the registered query is kept (RFC 6749 §3.1.2)


async def test_authorize_accepts_post(dev_idp: DevIdP) -> None:
    """The authorization endpoint also takes a form POST (RFC 6749 §3.1)."""
    form = {
        "response_type": "code",
        "client_id": DEFAULT_CLIENT_ID,
        "redirect_uri": CALLBACK,
        "code_challenge": challenge(VERIFIER),
        "code_challenge_method": "S256",
    }
    async with dev_idp.http_client() as client:
        response = await client.post("/authorize", data=form)
    assert "code" in redirect_params(response)


# -- introspection and revocation ---------------------------------------------------------------


async def test_introspection_describes_an_active_user_token(dev_idp: DevIdP) -> None:
    """RFC 7662 §2.2: active, scope, client_id, sub, aud, iss, exp, iat, jti, token_type and username."""
    pair = dev_idp.issue_user_tokens("erin", ["read", "write"])
    answer = await introspect(dev_idp, pair.access_token)
    claims = verify(dev_idp, pair.access_token)
    assert answer == {**claims, "active": True, "token_type": "access_token", "username": "erin"}
    assert pair.refresh_token is not None
    refresh = await introspect(dev_idp, pair.refresh_token, token_type_hint="refresh_token")
    assert refresh["active"] is True
    assert refresh["token_type"] == "refresh_token"
    assert (refresh["scope"], refresh["sub"], refresh["client_id"]) == ("read write", "erin", DEFAULT_CLIENT_ID)


async def test_introspection_needs_client_authentication_and_a_token(dev_idp: DevIdP) -> None:
    """Introspection without credentials is 401 invalid_client; without a token, 400 invalid_request."""
    value = dev_idp.issue_token(scopes="read")
    anonymous = await post(dev_idp, "/introspect", {"token": value}, auth=None)
    empty = await post(dev_idp, "/introspect", {}, RESOURCE)
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "invalid_client")
    assert (empty.status_code, empty.json()["error"]) == (400, "invalid_request")


async def test_introspection_of_unknown_tokens_is_inactive(dev_idp: DevIdP) -> None:
    """Garbage, a foreign JWT and a token of another issuer all introspect as {"active": false}."""
    stranger = DevIdP(keys=KeyRing.generate())
    for value in ("garbage", stranger.issue_token(scopes="read"), "a.b.c"):
        assert (await introspect(dev_idp, value)) == {"active": False}


async def test_ordinary_clients_introspect_only_their_own_tokens(dev_idp: DevIdP) -> None:
    """A client without introspection rights sees its own tokens, and {"active": false} for others'."""
    dev_idp.register_client("other", "other-secret")
    mine = dev_idp.issue_token(scopes="read")
    theirs = dev_idp.issue_token(scopes="read", client_id="other")
    own = await post(dev_idp, "/introspect", {"token": mine}, CLIENT)
    foreign = await post(dev_idp, "/introspect", {"token": theirs}, CLIENT)
    assert own.json()["active"] is True
    assert foreign.json() == {"active": False}


async def test_revoking_an_access_token(dev_idp: DevIdP) -> None:
    """RFC 7009: 200, then inactive at introspection; its JWT is listed by jti; a guard's @sensitive refuses it."""
    pair = dev_idp.issue_user_tokens("alice", ["read"])
    response = await post(dev_idp, "/revoke", {"token": pair.access_token, "token_type_hint": "refresh_token"})
    assert response.status_code == 200
    assert (await introspect(dev_idp, pair.access_token)) == {"active": False}
    assert verify(dev_idp, pair.access_token)["jti"] in dev_idp.revoked_jtis
    assert pair.refresh_token is not None
    assert (await introspect(dev_idp, pair.refresh_token))["active"] is True  # only the access token went
    async with guarded(dev_idp) as api:
        assert (await api.get("/read", headers=bearer(pair.access_token))).status_code == 200  # local: no news
        assert (await api.get("/vault", headers=bearer(pair.access_token))).status_code == 401


async def test_revocation_answers_200_for_unknown_tokens_and_others_tokens(dev_idp: DevIdP) -> None:
    """Unknown tokens are 200 (RFC 7009 §2.2); another client's token is left alone; bad requests still fail."""
    dev_idp.register_client("other", "other-secret")
    theirs = dev_idp.issue_token(scopes="read", client_id="other")
    unknown = await post(dev_idp, "/revoke", {"token": "never-issued"})
    foreign = await post(dev_idp, "/revoke", {"token": theirs})
    assert unknown.status_code == foreign.status_code == 200
    assert (await introspect(dev_idp, theirs))["active"] is True
    assert (await post(dev_idp, "/revoke", {"token": theirs}, auth=None)).status_code == 401
    assert (await post(dev_idp, "/revoke", {})).json()["error"] == "invalid_request"


# -- storage --------------------------------------------------------------------------------------


async def test_storage_is_bounded(dev_idp_keys: KeyRing) -> None:
    """With max_entries=3, a fourth token evicts the oldest, which then introspects as inactive."""
    idp = DevIdP(keys=dev_idp_keys, max_entries=3, clock=ManualClock())
    tokens = [idp.issue_token(scopes="read", token_format="opaque") for _ in range(5)]
    assert idp.stored()["access_tokens"] == 3
    assert idp.stored()["grants"] == 3
    assert (await introspect(idp, tokens[0])) == {"active": False}
    assert (await introspect(idp, tokens[-1]))["active"] is True
    idp.issue_user_tokens("alice", ["read"])
    assert idp.stored()["refresh_tokens"] == 1


def test_storage_expires_entries_by_the_clock(dev_idp: DevIdP) -> None:
    """Codes, tokens, grants and revoked jtis are dropped once the clock passes their expiry."""
    pair = dev_idp.issue_user_tokens("alice", ["read"])
    dev_idp.revoke(pair.access_token)
    assert dev_idp.stored() == {
        "codes": 0,
        "access_tokens": 1,
        "refresh_tokens": 1,
        "grants": 1,
        "revoked_jtis": 1,
    }
    assert isinstance(dev_idp.clock, ManualClock)
    dev_idp.clock.advance(301)
    assert dev_idp.stored()["access_tokens"] == 0
    assert dev_idp.stored()["revoked_jtis"] == 0
    dev_idp.clock.advance(86_400)
    assert sum(dev_idp.stored().values()) == 0


def test_events_are_bounded(dev_idp_keys: KeyRing) -> None:
    """The event log keeps the last max_events entries."""
    idp = DevIdP(keys=dev_idp_keys, max_events=2)
    for _ in range(4):
        idp.issue_token(scopes="read")
    assert len(idp.events) == 2
    idp.clear_events()
    assert idp.events == []


# -- Python API and serving ----------------------------------------------------------------------


def test_python_refresh_raises_oauth_error(dev_idp: DevIdP) -> None:
    """DevIdP.refresh rotates like the endpoint and raises OAuthError(invalid_grant) for a bad token."""
    pair = dev_idp.issue_user_tokens("alice", "read write")
    assert pair.refresh_token is not None
    narrowed = dev_idp.refresh(pair.refresh_token, scopes=["read"])
    assert narrowed.scope == "read"
    with pytest.raises(OAuthError) as caught:
        dev_idp.refresh("not-a-token")
    assert caught.value.error == "invalid_grant"
    assert caught.value.status_code == 400


def test_server_is_configured_from_the_issuer(dev_idp_keys: KeyRing) -> None:
    """server() builds a uvicorn server bound to the issuer's host and port, serving idp.app."""
    idp = DevIdP.local(9123, keys=dev_idp_keys)
    server = idp.server()
    assert (server.config.host, server.config.port, server.config.app) == ("127.0.0.1", 9123, idp.app)
    assert idp.server("0.0.0.0", 9200).config.port == 9200


def test_the_in_process_issuer_is_not_served_on_a_port(dev_idp: DevIdP) -> None:
    """server() refuses the default in-process issuer, whose URL no client could reach on a port."""
    with pytest.raises(ConfigurationError, match=r"DevIdP\.local"):
        dev_idp.server(port=9000)


def test_server_without_uvicorn_says_how_to_install_it(dev_idp: DevIdP, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without uvicorn, server() raises ConfigurationError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ConfigurationError, match=r"tokenguard-asgi\[server\]"):
        DevIdP.local(9123, keys=dev_idp.keys).server()
