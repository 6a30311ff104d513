"""ID, refresh and logout tokens marked as such in their claims are never accepted as access tokens.

RFC 8725 §3.11 / RFC 9068 §4 explicit typing: header ``typ`` is checked elsewhere; these are the
claim-level markers real issuers use (Keycloak ``typ``, Amazon Cognito / ORY Hydra ``token_use``,
OpenID Connect ``at_hash``/``c_hash``), through a real app, for JWTs and introspection answers alike.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import AUDIENCE, INTROSPECTION_URL, ISSUER, Issuer
from tokenguard import TokenGuard, sensitive
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


async def me(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


@sensitive
async def transfer(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


def _client(clock: ManualClock) -> TestClient:
    app = Starlette(routes=[Route("/me", me), Route("/transfer", transfer)])
    app.add_middleware(
        TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, client_id="api", client_secret="secret"
    )
    return TestClient(app)


REFUSED: list[dict[str, Any]] = [
    {"typ": "ID"},
    {"typ": "Refresh"},
    {"typ": "Offline"},
    {"typ": "Logout"},
    {"token_use": "id"},
    {"token_use": "refresh_token"},
    {"at_hash": "x1"},
    {"c_hash": "x2"},
]
ACCEPTED: list[dict[str, Any]] = [{}, {"typ": "Bearer"}, {"token_use": "access"}, {"token_use": "access_token"}]


@pytest.mark.parametrize("claims", REFUSED, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_jwts_marked_as_another_kind_are_refused(idp: Issuer, clock: ManualClock, claims: dict[str, Any]) -> None:
    """A signed JWT for this audience that says it is an ID/refresh/logout token gets 401 invalid_token."""
    with _client(clock) as client:
        response = client.get("/me", headers={"Authorization": f"Bearer {idp.token(**claims)}"})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


@pytest.mark.parametrize("claims", ACCEPTED, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_access_token_markers_are_accepted(idp: Issuer, clock: ManualClock, claims: dict[str, Any]) -> None:
    """Keycloak's typ "Bearer" and Cognito's token_use "access" are access tokens."""
    with _client(clock) as client:
        assert client.get("/me", headers={"Authorization": f"Bearer {idp.token(**claims)}"}).status_code == 200


@pytest.mark.parametrize("claims", REFUSED, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_introspection_answers_marked_as_another_kind_are_refused(
    idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter, claims: dict[str, Any]
) -> None:
    """An issuer calling a refresh token "active" (Keycloak does) does not make it an access token."""
    answer = {"active": True, "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": clock() + 300, **claims}
    respx_mock.post(INTROSPECTION_URL).mock(return_value=httpx.Response(200, json=answer))
    with _client(clock) as client:
        response = client.get("/transfer", headers={"Authorization": "Bearer opaque-refresh-token-123"})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


@pytest.mark.parametrize(
    "cnf",
    [
        {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"},
        {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"},
    ],
)
def test_sender_constrained_tokens_are_not_bearer_tokens(
    idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter, cnf: dict[str, str]
) -> None:
    """RFC 9449 §7.2 / RFC 8705 §3: a DPoP- or mTLS-bound token presented as Bearer is refused (JWT, introspection)."""
    answer = {"active": True, "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": clock() + 300, "cnf": cnf}
    respx_mock.post(INTROSPECTION_URL).mock(return_value=httpx.Response(200, json=answer))
    with _client(clock) as client:
        jwt_answer = client.get("/me", headers={"Authorization": f"Bearer {idp.token(cnf=cnf)}"})
        opaque_answer = client.get("/transfer", headers={"Authorization": "Bearer opaque-bound-token-123"})
    assert (jwt_answer.status_code, opaque_answer.status_code) == (401, 401)
    # DPoP-bound: "send it with the DPoP scheme"; certificate-bound, without the certificate: "another".
    expected = "send it with the DPoP scheme" if "jkt" in cnf else "bound to another client certificate"
    for answer in (jwt_answer, opaque_answer):
        assert answer.json()["error"] == "invalid_token"
        assert expected in answer.json()["error_description"]


@pytest.mark.parametrize(
    "claims",
    [{"cnf": {"jwk": {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}}}, {"cnf": {"kid": "k"}}, {"token_use": ["id"]}],
    ids=["cnf-jwk", "cnf-kid", "token_use-list"],
)
def test_other_bindings_and_malformed_markers_are_refused(
    idp: Issuer, clock: ManualClock, claims: dict[str, Any]
) -> None:
    """RFC 7800 §3.1: any confirmation key binds the token; a non-string token_use is not "access"."""
    with _client(clock) as client:
        assert client.get("/me", headers={"Authorization": f"Bearer {idp.token(**claims)}"}).status_code == 401
