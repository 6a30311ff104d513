"""The DevIdP's RFC 8693 token exchange: the grant over HTTP and from Python, ``act``, ``may_act``, errors.

Tokens are read the way a resource server would (verified against the published JWKS, or introspected),
and errors are checked by their RFC 8693 §2.2.2 / RFC 6749 §5.2 codes.
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from tokenguard.models import MAX_ACT_DEPTH
from tokenguard.testing import (
    ACCESS_TOKEN_TYPE,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    TOKEN_EXCHANGE_GRANT,
    DevIdP,
    OAuthError,
)

pytestmark = pytest.mark.anyio

ORDERS = ("orders-api", "orders-secret")
PAYMENTS = "https://payments.example"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def idp(dev_idp: DevIdP) -> DevIdP:
    dev_idp.register_client(*ORDERS)
    dev_idp.add_audience(PAYMENTS)
    return dev_idp


def claims_of(idp: DevIdP, token: str) -> dict[str, Any]:
    """A JWT access token's claims, verified against the DevIdP's published JWKS."""
    header = jwt.get_unverified_header(token)
    key = next(k for k in jwt.PyJWKSet.from_dict(idp.jwks()).keys if k.key_id == header["kid"])
    return jwt.decode(  # type: ignore[no-any-return]
        token, key.key, algorithms=[header["alg"]], options={"verify_aud": False}, issuer=idp.issuer
    )


async def exchange(idp: DevIdP, auth: tuple[str, str] = ORDERS, **form: Any) -> httpx.Response:
    data = {"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token_type": ACCESS_TOKEN_TYPE, **form}
    data = {name: value for name, value in data.items() if value is not None}
    async with idp.http_client() as client:
        return await client.post("/token", data=data, auth=auth)


def refused_with(response: httpx.Response, error: str) -> None:
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] == error, response.text


# -- the grant over HTTP ---------------------------------------------------------------------------------


async def test_the_exchanged_token_names_the_client_as_the_actor(idp: DevIdP) -> None:
    """RFC 8693 §2.2.1 response members; §4.1 act = the authenticated client; §4.3 client_id = the requester."""
    subject = idp.issue_token(["read", "write"], acr="urn:mfa", auth_time=idp.clock() - 5)
    response = await exchange(idp, subject_token=subject)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert "refresh_token" not in body
    assert body["scope"] == "read write"
    claims = claims_of(idp, body["access_token"])
    assert claims["sub"] == "alice"
    assert claims["client_id"] == "orders-api"
    assert claims["act"] == {"sub": "orders-api"}
    assert claims["aud"] == idp.default_audience
    # The user's authentication is the subject token's: step-up claims carry over.
    assert claims["acr"] == "urn:mfa"
    assert claims["auth_time"] == idp.clock() - 5


async def test_an_actor_token_names_the_actor(idp: DevIdP) -> None:
    """RFC 8693 §2.1 actor_token: the act names its subject, not the client that asked."""
    subject = idp.issue_token(["read"])
    actor = idp.issue_token(subject="batch-robot")
    response = await exchange(idp, subject_token=subject, actor_token=actor, actor_token_type=ACCESS_TOKEN_TYPE)
    assert response.status_code == 200, response.text
    claims = claims_of(idp, response.json()["access_token"])
    assert claims["act"] == {"sub": "batch-robot"}
    assert claims["sub"] == "alice"


async def test_a_second_exchange_nests_the_first_actor_as_the_prior_one(idp: DevIdP) -> None:
    """RFC 8693 §4.1: the outermost act is the current actor; the earlier one is nested inside it."""
    first = idp.exchange_token(idp.issue_token(["read"]), client_id="orders-api")
    second = await exchange(idp, auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET), subject_token=first.access_token)
    assert second.status_code == 200, second.text
    claims = claims_of(idp, second.json()["access_token"])
    assert claims["act"] == {"sub": DEFAULT_CLIENT_ID, "act": {"sub": "orders-api"}}
    assert claims["sub"] == "alice"
    assert claims["client_id"] == DEFAULT_CLIENT_ID


async def test_the_grant_is_advertised(idp: DevIdP) -> None:
    async with idp.http_client() as client:
        document = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert TOKEN_EXCHANGE_GRANT in document["grant_types_supported"]


async def test_introspection_answers_carry_act(idp: DevIdP) -> None:
    """RFC 8693 §4.1 allows act in an RFC 7662 answer: the DevIdP's opaque exchanged tokens have it there."""
    idp.add_audience("https://opaque.example", format="opaque")
    exchanged = idp.exchange_token(idp.issue_token(["read"]), client_id="orders-api", resource="https://opaque.example")
    assert exchanged.access_token.count(".") == 0  # opaque
    answer = idp.introspect(exchanged.access_token)
    assert answer["active"] is True
    assert answer["act"] == {"sub": "orders-api"}
    assert answer["sub"] == "alice"
    assert answer["aud"] == "https://opaque.example"


# -- may_act (RFC 8693 §4.4) -----------------------------------------------------------------------------


async def test_may_act_lets_the_named_party_act(idp: DevIdP) -> None:
    subject = idp.issue_token(["read"], may_act={"sub": "orders-api", "iss": idp.issuer})
    response = await exchange(idp, subject_token=subject)
    assert response.status_code == 200, response.text
    claims = claims_of(idp, response.json()["access_token"])
    assert claims["act"] == {"sub": "orders-api"}
    assert "may_act" not in claims  # it said who may act for the subject token, not for this one


@pytest.mark.parametrize(
    "may_act",
    [
        {"sub": "someone-else"},
        {"sub": "orders-api", "iss": "https://other-issuer.example"},
        "orders-api",  # not an object
        {"client_id": "orders-api"},  # no sub
        None,
    ],
)
async def test_may_act_refuses_any_other_party(idp: DevIdP, may_act: Any) -> None:
    """RFC 8693 §2.2.2: a subject token unacceptable by policy is invalid_request."""
    subject = idp.issue_token(["read"], may_act=may_act)
    refused_with(await exchange(idp, subject_token=subject), "invalid_request")


async def test_may_act_is_checked_against_the_actor_token_subject(idp: DevIdP) -> None:
    subject = idp.issue_token(["read"], may_act={"sub": "batch-robot"})
    robot, other = idp.issue_token(subject="batch-robot"), idp.issue_token(subject="intruder")
    allowed = await exchange(idp, subject_token=subject, actor_token=robot, actor_token_type=ACCESS_TOKEN_TYPE)
    assert allowed.status_code == 200, allowed.text
    refused = await exchange(idp, subject_token=subject, actor_token=other, actor_token_type=ACCESS_TOKEN_TYPE)
    refused_with(refused, "invalid_request")


# -- who may exchange ------------------------------------------------------------------------------------


def test_a_public_client_may_not_exchange(idp: DevIdP) -> None:
    idp.register_client("spa", redirect_uris=["http://127.0.0.1/callback"])
    with pytest.raises(OAuthError) as refused:
        idp.exchange_token(idp.issue_token(["read"]), client_id="spa")
    assert refused.value.error == "unauthorized_client"
    with pytest.raises(Exception, match="public client"):
        idp.register_client("spa2", redirect_uris=["http://127.0.0.1/callback"], grant_types=[TOKEN_EXCHANGE_GRANT])


def test_a_client_not_registered_for_the_grant_may_not_exchange(idp: DevIdP) -> None:
    idp.register_client("cc-only", "cc-secret", grant_types=["client_credentials"])
    with pytest.raises(OAuthError) as refused:
        idp.exchange_token(idp.issue_token(["read"]), client_id="cc-only")
    assert refused.value.error == "unauthorized_client"


async def test_a_wrong_client_secret_is_invalid_client(idp: DevIdP) -> None:
    response = await exchange(idp, auth=("orders-api", "wrong"), subject_token=idp.issue_token(["read"]))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


# -- malformed or unacceptable requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        {"subject_token": None},
        {"subject_token_type": None},
        {"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"},
        {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        {"actor_token_type": ACCESS_TOKEN_TYPE},  # without an actor_token
        {"actor_token": "ACTOR"},  # without its type
        {"actor_token": "ACTOR", "actor_token_type": "urn:ietf:params:oauth:token-type:saml2"},
        {"actor_token": "not-a-token-of-this-server", "actor_token_type": ACCESS_TOKEN_TYPE},
        {"subject_token": "not-a-token-of-this-server"},
    ],
)
async def test_malformed_requests_are_invalid_request(idp: DevIdP, form: dict[str, Any]) -> None:
    actor = idp.issue_token(subject="batch-robot")
    data = {"subject_token": idp.issue_token(["read"]), **form}
    if data.get("actor_token") == "ACTOR":
        data["actor_token"] = actor
    refused_with(await exchange(idp, **data), "invalid_request")


async def test_inactive_subject_tokens_are_refused(idp: DevIdP) -> None:
    revoked = idp.issue_token(["read"])
    assert idp.revoke(revoked)
    refused_with(await exchange(idp, subject_token=revoked), "invalid_request")
    expiring = idp.issue_token(["read"], expires_in=60)
    idp.clock.advance(61)  # type: ignore[attr-defined]
    refused_with(await exchange(idp, subject_token=expiring), "invalid_request")


async def test_a_refresh_token_is_not_an_access_token_to_exchange(idp: DevIdP) -> None:
    tokens = idp.issue_user_tokens("alice", ["read"])
    assert tokens.refresh_token is not None
    refused_with(await exchange(idp, subject_token=tokens.refresh_token), "invalid_request")
    assert (await exchange(idp, subject_token=tokens.access_token)).status_code == 200


async def test_scopes_may_only_narrow(idp: DevIdP) -> None:
    subject = idp.issue_token(["read", "write"])
    narrowed = await exchange(idp, subject_token=subject, scope="read")
    assert narrowed.status_code == 200, narrowed.text
    assert claims_of(idp, narrowed.json()["access_token"])["scope"] == "read"
    refused_with(await exchange(idp, subject_token=subject, scope="read admin"), "invalid_scope")


async def test_resource_and_audience_choose_a_known_target(idp: DevIdP) -> None:
    """RFC 8693 §2.1 resource (RFC 8707) and audience; §2.2.2 invalid_target for what is not issued for."""
    subject = idp.issue_token(["read"])
    by_audience = await exchange(idp, subject_token=subject, audience=PAYMENTS)
    assert claims_of(idp, by_audience.json()["access_token"])["aud"] == PAYMENTS
    by_resource = await exchange(idp, subject_token=subject, resource=PAYMENTS)
    assert claims_of(idp, by_resource.json()["access_token"])["aud"] == PAYMENTS
    both = await exchange(idp, subject_token=subject, resource=PAYMENTS, audience=PAYMENTS)
    assert both.status_code == 200
    refused_with(await exchange(idp, subject_token=subject, audience="https://unknown.example"), "invalid_target")
    refused_with(
        await exchange(idp, subject_token=subject, resource=PAYMENTS, audience=idp.default_audience), "invalid_target"
    )


def chain(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": f"actor-{depth}"}
    for level in range(depth - 1, 0, -1):
        act = {"sub": f"actor-{level}", "act": act}
    return act


async def test_the_act_chain_is_bounded(idp: DevIdP) -> None:
    """A chain of MAX_ACT_DEPTH - 1 gets one more level; one already MAX_ACT_DEPTH deep is refused."""
    almost = idp.issue_token(["read"], act=chain(MAX_ACT_DEPTH - 1))
    extended = await exchange(idp, subject_token=almost)
    assert extended.status_code == 200, extended.text
    act = claims_of(idp, extended.json()["access_token"])["act"]
    assert act["sub"] == "orders-api"
    assert act["act"] == chain(MAX_ACT_DEPTH - 1)
    full = idp.issue_token(["read"], act=chain(MAX_ACT_DEPTH))
    refused_with(await exchange(idp, subject_token=full), "invalid_request")
    malformed = idp.issue_token(["read"], act="not an object")
    refused_with(await exchange(idp, subject_token=malformed), "invalid_request")


def test_exchange_token_from_python_matches_the_endpoint(idp: DevIdP) -> None:
    subject = idp.issue_token(["read", "write"])
    tokens = idp.exchange_token(subject, client_id="orders-api", scopes=["read"], audience=PAYMENTS)
    assert tokens.issued_token_type == ACCESS_TOKEN_TYPE
    assert tokens.as_response()["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert tokens.refresh_token is None
    claims = claims_of(idp, tokens.access_token)
    assert (claims["sub"], claims["aud"], claims["scope"], claims["act"]) == (
        "alice",
        PAYMENTS,
        "read",
        {"sub": "orders-api"},
    )
    issued = [event for event in idp.events if event.kind == "issued" and event.grant_id == tokens.grant_id]
    assert len(issued) == 1
    assert issued[0].detail["grant_type"] == TOKEN_EXCHANGE_GRANT


async def test_a_dpop_bound_subject_token_is_exchanged_only_with_its_key_and_stays_bound(idp: DevIdP) -> None:
    """Found by review: any token of this server was exchanged, a DPoP-bound one too, and the token issued was a
    bearer token: a party that saw a bound token (an API it was sent to) could turn it into one anybody may
    use, without the key (RFC 9449 §1). Now the exchange request must prove the subject token's key, and the
    token it gets is bound to that key."""
    from tokenguard.dpop import DPoPKey

    key, other = DPoPKey.generate("ES256"), DPoPKey.generate("ES256")
    async with idp.http_client() as client:
        signed_in = await client.post(
            "/token",
            auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
            headers={"DPoP": key.proof("POST", idp.endpoint("token"))},
            data={
                "grant_type": "urn:tokenguard:params:oauth:grant-type:dev-user",
                "username": "alice",
                "scope": "read",
            },
        )
    bound = signed_in.json()["access_token"]
    assert claims_of(idp, bound)["cnf"] == {"jkt": key.thumbprint}
    form = {"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token_type": ACCESS_TOKEN_TYPE, "subject_token": bound}
    async with idp.http_client() as client:
        for headers in ({}, {"DPoP": other.proof("POST", idp.endpoint("token"))}):
            refused = await client.post("/token", data=form, auth=ORDERS, headers=headers)
            refused_with(refused, "invalid_request")
            assert "bound to a DPoP key" in refused.json()["error_description"]
        proved = await client.post(
            "/token", data=form, auth=ORDERS, headers={"DPoP": key.proof("POST", idp.endpoint("token"))}
        )
    assert proved.status_code == 200, proved.text
    assert proved.json()["token_type"] == "DPoP"
    exchanged = claims_of(idp, proved.json()["access_token"])
    assert (exchanged["cnf"], exchanged["act"]) == ({"jkt": key.thumbprint}, {"sub": ORDERS[0]})
