"""The shipped examples work as documented, against a real JWKS and a real introspection endpoint."""

from __future__ import annotations

import httpx
import pytest
import respx
from examples import fastapi_app, starlette_app
from starlette.testclient import TestClient

from conftest import AUDIENCE, INTROSPECTION_URL, ISSUER, Issuer
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


def _introspection(respx_mock: respx.MockRouter, clock: ManualClock, *, active: bool) -> None:
    body = {"active": active, "aud": AUDIENCE, "iss": ISSUER, "sub": "alice", "scope": "write:transfers"}
    body["exp"] = clock() + 300
    respx_mock.post(INTROSPECTION_URL).mock(return_value=httpx.Response(200, json=body))


@pytest.mark.parametrize("module", [starlette_app, fastapi_app], ids=["starlette", "fastapi"])
def test_example_photos_needs_the_read_scope(module: object, idp: Issuer, clock: ManualClock) -> None:
    """GET /photos: 401 without a token, 403 without read:photos, 200 with it."""
    app = module.create_app(issuer=ISSUER, audience=AUDIENCE, clock=clock)  # type: ignore[attr-defined]
    with TestClient(app) as client:
        assert client.get("/photos").status_code == 401
        denied = client.get("/photos", headers={"Authorization": f"Bearer {idp.token(scope='other')}"})
        assert denied.status_code == 403
        ok = client.get("/photos", headers={"Authorization": f"Bearer {idp.token()}"})
        assert ok.status_code == 200
        assert ok.json()["owner"] == "alice"
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize("module", [starlette_app, fastapi_app], ids=["starlette", "fastapi"])
@pytest.mark.parametrize("active", [True, False])
def test_example_transfers_are_introspected(
    module: object, active: bool, idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """POST /transfers asks the issuer: an active token passes, a revoked one gets 401."""
    _introspection(respx_mock, clock, active=active)
    app = module.create_app(  # type: ignore[attr-defined]
        issuer=ISSUER, audience=AUDIENCE, clock=clock, client_id="photos-api", client_secret="s3cret"
    )
    token = idp.token(scope="write:transfers")
    with TestClient(app) as client:
        response = client.post(
            "/transfers", json={"amount": 10, "to": "bob"}, headers={"Authorization": f"Bearer {token}"}
        )
    if active:
        assert response.status_code == 200
        assert response.json()["checked"] == "introspection"
    else:
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_example_modules_build_an_app_from_the_environment() -> None:
    """Importing the examples gives a ready ``app`` (for uvicorn) without any network call."""
    assert starlette_app.app is not None
    assert fastapi_app.app is not None
