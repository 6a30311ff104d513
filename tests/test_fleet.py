"""Fleet mode (``shared_store=``) against a real ``redis-server``: several guards, one store.

Each guard here stands for a process of a fleet: its own ``RedisStore`` (its own connections), its own
caches, its own revocation list; they share only Redis, under a prefix of the test's own. Their issuer
is a DevIdP reached through respx, which counts the introspection calls (``tests/test_revocation.py``).

- Shared introspection: one call for a token whichever guards ask, at once; negative answers shared
  too; keys are keyed hashes (never the token), values MAC'd (a tampered or moved value is ignored),
  lifetimes bounded by the answer's; a lock whose holder died delays an answer, never loses it.
- The revocation feed: ``revoke`` on one guard refuses on another within a second; a guard started
  later reads the whole list at startup; entries expire in Redis.
- Outage drills with a Redis of the test's own, killed and restarted on its port under load: nothing
  answers 500, a revoked token is never let through, the list is marked stale, ``revoke`` while down
  is applied at once and published once Redis is back; failing closed answers 503 and recovers.

Nothing sleeps to decide a verdict: waits are polls with a deadline, on the feed's own progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
import secrets
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette

from conftest import RedisServer
from test_revocation import AUDIENCE, REVOKED, T0, World, assert_revoked, bearer, guard_of, guarded_app, jti_of
from tokenguard import TokenGuard
from tokenguard.dpop import DPoPKey
from tokenguard.fleet import SharedAnswers, stop_if_cancelled
from tokenguard.redis_store import RedisStore
from tokenguard.revocation import Revocation
from tokenguard.store import FleetStore, RevocationFeed, StoreFull, StoreUnavailable
from tokenguard.testing import KeyRing, ManualClock

redis_asyncio = pytest.importorskip("redis.asyncio", reason="the redis package is not installed (the redis extra)")

pytestmark = pytest.mark.anyio


# -- fixtures and helpers --------------------------------------------------------------------------------


@pytest.fixture
def world(dev_idp_keys: KeyRing) -> Iterator[World]:
    with respx.mock(assert_all_called=False) as router:
        yield World(router, dev_idp_keys, ManualClock(T0))


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex}:"


@pytest.fixture
async def raw(redis_server: str) -> AsyncIterator[Any]:
    """A plain client on the session's server, to look at (and tamper with) what the guards wrote."""
    client = redis_asyncio.Redis.from_url(redis_server)
    yield client
    await client.aclose()


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[TokenGuard]:
    """The app's lifespan, in this loop: startup (the guard reads the revocation list), then shutdown."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield guard_of(app)
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


@asynccontextmanager
async def fleet(world: World, url: str, prefix: str, count: int = 2, **options: Any) -> AsyncIterator[list[Member]]:
    """``count`` guards (started), each with its own RedisStore on ``url`` under ``prefix``."""
    async with AsyncExitStack() as stack:
        members = []
        for _ in range(count):
            app = guarded_app(world, shared_store=RedisStore(url, prefix=prefix), **options)
            guard = await stack.enter_async_context(running(app))
            transport = httpx.ASGITransport(app=app)
            client = await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url=AUDIENCE))
            members.append(Member(app, guard, client))
        yield members


class Member:
    """One guard of the fleet: its app, the TokenGuard instance, a client to it."""

    def __init__(self, app: Starlette, guard: TokenGuard, client: httpx.AsyncClient) -> None:
        self.app, self.guard, self.client = app, guard, client

    async def get(self, token: str) -> httpx.Response:
        return await self.client.get("/me", headers=bearer(token))

    async def post(self, token: str) -> httpx.Response:
        return await self.client.post("/transfer", headers=bearer(token))

    def shared(self) -> SharedAnswers:
        shared = self.guard.authenticator.introspector.shared  # type: ignore[union-attr]
        assert shared is not None
        return shared

    def fleet_status(self) -> dict[str, Any]:
        return self.guard.status()["fleet"]


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``check`` (small awaits on the event loop, so the feed runs) until true; seconds it took."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"not within {within} s: {what}"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def keys_and_values(raw: Any, prefix: str) -> dict[bytes, list[bytes]]:
    """Every key under ``prefix`` and what it holds (a string's value, a sorted set's members)."""
    found: dict[bytes, list[bytes]] = {}
    async for key in raw.scan_iter(match=f"{prefix}*"):
        kind = await raw.type(key)
        if kind == b"string":
            found[key] = [await raw.get(key)]
        elif kind == b"zset":
            found[key] = list(await raw.zrange(key, 0, -1))
        else:
            found[key] = []
    return found


# -- shared introspection ---------------------------------------------------------------------------------


async def test_concurrent_requests_on_two_guards_make_one_introspection_call(
    world: World, redis_server: str, prefix: str
) -> None:
    async with fleet(world, redis_server, prefix) as (a, b):
        first, second = world.idp.issue_token("read"), world.idp.issue_token("read", subject="bob")
        inactive = world.idp.issue_token("read", subject="carol")
        world.idp.revoke(inactive)  # at the issuer: only introspection can tell
        for value, status, calls in ((first, 200, 1), (second, 200, 2), (inactive, 401, 3)):
            responses = await asyncio.gather(*(member.post(value) for _ in range(12) for member in (a, b)))
            assert [response.status_code for response in responses] == [status] * 24
            assert world.introspections == calls, "one call per token for the whole fleet"
        assert responses[0].json()["error_description"] == "The access token is not active."
        # Each guard asked or read the store once per token; the rest shared its in-process flight.
        hits = a.fleet_status()["shared_introspection"]["hits"] + b.fleet_status()["shared_introspection"]["hits"]
        assert hits == 3
        # A third guard, caches empty, takes the shared answers too.
        async with fleet(world, redis_server, prefix, count=1) as (c,):
            assert (await c.post(first)).status_code == 200
            assert (await c.post(inactive)).status_code == 401
            assert world.introspections == 3


async def test_keys_are_keyed_hashes_and_no_key_or_value_holds_the_token(
    world: World, redis_server: str, prefix: str, raw: Any
) -> None:
    async with fleet(world, redis_server, prefix) as (a, b):
        jwt_token = world.idp.issue_token("read")
        opaque = world.idp.issue_token("read", subject="dave", token_format="opaque")
        for value in (jwt_token, opaque):
            assert (await a.post(value)).status_code == 200
            assert (await b.post(value)).status_code == 200
        await a.guard.revoke(sub="nobody")
        stored = await keys_and_values(raw, prefix)
    names = sorted(key.decode() for key in stored)
    hexes = [name[len(prefix) + len("intro:") :] for name in names if name.startswith(f"{prefix}intro:")]
    assert len(hexes) == 2, names
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in hexes), names
    expected = {f"{prefix}intro:{digest}" for digest in hexes} | {f"{prefix}revocations", f"{prefix}revocations:key"}
    assert set(names) == expected
    for value in (jwt_token, opaque):
        plain = hashlib.sha256(value.encode()).hexdigest()
        assert plain not in hexes  # keyed: nobody without the secret can tell whether a token is stored
        assert a.shared().key(value)[len("intro:") :] in hexes
        for key, contents in stored.items():
            assert value.encode() not in key
            assert all(value.encode() not in content for content in contents)
        assert value.split(".")[-1].encode() not in b"".join(b"".join(contents) for contents in stored.values())


async def test_a_tampered_or_moved_answer_is_ignored(world: World, redis_server: str, prefix: str, raw: Any) -> None:
    async with fleet(world, redis_server, prefix) as (a, b):
        good, bad = world.idp.issue_token("read"), world.idp.issue_token("read", subject="mallory")
        world.idp.revoke(bad)
        assert (await a.post(good)).status_code == 200
        assert (await a.post(bad)).status_code == 401
        assert world.introspections == 2
        good_key, bad_key = prefix + a.shared().key(good), prefix + a.shared().key(bad)
        # One byte of the good answer flipped: b must ask the issuer itself, and leaves a good answer.
        stored = bytearray(await raw.get(good_key))
        stored[len(stored) // 2] ^= 0x01
        await raw.set(good_key, bytes(stored), keepttl=True)
        assert (await b.post(good)).status_code == 200
        assert world.introspections == 3
        assert await raw.get(good_key) != bytes(stored)
        # The good answer moved under the revoked token's key: MAC'd with its key, so it is no answer for
        # another token. b asks the issuer, which says inactive.
        await raw.set(bad_key, await raw.get(good_key), keepttl=True)
        response = await b.post(bad)
        assert response.status_code == 401
        assert response.json()["error_description"] == "The access token is not active."
        assert world.introspections == 4
        # Garbage too short to hold a MAC, and a value that is not JSON behind a wrong MAC.
        for junk in (b"", b"x", b"\x00" * 16 + b'{"a":{"active":true}}'):
            await raw.set(good_key, junk, px=30_000)
            async with fleet(world, redis_server, prefix, count=1) as (c,):  # caches empty
                assert (await c.post(good)).status_code == 200
        assert world.introspections == 7


async def test_a_shared_answer_lives_no_longer_than_the_cache_ttl_or_the_token(
    world: World, redis_server: str, prefix: str, raw: Any
) -> None:
    async with fleet(world, redis_server, prefix, count=1, introspection_cache_ttl=20) as (a,):
        long_lived = world.idp.issue_token("read")  # 300 s left
        short_lived = world.idp.issue_token("read", expires_in=8)
        inactive = world.idp.issue_token("read", subject="erin")
        world.idp.revoke(inactive)
        assert (await a.post(long_lived)).status_code == 200
        assert (await a.post(short_lived)).status_code == 200
        assert (await a.post(inactive)).status_code == 401
        ttl = {
            name: await raw.pttl(prefix + a.shared().key(value))
            for name, value in (("long", long_lived), ("short", short_lived), ("inactive", inactive))
        }
    assert 15_000 < ttl["long"] <= 20_000  # the introspection TTL
    assert 4_000 < ttl["short"] <= 8_000  # the token's remaining life
    assert 0 < ttl["inactive"] <= 5_000  # the negative TTL


async def test_a_shared_answer_is_checked_again_by_the_guard_that_reads_it(
    world: World, redis_server: str, prefix: str
) -> None:
    """The store holds the issuer's answer, not a verdict: the reader checks it against its own clock."""
    async with fleet(world, redis_server, prefix, count=1) as (a,):
        value = world.idp.issue_token("read", token_format="opaque", expires_in=8)
        assert (await a.get(value)).status_code == 200
        world.clock.advance(8 + 31)  # past exp + leeway; in Redis the answer still lives (real time)
        async with fleet(world, redis_server, prefix, count=1) as (b,):
            response = await b.get(value)
            assert response.status_code == 401
            assert response.json()["error_description"] == "The access token has expired."
            assert b.fleet_status()["shared_introspection"]["hits"] == 1
        assert world.introspections == 1


@pytest.mark.parametrize(("lock_ms", "counter"), [(1300, "waits"), (60_000, "takeovers")])
async def test_a_lock_whose_holder_died_delays_the_answer_and_never_loses_it(
    world: World, redis_server: str, prefix: str, raw: Any, lock_ms: int, counter: str
) -> None:
    """A holder that died leaves its lock: with a lifetime (1.3 s for a 0.3 s timeout), the lock lapses
    and a waiter takes it; a lock that would outlive the wait (a hung holder) is overtaken after it."""
    async with fleet(world, redis_server, prefix, count=1, introspection_timeout=0.3) as (a,):
        shared = a.shared()
        assert shared.lock_ttl == pytest.approx(1.3)
        assert shared.wait == pytest.approx(1.3)
        value = world.idp.issue_token("read")
        lock = f"{prefix}{shared.key(value)}:lock"
        assert await raw.set(lock, b"x", px=lock_ms, nx=True)
        started = time.monotonic()
        response = await a.post(value)
        waited = time.monotonic() - started
        assert response.status_code == 200
        assert world.introspections == 1
        status = a.fleet_status()["shared_introspection"]
        assert status["waits"] == 1
        assert status["takeovers"] == (1 if counter == "takeovers" else 0)
        assert waited >= 1.0, "the lock was honoured while it lived"
        assert await raw.exists(prefix + shared.key(value)) == 1  # and the answer is shared now
        assert (await a.post(value)).status_code == 200
        assert world.introspections == 1


async def test_a_waiter_takes_the_answer_of_a_holder_that_finishes(
    world: World, redis_server: str, prefix: str, raw: Any
) -> None:
    """The lock is held by another process which then stores its answer: the waiter uses it, no call."""
    async with fleet(world, redis_server, prefix, count=2) as (a, b):
        value = world.idp.issue_token("read")
        assert (await a.post(value)).status_code == 200  # a's answer, as b's other process would leave it
        key = prefix + a.shared().key(value)
        answer, ttl = await raw.get(key), await raw.pttl(key)
        await raw.delete(key)
        await raw.set(key + ":lock", b"x", px=60_000)

        async def holder_finishes() -> None:
            await asyncio.sleep(0.2)  # the other process's call takes a while
            await raw.set(key, answer, px=ttl)
            await raw.delete(key + ":lock")

        finishing = asyncio.ensure_future(holder_finishes())
        assert (await b.post(value)).status_code == 200
        await finishing
        assert world.introspections == 1
        assert b.fleet_status()["shared_introspection"]["waits"] == 1


class LateClaim(RedisStore):
    """A RedisStore that runs ``before_claim`` (once) just before its next ``claim`` reaches Redis."""

    before_claim: Callable[[], Awaitable[None]] | None = None

    async def claim(self, key: str, owner: bytes, ttl: float) -> bool:
        hook, self.before_claim = self.before_claim, None
        if hook is not None:
            await hook()
        return await super().claim(key, owner, ttl)


async def test_an_answer_stored_between_a_look_and_a_claim_is_used(
    world: World, redis_server: str, prefix: str, raw: Any
) -> None:
    """The holder stores its answer and lets go of the lock after this guard looked (nothing) and
    before its claim (free): the claim succeeds, and the answer is there. No second call."""
    store = LateClaim(redis_server, prefix=prefix)
    app = guarded_app(world, shared_store=store)
    async with fleet(world, redis_server, prefix, count=1) as (a,), running(app) as guard:
        value = world.idp.issue_token("read")
        assert (await a.post(value)).status_code == 200  # the answer the other process will leave
        key = prefix + a.shared().key(value)
        answer, ttl = await raw.get(key), await raw.pttl(key)
        await raw.delete(key)

        async def holder_stores_and_lets_go() -> None:
            await raw.set(key, answer, px=ttl)

        store.before_claim = holder_stores_and_lets_go
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=AUDIENCE) as client:
            assert (await client.post("/transfer", headers=bearer(value))).status_code == 200
        assert store.before_claim is None  # the interleaving happened
        assert world.introspections == 1
        assert await raw.exists(key + ":lock") == 0  # the lock taken for nothing was given back
        assert guard.status()["fleet"]["shared_introspection"]["hits"] == 1


async def test_a_recheck_ignores_a_shared_answer_from_before_its_cutoff(
    world: World, redis_server: str, prefix: str
) -> None:
    async with fleet(world, redis_server, prefix) as (a, b):
        value = world.idp.issue_token("read", token_format="opaque")
        assert (await a.get(value)).status_code == 200
        assert (await b.get(value)).status_code == 200
        assert world.introspections == 1
        world.clock.advance(2)
        await a.guard.fleet.revoke(Revocation("sub", "alice", world.clock() - 1, T0 + 600, action="recheck"))
        assert (await a.get(value)).status_code == 200
        assert world.introspections == 2
        status = a.fleet_status()["shared_introspection"]
        assert (status["waits"], status["takeovers"]) == (0, 0)  # the older answer in the store held nothing up
        await eventually(lambda: _has_entries(b.guard), 1.0, "b hears of the recheck")
        assert (await b.get(value)).status_code == 200  # the answer a left after the cut-off
        assert world.introspections == 2


async def _has_entries(guard: TokenGuard) -> bool:
    return len(guard.revocations) > 0


# -- the revocation feed ----------------------------------------------------------------------------------


async def test_a_revocation_on_one_guard_is_refused_by_another_within_a_second(
    world: World, redis_server: str, prefix: str, raw: Any
) -> None:
    async with fleet(world, redis_server, prefix, count=2) as (a, b):
        assert not a.fleet_status()["revocations"]["stale"]
        revoked, kept = world.idp.issue_token("read"), world.idp.issue_token("read")
        for member in (a, b):
            assert (await member.get(revoked)).status_code == 200  # in both verified caches
        await a.guard.revoke(jti=jti_of(revoked))
        assert_revoked(await a.get(revoked))  # here at once

        async def refused_on_b() -> bool:
            return (await b.get(revoked)).status_code == 401

        await eventually(refused_on_b, 1.0, "the other guard refuses the revoked token")
        assert_revoked(await b.get(revoked))
        assert (await b.get(kept)).status_code == 200
        assert b.fleet_status()["revocations"]["received"] >= 1
        assert "revoked" in world.reasons()
        # A guard started after the revocation reads the list at startup and refuses at once.
        async with fleet(world, redis_server, prefix, count=1) as (c,):
            assert len(c.guard.revocations) == 1
            assert_revoked(await c.get(revoked))
            assert (await c.get(kept)).status_code == 200
            assert c.fleet_status()["revocations"]["resyncs"] == 1


async def test_entries_in_redis_expire_with_the_entry(world: World, redis_server: str, prefix: str, raw: Any) -> None:
    async with fleet(world, redis_server, prefix, count=1) as (a,):
        await a.guard.revoke(jti="j-1", expires_at=T0 + 100)
        await a.guard.revoke(sub="alice")
    members = await raw.zrange(f"{prefix}revocations", 0, -1, withscores=True)
    entries = {Revocation.decode(member[32:]): score for member, score in members}  # after the entry's MAC
    assert len(entries) == 2
    for entry, score in entries.items():
        assert score == entry.expires_at
    assert {entry.kind for entry in entries} == {"jti", "sub"}
    latest = max(entries.values())
    ttl = await raw.pttl(f"{prefix}revocations")
    # The key lives as long as its latest entry, counted on the guard's clock (here 1800000000, not Redis's).
    assert (latest - T0) * 1000 - 5_000 < ttl <= (latest - T0) * 1000


async def test_entries_keep_their_life_whatever_the_redis_hosts_clock_says(
    redis_server: str, prefix: str, raw: Any
) -> None:
    """A guard whose clock is days behind (or ahead of) the Redis host's: the key's lifetime is relative."""
    store = RedisStore(redis_server, prefix=prefix)
    try:
        for skew in (-3 * 86400, 3 * 86400):
            now = time.time() + skew
            entry = Revocation("sub", f"user{skew}", now, now + 600)
            await store.record_revocation(entry.encode(), entry.expires_at, now=now, max_entries=10)
            assert 590_000 < await raw.pttl(f"{prefix}revocations") <= 600_000
            assert entry.encode() in await store.revocations(now)
            await raw.delete(f"{prefix}revocations")
        # An entry already expired is not kept (nor published): it changes nothing.
        now = time.time()
        stale = Revocation("sub", "old", now - 100, now - 1)
        await store.record_revocation(stale.encode(), stale.expires_at, now=now, max_entries=10)
        assert await raw.exists(f"{prefix}revocations") == 0
    finally:
        await store.aclose()


async def test_the_shared_list_refuses_past_its_cap_without_dropping_a_live_entry(
    redis_server: str, prefix: str
) -> None:
    store = RedisStore(redis_server, prefix=prefix)
    try:
        now = time.time()
        entries = [Revocation("jti", f"j{index}", math.inf, now + 60 + index) for index in range(3)]
        for entry in entries:
            await store.record_revocation(entry.encode(), entry.expires_at, now=now, max_entries=3)
        extra = Revocation("jti", "j9", math.inf, now + 600)
        with pytest.raises(StoreFull):
            await store.record_revocation(extra.encode(), extra.expires_at, now=now, max_entries=3)
        # The same entry again is no new one; after one expired, there is room.
        await store.record_revocation(entries[0].encode(), entries[0].expires_at, now=now, max_entries=3)
        assert sorted(await store.revocations(now)) == sorted(entry.encode() for entry in entries)
        later = now + 60.5
        await store.record_revocation(extra.encode(), extra.expires_at, now=later, max_entries=3)
        assert sorted(await store.revocations(later)) == sorted(e.encode() for e in [*entries[1:], extra])
    finally:
        await store.aclose()


async def test_a_guard_whose_list_is_full_keeps_reading_the_feed(
    world: World, redis_server: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry a guard cannot hold (its own list is full of live entries) is logged and counted; the
    feed goes on (it is not stale, it does not resubscribe), and holds the entries it can."""
    async with fleet(world, redis_server, prefix, count=1) as (a,):
        small = guarded_app(world, shared_store=RedisStore(redis_server, prefix=prefix), revocation_max_entries=2)
        async with running(small) as b:
            for index in range(3):
                await a.guard.revoke(jti=f"j{index}")
            await eventually(lambda: _overflowed(b, 1), 1.0, "the third entry does not fit")
            assert len(b.revocations) == 2
            assert not b.fleet.stale
            assert b.fleet.status()["resyncs"] == 1
        # Started with three live entries in the store: it reads what it can and serves.
        fresh = guarded_app(world, shared_store=RedisStore(redis_server, prefix=prefix), revocation_max_entries=2)
        async with running(fresh) as c:
            assert not c.fleet.stale
            assert len(c.revocations) == 2
            assert c.fleet.status()["overflow"] == 1
    assert "revocation list is full" in caplog.text


async def _overflowed(guard: TokenGuard, count: int) -> bool:
    return bool(guard.fleet.status()["overflow"] == count)


@pytest.mark.parametrize("ttl", [0, -1, math.inf, math.nan, True, "60"], ids=repr)
async def test_both_stores_refuse_a_lifetime_that_is_not_one(redis_server: str, prefix: str, ttl: Any) -> None:
    """A NaN lifetime would make every replay look new: a bug in the caller, refused by either store."""
    from tokenguard.store import MemoryStore

    redis_store = RedisStore(redis_server, prefix=prefix)
    try:
        for store in (MemoryStore(), redis_store):
            with pytest.raises(ValueError, match="ttl"):
                await store.add_once("dpop-jti:x", ttl)
            assert await store.add_once("dpop-jti:x", 60) is True
            assert await store.add_once("dpop-jti:x", 60) is False
    finally:
        await redis_store.aclose()


# -- a store the feed cannot always write to ------------------------------------------------------------


class FlakyWrites:
    """A RedisStore whose ``record_revocation`` fails while ``failing``; reads and the feed work."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.failing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def record_revocation(self, entry: bytes, expires_at: float, *, now: float, max_entries: int) -> None:
        if self.failing:
            raise StoreUnavailable("Redis did not answer EVAL revoke within 0.5 s")
        await self.store.record_revocation(entry, expires_at, now=now, max_entries=max_entries)

    async def add_once(self, key: str, ttl: float) -> bool:
        return await self.store.add_once(key, ttl)

    async def aclose(self) -> None:
        await self.store.aclose()

    async def get(self, key: str) -> bytes | None:
        return await self.store.get(key)

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        await self.store.put(key, value, ttl)

    async def claim(self, key: str, owner: bytes, ttl: float) -> bool:
        return await self.store.claim(key, owner, ttl)

    async def release(self, key: str, owner: bytes) -> None:
        await self.store.release(key, owner)

    async def revocations(self, now: float) -> list[bytes]:
        return await self.store.revocations(now)

    async def subscribe(self) -> RevocationFeed:
        return await self.store.subscribe()


async def test_a_revocation_the_store_refused_is_published_once_it_takes_writes_again(
    world: World, redis_server: str, prefix: str
) -> None:
    """The subscription stays up (no resync happens): the pending entry is still published."""
    flaky = FlakyWrites(RedisStore(redis_server, prefix=prefix))
    assert isinstance(flaky, FleetStore)
    app = guarded_app(world, shared_store=flaky)
    async with running(app) as guard, fleet(world, redis_server, prefix, count=1) as (b,):
        value = world.idp.issue_token("read")
        with pytest.raises(StoreUnavailable):
            await guard.revoke(jti=jti_of(value))
        assert guard.fleet.pending == 1
        assert len(guard.revocations) == 1  # applied here at once
        assert (await b.get(value)).status_code == 200
        flaky.failing = False
        await eventually(lambda: _pending_is(guard, 0), 3.0, "the pending entry is published")
        await eventually(lambda: _has_entries(b.guard), 1.0, "the other guard hears of it")
        assert_revoked(await b.get(value))
        assert guard.fleet.status()["resyncs"] == 1  # without resubscribing


async def test_entries_waiting_for_the_store_are_bounded(world: World, redis_server: str, prefix: str) -> None:
    """A long outage with many revocations: at most ``max_entries`` wait, the expired ones dropped first."""
    flaky = FlakyWrites(RedisStore(redis_server, prefix=prefix))
    guard = guard_of(guarded_app(world, shared_store=flaky, revocation_max_entries=2))
    for index in range(2):
        with pytest.raises(StoreUnavailable):
            await guard.revoke(jti=f"j{index}", expires_at=T0 + 10)
    assert guard.fleet.pending == 2
    world.clock.advance(10 + guard.config.leeway)  # both expired, here and in the queue
    with pytest.raises(StoreUnavailable):
        await guard.revoke(jti="j2")
    assert guard.fleet.pending == 1
    with pytest.raises(StoreUnavailable):
        await guard.revoke(jti="j3")
    assert guard.fleet.pending == 2
    assert len(guard.revocations) == 2  # applied here all the same
    await flaky.aclose()


async def _pending_is(guard: TokenGuard, count: int) -> bool:
    return guard.fleet.pending == count


# -- outage drills: a Redis of the test's own, killed and restarted ------------------------------------------


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


class Load:
    """Requests in a loop from several tasks, each outcome recorded by what the token is.

    ``tokens``: name -> a token, or a function making a new one for each request (a token no guard
    has seen yet: introspected on the sensitive route, through the store when it answers).
    """

    def __init__(self, members: list[Member], tokens: dict[str, str | Callable[[], str]]) -> None:
        self.members = members
        self.tokens = tokens
        self.seen: dict[str, list[int]] = {name: [] for name in tokens}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _worker(self, index: int) -> None:
        names = list(self.tokens)
        step = index
        while not self._stop.is_set():
            # Every combination in turn: GET (ordinary) or POST (sensitive), each guard, each token.
            member = self.members[(step // 2) % len(self.members)]
            call = member.post if step % 2 else member.get
            name = names[(step // (2 * len(self.members))) % len(names)]
            token = self.tokens[name]
            response = await call(token if isinstance(token, str) else token())
            self.seen[name].append(response.status_code)
            step += 1
            await asyncio.sleep(0)

    def start(self, workers: int = 6) -> None:
        self._tasks = [asyncio.ensure_future(self._worker(index)) for index in range(workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def statuses(self, name: str) -> set[int]:
        return set(self.seen[name])


async def _stale(member: Member) -> bool:
    return bool(member.fleet_status()["revocations"]["stale"])


async def _fresh(member: Member) -> bool:
    return not member.fleet_status()["revocations"]["stale"]


async def test_redis_down_and_back_under_load(world: World) -> None:
    with private_redis() as server:
        prefix = f"t{uuid.uuid4().hex}:"
        async with fleet(world, server.url, prefix, count=2) as members:
            a, b = members
            good, revoked = world.idp.issue_token("read"), world.idp.issue_token("read", subject="bob")
            later = world.idp.issue_token("read", subject="carol")
            await a.guard.revoke(jti=jti_of(revoked))
            await eventually(lambda: _has_entries(b.guard), 1.0, "b hears of the revocation")
            load = Load(members, {"good": good, "revoked": revoked, "new": lambda: world.idp.issue_token("read")})
            load.start()
            await eventually(lambda: _served(load, 20), 5.0, "load before the outage")
            calls = world.introspections
            server.stop()  # killed
            for member in members:
                await eventually(lambda member=member: _stale(member), 3.0, "the feed notices Redis is gone")
            before = len(load.seen["good"])
            await eventually(lambda: _served(load, before + 40), 10.0, "load during the outage")
            # revoke() while Redis is down: applied here at once, published once Redis is back.
            with pytest.raises(StoreUnavailable):
                await a.guard.revoke(sub="carol")
            assert a.guard.fleet.pending == 1
            assert_revoked(await a.get(later))
            assert (await b.get(later)).status_code == 200  # b cannot know yet
            server.start(port=server.port)  # back, empty (no persistence), on the same port
            for member in members:
                await eventually(lambda member=member: _fresh(member), 5.0, "the feed is back")
            await eventually(lambda: _pending_is(a.guard, 0), 3.0, "the pending entry is published")

            async def refused_on_b() -> bool:
                return (await b.get(later)).status_code == 401

            await eventually(refused_on_b, 3.0, "b refuses the token revoked during the outage")
            during = len(load.seen["good"])
            await eventually(lambda: _served(load, during + 40), 10.0, "load after the outage")
            await load.stop()
            # Kept through the restart that emptied Redis: entries are only ever added in a process.
            assert_revoked(await b.get(revoked))
            # New tokens were introspected by each guard alone while Redis was down, then shared again.
            assert world.introspections > calls
            for member in members:
                assert member.fleet_status()["shared_introspection"]["failures"] >= 1
    assert load.statuses("good") == {200}, load.seen["good"]
    assert load.statuses("new") == {200}, load.seen["new"]
    assert load.statuses("revoked") == {401}, load.seen["revoked"]


async def _served(load: Load, count: int) -> bool:
    return len(load.seen["good"]) >= count


async def test_a_redis_that_goes_silent_is_noticed_without_a_reset(world: World) -> None:
    """SIGSTOP: connections stay open and nothing answers. The feed's PING finds out (the list is marked
    stale within FEED_PING + timeout and a poll); new tokens are introspected per process meanwhile."""
    with private_redis() as server:
        prefix = f"t{uuid.uuid4().hex}:"
        async with fleet(world, server.url, prefix, count=1) as (a,):
            assert (await a.post(world.idp.issue_token("read"))).status_code == 200
            server.process.send_signal(signal.SIGSTOP)
            try:
                took = await eventually(lambda: _stale(a), 5.0, "the feed notices a silent Redis")
                assert took >= RedisStore.FEED_PING  # found by its PING, not by a reset
                response = await a.post(world.idp.issue_token("read", subject="new"))
                assert response.status_code == 200
                assert a.fleet_status()["shared_introspection"]["failures"] >= 1
            finally:
                server.process.send_signal(signal.SIGCONT)
            await eventually(lambda: _fresh(a), 5.0, "the feed is back")


async def test_failing_closed_answers_503_while_the_feed_is_stale_and_recovers(world: World) -> None:
    with private_redis() as server:
        prefix = f"t{uuid.uuid4().hex}:"
        async with fleet(world, server.url, prefix, count=2, revocation_fail_closed=True) as members:
            a, _b = members
            good, revoked = world.idp.issue_token("read"), world.idp.issue_token("read", subject="bob")
            await a.guard.revoke(jti=jti_of(revoked))
            assert (await a.get(good)).status_code == 200
            load = Load(members, {"good": good, "revoked": revoked})
            load.start()
            await eventually(lambda: _served(load, 20), 5.0, "load before the outage")
            server.stop()

            async def refused_503() -> bool:
                response = await a.get(good)
                return response.status_code == 503

            await eventually(refused_503, 3.0, "every token is refused while the list is stale")
            response = await a.get(good)
            assert response.status_code == 503
            assert response.json()["error"] == "temporarily_unavailable"
            assert "retry-after" in response.headers
            assert world.reasons()[-1] == "revocations_stale"
            assert a.fleet_status()["revocations"]["stale"]
            server.start(port=server.port)

            async def served_again() -> bool:
                return (await a.get(good)).status_code == 200

            await eventually(served_again, 5.0, "the feed is back and the guard serves again")
            assert (await a.post(good)).status_code == 200
            await load.stop()
    assert load.statuses("good") <= {200, 503}, load.seen["good"]
    assert 503 in load.statuses("good")
    assert load.statuses("revoked") <= {401, 503}, load.seen["revoked"]


async def test_failing_closed_refuses_until_the_first_read(world: World) -> None:
    """A guard that cannot read the list at startup serves nothing until it can."""
    with private_redis() as server:
        url, port = server.url, server.port
        server.stop()
        prefix = f"t{uuid.uuid4().hex}:"
        async with fleet(world, url, prefix, count=1, revocation_fail_closed=True) as (a,):
            good = world.idp.issue_token("read")
            assert (await a.get(good)).status_code == 503
            assert a.fleet_status()["revocations"]["stale"]
            server.start(port=port)

            async def served() -> bool:
                return (await a.get(good)).status_code == 200

            await eventually(served, 5.0, "the first read, then service")


# -- the options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("decode_responses", [False, True])
async def test_a_redis_asyncio_client_as_shared_store(
    world: World, redis_server: str, raw: Any, decode_responses: bool
) -> None:
    """A client the app built (``decode_responses=True`` too, as many apps set it: values come back as
    text) serves the feed, the shared answers and the replay store like a URL does."""
    database = 7 if decode_responses else 8  # the default prefix: a database of this test's own
    url = redis_server.rsplit("/", 1)[0] + f"/{database}"
    clients = [redis_asyncio.Redis.from_url(url, decode_responses=decode_responses) for _ in range(2)]
    try:
        apps = [guarded_app(world, shared_store=client) for client in clients]
        async with running(apps[0]) as first, running(apps[1]) as second:
            assert isinstance(first.shared_store, RedisStore)
            assert first.shared_store.prefix == "tokenguard:"
            value = world.idp.issue_token("read")
            async with AsyncExitStack() as stack:
                members = []
                for app, guard in zip(apps, (first, second), strict=True):
                    transport = httpx.ASGITransport(app=app)
                    client = await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url=AUDIENCE))
                    members.append(Member(app, guard, client))
                responses = await asyncio.gather(*(member.post(value) for member in members for _ in range(5)))
                assert {response.status_code for response in responses} == {200}
                assert world.introspections == 1
                assert first.status()["fleet"]["shared_introspection"]["failures"] == 0
                assert second.status()["fleet"]["shared_introspection"]["failures"] == 0
                await first.revoke(jti=jti_of(value))
                await eventually(lambda: _has_entries(second), 1.0, "the feed through a client passed in")
                assert_revoked(await members[1].get(value))
                assert second.fleet.status()["received"] == 1
        # A guard started now reads the list through the client too.
        async with running(guarded_app(world, shared_store=clients[0])) as third:
            assert len(third.revocations) == 1
        # The guards left the clients open: they are the app's own.
        for client in clients:
            assert await client.ping()
    finally:
        for client in clients:
            await client.aclose()


async def test_the_replay_store_defaults_to_the_shared_store(world: World, redis_server: str, prefix: str) -> None:
    key = DPoPKey.generate("ES256")
    async with fleet(world, redis_server, prefix, count=2) as (a, b):
        assert a.guard.constraints.store is a.guard.shared_store
        value = world.idp.issue_token("read", dpop_jkt=key.thumbprint)
        proof = key.proof("GET", f"{AUDIENCE}/me", access_token=value, iat=int(world.clock()))
        headers = {"Authorization": f"DPoP {value}", "DPoP": proof}
        assert (await a.client.get("/me", headers=headers)).status_code == 200
        replay = await b.client.get("/me", headers=headers)
        assert replay.status_code == 401
        assert 'error="invalid_dpop_proof"' in replay.headers["www-authenticate"]
        assert world.reasons()[-1] == "dpop_replay"
        fresh = key.proof("GET", f"{AUDIENCE}/me", access_token=value, iat=int(world.clock()))
        response = await b.client.get("/me", headers={"Authorization": f"DPoP {value}", "DPoP": fresh})
        assert response.status_code == 200
        assert REVOKED not in response.text


async def test_a_redis_that_lost_its_data_gets_the_list_back_from_the_processes(world: World) -> None:
    """Redis restarted without persistence: the processes still hold the list and give it back on their
    resync, so a process started afterwards refuses the token revoked before the restart (found by
    ``scripts/fleet_drill.py --late-joiner``: it answered 200)."""
    with private_redis() as server:
        prefix = f"t{uuid.uuid4().hex}:"
        async with fleet(world, server.url, prefix, count=1) as (a,):
            revoked = world.idp.issue_token("read", subject="bob")
            await a.guard.revoke(jti=jti_of(revoked))
            server.stop()  # killed: without persistence, the shared list is gone
            server.start(port=server.port)

            async def given_back() -> bool:
                return a.fleet_status()["revocations"]["resyncs"] >= 2

            await eventually(given_back, 5.0, "the process resyncs after the restart")
            async with fleet(world, server.url, prefix, count=1) as (late,):
                response = await late.get(revoked)
                assert response.status_code == 401
                assert response.json()["error_description"] == "The access token was revoked."


# -- the revocation feed belongs to one database, and only this fleet writes to it -----------------------


async def _delivered_on(members: Sequence[Member], world: World) -> None:
    """A control: a revocation made by the first member is refused by the last, so every message published
    on their channel before it has been applied there too."""
    marker = world.idp.issue_token("read")
    assert (await members[-1].get(marker)).status_code == 200
    await members[0].guard.revoke(jti=jti_of(marker))

    async def refused() -> bool:
        return (await members[-1].get(marker)).status_code == 401

    await eventually(refused, 2.0, "the control revocation arrives")


async def test_fleets_on_two_databases_of_one_server_never_hear_each_other(
    world: World, redis_server: str, prefix: str
) -> None:
    """Found by review: pub/sub channels are one namespace for the whole Redis server, whatever the database,
    so a fleet on database 1 (staging, another tenant, same prefix) applied every revocation made on database
    0 — a ``revoke(sub="alice")`` there refused alice's tokens here. The channel names its database now."""
    other = redis_server.rsplit("/", 1)[0] + "/1"
    token = world.idp.issue_token("read")
    async with fleet(world, redis_server, prefix, count=1) as (a,), fleet(world, other, prefix, count=2) as ours:
        assert (await ours[1].get(token)).status_code == 200
        await a.guard.revoke(jti=jti_of(token))
        assert_revoked(await a.get(token))
        await _delivered_on(ours, world)
        assert (await ours[1].get(token)).status_code == 200  # database 0's revocation never arrived
        assert ours[1].fleet_status()["revocations"]["received"] == 1  # the control only


async def test_entries_published_by_anything_but_the_fleet_are_never_applied(
    world: World, redis_server: str, prefix: str, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by review: any client of any database could PUBLISH entries on the feed's channel (revoking any
    subject, or filling every process's list so that the operator's own ``revoke`` answered 503), and a resync
    wrote them into the fleet's database for good. Every published entry now carries a MAC under a key kept
    in the fleet's database: a message from another database (which cannot read it), with a forged or no
    MAC, is ignored and reported, and never reaches the sorted set."""
    token = world.idp.issue_token("read")
    forged = Revocation("jti", jti_of(token), math.inf, T0 + 3600).encode()
    neighbour = redis_asyncio.Redis.from_url(redis_server.rsplit("/", 1)[0] + "/5")
    try:
        async with fleet(world, redis_server, prefix, count=2) as members:
            assert (await members[1].get(token)).status_code == 200
            for channel in (f"{prefix}revocations:0", f"{prefix}revocations"):
                for data in (forged, b"0" * 32 + forged, secrets.token_hex(16).encode() + forged):
                    await neighbour.publish(channel, data)
            await _delivered_on(members, world)
            assert (await members[1].get(token)).status_code == 200
            assert "without this fleet's MAC was ignored" in caplog.text
        async with fleet(world, redis_server, prefix, count=1) as (late,):  # reads the sorted set at startup
            assert (await late.get(token)).status_code == 200  # nothing forged was written there for good
            assert late.fleet_status()["revocations"]["entries"] == 1  # the control's entry
    finally:
        await neighbour.aclose()


async def test_entries_stored_before_seals_or_under_a_lost_key_are_still_read(
    world: World, redis_server: str, prefix: str, raw: Any
) -> None:
    """The sorted set is the fleet's own database, which only its clients write: an entry there without a MAC
    (written before entries were sealed: an upgrade) or sealed under a key since lost is read as ever, never
    dropped (found by review of the seal: an upgrade would have forgotten every live revocation)."""
    legacy, lost = world.idp.issue_token("read"), world.idp.issue_token("read")
    legacy_entry = Revocation("jti", jti_of(legacy), math.inf, T0 + 3600).encode()
    lost_entry = Revocation("jti", jti_of(lost), math.inf, T0 + 3600).encode()
    await raw.zadd(f"{prefix}revocations", {legacy_entry: T0 + 3600, b"0" * 32 + lost_entry: T0 + 3600})
    async with fleet(world, redis_server, prefix, count=1) as (member,):
        assert_revoked(await member.get(legacy))
        assert_revoked(await member.get(lost))


async def test_a_key_made_anew_is_adopted_by_the_processes_that_held_the_old_one(
    world: World, redis_server: str, prefix: str, raw: Any
) -> None:
    """Found by review of the seal: a key lost (a Redis restart without persistence, an eviction) and made
    anew by the next revocation split the fleet — processes holding the old key ignored every message
    sealed with the new one, and nothing said so. A subscription reads the key again a second after a
    message failed its MAC (and every ``KEY_CHECK`` seconds); a new key makes it read the whole list."""
    token = world.idp.issue_token("read")
    neighbour = redis_asyncio.Redis.from_url(redis_server.rsplit("/", 1)[0] + "/5")
    try:
        async with fleet(world, redis_server, prefix, count=1) as (old,):
            assert (await old.get(token)).status_code == 200
            # Junk from another database first (found by review: it used up the one re-read a second, and
            # the new key's message right after it was dropped for good).
            await neighbour.publish(f"{prefix}revocations:0", b"0" * 32 + b"{}")
            await raw.delete(f"{prefix}revocations:key")
            async with fleet(world, redis_server, prefix, count=1) as (new,):  # starts, and makes a new key
                await new.guard.revoke(jti=jti_of(token))  # sealed under the new key

                async def refused_on_old() -> bool:
                    return (await old.get(token)).status_code == 401

                # Within a second of the failed MAC the key is read again; it is new, so the whole list is.
                await eventually(refused_on_old, 3.0, "the old process reads the new key and then the list")
    finally:
        await neighbour.aclose()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is new in Python 3.11")
async def test_a_background_loop_whose_cancellation_was_swallowed_still_stops() -> None:
    """On Python 3.10 and 3.11, ``asyncio.wait_for`` can swallow a cancellation that arrives as the awaited
    call finishes: the feed's listener then ran on, and the loop closing after it (an app's shutdown, a test's
    end) waited for it forever (seen as a hang at the end of a fleet test). The background loops check the
    task's pending cancellations each round (``fleet.stop_if_cancelled``)."""
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            stop_if_cancelled()
            rounds += 1
            with contextlib.suppress(asyncio.CancelledError):  # as wait_for may, when the cancellation
                await asyncio.sleep(0.005)  # meets the end of the awaited call

    task = asyncio.ensure_future(loop())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert rounds >= 2


async def test_a_new_key_a_process_meets_by_revoking_first_still_makes_it_read_the_list(
    world: World, redis_server: str, prefix: str, raw: Any
) -> None:
    """Found by review of the key check: a process that revoked something itself read the new key for that,
    so its subscription, comparing the key with the one now held, saw no change and never read the list
    again: the revocation sealed under the new key that it had dropped stayed missing."""
    theirs, mine = world.idp.issue_token("read"), world.idp.issue_token("read")
    async with fleet(world, redis_server, prefix, count=1) as (old,):
        assert (await old.get(theirs)).status_code == 200
        await raw.delete(f"{prefix}revocations:key")
        async with fleet(world, redis_server, prefix, count=1) as (new,):
            await new.guard.revoke(jti=jti_of(theirs))  # sealed under the new key: dropped by the old process
            await old.guard.revoke(jti=jti_of(mine))  # which reads the new key for its own revocation

            async def refused_on_old() -> bool:
                return (await old.get(theirs)).status_code == 401

            await eventually(refused_on_old, 3.0, "the old process reads the list again")
