"""The DevIdP's RFC 9701 side: /introspect answers a signed JWT when ``Accept`` asks for one, plain RFC 7662
JSON otherwise, and its RFC 8414 metadata advertises the algorithm (RFC 9701 §7).

The JWTs are verified here with PyJWT against the DevIdP's published JWKS, independently of tokenguard's
own verifier (``tests/test_introspection_jwt.py`` drives that one against the DevIdP end to end).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import httpx
import jwt
import pytest

from tokenguard.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
    KeyRing,
    ManualClock,
)

pytestmark = pytest.mark.anyio

MEDIA = "application/token-introspection+jwt"
RESOURCE = (RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET)
T0 = 1_800_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def idp(dev_idp_keys: KeyRing) -> DevIdP:
    return DevIdP(keys=dev_idp_keys, clock=ManualClock(T0))


async def introspect(
    idp: DevIdP, value: str, *, accept: str | None = MEDIA, auth: Any = RESOURCE, **form: str
) -> httpx.Response:
    headers = {"Accept": accept} if accept is not None else {}
    async with idp.http_client() as client:
        return await client.post("/introspect", data={"token": value, **form}, auth=auth, headers=headers)


def header_of(compact: str) -> dict[str, Any]:
    head = compact.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))))


def verified(idp: DevIdP, compact: str, audience: str = RESOURCE_CLIENT_ID) -> dict[str, Any]:
    """The claims of ``compact``, verified with the DevIdP's published JWKS (not its private keys)."""
    kid = header_of(compact)["kid"]
    jwk: Mapping[str, Any] = next(key for key in idp.jwks()["keys"] if key["kid"] == kid)
    key = jwt.PyJWK(dict(jwk))
    claims: dict[str, Any] = jwt.decode(
        compact,
        key,
        algorithms=[jwk["alg"]],
        audience=audience,
        issuer=idp.issuer,
        options={"require": ["iss", "aud", "iat"], "verify_iat": False},
    )
    return claims


async def test_accept_jwt_gets_a_signed_answer_of_the_rfc_9701_shape(idp: DevIdP) -> None:
    """Accept: application/token-introspection+jwt → 200, that content type, a JWS with typ, iss, aud, iat,
    token_introspection; no sub or exp at the top (RFC 9701 §5, §8.1)."""
    value = idp.issue_token("read", subject="alice")
    response = await introspect(idp, value)
    assert response.status_code == 200
    assert response.headers["content-type"] == MEDIA
    assert response.headers["cache-control"] == "no-store"
    header = header_of(response.text)
    assert header["typ"] == "token-introspection+jwt"
    assert header["kid"] in idp.keys.kids
    assert header["alg"] in idp.metadata()["introspection_signing_alg_values_supported"]
    claims = verified(idp, response.text)
    assert set(claims) == {"iss", "aud", "iat", "token_introspection"}
    assert claims["iat"] == int(T0)
    answer = claims["token_introspection"]
    assert answer["active"] is True
    assert answer["sub"] == "alice"
    assert answer == idp.introspect(value, client_id=RESOURCE_CLIENT_ID)


async def test_the_audience_is_the_client_that_asked(idp: DevIdP) -> None:
    """aud is the requesting client's id: the default client introspecting its own token gets aud = its id."""
    value = idp.issue_token("read")
    response = await introspect(idp, value, auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    assert response.status_code == 200
    claims = verified(idp, response.text, audience=DEFAULT_CLIENT_ID)
    assert claims["aud"] == DEFAULT_CLIENT_ID
    with pytest.raises(jwt.InvalidAudienceError):
        verified(idp, response.text, audience=RESOURCE_CLIENT_ID)


async def test_a_revoked_token_is_a_signed_inactive_answer(idp: DevIdP) -> None:
    """RFC 9701 §5: an inactive token is still answered as a signed JWT, with token_introspection {active: false}."""
    value = idp.issue_token("read")
    idp.revoke(value)
    response = await introspect(idp, value)
    assert response.headers["content-type"] == MEDIA
    assert verified(idp, response.text)["token_introspection"] == {"active": False}


@pytest.mark.parametrize(
    "accept", [None, "application/json", "*/*", f"{MEDIA};q=0", f"{MEDIA}; q=0.0, application/json"]
)
async def test_without_asking_for_a_jwt_the_answer_stays_json(idp: DevIdP, accept: str | None) -> None:
    """No Accept, JSON, a wildcard or the JWT type at q=0: the plain RFC 7662 JSON answer, as before."""
    value = idp.issue_token("read")
    response = await introspect(idp, value, accept=accept)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["active"] is True


@pytest.mark.parametrize(
    "accept", [MEDIA, "APPLICATION/Token-Introspection+JWT", f"application/json;q=0.5, {MEDIA}", f"{MEDIA};q=0.8"]
)
async def test_the_jwt_type_is_recognised_in_any_case_and_among_others(idp: DevIdP, accept: str) -> None:
    response = await introspect(idp, idp.issue_token("read"), accept=accept)
    assert response.headers["content-type"] == MEDIA
    assert verified(idp, response.text)["token_introspection"]["active"] is True


async def test_errors_stay_oauth_json_errors(idp: DevIdP) -> None:
    """Bad client credentials are a 401 invalid_client in JSON whatever Accept says (RFC 7662 §2.3)."""
    response = await introspect(idp, idp.issue_token("read"), auth=(RESOURCE_CLIENT_ID, "wrong"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_metadata_advertises_the_signing_algorithm(idp: DevIdP) -> None:
    """RFC 9701 §7: introspection_signing_alg_values_supported names the algorithm answers are signed with."""
    async with idp.http_client() as client:
        document = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert document["introspection_signing_alg_values_supported"] == ["RS256"]
    es = DevIdP(keys=idp.keys, default_audience="https://api.es.test", clock=ManualClock(T0))
    es.add_audience("https://api.es.test", alg="ES256")
    assert es.metadata()["introspection_signing_alg_values_supported"] == ["ES256"]
    signed = es.introspect_jwt(es.issue_token("read"), client_id=RESOURCE_CLIENT_ID)
    assert header_of(signed)["alg"] == "ES256"
    assert verified(es, signed)["token_introspection"]["active"] is True
