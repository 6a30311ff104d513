"""Single-flight: concurrent callers asking for the same thing share one upstream call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one call in flight per key and event loop; the others await its result.

    The shared call runs as its own task and is awaited through ``asyncio.shield``, so a caller
    that is cancelled (a client hung up) does not cancel the call for the others waiting on it.
    Tasks are created for the running loop only, never at construction (docs/ARCHITECTURE.md), and are
    filed under that loop: a task left pending by a loop that has since closed is never awaited,
    and two loops running at once (one per thread) each keep their own call in flight.
    """

    def __init__(self) -> None:
        self._tasks: dict[tuple[asyncio.AbstractEventLoop, K], asyncio.Task[V]] = {}

    def in_flight(self, key: K) -> bool:
        """True when a call for ``key`` is under way on the running loop."""
        task = self._tasks.get((asyncio.get_running_loop(), key))
        return task is not None and not task.done()

    def start(self, key: K, factory: Callable[[], Awaitable[V]]) -> asyncio.Task[V]:
        """Return the task in flight for ``key`` on this loop, starting one if there is none."""
        loop = asyncio.get_running_loop()
        task = self._tasks.get((loop, key))
        if task is not None and not task.done():
            return task
        self._drop_dead_loops()
        task = loop.create_task(_call(factory))
        self._tasks[(loop, key)] = task
        task.add_done_callback(lambda done: self._forget((loop, key), done))
        return task

    async def run(self, key: K, factory: Callable[[], Awaitable[V]]) -> V:
        """The result of the call in flight for ``key`` (started if needed); its exception is shared too."""
        return await asyncio.shield(self.start(key, factory))

    def __len__(self) -> int:
        return len(self._tasks)

    def _forget(self, slot: tuple[asyncio.AbstractEventLoop, K], done: asyncio.Task[V]) -> None:
        if self._tasks.get(slot) is done:
            del self._tasks[slot]
        if not done.cancelled():
            done.exception()  # mark retrieved: waiters that were cancelled never read it

    def _drop_dead_loops(self) -> None:
        # A loop that closed with a call pending never runs its done callback: forget the call here.
        for slot, task in list(self._tasks.items()):
            if task.get_loop().is_closed():
                self._tasks.pop(slot, None)


async def _call(factory: Callable[[], Awaitable[V]]) -> V:
    return await factory()
