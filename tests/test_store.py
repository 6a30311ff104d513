"""``MemoryStore``: the replay store's invariants (a live key is never forgotten; the store is bounded)."""

from __future__ import annotations

import anyio
import pytest

from tokenguard.errors import UnavailableError
from tokenguard.store import MemoryStore, SharedStore, StoreFull
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.anyio


async def test_a_key_is_new_once_while_it_lives(clock: ManualClock) -> None:
    store = MemoryStore(clock=clock)
    assert await store.add_once("a", 60)
    assert not await store.add_once("a", 60)
    clock.advance(59.9)
    assert not await store.add_once("a", 60)  # still live: a replay
    clock.advance(0.2)
    assert await store.add_once("a", 60)  # expired: may be recorded again
    assert isinstance(store, SharedStore)


async def test_a_full_store_refuses_rather_than_forget_a_live_key(clock: ManualClock) -> None:
    store = MemoryStore(3, clock=clock)
    for key in "abc":
        assert await store.add_once(key, 60)
    with pytest.raises(StoreFull) as full:
        await store.add_once("d", 60)
    assert isinstance(full.value, UnavailableError)  # rendered as 503, never as "not seen"
    assert full.value.reason == "replay_store_unavailable"
    for key in "abc":  # nothing was forgotten to make room
        assert not await store.add_once(key, 60)


async def test_expired_keys_make_room_oldest_first(clock: ManualClock) -> None:
    store = MemoryStore(3, clock=clock)
    await store.add_once("short", 10)
    await store.add_once("long", 100)
    await store.add_once("mid", 50)
    clock.advance(11)
    assert await store.add_once("new", 60)  # "short" expired and is purged
    assert len(store) == 3
    assert not await store.add_once("long", 100)
    assert not await store.add_once("mid", 50)


async def test_the_store_stays_bounded_under_churn(clock: ManualClock) -> None:
    """Many keys over time, each re-recorded after expiry: the dict and the heap stay bounded."""
    store = MemoryStore(100, clock=clock)
    for round_ in range(50):
        for i in range(100):
            assert await store.add_once(f"k{i}", 1)
        clock.advance(1.5)
        assert len(store) <= 100
        assert len(store._heap) <= 200, round_


async def test_concurrent_adds_of_one_key_let_exactly_one_through(clock: ManualClock) -> None:
    store = MemoryStore(clock=clock)
    results: list[bool] = []

    async def add() -> None:
        results.append(await store.add_once("same", 60))

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(add)
    assert results.count(True) == 1


@pytest.mark.parametrize("size", [0, -1, True, 1.5])
def test_a_bad_size_is_refused(size: object) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStore(size)  # type: ignore[arg-type]


def test_the_guard_closes_its_replay_store_at_shutdown() -> None:
    """The SharedStore contract: ``aclose`` at the app's lifespan shutdown (a RedisStore's pool)."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from tokenguard import TokenGuard

    class Recording(MemoryStore):
        closed = 0

        async def aclose(self) -> None:
            Recording.closed += 1
            await super().aclose()

    app = Starlette()
    app.add_middleware(
        TokenGuard, issuer="https://idp.example.com", audience="https://api.example.com", replay_store=Recording()
    )
    with TestClient(app):
        assert Recording.closed == 0
    assert Recording.closed == 1
