"""The DevIdP's public clients (RFC 6749 §2.1, OAuth 2.1 §2.1) and CORS, and `tokenguard dev-idp`'s dev-spa.

Driven over HTTP through the DevIdP's real ASGI app, by Authlib's OAuth client configured as a
public client (``token_endpoint_auth_method="none"``, PKCE S256) where a client is involved; the
command is run as a subprocess on a loopback port where serving is what is tested.
"""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import httpx2
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client

from tokenguard import ConfigurationError
from tokenguard.cli import main
from tokenguard.cli._devidp import SPA_CLIENT_ID, SPA_REDIRECT_URIS, _build, _describe
from tokenguard.cli._output import Printer
from tokenguard.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_ISSUER,
    DEV_USER_GRANT,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
    KeyRing,
    OAuthError,
)

SPA = "spa"
CALLBACK = "http://127.0.0.1:5173/callback"
ORIGIN = "http://127.0.0.1:5173"
OTHER_ORIGIN = "http://127.0.0.1:6006"
VERIFIER = "v" * 20 + "-._~" + "0123456789abcdefghijKLMN"  # 48 unreserved characters (RFC 7636 §4.1)
RESOURCE = (RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET)
CORS_HEADERS = {"accept", "authorization", "content-type", "x-requested-with"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def idp(dev_idp: DevIdP) -> DevIdP:
    """The plugin's DevIdP with a public client ``spa`` (a single-page app on loopback)."""
    dev_idp.register_client(SPA, redirect_uris=["http://127.0.0.1/callback"], scopes=["read", "write"])
    return dev_idp


@pytest.fixture
def cors_idp(dev_idp_keys: KeyRing) -> DevIdP:
    """A DevIdP that lets the browser app on ORIGIN call it, with the public client ``spa``."""
    served = DevIdP(keys=dev_idp_keys, cors_origins=[ORIGIN])
    served.register_client(SPA, redirect_uris=["http://127.0.0.1/callback"])
    return served


def challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


async def send(idp: DevIdP, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with idp.http_client() as client:
        return await client.request(method, path, **kwargs)


async def token(idp: DevIdP, form: Mapping[str, str], auth: Any = None, **kwargs: Any) -> httpx.Response:
    return await send(idp, "POST", "/token", data=dict(form), auth=auth, **kwargs)


async def introspect(idp: DevIdP, value: str) -> dict[str, Any]:
    response = await send(idp, "POST", "/introspect", data={"token": value}, auth=RESOURCE)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


async def code_for(idp: DevIdP, client_id: str = SPA, redirect_uri: str = CALLBACK, **params: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": challenge(VERIFIER),
        "code_challenge_method": "S256",
        **params,
    }
    response = await send(idp, "GET", "/authorize?" + urlencode(query))
    assert response.status_code == 302, response.text
    answer = parse_qs(urlsplit(response.headers["location"]).query)
    assert "code" in answer, answer
    return answer["code"][0]


async def public_tokens(idp: DevIdP, client_id: str = SPA, **params: str) -> dict[str, Any]:
    """Code + PKCE as a public client: client_id in the form, no secret."""
    code = await code_for(idp, client_id, **params)
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER}
    response = await token(idp, {**form, "redirect_uri": CALLBACK, "client_id": client_id})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def public_client(idp: DevIdP, **options: Any) -> AsyncOAuth2Client:
    """Authlib's httpx client as a public client with PKCE, reaching ``idp`` in-process."""
    return AsyncOAuth2Client(
        SPA,
        token_endpoint_auth_method="none",
        code_challenge_method="S256",
        redirect_uri=CALLBACK,
        transport=httpx2.ASGITransport(app=idp.app),
        **options,
    )


async def authlib_login(client: AsyncOAuth2Client, idp: DevIdP, **params: str) -> dict[str, Any]:
    """Authorization code + PKCE S256 with Authlib, following the auto-approved redirect by hand."""
    verifier = generate_token(64)
    url, state = client.create_authorization_url(idp.endpoint("authorize"), code_verifier=verifier, **params)
    answer = await client.request("GET", url, withhold_token=True)
    assert answer.status_code == 302
    location = answer.headers["location"]
    first: dict[str, Any] = await client.fetch_token(
        idp.endpoint("token"), authorization_response=location, code_verifier=verifier, state=state
    )
    return first


# -- public clients: registration ---------------------------------------------------------------


def test_a_client_without_a_secret_is_public_with_the_two_user_grants(idp: DevIdP) -> None:
    """register_client(id) makes a public client: method "none", authorization_code and refresh_token only."""
    spa = idp.clients[SPA]
    assert spa.public
    assert spa.client_secret is None
    assert spa.token_endpoint_auth_method == "none"
    assert spa.grant_types == {"authorization_code", "refresh_token"}
    assert spa.introspection is False
    confidential = idp.clients[DEFAULT_CLIENT_ID]
    assert (confidential.public, confidential.token_endpoint_auth_method) == (False, "client_secret_basic")
    assert DEFAULT_CLIENT_SECRET not in repr(confidential)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"grant_types": ["authorization_code", "client_credentials"]}, "may use only"),
        ({"grant_types": [DEV_USER_GRANT]}, "may use only"),
        ({"introspection": True, "grant_types": []}, "may not introspect"),
        ({"redirect_uris": []}, "give redirect_uris"),
        ({"client_secret": ""}, "or None for a public client"),
    ],
    ids=["client-credentials", "dev-user", "introspection", "no-redirect-uri", "empty-secret"],
)
def test_public_client_registration_refuses_what_it_may_not_do(
    dev_idp: DevIdP, options: dict[str, Any], message: str
) -> None:
    """A public client with a machine grant, introspection, no redirect URI, or an empty secret is refused."""
    settings: dict[str, Any] = {"redirect_uris": [CALLBACK], **options}
    with pytest.raises(ConfigurationError, match=message):
        dev_idp.register_client(SPA, **settings)
    assert SPA not in dev_idp.clients


# -- public clients: the token endpoint ---------------------------------------------------------


@pytest.mark.anyio
async def test_authlib_public_client_runs_pkce_and_refresh_rotates_and_a_replay_revokes_the_chain(
    idp: DevIdP,
) -> None:
    """Authlib (auth method none, PKCE S256) signs in and refreshes; every refresh rotates; a replay kills all."""
    async with public_client(idp, scope="read") as client:
        first = await authlib_login(client, idp, login_hint="bob")
        second = await client.refresh_token(idp.endpoint("token"))
        third = await client.refresh_token(idp.endpoint("token"))
    assert first["scope"] == "read"
    grant = idp.grant_of(third["refresh_token"])
    assert grant is not None
    assert (grant.client_id, grant.subject, grant.kind) == (SPA, "bob", "authorization_code")
    # OAuth 2.1 §4.3.1: each refresh issued a new refresh token and used up the one it was given.
    assert len({first["refresh_token"], second["refresh_token"], third["refresh_token"]}) == 3
    assert [state.status for state in grant.refresh_tokens] == ["used", "used", "active"]
    assert (await introspect(idp, third["access_token"]))["client_id"] == SPA

    replay = await token(
        idp, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": SPA}
    )
    assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
    assert grant.revoked_reason == "refresh_token_replay"
    for issued in (first, second, third):
        assert (await introspect(idp, issued["refresh_token"]))["active"] is False
        assert (await introspect(idp, issued["access_token"]))["active"] is False


@pytest.mark.anyio
async def test_public_client_identifies_with_client_id_in_the_form_only(idp: DevIdP) -> None:
    """The form's client_id is all a public client sends; the tokens name it as their client."""
    tokens = await public_tokens(idp)
    assert tokens["token_type"] == "Bearer"
    assert tokens["refresh_token"]
    assert (await introspect(idp, tokens["access_token"]))["client_id"] == SPA
    issued = [event for event in idp.events if event.kind == "issued"]
    assert [(event.client_id, event.detail["grant_type"]) for event in issued] == [(SPA, "authorization_code")]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("auth", "form"),
    [
        ((SPA, "guessed-secret"), {}),
        ((SPA, ""), {}),
        (None, {"client_id": SPA, "client_secret": "guessed-secret"}),
    ],
    ids=["basic", "basic-empty-secret", "client-secret-post"],
)
async def test_public_client_presenting_a_secret_is_invalid_client(
    idp: DevIdP, auth: Any, form: dict[str, str]
) -> None:
    """A public client has no secret: one sent anyway, by Basic or in the body, is 401 invalid_client."""
    code = await code_for(idp)
    exchange = {"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER, "redirect_uri": CALLBACK}
    response = await token(idp, {**exchange, **form}, auth)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic realm=")
    assert not [event for event in idp.events if event.kind == "issued"]


@pytest.mark.anyio
@pytest.mark.parametrize("client_id", [DEFAULT_CLIENT_ID, RESOURCE_CLIENT_ID, "nobody"])
async def test_client_id_alone_is_invalid_client_unless_the_client_is_public(idp: DevIdP, client_id: str) -> None:
    """A confidential client (or an unknown one) sending only its client_id has not authenticated: 401."""
    response = await token(idp, {"grant_type": "client_credentials", "client_id": client_id})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    with pytest.raises(OAuthError) as refused:
        idp.authenticate_client(client_id, None)
    assert refused.value.error == "invalid_client"


@pytest.mark.anyio
async def test_public_client_may_not_use_client_credentials_or_the_dev_user_grant(idp: DevIdP) -> None:
    """client_credentials and the development user grant are unauthorized_client, even if its record is edited."""
    machine = await token(idp, {"grant_type": "client_credentials", "client_id": SPA})
    dev_user = await token(idp, {"grant_type": DEV_USER_GRANT, "username": "alice", "client_id": SPA})
    idp.clients[SPA].grant_types = frozenset({"client_credentials", "authorization_code", "refresh_token"})
    edited = await token(idp, {"grant_type": "client_credentials", "client_id": SPA})
    assert [(r.status_code, r.json()["error"]) for r in (machine, dev_user, edited)] == [
        (400, "unauthorized_client")
    ] * 3
    assert not [event for event in idp.events if event.kind == "issued"]


@pytest.mark.anyio
async def test_public_client_still_needs_pkce(idp: DevIdP) -> None:
    """Without a code_challenge the authorization request is refused (redirected with invalid_request)."""
    query = {"response_type": "code", "client_id": SPA, "redirect_uri": CALLBACK, "state": "s1"}
    response = await send(idp, "GET", "/authorize?" + urlencode(query))
    answer = parse_qs(urlsplit(response.headers["location"]).query)
    assert answer["error"] == ["invalid_request"]
    assert "code" not in answer


@pytest.mark.anyio
async def test_public_clients_refresh_tokens_are_bound_to_it(idp: DevIdP) -> None:
    """Another public client, or a confidential one, presenting spa's refresh token gets invalid_grant."""
    idp.register_client("other-spa", redirect_uris=[CALLBACK])
    tokens = await public_tokens(idp)
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    other = await token(idp, {**refresh, "client_id": "other-spa"})
    confidential = await token(idp, refresh, (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    assert [(r.status_code, r.json()["error"]) for r in (other, confidential)] == [(400, "invalid_grant")] * 2
    mine = await token(idp, {**refresh, "client_id": SPA})
    assert mine.status_code == 200


# -- public clients: introspection and revocation -----------------------------------------------


@pytest.mark.anyio
async def test_public_client_may_not_introspect(idp: DevIdP) -> None:
    """/introspect with a public client's client_id is 400 unauthorized_client and describes nothing."""
    tokens = await public_tokens(idp)
    response = await send(idp, "POST", "/introspect", data={"token": tokens["access_token"], "client_id": SPA})
    assert response.status_code == 400
    assert response.json()["error"] == "unauthorized_client"
    assert "active" not in response.json()
    with pytest.raises(OAuthError) as refused:
        idp.introspect(tokens["access_token"], client_id=SPA)
    assert refused.value.error == "unauthorized_client"


@pytest.mark.anyio
async def test_public_client_revokes_its_own_refresh_token_with_client_id_alone(idp: DevIdP) -> None:
    """RFC 7009 §2.1: a public client revokes with its client_id; the grant goes; others' tokens are untouched."""
    idp.register_client("other-spa", redirect_uris=[CALLBACK])
    mine, theirs = await public_tokens(idp), await public_tokens(idp, "other-spa")
    foreign = await send(idp, "POST", "/revoke", data={"token": theirs["refresh_token"], "client_id": SPA})
    own = await send(idp, "POST", "/revoke", data={"token": mine["refresh_token"], "client_id": SPA})
    assert (foreign.status_code, own.status_code) == (200, 200)
    assert (await introspect(idp, theirs["refresh_token"]))["active"] is True
    assert (await introspect(idp, mine["refresh_token"]))["active"] is False
    assert (await introspect(idp, mine["access_token"]))["active"] is False


@pytest.mark.anyio
async def test_authlib_public_client_revokes_its_token(idp: DevIdP) -> None:
    """Authlib's revoke_token as a public client (auth method none) interoperates with RFC 7009 revocation."""
    async with public_client(idp) as client:
        tokens = await authlib_login(client, idp)
        revoked = await client.revoke_token(idp.endpoint("revoke"), token=tokens["refresh_token"])
    assert revoked.status_code == 200
    grant = idp.grant_of(tokens["access_token"])
    assert grant is not None
    assert grant.revoked_reason == "refresh_token_revoked"


# -- CORS -----------------------------------------------------------------------------------------


def preflight_headers(method: str, origin: str = ORIGIN, headers: str = "authorization,content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/token", "POST"),
        ("/revoke", "POST"),
        ("/jwks", "GET"),
        ("/.well-known/oauth-authorization-server", "GET"),
        ("/.well-known/openid-configuration", "GET"),
    ],
)
async def test_cors_preflight_from_an_allowed_origin_is_answered(cors_idp: DevIdP, path: str, method: str) -> None:
    """A preflight from an allowed origin gets 200, that origin, the route's method and the four headers."""
    response = await send(cors_idp, "OPTIONS", path, headers=preflight_headers(method))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-methods"] == method
    allowed = {header.strip().lower() for header in response.headers["access-control-allow-headers"].split(",")}
    assert allowed >= CORS_HEADERS
    assert "Origin" in response.headers["vary"]
    assert int(response.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "headers", "refused"),
    [
        ("/token", preflight_headers("POST", origin=OTHER_ORIGIN), "origin"),
        ("/token", preflight_headers("PUT"), "method"),
        ("/jwks", preflight_headers("POST"), "method"),
        ("/token", preflight_headers("POST", headers="content-type,x-debug"), "headers"),
    ],
    ids=["other-origin", "put-on-token", "post-on-jwks", "unlisted-header"],
)
async def test_cors_preflight_refusals(cors_idp: DevIdP, path: str, headers: dict[str, str], refused: str) -> None:
    """Another origin, a method the route does not take, or an unlisted header: 400 and no allowance for it."""
    response = await send(cors_idp, "OPTIONS", path, headers=headers)
    assert response.status_code == 400
    assert refused in response.text
    if refused == "origin":
        assert "access-control-allow-origin" not in response.headers


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/introspect", "/authorize"])
async def test_cors_is_not_offered_on_introspect_or_authorize(cors_idp: DevIdP, path: str) -> None:
    """/introspect is for resource servers, /authorize is navigated to: no preflight answer, no allowance."""
    response = await send(cors_idp, "OPTIONS", path, headers=preflight_headers("POST"))
    assert response.status_code == 405
    assert "access-control-allow-origin" not in response.headers
    answer = await send(cors_idp, "POST", "/introspect", data={"token": "x"}, auth=RESOURCE, headers={"Origin": ORIGIN})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


@pytest.mark.anyio
async def test_cors_responses_name_allowed_origins_only(cors_idp: DevIdP) -> None:
    """Token answers (200 and errors alike), metadata and JWKS carry Access-Control-Allow-Origin for ORIGIN only."""
    tokens = await public_tokens(cors_idp)
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": SPA}
    ok = await token(cors_idp, refresh, headers={"Origin": ORIGIN})
    refused = await token(cors_idp, {"grant_type": "client_credentials", "client_id": SPA}, headers={"Origin": ORIGIN})
    unauthenticated = await token(cors_idp, {"grant_type": "client_credentials"}, headers={"Origin": ORIGIN})
    metadata = await send(cors_idp, "GET", "/.well-known/oauth-authorization-server", headers={"Origin": ORIGIN})
    jwks = await send(cors_idp, "GET", "/jwks", headers={"Origin": ORIGIN})
    revoke = await send(cors_idp, "POST", "/revoke", data={"token": "x", "client_id": SPA}, headers={"Origin": ORIGIN})
    answers = [ok, refused, unauthenticated, metadata, jwks, revoke]
    assert [r.status_code for r in answers] == [200, 400, 401, 200, 200, 200]
    assert all(r.headers["access-control-allow-origin"] == ORIGIN for r in answers)
    assert all("Origin" in r.headers["vary"] for r in answers)
    elsewhere = await send(cors_idp, "GET", "/jwks", headers={"Origin": OTHER_ORIGIN})
    assert elsewhere.status_code == 200
    assert "access-control-allow-origin" not in elsewhere.headers


@pytest.mark.anyio
async def test_cors_wildcard_allows_any_origin(dev_idp_keys: KeyRing) -> None:
    """cors_origins=["*"] (development): any origin's preflight and requests get Access-Control-Allow-Origin: *."""
    idp = DevIdP(keys=dev_idp_keys, cors_origins=["*"])
    preflight = await send(idp, "OPTIONS", "/token", headers=preflight_headers("POST", origin="http://localhost:3000"))
    minted = await token(
        idp,
        {"grant_type": "client_credentials"},
        (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
        headers={"Origin": "http://localhost:3000"},
    )
    assert (preflight.status_code, minted.status_code) == (200, 200)
    assert preflight.headers["access-control-allow-origin"] == minted.headers["access-control-allow-origin"] == "*"


@pytest.mark.anyio
async def test_cors_is_off_by_default(idp: DevIdP) -> None:
    """Without cors_origins a preflight is 405 and no response carries Access-Control-Allow-Origin."""
    assert idp.cors_origins == ()
    preflight = await send(idp, "OPTIONS", "/token", headers=preflight_headers("POST"))
    metadata = await send(idp, "GET", "/.well-known/oauth-authorization-server", headers={"Origin": ORIGIN})
    assert (preflight.status_code, metadata.status_code) == (405, 200)
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in metadata.headers


@pytest.mark.anyio
async def test_options_that_is_not_a_preflight_is_405(cors_idp: DevIdP) -> None:
    """An OPTIONS without Access-Control-Request-Method never reaches the token endpoint: 405."""
    response = await send(cors_idp, "OPTIONS", "/token", headers={"Origin": ORIGIN})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST, OPTIONS"
    assert not cors_idp.events


@pytest.mark.parametrize(
    "origins",
    [
        ["http://127.0.0.1:8000/"],
        ["http://127.0.0.1:8000/docs"],
        ["127.0.0.1:8000"],
        ["ftp://files.example"],
        ["http://user@127.0.0.1:8000"],
        ["http://127.0.0.1:99999"],
        ["http://127.0.0.1:8000?x"],
        [8000],
    ],
)
def test_cors_origins_are_checked_when_built(dev_idp_keys: KeyRing, origins: list[Any]) -> None:
    """A path, trailing slash, missing scheme, user info, bad port or non-string origin is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="origin"):
        DevIdP(keys=dev_idp_keys, cors_origins=origins)


def test_cors_origins_are_normalised(dev_idp_keys: KeyRing) -> None:
    """Origins are kept as browsers send them (lower-case host); a single string is one origin."""
    assert DevIdP(keys=dev_idp_keys, cors_origins=["HTTP://LocalHost:3000", "*"]).cors_origins == (
        "http://localhost:3000",
        "*",
    )
    assert DevIdP(keys=dev_idp_keys, cors_origins=ORIGIN).cors_origins == (ORIGIN,)


@pytest.mark.anyio
async def test_a_browser_app_completes_pkce_cross_origin_with_authlib(cors_idp: DevIdP) -> None:
    """A public client on ORIGIN (preflight, then code + PKCE, refresh, revoke) can read every answer it gets."""
    seen: list[httpx2.Response] = []

    async def keep(response: httpx2.Response) -> None:
        seen.append(response)

    preflight = await send(cors_idp, "OPTIONS", "/token", headers=preflight_headers("POST", headers="content-type"))
    assert preflight.status_code == 200
    async with public_client(cors_idp, headers={"Origin": ORIGIN}, event_hooks={"response": [keep]}) as client:
        tokens = await authlib_login(client, cors_idp)
        refreshed = await client.refresh_token(cors_idp.endpoint("token"))
        await client.revoke_token(cors_idp.endpoint("revoke"), token=refreshed["refresh_token"])
    browser_calls = [r for r in seen if urlsplit(str(r.url)).path in ("/token", "/revoke")]
    assert [(urlsplit(str(r.url)).path, r.status_code) for r in browser_calls] == [
        ("/token", 200),
        ("/token", 200),
        ("/revoke", 200),
    ]
    assert all(r.headers["access-control-allow-origin"] == ORIGIN for r in browser_calls)
    assert refreshed["refresh_token"] != tokens["refresh_token"]
    assert (await introspect(cors_idp, refreshed["access_token"]))["active"] is False


# -- `tokenguard dev-idp`: dev-spa and --cors-origin ----------------------------------------------


def test_dev_idp_registers_dev_spa_and_prints_it() -> None:
    """The command's DevIdP has the public client dev-spa (loopback redirects); the banner's table shows it."""
    idp = _build("127.0.0.1", 9000, None, None)
    spa = idp.clients[SPA_CLIENT_ID]
    assert spa.public
    assert spa.redirect_uris == SPA_REDIRECT_URIS
    assert "http://localhost/docs/oauth2-redirect" in SPA_REDIRECT_URIS
    stream = io.StringIO()
    _describe(Printer(stream), idp, "generated now", listen="http://127.0.0.1:9000")
    banner = stream.getvalue()
    assert "dev-spa     none (public)      authorization_code refresh_token; every scope" in banner
    assert "dev-client  dev-client-secret" in banner
    assert "dev-spa redirects to http://127.0.0.1 or http://localhost, any port" in banner
    assert "cors       off (--cors-origin ORIGIN" in banner


@pytest.mark.anyio
async def test_dev_idp_dev_spa_signs_in_on_any_loopback_port_with_cors(dev_idp_keys: KeyRing) -> None:
    """dev-spa completes code + PKCE from Swagger UI's redirect page on any port; --cors-origin enables CORS."""
    idp = _build("127.0.0.1", 9000, None, None, ("http://localhost:8000",))
    stream = io.StringIO()
    _describe(Printer(stream), idp, "generated now", listen="http://127.0.0.1:9000")
    assert "cors       http://localhost:8000 (token, revoke, metadata, jwks)" in stream.getvalue()
    redirect = "http://localhost:8000/docs/oauth2-redirect"
    code = await code_for(idp, SPA_CLIENT_ID, redirect)
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER, "redirect_uri": redirect}
    response = await token(idp, {**form, "client_id": SPA_CLIENT_ID}, headers={"Origin": "http://localhost:8000"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:8000"
    assert response.json()["refresh_token"]


@pytest.mark.parametrize("origin", ["http://127.0.0.1:8000/", "localhost:8000"])
def test_dev_idp_refuses_a_bad_cors_origin_before_binding(capsys: pytest.CaptureFixture[str], origin: str) -> None:
    """A malformed --cors-origin is a one-line error, exit 2, before any port is bound or banner printed."""
    code = main(["dev-idp", "--port", "0", "--cors-origin", origin, "--no-color"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("tokenguard dev-idp: error: --cors-origin: ")
    assert err.count("\n") == 1


def test_dev_idp_command_serves_dev_spa_with_cors() -> None:
    """`tokenguard dev-idp --cors-origin ORIGIN` on a port: dev-spa in the banner, CORS and PKCE over real HTTP."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenguard", "dev-idp", "--port", "0", "--cors-origin", ORIGIN, "--no-color"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # the socket is listening before the first line is printed
            lines.append(line)
            if line.startswith("Listening on"):
                break
        banner = "".join(lines)
        issuer = next(line.split()[1] for line in lines if line.strip().startswith("issuer"))
        assert "dev-spa     none (public)" in banner
        assert f"cors       {ORIGIN} (token, revoke, metadata, jwks)" in banner
        with httpx.Client(base_url=issuer, timeout=10) as http:
            preflight = http.options("/token", headers=preflight_headers("POST", headers="content-type"))
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == ORIGIN
            query = {
                "response_type": "code",
                "client_id": SPA_CLIENT_ID,
                "redirect_uri": CALLBACK,
                "code_challenge": challenge(VERIFIER),
                "code_challenge_method": "S256",
            }
            answer = http.get("/authorize", params=query)
            code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
            form = {"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER}
            minted = http.post(
                "/token",
                data={**form, "redirect_uri": CALLBACK, "client_id": SPA_CLIENT_ID},
                headers={"Origin": ORIGIN},
            )
        assert minted.status_code == 200
        assert minted.headers["access-control-allow-origin"] == ORIGIN
        assert minted.json()["refresh_token"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_metadata_lists_none_for_the_token_and_revocation_endpoints_only(dev_idp: DevIdP) -> None:
    """RFC 8414: "none" is advertised where public clients may call (token, revocation), not for introspection."""
    document = dev_idp.metadata()
    assert "none" in document["token_endpoint_auth_methods_supported"]
    assert "none" in document["revocation_endpoint_auth_methods_supported"]
    assert "none" not in document["introspection_endpoint_auth_methods_supported"]
    assert document["issuer"] == DEFAULT_ISSUER
