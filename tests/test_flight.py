"""SingleFlight: one shared call per key and event loop, results and errors shared, cancellation-safe."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from tokenguard._flight import SingleFlight


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def run_ready_tasks(rounds: int = 10) -> None:
    """Let ready tasks and callbacks run for a few loop iterations; no clock is involved."""
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        turn = loop.create_future()
        loop.call_soon(turn.set_result, None)
        await turn


class Upstream:
    """A call whose completion the test controls: it waits on a gate, then answers or fails."""

    def __init__(self, result: Any = "answer", error: Exception | None = None) -> None:
        self.calls = 0
        self.result = result
        self.error = error
        self.gate = asyncio.Event()

    async def __call__(self) -> Any:
        self.calls += 1
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.result


pytestmark = pytest.mark.anyio


async def test_concurrent_callers_share_one_call_and_its_result() -> None:
    """Fifty concurrent callers for one key start exactly one call and all get its result."""
    flight: SingleFlight[str, Any] = SingleFlight()
    upstream = Upstream(result={"keys": []})
    waiters = [asyncio.ensure_future(flight.run("jwks", upstream)) for _ in range(50)]
    await run_ready_tasks()
    assert flight.in_flight("jwks")
    upstream.gate.set()
    results = await asyncio.gather(*waiters)
    assert upstream.calls == 1
    assert all(result is upstream.result for result in results)


async def test_exception_is_shared_by_every_waiter() -> None:
    """When the shared call fails, every waiter gets that same exception and the call ran once."""
    flight: SingleFlight[str, Any] = SingleFlight()
    error = ConnectionError("issuer down")
    upstream = Upstream(error=error)
    waiters = [asyncio.ensure_future(flight.run("jwks", upstream)) for _ in range(10)]
    await run_ready_tasks()
    upstream.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert upstream.calls == 1
    assert all(result is error for result in results)


async def test_cancelled_waiter_does_not_cancel_the_call_for_others() -> None:
    """A waiter that is cancelled (client hung up) leaves the shared call running for the rest."""
    flight: SingleFlight[str, Any] = SingleFlight()
    upstream = Upstream(result="keys")
    quitter = asyncio.ensure_future(flight.run("jwks", upstream))
    stayer = asyncio.ensure_future(flight.run("jwks", upstream))
    await run_ready_tasks()
    quitter.cancel()
    await run_ready_tasks()
    assert quitter.cancelled()
    assert flight.in_flight("jwks")
    upstream.gate.set()
    assert await stayer == "keys"
    assert upstream.calls == 1


async def test_call_completes_even_when_every_waiter_is_cancelled() -> None:
    """With all waiters gone, the shared call still finishes (its side effects, e.g. a cache fill, happen)."""
    flight: SingleFlight[str, Any] = SingleFlight()
    filled: list[str] = []

    async def fill() -> str:
        await gate.wait()
        filled.append("keys")
        return "keys"

    gate = asyncio.Event()
    waiter = asyncio.ensure_future(flight.run("jwks", fill))
    await run_ready_tasks()
    waiter.cancel()
    gate.set()
    await run_ready_tasks()
    assert filled == ["keys"]
    assert len(flight) == 0


async def test_failed_call_with_no_waiter_left_is_not_reported_as_unretrieved() -> None:
    """A call that fails after its waiters were cancelled does not log 'exception was never retrieved'."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        flight: SingleFlight[str, Any] = SingleFlight()
        upstream = Upstream(error=ValueError("garbage"))
        waiter = asyncio.ensure_future(flight.run("jwks", upstream))
        await run_ready_tasks()
        waiter.cancel()
        upstream.gate.set()
        await run_ready_tasks()
        del waiter
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert reported == []


async def test_tasks_are_forgotten_after_completion() -> None:
    """Once a call completes (or fails), it is dropped: the next caller starts a new call."""
    flight: SingleFlight[str, Any] = SingleFlight()
    upstream = Upstream(result=1)
    upstream.gate.set()
    assert await flight.run("jwks", upstream) == 1
    assert len(flight) == 0
    assert not flight.in_flight("jwks")
    upstream.error = RuntimeError("down")
    with pytest.raises(RuntimeError):
        await flight.run("jwks", upstream)
    assert len(flight) == 0
    assert upstream.calls == 2


async def test_different_keys_fly_separately() -> None:
    """Calls under different keys do not share: each key gets its own call."""
    flight: SingleFlight[str, Any] = SingleFlight()
    first, second = Upstream(result="a"), Upstream(result="b")
    first.gate.set()
    second.gate.set()
    assert await asyncio.gather(flight.run("a", first), flight.run("b", second)) == ["a", "b"]
    assert (first.calls, second.calls) == (1, 1)


async def test_start_returns_the_task_in_flight() -> None:
    """``start`` (a background refresh) returns the call already in flight instead of starting another."""
    flight: SingleFlight[str, Any] = SingleFlight()
    upstream = Upstream(result="keys")
    task = flight.start("jwks", upstream)
    assert flight.start("jwks", upstream) is task
    upstream.gate.set()
    assert await flight.run("jwks", upstream) == "keys"
    assert upstream.calls == 1


def test_task_of_another_loop_is_not_joined() -> None:
    """A call pending on one event loop is never awaited from another: each loop starts its own."""
    flight: SingleFlight[str, Any] = SingleFlight()
    first_loop = asyncio.new_event_loop()
    try:
        first_gate = first_loop.run_until_complete(_make_event())

        async def slow() -> str:
            await first_gate.wait()
            return "first loop"

        async def start_in_first_loop() -> asyncio.Task[Any]:
            return flight.start("jwks", slow)

        pending = first_loop.run_until_complete(start_in_first_loop())

        async def fast() -> str:
            return "second loop"

        async def in_second_loop() -> tuple[bool, str]:
            return flight.in_flight("jwks"), await flight.run("jwks", fast)

        assert asyncio.run(in_second_loop()) == (False, "second loop")

        async def back_in_first_loop() -> tuple[bool, str]:
            joined = asyncio.ensure_future(flight.run("jwks", fast))
            first_gate.set()
            return flight.in_flight("jwks"), await joined

        # The first loop's call is still its own: a caller there joins it instead of starting another.
        assert first_loop.run_until_complete(back_in_first_loop()) == (True, "first loop")
        assert pending.done()
    finally:
        first_loop.close()


def test_task_left_pending_by_a_closed_loop_is_dropped() -> None:
    """A loop that closed with a call pending does not block the key: the next loop starts afresh."""
    flight: SingleFlight[str, Any] = SingleFlight()
    dead_loop = asyncio.new_event_loop()

    async def never() -> str:
        await asyncio.get_running_loop().create_future()
        return "never"

    async def start_in_dead_loop() -> None:
        flight.start("jwks", never)

    dead_loop.run_until_complete(start_in_dead_loop())
    dead_loop.close()
    assert len(flight) == 1

    async def fresh() -> str:
        return "fresh"

    async def in_new_loop() -> str:
        return await flight.run("jwks", fresh)

    assert asyncio.run(in_new_loop()) == "fresh"
    assert len(flight) == 0


async def _make_event() -> asyncio.Event:
    return asyncio.Event()
