"""With revocations in use, a token that would outlive the entries covering it is refused.

An entry by ``sub``/``client_id`` is kept until its cut-off plus ``max_token_lifetime``; a token living
longer than that could otherwise come back to life once the entry is purged (found in review: a
one-hour token revoked under ``max_token_lifetime=60`` answered 200 again two minutes later).
"""

from __future__ import annotations

import httpx
import pytest
from tests.test_revocation import World, assert_revoked, bearer, guarded_app, world

from tokenguard.revocation import RevocationList

__all__ = ["world"]  # the fixture, shared with test_revocation

pytestmark = pytest.mark.anyio


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
