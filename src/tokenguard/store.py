"""State several guards may share: DPoP replay detection, introspection answers, revocations.

A ``SharedStore`` answers one question atomically: "was this key recorded within its lifetime?"
(RFC 9449 §11.1 replay detection). ``MemoryStore`` answers it for one process;
``tokenguard.redis_store.RedisStore`` (an add-on, the ``redis`` extra) for every process of a
fleet, so a proof replayed to another worker is refused too. A store that cannot answer raises
``StoreUnavailable`` (503), never "not seen".

A ``FleetStore`` is a ``SharedStore`` that also holds what fleet mode (``shared_store=``) shares:
introspection answers with a fleet-wide single-flight lock, and the revocation list with a feed
every process listens to. ``RedisStore`` is one.

Keys are built by the caller from fixed-size digests, never from raw client values.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from tokenguard.errors import Reason, UnavailableError

__all__ = ["FleetStore", "MemoryStore", "RevocationFeed", "SharedStore", "StoreFull", "StoreUnavailable"]


@runtime_checkable
class SharedStore(Protocol):
    """What the guard needs from a store; implement it to share state between processes."""

    async def add_once(self, key: str, ttl: float) -> bool:
        """Record ``key`` for ``ttl`` seconds; ``True`` if it was not already recorded and live.

        Atomic: of two concurrent calls with one key, exactly one gets ``True``. Raise an
        ``UnavailableError`` when the answer cannot be had (the guard then answers 503: it never
        treats "could not check" as "not seen").
        """
        ...

    async def aclose(self) -> None:
        """Release connections; called at the app's lifespan shutdown."""
        ...


class RevocationFeed(Protocol):
    """A subscription to the fleet's revocation feed (``FleetStore.subscribe``)."""

    async def next(self, timeout: float) -> bytes | None:
        """The next revocation published, or ``None`` when none came within ``timeout`` seconds.

        Raises ``StoreUnavailable`` when the subscription is lost: the caller resubscribes and
        reads the whole list again (``FleetStore.revocations``), so nothing published meanwhile is missed.
        """
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class FleetStore(SharedStore, Protocol):
    """What fleet mode (``shared_store=``) needs: values with a lifetime, a lock, and the revocation feed.

    Every method raises ``StoreUnavailable`` when the store cannot answer; the guard then falls back
    to what one process can do alone (docs/ARCHITECTURE.md, "Fleet mode").
    """

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key`` and still live, else ``None``."""
        ...

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (replacing any value)."""
        ...

    async def claim(self, key: str, owner: bytes, ttl: float) -> bool:
        """Take the lock ``key`` for ``ttl`` seconds as ``owner``; ``False`` if someone holds it.

        Atomic across the fleet; a holder that dies loses the lock when ``ttl`` ends.
        """
        ...

    async def release(self, key: str, owner: bytes) -> None:
        """Give the lock ``key`` back, only if ``owner`` still holds it."""
        ...

    async def record_revocation(self, entry: bytes, expires_at: float, *, now: float, max_entries: int) -> None:
        """Add ``entry`` to the list until ``expires_at``, drop the expired ones, and publish it.

        Raises ``StoreFull`` when ``max_entries`` live entries are held already.
        """
        ...

    async def revocations(self, now: float) -> list[bytes]:
        """Every entry of the list still live at ``now`` (what a process reads after subscribing)."""
        ...

    async def subscribe(self) -> RevocationFeed:
        """Listen for revocations published from now on."""
        ...


class StoreFull(UnavailableError):
    """Every slot holds a live key: forgetting one would let it be replayed, so the store refuses."""

    reason = Reason.REPLAY_STORE_UNAVAILABLE


class StoreUnavailable(UnavailableError):
    """A shared store did not answer (down, slow, refused): "could not check" is never "not seen"."""

    reason = Reason.REPLAY_STORE_UNAVAILABLE


class MemoryStore:
    """A bounded, process-local ``SharedStore``.

    Invariants (docs/ARCHITECTURE.md, "Caches"): a key is live from ``add_once`` until ``now + ttl``
    and is never evicted while live; expired keys are dropped lazily, oldest expiry first. At most
    ``max_entries`` keys are held; when all are live, ``add_once`` raises ``StoreFull`` (503) instead
    of forgetting one. Single-threaded asyncio needs no lock: nothing here awaits.
    """

    def __init__(self, max_entries: int = 100_000, *, clock: Callable[[], float] = time.time) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError("max_entries must be a positive integer")
        self.max_entries = max_entries
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    async def add_once(self, key: str, ttl: float) -> bool:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
            # As RedisStore: a NaN lifetime would make every replay of the key look new.
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        now = self._clock()
        expiry = self._expiry.get(key)
        if expiry is not None and expiry > now:
            return False
        if expiry is None and len(self._expiry) >= self.max_entries:
            self._purge(now)
            if len(self._expiry) >= self.max_entries:
                raise StoreFull("the replay store is full of live entries", retry_after=max(1, int(ttl)))
        self._expiry[key] = now + ttl
        heapq.heappush(self._heap, (now + ttl, key))
        if len(self._heap) > 2 * self.max_entries:  # re-recorded keys leave stale heap entries behind
            self._heap = [(when, name) for name, when in self._expiry.items()]
            heapq.heapify(self._heap)
        return True

    def _purge(self, now: float) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] <= now:
            when, key = heapq.heappop(heap)
            if expiry.get(key) == when:
                del expiry[key]

    def __len__(self) -> int:
        return len(self._expiry)

    async def aclose(self) -> None:
        self._expiry.clear()
        self._heap.clear()

    def __repr__(self) -> str:
        return f"MemoryStore(entries={len(self._expiry)}, max_entries={self.max_entries})"
