"""Refresh-token rotation, replay detection and chain revocation (OAuth 2.1 §4.3.1, RFC 9700 §4.14.2).

The leaked-refresh-token story, played over HTTP against a real DevIdP and checked where it matters:
at the DevIdP's introspection endpoint, and at a real Starlette API guarded by ``TokenGuard``,
where an ordinary route trusts a still-valid JWT until it expires while a ``@sensitive`` route,
which asks the issuer, refuses it at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import TokenGuard, require_scopes, sensitive
from tokenguard.testing import (
    DEFAULT_AUDIENCE,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEV_USER_GRANT,
    RESOURCE_CLIENT_ID,
    RESOURCE_CLIENT_SECRET,
    DevIdP,
    ManualClock,
)

pytestmark = pytest.mark.anyio

CLIENT = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock(dev_idp: DevIdP) -> ManualClock:
    assert isinstance(dev_idp.clock, ManualClock)
    return dev_idp.clock


async def call(idp: DevIdP, path: str, form: dict[str, str], auth: Any = CLIENT) -> httpx.Response:
    async with idp.http_client() as client:
        return await client.post(path, data=form, auth=auth)


async def login(idp: DevIdP, user: str = "alice", scope: str = "read write") -> dict[str, Any]:
    """The legitimate client signs the user in (the development grant) and gets a pair."""
    response = await call(idp, "/token", {"grant_type": DEV_USER_GRANT, "username": user, "scope": scope})
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


async def refresh(idp: DevIdP, refresh_token: str, auth: Any = CLIENT, **form: str) -> httpx.Response:
    return await call(idp, "/token", {"grant_type": "refresh_token", "refresh_token": refresh_token, **form}, auth)


async def active(idp: DevIdP, token: str) -> bool:
    response = await call(idp, "/introspect", {"token": token}, (RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET))
    return response.json()["active"] is True  # type: ignore[no-any-return]


def kinds(idp: DevIdP) -> list[str]:
    return [event.kind for event in idp.events if event.kind != "introspected"]


def api(idp: DevIdP, **options: Any) -> httpx.AsyncClient:
    """A client of a real API: /photos is validated locally, /transfers is @sensitive (introspected)."""

    @require_scopes("read")
    async def photos(request: Request) -> JSONResponse:
        return JSONResponse({"who": request.user.identity, "source": request.auth.source})

    @sensitive
    @require_scopes("write")
    async def transfers(request: Request) -> JSONResponse:
        return JSONResponse({"who": request.user.identity, "source": request.auth.source})

    app = Starlette(routes=[Route("/photos", photos), Route("/transfers", transfers, methods=["POST"])])
    app.add_middleware(
        TokenGuard,
        issuer=idp.issuer,
        audience=DEFAULT_AUDIENCE,
        http_client=idp.http_client,
        client_id=RESOURCE_CLIENT_ID,
        client_secret=RESOURCE_CLIENT_SECRET,
        clock=idp.clock,
        **options,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://api.tokenguard.test")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def statuses(client: httpx.AsyncClient, token: str) -> tuple[int, int]:
    """(status of the locally validated route, status of the sensitive route) for one token."""
    local = await client.get("/photos", headers=bearer(token))
    remote = await client.post("/transfers", headers=bearer(token))
    return local.status_code, remote.status_code


# -- rotation ------------------------------------------------------------------------------------


async def test_each_refresh_issues_a_new_refresh_token_and_links_the_old_one(dev_idp: DevIdP) -> None:
    """Every refresh rotates: the old token is marked used, points at its successor; the newest is active."""
    pair = await login(dev_idp)
    tokens = [pair["refresh_token"]]
    for _ in range(3):
        response = await refresh(dev_idp, tokens[-1])
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        tokens.append(response.json()["refresh_token"])
    assert len(set(tokens)) == 4
    grant = dev_idp.grant_of(tokens[-1])
    assert grant is not None
    assert grant is dev_idp.grant_of(tokens[0])
    chain = grant.refresh_tokens
    assert [state.status for state in chain] == ["used", "used", "used", "active"]
    assert [state.successor for state in chain] == [*grant.chain[1:], None]
    assert [state.parent for state in chain] == [None, *grant.chain[:-1]]
    assert grant.current_refresh is chain[-1]
    assert kinds(dev_idp) == ["issued", "rotated", "rotated", "rotated"]
    assert [await active(dev_idp, token) for token in tokens] == [False, False, False, True]


async def test_rotation_keeps_earlier_access_tokens_valid(dev_idp: DevIdP) -> None:
    """Rotation alone revokes nothing: the access token of the previous round stays active until it expires."""
    pair = await login(dev_idp)
    rotated = (await refresh(dev_idp, pair["refresh_token"])).json()
    assert await active(dev_idp, pair["access_token"])
    assert await active(dev_idp, rotated["access_token"])


async def test_refresh_may_narrow_but_not_widen_the_scope(dev_idp: DevIdP) -> None:
    """RFC 6749 §6: a narrower scope is granted for that access token only; a wider one is invalid_scope."""
    pair = await login(dev_idp, scope="read write")
    narrow = await refresh(dev_idp, pair["refresh_token"], scope="read")
    assert narrow.json()["scope"] == "read"
    wider = await refresh(dev_idp, narrow.json()["refresh_token"], scope="read write admin")
    assert wider.json()["error"] == "invalid_scope"
    full = await refresh(dev_idp, narrow.json()["refresh_token"])
    assert full.json()["scope"] == "read write"  # the grant keeps its original scope


async def test_refresh_token_is_bound_to_its_client(dev_idp: DevIdP) -> None:
    """Another client presenting the refresh token gets invalid_grant, and the grant is not disturbed."""
    dev_idp.register_client("other", "other-secret")
    pair = await login(dev_idp)
    stolen = await refresh(dev_idp, pair["refresh_token"], auth=("other", "other-secret"))
    assert stolen.json()["error"] == "invalid_grant"
    assert (await refresh(dev_idp, pair["refresh_token"])).status_code == 200


async def test_refresh_token_expires(dev_idp: DevIdP, clock: ManualClock) -> None:
    """A refresh token older than refresh_token_ttl is invalid_grant."""
    pair = await login(dev_idp)
    clock.advance(86_400)
    response = await refresh(dev_idp, pair["refresh_token"])
    assert response.json()["error"] == "invalid_grant"


async def test_client_without_refresh_grant_gets_no_refresh_token(dev_idp: DevIdP) -> None:
    """A client not registered for refresh_token gets access tokens only."""
    dev_idp.register_client("short", "short-secret", grant_types=[DEV_USER_GRANT])
    response = await call(
        dev_idp, "/token", {"grant_type": DEV_USER_GRANT, "username": "alice"}, ("short", "short-secret")
    )
    assert response.status_code == 200
    assert "refresh_token" not in response.json()


# -- replay detection and chain revocation --------------------------------------------------------


async def test_replayed_refresh_token_revokes_the_whole_chain(dev_idp: DevIdP) -> None:
    """The story: the attacker refreshes first with a leaked token; the legitimate replay revokes everything."""
    legitimate = await login(dev_idp)
    leaked = legitimate["refresh_token"]
    attacker = await refresh(dev_idp, leaked)
    assert attacker.status_code == 200
    replay = await refresh(dev_idp, leaked)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert kinds(dev_idp)[-2:] == ["replay_detected", "chain_revoked"]
    stolen = attacker.json()
    # Every refresh token and every access token of the grant is dead, the attacker's included.
    assert (await refresh(dev_idp, stolen["refresh_token"])).json()["error"] == "invalid_grant"
    for token in (leaked, stolen["refresh_token"], legitimate["access_token"], stolen["access_token"]):
        assert not await active(dev_idp, token)
    grant = dev_idp.grant_of(leaked)
    assert grant is not None
    assert grant.revoked_reason == "refresh_token_replay"
    assert [state.status for state in grant.refresh_tokens] == ["used", "revoked"]
    assert {state.id for state in grant.access_tokens} <= dev_idp.revoked_jtis
    detail = next(event.detail for event in dev_idp.events if event.kind == "chain_revoked")
    assert detail["refresh_tokens"] == grant.chain
    assert len(detail["access_tokens"]) == 2


async def test_replay_of_an_old_token_deep_in_the_chain(dev_idp: DevIdP) -> None:
    """Presenting the first refresh token after several rotations revokes the newest one too."""
    pair = await login(dev_idp)
    second = (await refresh(dev_idp, pair["refresh_token"])).json()
    third = (await refresh(dev_idp, second["refresh_token"])).json()
    assert (await refresh(dev_idp, pair["refresh_token"])).json()["error"] == "invalid_grant"
    assert not await active(dev_idp, third["refresh_token"])
    assert not await active(dev_idp, third["access_token"])


async def test_a_revoked_refresh_token_is_refused_without_a_new_detection(dev_idp: DevIdP) -> None:
    """Once a chain is revoked, its unused refresh token is invalid_grant and no replay is reported again."""
    pair = await login(dev_idp)
    attacker = (await refresh(dev_idp, pair["refresh_token"])).json()
    await refresh(dev_idp, pair["refresh_token"])
    before = kinds(dev_idp)
    response = await refresh(dev_idp, attacker["refresh_token"])
    assert response.json()["error"] == "invalid_grant"
    assert kinds(dev_idp) == before


async def test_concurrent_refreshes_with_one_token_count_as_a_replay(dev_idp: DevIdP) -> None:
    """Two refreshes racing with the same token: exactly one wins, the other is a replay and revokes the grant."""
    pair = await login(dev_idp)
    responses = await asyncio.gather(*(refresh(dev_idp, pair["refresh_token"]) for _ in range(2)))
    assert sorted(response.status_code for response in responses) == [200, 400]
    winner = next(response for response in responses if response.status_code == 200).json()
    assert not await active(dev_idp, winner["refresh_token"])
    assert kinds(dev_idp).count("chain_revoked") == 1


async def test_revoking_a_refresh_token_revokes_its_chain(dev_idp: DevIdP) -> None:
    """RFC 7009 §2.1: revoking a refresh token also invalidates the access tokens of its grant."""
    pair = await login(dev_idp)
    rotated = (await refresh(dev_idp, pair["refresh_token"])).json()
    response = await call(dev_idp, "/revoke", {"token": rotated["refresh_token"], "token_type_hint": "access_token"})
    assert response.status_code == 200
    assert kinds(dev_idp)[-2:] == ["revoked", "chain_revoked"]
    for token in (pair["access_token"], rotated["access_token"], rotated["refresh_token"]):
        assert not await active(dev_idp, token)


def test_revoke_grant_from_python(dev_idp: DevIdP) -> None:
    """revoke_grant(id) revokes a grant found through grant_of; an unknown id is False."""
    pair = dev_idp.issue_user_tokens("alice", ["read"])
    grant = dev_idp.grant_of(pair.access_token)
    assert grant is not None
    assert dev_idp.revoke_grant(grant.id, reason="test")
    assert grant.revoked
    assert grant.revoked_reason == "test"
    assert dev_idp.introspect(pair.access_token) == {"active": False}
    assert not dev_idp.revoke_grant("grant_unknown")


# -- what a guarded API sees ---------------------------------------------------------------------


async def test_after_replay_the_sensitive_route_refuses_the_attackers_jwt_at_once(
    dev_idp: DevIdP, clock: ManualClock
) -> None:
    """After chain revocation the attacker's JWT still passes local validation, but @sensitive refuses it."""
    legitimate = await login(dev_idp)
    stolen = (await refresh(dev_idp, legitimate["refresh_token"])).json()
    async with api(dev_idp, introspection_cache_ttl=0) as client:
        assert await statuses(client, stolen["access_token"]) == (200, 200)
        await refresh(dev_idp, legitimate["refresh_token"])  # the legitimate client's turn: a replay
        assert await statuses(client, stolen["access_token"]) == (200, 401)
        assert await statuses(client, legitimate["access_token"]) == (200, 401)
        refused = await client.post("/transfers", headers=bearer(stolen["access_token"]))
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        clock.advance(300 + 30)  # the JWT's lifetime plus the guard's leeway
        assert await statuses(client, stolen["access_token"]) == (401, 401)


async def test_the_guards_introspection_cache_delays_revocation_by_its_ttl(dev_idp: DevIdP, clock: ManualClock) -> None:
    """With the default 30 s introspection cache, a revoked JWT is refused once the cached answer expires."""
    legitimate = await login(dev_idp)
    stolen = (await refresh(dev_idp, legitimate["refresh_token"])).json()
    async with api(dev_idp) as client:
        assert await statuses(client, stolen["access_token"]) == (200, 200)
        await refresh(dev_idp, legitimate["refresh_token"])
        assert await statuses(client, stolen["access_token"]) == (200, 200)  # still cached
        clock.advance(31)
        assert await statuses(client, stolen["access_token"]) == (200, 401)


async def test_after_replay_opaque_tokens_are_refused_everywhere(dev_idp: DevIdP) -> None:
    """Opaque access tokens are always introspected, so after the replay both routes refuse them."""
    dev_idp.add_audience(DEFAULT_AUDIENCE, format="opaque")
    legitimate = await login(dev_idp)
    stolen = (await refresh(dev_idp, legitimate["refresh_token"])).json()
    assert stolen["access_token"].count(".") == 0
    async with api(dev_idp, introspection_cache_ttl=0) as client:
        assert await statuses(client, stolen["access_token"]) == (200, 200)
        await refresh(dev_idp, legitimate["refresh_token"])
        assert await statuses(client, stolen["access_token"]) == (401, 401)
        assert await statuses(client, legitimate["access_token"]) == (401, 401)
    assert dev_idp.revoked_jtis == frozenset()  # nothing to list by jti: opaque tokens are revoked in place


async def test_reauthentication_after_revocation_gets_a_fresh_working_grant(dev_idp: DevIdP) -> None:
    """After the chain is revoked, signing in again yields a new grant whose tokens work everywhere."""
    legitimate = await login(dev_idp)
    await refresh(dev_idp, legitimate["refresh_token"])
    await refresh(dev_idp, legitimate["refresh_token"])
    again = await login(dev_idp)
    old, new = dev_idp.grant_of(legitimate["refresh_token"]), dev_idp.grant_of(again["refresh_token"])
    assert old is not None
    assert new is not None
    assert old.revoked
    assert not new.revoked
    async with api(dev_idp) as client:
        assert await statuses(client, again["access_token"]) == (200, 200)
    assert (await refresh(dev_idp, again["refresh_token"])).status_code == 200


async def test_a_chain_rotated_past_the_ledger_still_has_its_replay_detected(dev_idp_keys: Any) -> None:
    """Found by review: the refresh-token records were an LRU of ``max_entries``, so an attacker rotating a
    stolen chain past that many times pushed the stolen token's record out; the victim's replay was then a
    plain "invalid", and the attacker's chain survived. A live record is never forgotten now: past the
    bound, refreshing answers 503 until records expire, and the replay still revokes the whole chain."""
    idp = DevIdP(keys=dev_idp_keys, clock=ManualClock(), max_entries=8)
    leaked = (await login(idp))["refresh_token"]
    current, answers = leaked, []
    for _ in range(12):  # the attacker, far past the 8 records the ledger holds
        response = await refresh(idp, current)
        answers.append(response.status_code)
        if response.status_code == 200:
            current, attacker_access = response.json()["refresh_token"], response.json()["access_token"]
    assert answers == [200] * 7 + [503] * 5
    assert (await refresh(idp, current)).json()["error"] == "temporarily_unavailable"
    replay = await refresh(idp, leaked)  # the victim
    assert replay.json()["error"] == "invalid_grant"
    assert kinds(idp)[-2:] == ["replay_detected", "chain_revoked"]
    assert not await active(idp, current)
    assert not await active(idp, attacker_access)
    assert isinstance(idp.clock, ManualClock)
    idp.clock.advance(86_400 + 1)  # every refresh token expired: the ledger takes new ones
    assert (await refresh(idp, (await login(idp))["refresh_token"])).status_code == 200


async def test_a_full_ledger_answers_503_without_spending_the_authorization_code(dev_idp_keys: Any) -> None:
    """ "Try again later" must leave the code usable: a spent one would make the retry read as a stolen code's
    reuse (``code_reuse_detected``) and revoke the grant (found by review of the ledger's 503)."""
    idp = DevIdP(keys=dev_idp_keys, clock=ManualClock(), max_entries=2, refresh_token_ttl=30)
    for _ in range(2):
        await login(idp)  # two live refresh tokens: the ledger holds no more
    verifier = "v" * 43
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    authorization = {
        "response_type": "code",
        "client_id": DEFAULT_CLIENT_ID,
        "redirect_uri": "http://127.0.0.1:8765/callback",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "login_hint": "alice",
        "scope": "read",
    }
    location = idp.authorize(authorization)
    code = parse_qs(urlsplit(location).query)["code"][0]
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier}
    form["redirect_uri"] = "http://127.0.0.1:8765/callback"
    full = await call(idp, "/token", form)
    assert (full.status_code, full.json()["error"]) == (503, "temporarily_unavailable")
    assert isinstance(idp.clock, ManualClock)
    idp.clock.advance(31)  # the two refresh tokens expire; the code (60 s) does not
    retried = await call(idp, "/token", form)
    assert retried.status_code == 200, retried.text
    assert "code_reuse_detected" not in kinds(idp)
    # A client that gets no refresh token needs no room: a full ledger does not refuse it (found by review).
    await login(idp)  # with the retried exchange's, two live refresh tokens again: full
    refused = await call(idp, "/token", {"grant_type": DEV_USER_GRANT, "username": "bob", "scope": "read"})
    assert refused.status_code == 503
    idp.register_client(
        "no-refresh", "s", redirect_uris=["http://127.0.0.1:8765/callback"], grant_types=["authorization_code"]
    )
    location = idp.authorize({**authorization, "client_id": "no-refresh"})
    form["code"] = parse_qs(urlsplit(location).query)["code"][0]
    plain = await call(idp, "/token", form, auth=("no-refresh", "s"))
    assert plain.status_code == 200, plain.text
    assert "refresh_token" not in plain.json()
