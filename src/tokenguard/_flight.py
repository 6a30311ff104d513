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
    Tasks are created for the running loop only, never at construction (DESIGN.md §2).
    """

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    def in_flight(self, key: K) -> bool:
        task = self._tasks.get(key)
        return task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()

    def start(self, key: K, factory: Callable[[], Awaitable[V]]) -> asyncio.Task[V]:
        """Return the task in flight for ``key`` on this loop, starting one if there is none."""
        loop = asyncio.get_running_loop()
        task = self._tasks.get(key)
        if task is not None and not task.done() and task.get_loop() is loop:
            return task
        task = loop.create_task(_call(factory))
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return task

    async def run(self, key: K, factory: Callable[[], Awaitable[V]]) -> V:
        return await asyncio.shield(self.start(key, factory))

    def __len__(self) -> int:
        return len(self._tasks)

    def _forget(self, key: K, done: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is done:
            del self._tasks[key]
        if not done.cancelled():
            done.exception()  # mark retrieved: waiters that were cancelled never read it


async def _call(factory: Callable[[], Awaitable[V]]) -> V:
    return await factory()
