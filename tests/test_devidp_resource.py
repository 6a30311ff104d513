"""The DevIdP's RFC 8707 resource indicators, and audiences signed with any algorithm.

Driven over HTTP through the DevIdP's real ASGI app; each token is checked the way a resource server
would (against the published JWKS), and by a real ``TokenGuard`` expecting the resource as audience.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import ConfigurationError, TokenGuard
from tokenguard.testing import (
    DEFAULT_AUDIENCE,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEV_USER_GRANT,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
    KeyRing,
    ManualClock,
    OAuthError,
)

pytestmark = pytest.mark.anyio

PAYMENTS = "https://payments.example"
PHOTOS = "https://photos.example"
ELSEWHERE = "https://elsewhere.example"
CLIENT = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
CALLBACK = "http://127.0.0.1:8765/callback"
VERIFIER = "r" * 43


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def idp(dev_idp: DevIdP) -> DevIdP:
    """The plugin's DevIdP, issuing tokens for two more resource servers."""
    dev_idp.add_audience(PAYMENTS)
    dev_idp.add_audience(PHOTOS)
    return dev_idp


async def token(idp: DevIdP, **form: Any) -> httpx.Response:
    """A token request; a list value sends the parameter once per item."""
    async with idp.http_client() as client:
        return await client.post("/token", data=form, auth=CLIENT)


async def issued(idp: DevIdP, **form: Any) -> dict[str, Any]:
    response = await token(idp, **form)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def aud(idp: DevIdP, value: str) -> Any:
    """The audience of a JWT access token, verified against the published JWKS."""
    header = jwt.get_unverified_header(value)
    key = next(k for k in jwt.PyJWKSet.from_dict(idp.jwks()).keys if k.key_id == header["kid"])
    claims = jwt.decode(value, key.key, algorithms=[header["alg"]], options={"verify_aud": False}, issuer=idp.issuer)
    return claims["aud"]


def refused(response: httpx.Response, error: str = "invalid_target") -> str:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    return str(response.json()["error_description"])


async def guard_status(idp: DevIdP, audience: str, value: str) -> int:
    """What a real TokenGuard expecting ``audience`` answers for ``value``."""

    async def who(request: Request) -> JSONResponse:
        return JSONResponse({"who": request.user.identity})

    app = Starlette(routes=[Route("/who", who)])
    app.add_middleware(
        TokenGuard,
        issuer=idp.issuer,
        audience=audience,
        http_client=idp.http_client,
        client_id=RESOURCE_CLIENT_ID,
        client_secret=RESOURCE_CLIENT_SECRET,
        clock=idp.clock,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://api.example") as api:
        return (await api.get("/who", headers={"Authorization": f"Bearer {value}"})).status_code


def challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


async def authorize(idp: DevIdP, resources: list[str] | None = None, **params: str) -> dict[str, str]:
    """/authorize (a GET, as a browser sends it), with ``resource`` repeated once per item; the redirect's query."""
    query: list[tuple[str, str]] = [
        ("response_type", "code"),
        ("client_id", DEFAULT_CLIENT_ID),
        ("redirect_uri", CALLBACK),
        ("state", "s1"),
        ("code_challenge", challenge(VERIFIER)),
        ("code_challenge_method", "S256"),
        *params.items(),
        *(("resource", resource) for resource in resources or ()),
    ]
    async with idp.http_client() as client:
        response = await client.get("/authorize?" + urlencode(query))
    assert response.status_code == 302, response.text
    return {name: values[0] for name, values in parse_qs(urlsplit(response.headers["location"]).query).items()}


async def exchange(idp: DevIdP, code: str, **form: Any) -> httpx.Response:
    grant = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "code_verifier": VERIFIER}
    return await token(idp, **grant, **form)


# -- the token endpoint -------------------------------------------------------------------------------


async def test_a_resource_becomes_the_audience_and_only_its_server_accepts_the_token(idp: DevIdP) -> None:
    """client_credentials with resource=PAYMENTS: aud is PAYMENTS; a guard for PAYMENTS says 200, the default's 401."""
    body = await issued(idp, grant_type="client_credentials", resource=PAYMENTS)
    assert aud(idp, body["access_token"]) == PAYMENTS
    assert await guard_status(idp, PAYMENTS, body["access_token"]) == 200
    assert await guard_status(idp, DEFAULT_AUDIENCE, body["access_token"]) == 401


async def test_without_a_resource_the_token_is_for_the_clients_default_audience(idp: DevIdP) -> None:
    """No resource parameter (and an empty one, which counts as absent): aud is the client's audience, as before."""
    assert aud(idp, (await issued(idp, grant_type="client_credentials"))["access_token"]) == DEFAULT_AUDIENCE
    empty = await issued(idp, grant_type="client_credentials", resource="")
    assert aud(idp, empty["access_token"]) == DEFAULT_AUDIENCE


@pytest.mark.parametrize(
    "resource",
    [
        "payments",  # relative: RFC 8707 §2 wants an absolute URI
        "/payments",
        "https://payments.example#frag",  # "MUST NOT include a fragment component"
        "https://payments.example#",
        "https://pay ments.example",  # not a URI: a space
        "1https://payments.example",  # a scheme starts with a letter (RFC 3986 §3.1)
    ],
)
async def test_a_malformed_resource_is_invalid_target(idp: DevIdP, resource: str) -> None:
    """A resource that is not an absolute URI, or has a fragment, is invalid_target (RFC 8707 §2), 400."""
    description = refused(await token(idp, grant_type="client_credentials", resource=resource))
    assert "absolute URI" in description
    assert resource not in description


async def test_an_unknown_resource_is_invalid_target(idp: DevIdP) -> None:
    """A well-formed resource the DevIdP issues no tokens for: invalid_target, and nothing issued."""
    before = idp.stored()["access_tokens"]
    description = refused(await token(idp, grant_type="client_credentials", resource=ELSEWHERE))
    assert ELSEWHERE not in description
    assert idp.stored()["access_tokens"] == before


async def test_two_resources_in_one_token_request_are_refused(idp: DevIdP) -> None:
    """Each access token has one audience (RFC 9700 §2.3): two resources in one token request are invalid_target."""
    description = refused(await token(idp, grant_type="client_credentials", resource=[PAYMENTS, PHOTOS]))
    assert "one resource" in description
    same_twice = await issued(idp, grant_type="client_credentials", resource=[PAYMENTS, PAYMENTS])
    assert aud(idp, same_twice["access_token"]) == PAYMENTS


async def test_other_parameters_still_may_not_repeat(idp: DevIdP) -> None:
    """Only resource may repeat (RFC 8707 §2); a repeated scope stays invalid_request (RFC 6749 §3.2)."""
    assert refused(await token(idp, grant_type="client_credentials", scope=["read", "write"]), "invalid_request")


async def test_the_dev_user_grant_takes_a_resource_with_acr_and_details(idp: DevIdP) -> None:
    """The development grant with resource, acr_values and authorization_details: all three in the token."""
    body = await issued(
        idp,
        grant_type=DEV_USER_GRANT,
        username="alice",
        resource=PAYMENTS,
        acr_values="urn:example:mfa",
        authorization_details='[{"type": "payment_initiation"}]',
    )
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert (claims["aud"], claims["acr"], claims["authorization_details"]) == (
        PAYMENTS,
        "urn:example:mfa",
        [{"type": "payment_initiation"}],
    )


async def test_an_opaque_resource_is_described_by_introspection(idp: DevIdP) -> None:
    """A resource registered as opaque gets an opaque token whose introspection answer names it as aud."""
    idp.add_audience("https://opaque.example", format="opaque")
    body = await issued(idp, grant_type="client_credentials", resource="https://opaque.example")
    assert body["access_token"].count(".") == 0
    assert idp.introspect(body["access_token"])["aud"] == "https://opaque.example"
    assert await guard_status(idp, "https://opaque.example", body["access_token"]) == 200


# -- authorization code: resources named at /authorize ---------------------------------------------------


async def test_authorize_resources_are_carried_through_the_code(idp: DevIdP) -> None:
    """/authorize names two resources; the token request picks one; the refresh token gets the other."""
    params = await authorize(idp, [PAYMENTS, PHOTOS], scope="read")
    first = (await exchange(idp, params["code"], resource=PHOTOS)).json()
    assert aud(idp, first["access_token"]) == PHOTOS
    second = await issued(idp, grant_type="refresh_token", refresh_token=first["refresh_token"], resource=PAYMENTS)
    assert aud(idp, second["access_token"]) == PAYMENTS
    assert await guard_status(idp, PAYMENTS, second["access_token"]) == 200
    third = await issued(idp, grant_type="refresh_token", refresh_token=second["refresh_token"])
    assert aud(idp, third["access_token"]) == PHOTOS  # no resource: the grant's first token's audience


async def test_without_a_resource_at_the_token_endpoint_the_first_authorized_one_is_used(idp: DevIdP) -> None:
    """/authorize named PAYMENTS then PHOTOS, the token request none: the token is for PAYMENTS."""
    params = await authorize(idp, [PAYMENTS, PHOTOS])
    assert aud(idp, (await exchange(idp, params["code"])).json()["access_token"]) == PAYMENTS


async def test_the_token_request_may_not_name_a_resource_the_authorization_did_not(idp: DevIdP) -> None:
    """RFC 8707 §2.2: a resource outside the authorization request's is invalid_target."""
    params = await authorize(idp, [PAYMENTS])
    refused(await exchange(idp, params["code"], resource=PHOTOS))


async def test_a_wrong_resource_does_not_spend_the_code(idp: DevIdP) -> None:
    """A client's mistake (a resource outside the authorization) is corrected with the same code."""
    params = await authorize(idp, [PAYMENTS])
    refused(await exchange(idp, params["code"], resource=PHOTOS))
    retried = await exchange(idp, params["code"], resource=PAYMENTS)
    assert retried.status_code == 200, retried.text
    assert aud(idp, retried.json()["access_token"]) == PAYMENTS


async def test_resources_are_bounded_and_deduplicated(idp: DevIdP) -> None:
    """Repeats count once; more than 16 distinct resources are invalid_target (linear, bounded work)."""
    params = await authorize(idp, [PAYMENTS] * 500 + [PHOTOS])
    assert "code" in params
    many = [f"https://r{i}.example" for i in range(17)]
    assert (await authorize(idp, many))["error"] == "invalid_target"


async def test_authorize_refuses_unknown_and_malformed_resources_by_redirect(idp: DevIdP) -> None:
    """An unknown or malformed resource at /authorize: redirected with error=invalid_target and the state."""
    for resource in (ELSEWHERE, "not-a-uri"):
        params = await authorize(idp, [PAYMENTS, resource])
        assert params["error"] == "invalid_target"
        assert params["state"] == "s1"
        assert "code" not in params


async def test_a_code_without_resources_takes_one_at_the_token_endpoint(idp: DevIdP) -> None:
    """/authorize named none; the token request names PAYMENTS: the grant is then for PAYMENTS alone."""
    params = await authorize(idp)
    body = (await exchange(idp, params["code"], resource=PAYMENTS)).json()
    assert aud(idp, body["access_token"]) == PAYMENTS
    refused(await token(idp, grant_type="refresh_token", refresh_token=body["refresh_token"], resource=PHOTOS))


# -- refresh: narrowing only ---------------------------------------------------------------------------


async def test_refresh_may_not_widen_to_another_resource(idp: DevIdP) -> None:
    """A grant for the default audience: refresh with that resource works, with PAYMENTS it is invalid_target."""
    pair = idp.issue_user_tokens("alice", ["read"])
    same = await issued(idp, grant_type="refresh_token", refresh_token=pair.refresh_token, resource=DEFAULT_AUDIENCE)
    assert aud(idp, same["access_token"]) == DEFAULT_AUDIENCE
    refused(await token(idp, grant_type="refresh_token", refresh_token=same["refresh_token"], resource=PAYMENTS))
    refused(
        await token(idp, grant_type="refresh_token", refresh_token=same["refresh_token"], resource=[PAYMENTS, PHOTOS])
    )


async def test_python_refresh_narrows_to_a_resource_of_the_grant(idp: DevIdP) -> None:
    """DevIdP.refresh(resource=...) follows the same rule as the endpoint."""
    params = await authorize(idp, [PAYMENTS, PHOTOS])
    first = (await exchange(idp, params["code"])).json()
    narrowed = idp.refresh(first["refresh_token"], resource=PHOTOS)
    assert aud(idp, narrowed.access_token) == PHOTOS
    with pytest.raises(OAuthError) as caught:
        idp.refresh(narrowed.refresh_token or "", resource=DEFAULT_AUDIENCE)
    assert caught.value.error == "invalid_target"


# -- audiences signed with any algorithm ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["PS256", "ES384", "EdDSA"])
async def test_an_audience_may_use_any_signing_key_algorithm(alg: str) -> None:
    """add_audience(alg=...) with an algorithm the DevIdP had no key for: a key is made, published, and used."""
    idp = DevIdP(clock=ManualClock())
    audience = f"https://{alg.lower()}.example"
    idp.add_audience(audience, alg=alg)
    assert alg in idp.keys.algorithms
    value = idp.issue_token(["read"], audience=audience)
    header = jwt.get_unverified_header(value)
    assert header["alg"] == alg
    assert header["kid"] in {key["kid"] for key in idp.jwks()["keys"]}
    assert aud(idp, value) == audience
    assert await guard_status(idp, audience, value) == 200


def test_a_new_algorithms_key_is_saved_to_the_key_file(tmp_path: Path) -> None:
    """With key_file, the key made for a new algorithm is saved, so a restarted DevIdP verifies its tokens."""
    path = tmp_path / "keys.json"
    idp = DevIdP(key_file=path)
    idp.add_audience("https://ps.example", alg="PS384")
    again = DevIdP(key_file=path)
    assert again.keys.key_for("PS384").kid == idp.keys.key_for("PS384").kid


def test_keys_given_explicitly_are_never_extended(dev_idp_keys: KeyRing) -> None:
    """keys=: the DevIdP signs with exactly those; an audience needing another algorithm is a ConfigurationError."""
    idp = DevIdP(keys=dev_idp_keys)
    with pytest.raises(ConfigurationError, match="no signing key for 'EdDSA'"):
        idp.add_audience("https://ed.example", alg="EdDSA")
    assert dev_idp_keys.algorithms == ("RS256", "ES256")
    assert idp.keys is dev_idp_keys
    with pytest.raises(ConfigurationError, match="alg must be one of"):
        idp.add_audience("https://hs.example", alg="HS256")
