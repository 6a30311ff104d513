"""Fleet mode (``shared_store=``): issuer calls per new token across processes, and what the store costs the hot path.

Two parts, one real ``redis-server`` (on a free loopback port, without persistence) for both:

- **calls per token** (group ``fleet``): a ``DevIdP`` served over HTTP from a thread of this process
  (issuer ``http://127.0.0.1:PORT``, an audience of opaque tokens), and 16 worker processes
  (``python -m benchmarks.bench_fleet --worker``), each holding two guards of one app — one with
  ``shared_store`` on the Redis, one without — in its own event loop, with the guard's lifespan run
  (the revocation feed read). Each round, for 1, 4 and 16 processes, with and without the store, a new
  opaque token is minted and the first ``PER_PROCESS`` processes each send ``PER_PROCESS`` concurrent
  requests with it to a ``@sensitive`` route (in-process ASGI, all processes starting at one wall-clock
  instant). The DevIdP's ledger says how many introspection calls the token cost; the table row is the
  burst's wall time (from the common start to the last answer), its note the calls per token.
- **hot path** (group ``fleet ASGI Starlette``): in-process Starlette as ``bench_asgi`` drives it, one
  repeated RS256 JWT on an ordinary route, the guard without a store (baseline) and with
  ``shared_store`` on the Redis. A JWT is validated locally and checked against the in-memory revocation
  list, so the two rows must be the same; every command the store sends to Redis is counted, and the
  group fails if the request path sent any.

``python -m benchmarks --only fleet [--quick]`` runs it: ``benchmarks/run.py`` starts Redis
(``Fleet.start_redis``), measures ``HotPath``'s cases round-robin, then starts the DevIdP and the workers
(``Fleet.start_workers``) for ``Fleet.calls_per_token(rounds)``, and prints ``summary(...)`` under the
table. Without ``redis-server`` the group is skipped with a note.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._common import AUDIENCE, ISSUER, SKIPPED, Case, IssuerTransport, Keys, Result, mint
from benchmarks.bench_asgi import REPEATED, Harness, starlette_app

if TYPE_CHECKING:
    from tokenguard.testing import DevIdP
    from tokenguard.testing._processes import RedisServer, ServedIdP

GROUP = "fleet"
HOT_GROUP = "fleet ASGI Starlette"
NO_STORE = REPEATED  # "+ TokenGuard, repeated token": the same row bench_asgi has, here the baseline
WITH_STORE = "+ TokenGuard with shared_store, repeated token"
PROCESS_COUNTS = (1, 4, 16)
PER_PROCESS = 8
OPAQUE_AUDIENCE = "https://opaque.fleet.bench"
STARTUP = 60.0  # seconds the workers may take to be ready, 16 of them on a loaded 2-core machine
ROOT = Path(__file__).resolve().parent.parent
#: Redis commands the request path may send (the rest are the revocation feed's, in the background).
_REQUEST_PATH_COMMANDS = frozenset({"GET", "SET PX", "SET NX", "EVAL release", "EVAL revoke"})


class Unavailable(Exception):
    """What the group needs is missing (``redis-server``): the group is skipped with this note."""


def row_name(processes: int, shared: bool) -> str:
    plural = "process" if processes == 1 else "processes"
    return f"{processes} {plural}, {'shared_store' if shared else 'no store'}: first requests"


# -- Redis and the DevIdP: tokenguard.testing._processes (imported when used, as tokenguard.testing is) -----


def _opaque_idp(issuer: str) -> DevIdP:
    """The DevIdP ``ServedIdP`` serves: a ledger long enough for every round, an audience of opaque tokens."""
    from tokenguard.testing import DevIdP

    idp = DevIdP(issuer, max_events=100_000)
    idp.add_audience(OPAQUE_AUDIENCE, format="opaque")
    return idp


def _introspections(idp: DevIdP, token: str) -> int:
    """Introspection requests the DevIdP answered about ``token`` (its ledger's events)."""
    grant = idp.grant_of(token)
    if grant is None:
        raise RuntimeError("the DevIdP does not know this token")
    ids = {state.id for state in grant.access_tokens}
    return sum(1 for event in idp.events if event.kind == "introspected" and event.detail.get("token") in ids)


# -- the worker processes ---------------------------------------------------------------------------------


class Worker:
    """One ``python -m benchmarks.bench_fleet --worker`` process: JSON commands in, JSON answers out."""

    def __init__(self, issuer: str, redis_url: str) -> None:
        env = dict(os.environ, FLEET_BENCH_ISSUER=issuer, FLEET_BENCH_REDIS=redis_url, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_fleet", "--worker"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a fleet worker exited ({self.process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"a fleet worker failed: {answer['error']}")
        return answer

    def stop(self) -> None:
        """Ask it to quit (its lifespans shut down), then ``stop_process``: terminate, kill, when it did not."""
        from tokenguard.testing._processes import stop_process

        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send({"command": "quit"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        stop_process(self.process)


_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/transfers",
    "raw_path": b"/transfers",
    "root_path": "",
    "query_string": b"",
    "server": ("127.0.0.1", 8000),
}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _request(app: Any, token: str, index: int) -> int:
    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    headers = [(b"host", b"api.example.com"), (b"authorization", f"Bearer {token}".encode())]
    await app({**_SCOPE, "headers": headers, "client": ("127.0.0.1", 40000 + index)}, _receive, send)
    return status


class _Lifespan:
    """The guard's ASGI lifespan, run as a server runs it: startup now, shutdown on ``stop``."""

    def __init__(self, app: Any) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self.task = asyncio.get_running_loop().create_task(app(scope, self.inbox.get, self.outbox.put))

    async def start(self) -> None:
        await self.inbox.put({"type": "lifespan.startup"})
        message = await self.outbox.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"lifespan startup failed: {message.get('message', '')[:500]}")

    async def stop(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.outbox.get()
        await self.task


async def _worker() -> None:
    """The worker's loop: build both guards, start their lifespans, answer ``burst`` commands."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from tokenguard import TokenGuard, sensitive
    from tokenguard.testing import RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET

    @sensitive
    async def transfers(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    def app(**options: Any) -> Any:
        starlette = Starlette(routes=[Route("/transfers", transfers)])
        starlette.add_middleware(
            TokenGuard,
            issuer=os.environ["FLEET_BENCH_ISSUER"],
            audience=OPAQUE_AUDIENCE,
            client_id=RESOURCE_CLIENT_ID,
            client_secret=RESOURCE_CLIENT_SECRET,
            **options,
        )
        return starlette

    apps = {True: app(shared_store=os.environ["FLEET_BENCH_REDIS"]), False: app()}
    lifespans = {shared: _Lifespan(one) for shared, one in apps.items()}
    for lifespan in lifespans.values():
        await lifespan.start()
    loop = asyncio.get_running_loop()

    def guard(shared: bool) -> Any:
        return _guard_of(apps[shared])

    def answer(document: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()

    answer({"ready": True, "pid": os.getpid()})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if command["command"] == "quit":
            break
        try:
            shared = bool(command["shared"])
            calls_before = guard(shared).status()["introspection"]["calls"]
            await asyncio.sleep(max(0.0, command["at"] - time.time()))
            statuses = await asyncio.gather(
                *(_request(apps[shared], command["token"], index) for index in range(command["n"]))
            )
            done = time.time()
            status = guard(shared).status()
            calls = status["introspection"]["calls"] - calls_before
            answer(
                {
                    "statuses": statuses,
                    "done": done,
                    "calls": calls,
                    "shared": status["fleet"].get("shared_introspection"),
                }
            )
        except Exception as exc:  # reported to the parent, which fails the group
            answer({"error": f"{type(exc).__name__}: {exc}"})
    for lifespan in lifespans.values():
        await lifespan.stop()


# -- the fleet: Redis, DevIdP, workers ----------------------------------------------------------------------


class Fleet:
    """Everything part (a) needs, started once; ``close()`` stops it all."""

    def __init__(self) -> None:
        self.redis: RedisServer | None = None
        self.idp: ServedIdP | None = None
        self.workers: list[Worker] = []
        self.calls: dict[tuple[int, bool], list[int]] = {}

    def start_redis(self) -> str:
        """The Redis both parts use; its URL. ``Unavailable`` without ``redis-server``."""
        from tokenguard.testing._processes import RedisNotInstalled, RedisServer

        self.redis = RedisServer()
        try:
            self.redis.start()
        except RedisNotInstalled as exc:
            raise Unavailable("redis-server is not installed (Debian: apt-get install redis-server)") from exc
        except RuntimeError as exc:
            raise Unavailable("redis-server did not answer PING (3 attempts)") from exc
        return self.redis.url

    def start_workers(self, log: Callable[[str], None]) -> None:
        """The DevIdP and the worker processes, each ready (lifespans run) and warmed up."""
        from tokenguard.testing._processes import ServedIdP

        assert self.redis is not None
        # An issuer keeps connections open longer than uvicorn's 5 s default: rounds reuse them.
        self.idp = ServedIdP(_opaque_idp, timeout_keep_alive=120)
        self.idp.start()
        log(f"  starting {max(PROCESS_COUNTS)} worker processes (each a guard with shared_store and one without)")
        self.workers = [Worker(self.idp.idp.issuer, self.redis.url) for _ in range(max(PROCESS_COUNTS))]
        for worker in self.workers:
            worker.receive()  # {"ready": true}: both lifespans started
        # Warm-up: each guard asks the issuer once about a token of its own (discovery, a connection).
        for shared in (False, True):
            for worker in self.workers:
                token = self._opaque_token()
                worker.send({"command": "burst", "shared": shared, "token": token, "at": 0.0, "n": 1})
                if worker.receive()["calls"] != 1:
                    raise AssertionError("a worker's warm-up token was not introspected by that worker")

    def _opaque_token(self) -> str:
        assert self.idp is not None
        return self.idp.idp.issue_token(["read"], audience=OPAQUE_AUDIENCE)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.idp is not None:
            self.idp.stop()
        if self.redis is not None:
            self.redis.stop()

    def _burst(self, processes: int, shared: bool, token: str) -> tuple[float, int]:
        """One token's first requests from ``processes`` workers at once: (wall seconds, calls at the issuer)."""
        assert self.idp is not None
        at = time.time() + 0.05 + 0.005 * processes  # every worker has its command before then
        chosen = self.workers[:processes]
        for worker in chosen:
            worker.send({"command": "burst", "shared": shared, "token": token, "at": at, "n": PER_PROCESS})
        answers = [worker.receive() for worker in chosen]
        refused = [status for answer in answers for status in answer["statuses"] if status != 200]
        if refused:
            raise AssertionError(f"{len(refused)} first requests were refused: {Counter(refused)}")
        calls = _introspections(self.idp.idp, token)
        reported = sum(answer["calls"] for answer in answers)
        if reported != calls:
            raise AssertionError(f"the workers made {reported} introspection calls, the DevIdP answered {calls}")
        return max(answer["done"] for answer in answers) - at, calls

    def calls_per_token(self, rounds: int, log: Callable[[str], None]) -> list[Result]:
        """Rows of part (a): per round, a new token per configuration, in a rotating order."""
        assert self.idp is not None
        configurations = [(count, shared) for count in PROCESS_COUNTS for shared in (False, True)]
        results = {
            key: Result(GROUP, row_name(*key), "us", baseline=None if not key[1] else row_name(key[0], False))
            for key in configurations
        }
        calls: dict[tuple[int, bool], list[int]] = {key: [] for key in configurations}
        for number in range(rounds):
            log(f"  round {number + 1}/{rounds}: calls per token")
            shift = number % len(configurations)
            for key in [*configurations[shift:], *configurations[:shift]]:
                seconds, made = self._burst(*key, self._opaque_token())
                results[key].seconds.append(seconds)
                calls[key].append(made)
        for key, result in results.items():
            counts = calls[key]
            result.note = (
                f"{statistics.median(counts):g} introspection calls per token (min {min(counts)}, max {max(counts)}, "
                f"{rounds} tokens) for {key[0] * PER_PROCESS} concurrent first requests"
            )
        self.calls = calls
        return list(results.values())


# -- part (b): the hot path -----------------------------------------------------------------------------


def _counting(store: Any, counter: Counter[str]) -> Any:
    """``store`` with every command it sends through ``_run`` counted by name (the feed's own are not)."""
    run = store._run

    async def counted(command: str, call: Any) -> Any:
        counter[command] += 1
        return await run(command, call)

    store._run = counted
    return store


class HotPath:
    """Part (b): the two guards, their cases, and what the one with a store sent to Redis."""

    def __init__(self, keys: Keys, loop: asyncio.AbstractEventLoop, redis_url: str) -> None:
        from tokenguard import TokenGuard
        from tokenguard.redis_store import RedisStore

        self.loop = loop
        self.commands: Counter[str] = Counter()
        self.guards: list[Any] = []
        transport = IssuerTransport(keys.jwks())
        token = mint(keys, "RS256")
        self.cases: list[Case] = []
        for name, options in (
            (NO_STORE, {}),
            (WITH_STORE, {"shared_store": _counting(RedisStore(redis_url), self.commands)}),
        ):
            app = starlette_app()
            app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, http_client=transport.client(), **options)
            harness = Harness(app, itertools.repeat(token))
            for _ in range(50):  # builds the stack, fetches the JWKS, starts the revocation feed
                status = loop.run_until_complete(harness.request())
                if status != 200:
                    raise AssertionError(f"{HOT_GROUP} / {name}: warm-up request answered {status}")
            self.guards.append(_guard_of(app))
            baseline = None if name == NO_STORE else NO_STORE
            self.cases.append(Case(HOT_GROUP, name, "rps", harness.batch, baseline=baseline))
        self.commands.clear()  # what the warm-up sent (the feed's first read) is not the hot path's

    def request_path_commands(self) -> int:
        return sum(count for command, count in self.commands.items() if command in _REQUEST_PATH_COMMANDS)

    def close(self) -> None:
        """Stop the revocation feed's listener and close the store's connections, in the bench's loop."""
        for guard in self.guards:
            self.loop.run_until_complete(guard.fleet.stop())
            if guard.shared_store is not None:
                self.loop.run_until_complete(guard.shared_store.aclose())


def _guard_of(app: Any) -> Any:
    """The ``TokenGuard`` inside a Starlette app's built middleware stack."""
    from tokenguard import TokenGuard

    stack: Any = app.middleware_stack
    while not isinstance(stack, TokenGuard):
        stack = stack.app
    return stack


# -- what is printed under the table -----------------------------------------------------------------------


def summary(results: Sequence[Result], calls: dict[tuple[int, bool], list[int]], hot: HotPath) -> str:
    """The two comparisons side by side: calls per token, and the hot path with and without the store."""
    lines = [
        f"introspection calls per new opaque token, {PER_PROCESS} concurrent first requests per process "
        "(median, min-max over rounds):",
        f"      {'processes':>9}  {'no store':>12}  {'shared_store':>12}",
    ]
    for count in PROCESS_COUNTS:
        cells = []
        for shared in (False, True):
            made = calls.get((count, shared), [])
            cells.append(f"{statistics.median(made):g} ({min(made)}-{max(made)})" if made else "—")
        lines.append(f"      {count:>9}  {cells[0]:>12}  {cells[1]:>12}")
    by_name = {(result.group, result.name): result for result in results}
    alone, shared = by_name.get((HOT_GROUP, NO_STORE)), by_name.get((HOT_GROUP, WITH_STORE))
    if alone is not None and shared is not None and shared.ratios:
        alone_us = statistics.median(s * 1e6 for s in alone.seconds)
        shared_us = statistics.median(s * 1e6 for s in shared.seconds)
        lines.append(
            f"    hot path, repeated JWT on an ordinary route (in-process Starlette): {alone_us:,.2f} µs/request "
            f"without a store, {shared_us:,.2f} µs with shared_store; per round Δ "
            f"{statistics.median(shared.deltas_us):+,.2f} µs, {statistics.median(shared.ratios):.3f}x req/s"
        )
    shown = ", ".join(f"{command} {count}" for command, count in sorted(hot.commands.items())) or "none"
    lines.append(
        f"    Redis commands sent by the shared_store guard while its hot-path rows ran: {shown} "
        f"({hot.request_path_commands()} on the request path)"
    )
    return "\n".join(lines)


def skipped(reason: str) -> None:
    note = f"fleet: {reason}; the group is skipped"
    if note not in SKIPPED:
        SKIPPED.append(note)


__all__ = ["GROUP", "HOT_GROUP", "NO_STORE", "WITH_STORE", "Fleet", "HotPath", "Unavailable", "summary"]


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        try:
            asyncio.run(_worker())
        except Exception as exc:
            sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            raise
    else:
        print("run the fleet group with: python -m benchmarks --only fleet [--quick]", file=sys.stderr)
        raise SystemExit(2)
