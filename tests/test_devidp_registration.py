"""The DevIdP's RFC 7591 dynamic client registration, and what an MCP client does with it.

Driven over HTTP through the DevIdP's real ASGI app: ``POST /register`` (its answers and every
RFC 7591 §3.2.2 refusal), then the registered client through /authorize (PKCE S256) and /token with
an RFC 8707 ``resource`` naming an MCP server, the JWT checked against the published JWKS. The
official ``mcp`` client's own discovery, registration and OAuth flow code is run against it too.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import jwt
import pytest
from examples.mcp_client import MemoryStorage
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.oauth2 import check_registration_usable
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    create_client_registration_request,
    create_oauth_metadata_request,
    handle_auth_metadata_response,
    handle_registration_response,
    validate_metadata_issuer,
)
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientMetadata,
    OAuthMetadata,
)
from pydantic import AnyUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tokenguard.cli._devidp import _build, _check_audiences
from tokenguard.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEV_USER_GRANT, DevIdP, KeyRing, OAuthError

pytestmark = pytest.mark.anyio

#: An MCP server on loopback, as ``tokenguard dev-idp --audience http://127.0.0.1:8000/mcp`` adds it.
MCP_SERVER = "http://127.0.0.1:8000/mcp"
#: Where an MCP client's local callback listens (RFC 8252 §7.3: a loopback redirect URI).
CALLBACK = "http://localhost:3030/callback"
VERIFIER = "m" * 20 + "-._~" + "0123456789abcdefghijKLMN"  # 48 unreserved characters (RFC 7636 §4.1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def idp(dev_idp: DevIdP) -> DevIdP:
    """The plugin's DevIdP, issuing tokens for the MCP server too."""
    dev_idp.add_audience(MCP_SERVER)
    return dev_idp


def challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


async def post_register(
    idp: DevIdP, body: Any = None, *, content: bytes | None = None, content_type: str = "application/json"
) -> httpx.Response:
    """POST /register with ``body`` as JSON (or raw ``content``), as a registering client sends it."""
    raw = content if content is not None else json.dumps(body).encode()
    async with idp.http_client() as client:
        return await client.post("/register", content=raw, headers={"Content-Type": content_type})


async def registered(idp: DevIdP, body: dict[str, Any]) -> dict[str, Any]:
    response = await post_register(idp, body)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json"
    answer: dict[str, Any] = response.json()
    return answer


def refused(response: httpx.Response, error: str) -> str:
    assert response.status_code == 400, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == error
    return str(response.json()["error_description"])


async def authorize(idp: DevIdP, client_id: str, **params: str) -> dict[str, str]:
    """GET /authorize as a browser follows it (PKCE S256, auto-approved); the redirect's query parameters."""
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": CALLBACK,
        "state": "st-1",
        "code_challenge": challenge(VERIFIER),
        "code_challenge_method": "S256",
        **params,
    }
    async with idp.http_client() as client:
        response = await client.get("/authorize", params=query)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(CALLBACK + "?")
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


async def token(idp: DevIdP, form: dict[str, str], auth: Any = None) -> httpx.Response:
    async with idp.http_client() as client:
        return await client.post("/token", data=form, auth=auth)


def code_form(code: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": VERIFIER,
        "redirect_uri": CALLBACK,
        **extra,
    }


def verified_claims(idp: DevIdP, value: str) -> dict[str, Any]:
    """A JWT access token's claims, verified against the published JWKS as a resource server would."""
    header = jwt.get_unverified_header(value)
    key = next(k for k in jwt.PyJWKSet.from_dict(idp.jwks()).keys if k.key_id == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        value, key.key, algorithms=[header["alg"]], options={"verify_aud": False}, issuer=idp.issuer
    )
    return claims


# -- the endpoint, advertised and answering --------------------------------------------------------------


async def test_the_metadata_names_the_registration_endpoint(idp: DevIdP) -> None:
    """RFC 8414 §2 registration_endpoint: {issuer}/register, in the served document too."""
    assert idp.endpoint("register") == f"{idp.issuer}/register"
    async with idp.http_client() as client:
        served = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert served["registration_endpoint"] == f"{idp.issuer}/register"
    assert idp.metadata()["registration_endpoint"] == served["registration_endpoint"]


async def test_a_public_client_registers_without_a_secret(idp: DevIdP) -> None:
    """token_endpoint_auth_method none: 201, a new client_id, no secret, the metadata echoed (RFC 7591 §3.2.1)."""
    before = set(idp.clients)
    answer = await registered(
        idp,
        {
            "redirect_uris": [CALLBACK],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "client_name": "My MCP client",
            "scope": "read write",
        },
    )
    assert answer == {
        "client_id": answer["client_id"],
        "client_id_issued_at": int(idp.clock()),
        "redirect_uris": [CALLBACK],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "client_name": "My MCP client",
        "scope": "admin read write",  # widened: see test_a_registered_client_may_step_up_beyond_its_first_scope
    }
    assert set(idp.clients) - before == {answer["client_id"]}
    client = idp.clients[answer["client_id"]]
    assert client.public
    assert client.scopes is None  # every supported scope (step-up), whatever the registration asked
    assert client.grant_types == {"authorization_code", "refresh_token"}
    assert idp.dynamic_clients == {answer["client_id"]}
    again = await registered(idp, {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"})
    assert again["client_id"] != answer["client_id"]


async def test_a_client_is_confidential_by_default_with_a_secret_that_never_expires(idp: DevIdP) -> None:
    """RFC 7591 §2 defaults: client_secret_basic, grant_types [authorization_code]; §3.2.1: expires_at 0."""
    answer = await registered(idp, {"redirect_uris": [CALLBACK]})
    assert answer["token_endpoint_auth_method"] == "client_secret_basic"
    assert answer["grant_types"] == ["authorization_code"]
    assert answer["response_types"] == ["code"]
    assert answer["client_secret_expires_at"] == 0
    assert len(answer["client_secret"]) >= 32
    assert "scope" not in answer
    assert "client_name" not in answer
    client = idp.clients[answer["client_id"]]
    assert client.client_secret == answer["client_secret"]
    assert client.scopes is None  # every supported scope
    assert idp.allowed_scopes(client) == idp.scopes
    post = await registered(idp, {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "client_secret_post"})
    assert post["token_endpoint_auth_method"] == "client_secret_post"
    assert post["client_secret"] != answer["client_secret"]


async def test_unknown_metadata_is_ignored_and_not_echoed(idp: DevIdP) -> None:
    """RFC 7591 §2: metadata the server does not understand is ignored (MCP clients send application_type)."""
    answer = await registered(
        idp,
        {
            "redirect_uris": [CALLBACK],
            "application_type": "native",
            "client_uri": "https://client.example",
            "software_id": "x",
            "x-vendor": {"nested": [1, 2]},
        },
    )
    assert not {"application_type", "client_uri", "software_id", "x-vendor"} & set(answer)
    assert answer["client_id"] in idp.clients


@pytest.mark.parametrize(
    "uri",
    ["https://app.example/cb", "http://127.0.0.1:5555/cb", "http://[::1]/cb", "http://localhost/cb?x=1", CALLBACK],
)
async def test_https_and_loopback_redirect_uris_are_accepted(idp: DevIdP, uri: str) -> None:
    answer = await registered(idp, {"redirect_uris": [uri], "token_endpoint_auth_method": "none"})
    assert idp.clients[answer["client_id"]].redirect_uris == (uri,)


# -- refusals (RFC 7591 §3.2.2) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect_uris",
    [
        pytest.param(None, id="missing"),
        pytest.param([], id="empty"),
        pytest.param(["http://app.example/cb"], id="plain-http-off-loopback"),
        pytest.param(["https://app.example/cb#frag"], id="fragment"),
        pytest.param(["/relative/cb"], id="relative"),
        pytest.param(["com.example.app:/callback"], id="private-use-scheme"),
        pytest.param(["https://user@app.example/cb"], id="userinfo"),
        pytest.param(["http://127.0.0.1:99999/cb"], id="bad-port"),
        pytest.param(["https://app.example/c b"], id="space"),
        pytest.param(["ftp://app.example/cb"], id="other-scheme"),
        pytest.param([CALLBACK, "http://evil.example/cb"], id="one-bad-of-two"),
        pytest.param([f"http://127.0.0.1/cb{i}" for i in range(17)], id="too-many"),
        pytest.param(["https://app.example/" + "a" * 2100], id="too-long"),
    ],
)
async def test_bad_redirect_uris_are_invalid_redirect_uri(idp: DevIdP, redirect_uris: list[str] | None) -> None:
    before = dict(idp.clients)
    body: dict[str, Any] = {"token_endpoint_auth_method": "none"}
    if redirect_uris is not None:
        body["redirect_uris"] = redirect_uris
    refused(await post_register(idp, body), "invalid_redirect_uri")
    assert idp.clients == before
    assert idp.dynamic_clients == frozenset()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"token_endpoint_auth_method": "private_key_jwt"}, "token_endpoint_auth_method must be one of"),
        ({"token_endpoint_auth_method": "tls_client_auth"}, "token_endpoint_auth_method must be one of"),
        ({"grant_types": ["client_credentials"]}, "not client_credentials"),
        ({"grant_types": ["authorization_code", DEV_USER_GRANT]}, f"not {DEV_USER_GRANT}"),
        ({"grant_types": ["implicit"]}, "not implicit"),
        ({"grant_types": ["refresh_token"]}, "must include authorization_code"),
        ({"grant_types": []}, "must include authorization_code"),
        ({"response_types": ["token"]}, 'response_types must be ["code"]'),
        ({"response_types": ["code", "id_token"]}, 'response_types must be ["code"]'),
        ({"scope": "read unheard-of"}, "Unknown scope: unheard-of"),
        ({"scope": "read  write"}, "scope must be space-separated scope tokens"),
        ({"scope": 'read "quoted"'}, "scope must be space-separated scope tokens"),
        ({"client_name": "x" * 300}, "client_name must be printable"),
        ({"client_name": "line\nbreak"}, "client_name must be printable"),
        # Wrong JSON types (RFC 7591 §2 says what each member is).
        ({"scope": ["read"]}, "scope must be a non-empty string"),
        ({"scope": ""}, "scope must be a non-empty string"),
        ({"token_endpoint_auth_method": 1}, "token_endpoint_auth_method must be a non-empty string"),
        ({"grant_types": "authorization_code"}, "grant_types must be an array of non-empty strings"),
        ({"response_types": [1]}, "response_types must be an array of non-empty strings"),
        ({"client_name": {"en": "x"}}, "client_name must be a non-empty string"),
        ({"redirect_uris": CALLBACK}, "redirect_uris must be an array of non-empty strings"),
        ({"redirect_uris": [CALLBACK, 7]}, "redirect_uris must be an array of non-empty strings"),
    ],
)
async def test_bad_metadata_is_invalid_client_metadata(idp: DevIdP, body: dict[str, Any], says: str) -> None:
    before = dict(idp.clients)
    scopes = idp.scopes
    description = refused(await post_register(idp, {"redirect_uris": [CALLBACK], **body}), "invalid_client_metadata")
    assert says in description
    assert idp.clients == before
    assert idp.scopes == scopes  # a refused (or any) registration never adds a supported scope


@pytest.mark.parametrize(
    ("content", "content_type", "says"),
    [
        (b"[]", "application/json", "must be a JSON object"),
        (b'"just a string"', "application/json", "must be a JSON object"),
        (b"{not json", "application/json", "must be a JSON object"),
        (b'{"redirect_uris": [], "redirect_uris": ["http://127.0.0.1/cb"]}', "application/json", "JSON object"),
        (b'{"redirect_uris": ["http://127.0.0.1/cb"]}', "text/plain", "must be application/json"),
        (b"redirect_uris=http%3A%2F%2F127.0.0.1%2Fcb", "application/x-www-form-urlencoded", "application/json"),
        (b'{"client_name": "' + b"x" * 70_000 + b'"}', "application/json", "too large"),
    ],
    ids=["array", "string", "malformed", "duplicate-member", "text-plain", "form", "too-large"],
)
async def test_a_body_that_is_not_one_json_object_is_invalid_client_metadata(
    idp: DevIdP, content: bytes, content_type: str, says: str
) -> None:
    """RFC 7591 §3.1: the body is a JSON object, sent as application/json; capped like every other body."""
    before = dict(idp.clients)
    description = refused(
        await post_register(idp, content=content, content_type=content_type), "invalid_client_metadata"
    )
    assert says in description
    assert idp.clients == before


async def test_register_takes_post_only(idp: DevIdP) -> None:
    async with idp.http_client() as client:
        response = await client.get("/register")
    assert response.status_code == 405


async def test_the_python_api_refuses_with_oauth_errors(idp: DevIdP) -> None:
    """register_dynamic_client raises the same OAuthError the endpoint answers with."""
    with pytest.raises(OAuthError) as caught:
        idp.register_dynamic_client({"redirect_uris": ["http://app.example/cb"]})
    assert caught.value.error == "invalid_redirect_uri"
    with pytest.raises(OAuthError) as caught:
        idp.register_dynamic_client(["not", "a", "mapping"])  # type: ignore[arg-type]
    assert caught.value.error == "invalid_client_metadata"
    answer = idp.register_dynamic_client({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"})
    assert idp.clients[answer["client_id"]].public


# -- bounds ------------------------------------------------------------------------------------------------


async def test_dynamic_registrations_are_bounded_by_max_entries(dev_idp_keys: KeyRing) -> None:
    """At most max_entries dynamically registered clients; the next is refused and registers nothing."""
    bounded = DevIdP(keys=dev_idp_keys, max_entries=3)
    body = {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}
    ids = [(await registered(bounded, body))["client_id"] for _ in range(3)]
    assert bounded.dynamic_clients == set(ids)
    before = dict(bounded.clients)
    description = refused(await post_register(bounded, body), "invalid_client_metadata")
    assert "at most 3 dynamically registered clients" in description
    assert bounded.clients == before
    # Clients the DevIdP's owner registers are not counted, nor limited by this bound.
    bounded.register_client("owner-app", redirect_uris=[CALLBACK])
    assert "owner-app" in bounded.clients
    assert len(bounded.dynamic_clients) == 3


async def test_a_registered_client_may_step_up_beyond_its_first_scope(idp: DevIdP) -> None:
    """MCP 2025-11-25 step-up: a client registers with the first challenge's scope and later asks for
    more; the registration is widened to every supported scope (RFC 7591 §3.2.1), unknown ones refused."""
    registration = await registered(
        idp, {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none", "scope": "read"}
    )
    assert registration["scope"] == "admin read write"
    assert "code" in await authorize(idp, registration["client_id"], scope="read write")
    assert (await authorize(idp, registration["client_id"], scope="read delete"))["error"] == "invalid_scope"


# -- the registered clients, through the code grant with resource= --------------------------------------------


async def test_a_public_client_gets_a_token_for_the_mcp_server(idp: DevIdP) -> None:
    """Register (none), authorize (PKCE S256, resource=MCP server), exchange, refresh: aud is the MCP server."""
    client_id = (
        await registered(
            idp,
            {
                "redirect_uris": [CALLBACK],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "scope": "read",
            },
        )
    )["client_id"]
    answer = await authorize(idp, client_id, resource=MCP_SERVER, scope="read")
    assert answer["state"] == "st-1"
    assert answer["iss"] == idp.issuer  # RFC 9207, which the mcp client checks
    response = await token(idp, code_form(answer["code"], client_id=client_id, resource=MCP_SERVER))
    assert response.status_code == 200, response.text
    tokens = response.json()
    claims = verified_claims(idp, tokens["access_token"])
    assert claims["aud"] == MCP_SERVER
    assert claims["client_id"] == client_id
    assert claims["scope"] == "read"
    assert claims["sub"] == "alice"
    # Its refresh token rotates and stays for the MCP server.
    refreshed = await token(
        idp, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client_id}
    )
    assert refreshed.status_code == 200, refreshed.text
    assert verified_claims(idp, refreshed.json()["access_token"])["aud"] == MCP_SERVER
    assert refreshed.json()["refresh_token"] != tokens["refresh_token"]
    # A public client registered dynamically gets no grant it did not (and could not) ask for.
    refused_cc = await token(idp, {"grant_type": "client_credentials", "client_id": client_id})
    assert refused_cc.status_code == 400
    assert refused_cc.json()["error"] == "unauthorized_client"


async def test_a_public_client_without_refresh_token_gets_none(idp: DevIdP) -> None:
    """grant_types [authorization_code] (the RFC 7591 default): an access token, no refresh token."""
    client_id = (await registered(idp, {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}))[
        "client_id"
    ]
    code = (await authorize(idp, client_id, resource=MCP_SERVER))["code"]
    response = await token(idp, code_form(code, client_id=client_id))
    assert response.status_code == 200, response.text
    assert "refresh_token" not in response.json()
    # Without resource at the token endpoint, the token is for the one the authorization named.
    assert verified_claims(idp, response.json()["access_token"])["aud"] == MCP_SERVER


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_a_confidential_client_authenticates_with_its_secret(idp: DevIdP, method: str) -> None:
    """The issued secret authenticates at the token endpoint; a wrong one, or none, is 401 invalid_client."""
    answer = await registered(idp, {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": method})
    client_id, secret = answer["client_id"], answer["client_secret"]

    async def exchange(credentials: str | None) -> httpx.Response:
        code = (await authorize(idp, client_id, resource=MCP_SERVER))["code"]
        form = code_form(code, resource=MCP_SERVER)
        if credentials is None:
            return await token(idp, {**form, "client_id": client_id})
        if method == "client_secret_post":
            return await token(idp, {**form, "client_id": client_id, "client_secret": credentials})
        return await token(idp, form, auth=(client_id, credentials))

    wrong = await exchange(secret + "x")
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    bare = await exchange(None)  # a confidential client MUST authenticate (RFC 6749 §2.3)
    assert bare.status_code == 401
    good = await exchange(secret)
    assert good.status_code == 200, good.text
    assert verified_claims(idp, good.json()["access_token"])["aud"] == MCP_SERVER


# -- RFC 8707 resource: the same canonical URI as a registered audience ----------------------------------------


@pytest.mark.parametrize(
    "spelling",
    ["HTTP://127.0.0.1:8000/mcp", "Http://127.0.0.1:8000/mcp", MCP_SERVER],
)
async def test_a_canonically_equal_resource_gets_the_registered_audience(idp: DevIdP, spelling: str) -> None:
    """RFC 3986 §6.2.2.1: scheme and host are case-insensitive; the token names the audience as registered."""
    client_id = (await registered(idp, {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}))[
        "client_id"
    ]
    code = (await authorize(idp, client_id, resource=spelling))["code"]
    # The token request may spell it either way: both name the one registered audience.
    response = await token(idp, code_form(code, client_id=client_id, resource="HTTP://127.0.0.1:8000/mcp"))
    assert response.status_code == 200, response.text
    assert verified_claims(idp, response.json()["access_token"])["aud"] == MCP_SERVER


async def test_a_default_port_and_root_slash_are_the_same_resource(idp: DevIdP) -> None:
    """RFC 3986 §6.2.3: https://API.example:443/ is https://api.example; pydantic adds the root slash MCP sends."""
    idp.add_audience("https://api.example")
    response = await token(
        idp,
        {"grant_type": "client_credentials", "resource": "https://API.example:443/"},
        auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
    )
    assert response.status_code == 200, response.text
    assert verified_claims(idp, response.json()["access_token"])["aud"] == "https://api.example"


@pytest.mark.parametrize(
    "other",
    [
        "http://127.0.0.1:8000/mcp/",  # paths are compared exactly: /mcp and /mcp/ may be two resources
        "http://127.0.0.1:8000/MCP",
        "http://127.0.0.1:8001/mcp",
        "https://127.0.0.1:8000/mcp",
        "http://localhost:8000/mcp",
    ],
)
async def test_another_resource_is_still_invalid_target(idp: DevIdP, other: str) -> None:
    response = await token(
        idp, {"grant_type": "client_credentials", "resource": other}, auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


async def test_a_non_http_audience_matches_exactly_only(idp: DevIdP) -> None:
    idp.add_audience("urn:example:Ledger")
    auth = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
    exact = await token(idp, {"grant_type": "client_credentials", "resource": "urn:example:Ledger"}, auth=auth)
    assert verified_claims(idp, exact.json()["access_token"])["aud"] == "urn:example:Ledger"
    other = await token(idp, {"grant_type": "client_credentials", "resource": "URN:example:ledger"}, auth=auth)
    assert other.json()["error"] == "invalid_target"


# -- the official mcp client's own code ------------------------------------------------------------------------


def mcp_http(app: Any) -> httpx2.AsyncClient:
    """An httpx2 client (what the mcp SDK uses) reaching ``app`` in-process, redirects not followed."""
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))


async def mcp_discover(app: Any, issuer: str, server_url: str) -> OAuthMetadata:
    """The authorization server metadata exactly as the mcp client discovers it: its URLs, in its order."""
    async with mcp_http(app) as client:
        for url in build_oauth_authorization_server_metadata_discovery_urls(issuer, server_url):
            ok, metadata = await handle_auth_metadata_response(await client.send(create_oauth_metadata_request(url)))
            assert ok, url
            if metadata is not None:
                validate_metadata_issuer(metadata, issuer)
                return metadata
    raise AssertionError("no metadata at any URL the mcp client tries")


@pytest.mark.parametrize("path", ["", "/tenant-1"])
async def test_the_mcp_client_finds_the_metadata_and_registration_endpoint(dev_idp_keys: KeyRing, path: str) -> None:
    """build_oauth_authorization_server_metadata_discovery_urls: the DevIdP serves what it fetches, path or not."""
    issuer = "https://idp.tokenguard.test" + path
    served = DevIdP(issuer, keys=dev_idp_keys)
    metadata = await mcp_discover(served.app, issuer, MCP_SERVER)
    assert str(metadata.issuer) == issuer
    assert str(metadata.registration_endpoint) == f"{issuer}/register"
    # The legacy (2025-03-26) path, without protected resource metadata: the MCP server's own origin.
    async with mcp_http(served.app) as client:
        [legacy] = build_oauth_authorization_server_metadata_discovery_urls(None, "https://idp.tokenguard.test/mcp")
        ok, found = await handle_auth_metadata_response(await client.send(create_oauth_metadata_request(legacy)))
    assert ok
    assert (found is not None) == (path == "")  # a path issuer's metadata is under its path (RFC 8414 §3.1)


@pytest.mark.parametrize("auth_method", [None, "none", "client_secret_post"])
async def test_the_mcp_clients_registration_request_and_parser(idp: DevIdP, auth_method: str | None) -> None:
    """create_client_registration_request -> POST /register -> handle_registration_response, then a token."""
    metadata = await mcp_discover(idp.app, idp.issuer, MCP_SERVER)
    client_metadata = OAuthClientMetadata(
        redirect_uris=[AnyUrl(CALLBACK)],
        client_name="tokenguard test MCP client",
        scope="read write",
        token_endpoint_auth_method=auth_method,  # type: ignore[arg-type]
    )
    request = create_client_registration_request(metadata, client_metadata, "https://unused.example")
    assert str(request.url) == f"{idp.issuer}/register"
    async with mcp_http(idp.app) as client:
        response = await client.send(request)
    assert response.status_code == 201
    info = await handle_registration_response(response)
    check_registration_usable(info)  # the mcp client's own check that it can use this registration
    client_record = idp.clients[info.client_id]
    assert info.token_endpoint_auth_method == (auth_method or "client_secret_basic")
    assert info.client_secret == client_record.client_secret
    assert (info.client_secret is None) == (auth_method == "none")
    assert info.grant_types == ["authorization_code", "refresh_token"]  # the mcp client's default, kept
    assert info.scope == "admin read write"  # every supported scope, for step-up
    assert [str(uri) for uri in info.redirect_uris or []] == [CALLBACK]

    # The token request as the mcp client authenticates it (OAuthContext.prepare_token_auth).
    code = (await authorize(idp, info.client_id, resource=MCP_SERVER, scope="read"))["code"]
    provider = OAuthClientProvider(MCP_SERVER, client_metadata, MemoryStorage())
    provider.context.client_info = info
    form, headers = provider.context.prepare_token_auth(
        code_form(code, client_id=info.client_id, resource=MCP_SERVER), {}
    )
    async with idp.http_client() as client:
        exchanged = await client.post("/token", data=form, headers=headers)
    assert exchanged.status_code == 200, exchanged.text
    assert verified_claims(idp, exchanged.json()["access_token"])["aud"] == MCP_SERVER


async def test_the_mcp_client_runs_its_whole_oauth_flow_against_the_devidp(idp: DevIdP) -> None:
    """OAuthClientProvider end to end: 401 -> RFC 9728 metadata -> RFC 8414 discovery -> RFC 7591 registration
    -> /authorize (PKCE S256, resource) -> /token -> the MCP server accepts the JWT whose aud is its URL."""
    prm_url = "http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp"
    seen: list[str] = []

    async def mcp_endpoint(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            claims = verified_claims(idp, header.removeprefix("Bearer "))
            seen.append(claims["aud"])
            if claims["aud"] == MCP_SERVER:
                return JSONResponse({"ok": True, "client_id": claims["client_id"]})
        challenge_header = f'Bearer resource_metadata="{prm_url}"'
        return Response(status_code=401, headers={"WWW-Authenticate": challenge_header})

    async def protected_resource_metadata(request: Request) -> Response:
        # RFC 9728 §2: the MCP server names its resource identifier and authorization server.
        return JSONResponse(
            {"resource": MCP_SERVER, "authorization_servers": [idp.issuer], "scopes_supported": ["read"]}
        )

    mcp_server = Starlette(
        routes=[
            Route("/mcp", mcp_endpoint, methods=["GET", "POST"]),
            Route("/.well-known/oauth-protected-resource/mcp", protected_resource_metadata),
        ]
    )
    idp_host = urlsplit(idp.issuer).hostname

    async def network(scope: Scope, receive: Receive, send: Send) -> None:
        """Both servers on one in-process "network", told apart by Host."""
        host = dict(scope.get("headers", [])).get(b"host", b"").decode().split(":")[0]
        await (idp.app if host == idp_host else mcp_server)(scope, receive, send)

    redirect: dict[str, str] = {}

    async def redirect_handler(url: str) -> None:
        # The user's browser: /authorize auto-approves and redirects to the client's loopback callback.
        async with mcp_http(network) as browser:
            response = await browser.get(url)
        assert response.status_code == 302
        redirect["location"] = response.headers["location"]

    async def callback_handler() -> AuthorizationCodeResult:
        params = {name: values[0] for name, values in parse_qs(urlsplit(redirect["location"]).query).items()}
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    storage = MemoryStorage()
    provider = OAuthClientProvider(
        MCP_SERVER,
        OAuthClientMetadata(redirect_uris=[AnyUrl(CALLBACK)], client_name="mcp e2e"),
        storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=network), auth=provider) as client:
        response = await client.get(MCP_SERVER)
    assert response.status_code == 200, response.text
    assert storage.client_info is not None
    assert storage.client_info.client_id in idp.dynamic_clients
    assert response.json()["client_id"] == storage.client_info.client_id
    assert redirect["location"].startswith(CALLBACK + "?code=")
    assert seen == [MCP_SERVER]
    assert storage.tokens is not None
    assert storage.tokens.refresh_token is not None  # the mcp client registered for refresh_token too


# -- tokenguard dev-idp ------------------------------------------------------------------------------------


def test_the_cli_audience_option_takes_an_mcp_server_url() -> None:
    """`tokenguard dev-idp --audience http://127.0.0.1:8000/mcp` (the existing option): the DevIdP it builds
    issues tokens for it, and advertises /register."""
    _check_audiences((MCP_SERVER,))  # what main() checks before binding: accepted
    built = _build("127.0.0.1", 9000, None, None, (), (MCP_SERVER,))
    assert MCP_SERVER in built.audiences
    assert built.metadata()["registration_endpoint"] == "http://127.0.0.1:9000/register"
    answer = built.register_dynamic_client({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"})
    assert built.clients[answer["client_id"]].public
