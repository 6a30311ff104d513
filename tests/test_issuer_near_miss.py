"""An issuer configured almost right (a trailing '/', letter case, scheme) says what differs, once.

Issuers are compared exactly (RFC 9068 §4, RFC 8414 §3.3): the tokens are still refused. What
changes is that the operator reads why in the log, instead of a 401 "another issuer" for every
request. Tokens come from the library's DevIdP, served in-process, with real keys.
"""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tokenguard import TokenGuard, sensitive
from tokenguard._claims import issuer_difference
from tokenguard.testing import RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET, DevIdP, KeyRing

ISSUER = "https://idp.tokenguard.test"


async def photos(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


@sensitive
async def transfer(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


@pytest.fixture(scope="module")
def keys() -> KeyRing:
    return KeyRing.generate()


def _near_miss_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tokenguard" and "names the issuer" in r.getMessage()]


@pytest.mark.parametrize(
    ("actual", "configured", "difference"),
    [
        (ISSUER, ISSUER + "/", "trailing '/'"),
        (ISSUER + "/", ISSUER, "trailing '/'"),
        (ISSUER, "https://IDP.tokenguard.test", "letter case"),
    ],
)
def test_discovery_says_what_differs(
    keys: KeyRing, caplog: pytest.LogCaptureFixture, actual: str, configured: str, difference: str
) -> None:
    """The tokens are refused before any key is fetched; the background fetch it starts reads the
    metadata, which spells the issuer the other way, and the log says how."""
    idp = DevIdP(actual, keys=keys)
    app = Starlette(routes=[Route("/photos", photos)])
    app.add_middleware(TokenGuard, issuer=configured, audience=idp.default_audience, http_client=idp.http_client)
    with caplog.at_level(logging.INFO, logger="tokenguard"), TestClient(app) as client:
        for _ in range(3):
            response = client.get("/photos", headers={"Authorization": f"Bearer {idp.issue_token()}"})
            assert response.status_code == 401  # still refused: no normalisation
            assert response.json()["error_description"] == "The access token comes from another issuer."
    said = [r.getMessage() for r in caplog.records if r.name == "tokenguard" and difference in r.getMessage()]
    assert said, "nothing said what differs"
    assert "configure the issuer exactly as the metadata spells it" in said[0]


def test_a_verified_token_names_the_near_miss_once(keys: KeyRing, caplog: pytest.LogCaptureFixture) -> None:
    """Discovery skipped (``jwks_uri``): a token the issuer's key signed reports the near miss, once."""
    idp = DevIdP(ISSUER + "/", keys=keys)
    app = Starlette(routes=[Route("/photos", photos)])
    app.add_middleware(
        TokenGuard,
        issuer=ISSUER,
        audience=idp.default_audience,
        http_client=idp.http_client,
        jwks_uri=idp.endpoint("jwks"),
        prefetch=True,
    )
    with caplog.at_level(logging.INFO, logger="tokenguard"), TestClient(app) as client:
        for _ in range(3):
            assert client.get("/photos", headers={"Authorization": f"Bearer {idp.issue_token()}"}).status_code == 401
    records = _near_miss_records(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert "a token signed with the issuer's key" in message
    assert "trailing '/'" in message
    assert f"issuer={ISSUER!r}" in message


def test_a_forged_near_miss_writes_nothing(keys: KeyRing, caplog: pytest.LogCaptureFixture) -> None:
    """Anyone can put any ``iss`` in a token: without the issuer's signature it is not reported, and it
    does not use up the report a real misconfiguration needs."""
    idp = DevIdP(ISSUER, keys=keys)
    forger = DevIdP(ISSUER + "/", keys=KeyRing.generate())
    app = Starlette(routes=[Route("/photos", photos)])
    app.add_middleware(
        TokenGuard, issuer=ISSUER, audience=idp.default_audience, http_client=idp.http_client, prefetch=True
    )
    with caplog.at_level(logging.INFO, logger="tokenguard"), TestClient(app) as client:
        forged = forger.issue_token(audience=idp.default_audience)
        for _ in range(3):
            assert client.get("/photos", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert _near_miss_records(caplog) == []


def test_another_issuer_is_not_a_near_miss(keys: KeyRing, caplog: pytest.LogCaptureFixture) -> None:
    idp = DevIdP("https://elsewhere.example", keys=keys)
    app = Starlette(routes=[Route("/photos", photos)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=idp.default_audience, http_client=idp.http_client)
    with caplog.at_level(logging.INFO, logger="tokenguard"), TestClient(app) as client:
        assert client.get("/photos", headers={"Authorization": f"Bearer {idp.issue_token()}"}).status_code == 401
    assert _near_miss_records(caplog) == []


def test_a_near_miss_among_several_issuers_names_the_one_it_resembles(
    keys: KeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    idp = DevIdP(ISSUER, keys=keys)
    app = Starlette(routes=[Route("/photos", photos)])
    app.add_middleware(
        TokenGuard,
        issuer=["https://other.example", ISSUER + "/"],
        audience=idp.default_audience,
        http_client=idp.http_client,
    )
    with caplog.at_level(logging.INFO, logger="tokenguard"), TestClient(app) as client:
        for _ in range(2):
            assert client.get("/photos", headers={"Authorization": f"Bearer {idp.issue_token()}"}).status_code == 401
    # The token went to the issuer it resembles, whose discovery says how the two spellings differ.
    said = [r.getMessage() for r in caplog.records if "trailing '/'" in r.getMessage()]
    assert said
    assert repr(ISSUER + "/") in said[0]


def test_an_introspection_answer_naming_a_near_miss_is_logged(keys: KeyRing, caplog: pytest.LogCaptureFixture) -> None:
    """An opaque token's introspection answer carries the issuer's own spelling of ``iss``."""
    idp = DevIdP(ISSUER, keys=keys)
    idp.add_audience("https://opaque.example", format="opaque")
    app = Starlette(routes=[Route("/transfers", transfer)])
    app.add_middleware(
        TokenGuard,
        issuer=ISSUER,
        audience="https://opaque.example",
        http_client=idp.http_client,
        client_id=RESOURCE_CLIENT_ID,
        client_secret=RESOURCE_CLIENT_SECRET,
    )
    token = idp.issue_token(audience="https://opaque.example")
    original = idp.introspect

    def spelled_with_a_slash(*args: object, **kwargs: object) -> dict[str, object]:
        answer = dict(original(*args, **kwargs))  # type: ignore[arg-type]
        answer["iss"] = ISSUER + "/"
        return answer

    idp.introspect = spelled_with_a_slash  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="tokenguard"), TestClient(app) as client:
        assert client.get("/transfers", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    records = _near_miss_records(caplog)
    assert len(records) == 1
    assert "trailing '/'" in records[0].getMessage()
    assert "the introspection answer" in records[0].getMessage()


@pytest.mark.parametrize(
    ("named", "expected"),
    [
        ("https://a.example/", "trailing"),
        ("https://A.example", "letter case"),
        ("http://a.example", None),  # another scheme is another issuer: never nudge towards http
        ("https://b.example", None),
        ("https://a.example/tenant", None),
        (None, None),
        (42, None),
        ("https://a.example" + "/" * 10_000, None),  # far longer: never called a near miss, never echoed
    ],
)
def test_issuer_difference(named: object, expected: str | None) -> None:
    found = issuer_difference(named, "https://a.example")
    assert (found is None) if expected is None else (found is not None and expected in found)
