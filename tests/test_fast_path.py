"""The repeated-token fast path (verified cache looked up by the header bytes) decides exactly as the full path.

Every request is sent twice, to an app with the verified cache and to one without: the four answers
must agree, including after the clock moves past ``exp`` and for header shapes the fast path must not
short-circuit (extra whitespace, another scheme casing, several headers).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import AUDIENCE, ISSUER, Issuer
from tokenguard import TokenGuard, require_scopes
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


@require_scopes("read:photos")
async def photos(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.user.identity, "scopes": request.auth.scopes})


def _client(clock: ManualClock, cache: int) -> TestClient:
    app = Starlette(routes=[Route("/photos", photos)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, verified_cache_size=cache)
    return TestClient(app)


HeaderShape = Callable[[str], list[tuple[str, str]]]
SHAPES: dict[str, HeaderShape] = {
    "plain": lambda t: [("Authorization", f"Bearer {t}")],
    "lowercase-scheme": lambda t: [("Authorization", f"bearer {t}")],
    "uppercase-scheme": lambda t: [("Authorization", f"BEARER {t}")],
    "two-spaces": lambda t: [("Authorization", f"Bearer  {t}")],
    "trailing-space": lambda t: [("Authorization", f"Bearer {t} ")],
    "two-headers": lambda t: [("Authorization", f"Bearer {t}"), ("Authorization", f"Bearer {t}")],
    "basic": lambda t: [("Authorization", f"Basic {t}")],
}


def _answer(client: TestClient, headers: list[tuple[str, str]]) -> tuple[int, str | None]:
    response = client.get("/photos", headers=headers)
    return response.status_code, response.headers.get("www-authenticate")


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
@pytest.mark.parametrize(
    "claims",
    [{}, {"scope": "profile"}, {"aud": "https://other.example"}, {"exp": None}],
    ids=["valid", "no-scope", "wrong-aud", "no-exp"],
)
def test_cached_and_uncached_paths_agree(
    idp: Issuer, clock: ManualClock, shape: str, claims: dict[str, object]
) -> None:
    """Same answers, first and second time, with and without the verified cache."""
    token = idp.token(**claims)
    headers = SHAPES[shape](token)
    with _client(clock, 10_000) as cached, _client(clock, 0) as uncached:
        answers = [
            _answer(cached, headers),
            _answer(cached, headers),
            _answer(uncached, headers),
            _answer(uncached, headers),
        ]
    assert len(set(answers)) == 1, answers


def test_the_fast_path_rechecks_expiry_on_every_hit(idp: Issuer, clock: ManualClock) -> None:
    """A cached token is refused once the clock passes exp + leeway, exactly as an uncached one."""
    token = idp.token(exp=int(clock()) + 60)
    headers = [("Authorization", f"Bearer {token}")]
    with _client(clock, 10_000) as cached, _client(clock, 0) as uncached:
        assert _answer(cached, headers)[0] == _answer(uncached, headers)[0] == 200
        clock.advance(60 + 29)
        assert _answer(cached, headers)[0] == _answer(uncached, headers)[0] == 200  # within the 30 s leeway
        clock.advance(2)
        expired = _answer(cached, headers)
        assert expired == _answer(uncached, headers)
        assert expired[0] == 401
        assert 'error="invalid_token"' in (expired[1] or "")


def test_a_forged_copy_of_a_cached_token_is_not_served_from_the_cache(idp: Issuer, clock: ManualClock) -> None:
    """One changed signature byte is other bytes: a miss, then the full path refuses it."""
    token = idp.token()
    head, body, signature = token.split(".")
    forged = f"{head}.{body}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"
    with _client(clock, 10_000) as client:
        assert _answer(client, [("Authorization", f"Bearer {token}")])[0] == 200
        assert _answer(client, [("Authorization", f"Bearer {forged}")])[0] == 401


def test_an_endpoint_cannot_change_what_the_next_request_is_checked_against(idp: Issuer, clock: ManualClock) -> None:
    """request.auth.claims is a private deep copy; the shared token's claims are read-only."""
    from tokenguard import require_auth_level

    @require_auth_level(acr_values=["mfa"])
    async def transfer(request: Request) -> JSONResponse:
        return JSONResponse({})

    async def profile(request: Request) -> JSONResponse:
        request.auth.claims["acr"] = "mfa"  # a private copy: harmless
        request.auth.claims.setdefault("nested", []).append(1)
        try:
            request.user.token.claims["acr"] = "mfa"  # the shared token refuses
        except TypeError:
            return JSONResponse({"shared": "read-only"})
        return JSONResponse({"shared": "writable"})

    app = Starlette(routes=[Route("/transfer", transfer), Route("/profile", profile)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    headers = {"Authorization": f"Bearer {idp.token()}"}
    with TestClient(app) as client:
        assert client.get("/transfer", headers=headers).status_code == 401
        assert client.get("/profile", headers=headers).json() == {"shared": "read-only"}
        assert client.get("/transfer", headers=headers).status_code == 401
