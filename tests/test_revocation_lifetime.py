"""With revocations in use, a token that would outlive the entries covering it is refused.

An entry by ``sub``/``client_id`` is kept until its cut-off plus ``max_token_lifetime``; a token living
longer than that could otherwise come back to life once the entry is purged (found in review: a
one-hour token revoked under ``max_token_lifetime=60`` answered 200 again two minutes later).
"""

from __future__ import annotations

import httpx
import pytest
from tests.test_revocation import World, assert_revoked, bearer, guarded_app, world

from assurance_kit import RespxIssuer, guard_of, guarded, junk
from tokenguard.revocation import RevocationList
from tokenguard.testing import ManualClock

__all__ = ["world"]  # the fixture, shared with test_revocation

pytestmark = pytest.mark.anyio

LIVES_LONGER = "The access token lives longer than this API accepts."


async def test_a_revoked_long_lived_token_stays_refused_after_its_entry_is_purged(world: World) -> None:
    app = guarded_app(world, max_token_lifetime=60)
    long_lived = world.idp.issue_token("read", expires_in=3600)
    short = world.idp.issue_token("read", expires_in=60)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://api.example.com") as client:
        assert (await client.get("/me", headers=bearer(long_lived))).status_code == 200  # no revocation in use yet
        guard = app.middleware_stack
        while not hasattr(guard, "revoke"):
            guard = guard.app  # type: ignore[union-attr]
        await guard.revoke(sub="someone-else")  # revocations are now in use
        refused = await client.get("/me", headers=bearer(long_lived))  # from the verified cache before
        assert refused.status_code == 401
        assert refused.json()["error_description"] == "The access token lives longer than this API accepts."
        assert (await client.get("/me", headers=bearer(short))).status_code == 200
        await guard.revoke(sub="alice")
        assert_revoked(await client.get("/me", headers=bearer(short)))
        world.clock.advance(200)  # past every entry's life
        revocations: RevocationList = guard.revocations
        revocations.purge()
        assert len(revocations) == 0
        after = await client.get("/me", headers=bearer(long_lived))
        assert after.status_code == 401  # never back to life
        assert after.json()["error_description"] == "The access token lives longer than this API accepts."


async def test_without_revocations_a_long_lived_token_is_accepted_as_before(world: World) -> None:
    """Nothing changes for a guard that never revokes: ``max_token_lifetime`` is not checked."""
    app = guarded_app(world, max_token_lifetime=60)
    long_lived = world.idp.issue_token("read", expires_in=3600)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://api.example.com") as client:
        assert (await client.get("/me", headers=bearer(long_lived))).status_code == 200


# -- introspected tokens without ``exp`` (RFC 7662 §2.2 makes it optional) ----------------------------------


@pytest.mark.respx(assert_all_called=False)
@pytest.mark.parametrize("iat_age", [None, 0])
def test_a_revoked_token_without_exp_never_comes_back_when_its_entry_is_forgotten(
    issuer: RespxIssuer, clock: ManualClock, iat_age: float | None
) -> None:
    """Found by review: the lifetime limit skipped an introspection answer without ``exp``, so an opaque token
    revoked by ``sub`` was accepted again once the entry was forgotten (the issuer, which knows nothing of the
    API's own revocation, still calls it active). Without ``exp`` the token's age (now - ``iat``) is held to
    ``max_token_lifetime``; without ``iat`` either, nothing bounds it, and it is refused once revocations are
    in use."""
    token = junk()
    issuer.activate(token, exp=None, iat=None if iat_age is None else clock() - iat_age)
    with guarded(clock, max_token_lifetime=3600) as client:
        guard = guard_of(client)
        assert client.get("/me", headers=bearer(token)).status_code == 200  # no revocation in use yet
        client.portal.call(lambda: guard.revoke(sub="alice"))
        revoked = client.get("/me", headers=bearer(token))
        assert revoked.status_code == 401
        expected = "The access token was revoked." if iat_age is not None else LIVES_LONGER
        assert revoked.json()["error_description"] == expected
        clock.advance(3600 + 120)  # past the entry's life (cut-off + max_token_lifetime + leeway)
        guard.revocations.purge()
        assert len(guard.revocations) == 0
        later = client.get("/me", headers=bearer(token))
        assert later.status_code == 401  # never back to life
        assert later.json()["error_description"] == LIVES_LONGER


@pytest.mark.respx(assert_all_called=False)
def test_a_token_without_exp_is_accepted_while_younger_than_the_limit(issuer: RespxIssuer, clock: ManualClock) -> None:
    """The age rule refuses only what a forgotten entry could let back: a fresh token without ``exp`` passes
    while its ``iat`` is within ``max_token_lifetime`` (with the leeway), and is refused after."""
    token = junk()
    issuer.activate(token, exp=None, iat=clock())
    with guarded(clock, max_token_lifetime=3600) as client:
        guard = guard_of(client)
        client.portal.call(lambda: guard.revoke(sub="someone-else"))  # revocations are in use
        assert client.get("/me", headers=bearer(token)).status_code == 200
        clock.advance(3600 + 30 - 1)  # the default leeway is 30 s
        assert client.get("/me", headers=bearer(token)).status_code == 200
        clock.advance(2)
        refused = client.get("/me", headers=bearer(token))
        assert (refused.status_code, refused.json()["error_description"]) == (401, LIVES_LONGER)
