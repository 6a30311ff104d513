"""Outage drill for fleet mode: Redis is killed (SIGKILL) and restarted under load; nothing may answer 500,
and a revoked token may never be let through.

    python scripts/fleet_drill.py [--processes 4] [--rounds 2] [--down 4] [--up 6] [--settle 3] [--concurrency 16]
                                  [--late-joiner]

Run from anywhere; it starts, on loopback only:

- a ``redis-server`` on a free port, without persistence (what a cache-only Redis is), killed with SIGKILL
  and restarted on the same port ``--rounds`` times: down ``--down`` seconds, then up ``--up`` seconds;
- a ``DevIdP`` served over HTTP from a thread of this process (issuer ``http://127.0.0.1:PORT``), with a
  Shared Signals push stream to process 1, and an audience of opaque tokens;
- ``--processes`` app processes, ``uvicorn tests.fleet_app:app`` (the fleet tests' app) each on its own
  port, with ``shared_store`` on the Redis, each a Shared Signals receiver on ``/ssf/events``.

``--concurrency`` load loops send, to a random process each time, one of these requests:

==========================  ==============================================================================
``good JWT /photos``        a valid JWT on the ordinary route (validated locally)
``good opaque /transfers``  one valid opaque token on the ``@sensitive`` route (introspected, then cached)
``fresh opaque /transfers`` a new opaque token every 0.2 s on the sensitive route: first-sight calls, which
                            go through the store's single-flight when it is up and per process when not
``revoked JWT /photos``     a JWT revoked at the DevIdP (RFC 7009 → SSF push to process 1) before the load
``revoked in outage: api``  a JWT revoked with ``guard.revoke()`` on process 1 while Redis is down (round 1)
``revoked in outage: ssf``  a JWT revoked at the DevIdP while Redis is down (round 1): pushed to process 1
==========================  ==============================================================================

Phases: ``before`` (Redis up), then per round ``down N`` (killed), ``restarted N`` (the first ``--settle``
seconds after the restart, while the processes find Redis again) and ``settled N`` (the rest of ``--up``).

It prints the count of each status per phase and kind, and fails (exit 1) when any request answered a
5xx other than 503, when the token revoked before the load got a 200 anywhere, or when a token revoked
during the outage got a 200 from the process that revoked it, or from any process once settled (the
other processes learn it when the store is back: ``Fleet.pending``). Exit 2: the drill could not start.

``--late-joiner``: at the end, one more process is started (a deploy, a crash restart, a scale-out after
Redis lost its data) and asked about every revoked token; a 200 fails the drill. It fails today for the
token revoked before the first restart: the processes that hold it never record it in the new Redis, so
a process that starts later reads an empty list.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from tokenguard.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DevIdP
from tokenguard.testing import _processes as processes

ROOT = Path(__file__).resolve().parent.parent
CLIENT = (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
PUSH_AUTHORIZATION = "Bearer fleet-drill-push-secret-0123456789"
ADMIN_SECRET = "fleet-drill-admin-secret"
OPAQUE_AUDIENCE = "https://opaque.fleet.drill"
STARTUP = 60.0

GOOD_JWT = "good JWT /photos"
GOOD_OPAQUE = "good opaque /transfers"
FRESH_OPAQUE = "fresh opaque /transfers"
REVOKED = "revoked JWT /photos"
REVOKED_API = "revoked in outage: api"
REVOKED_SSF = "revoked in outage: ssf"
KINDS = (GOOD_JWT, GOOD_OPAQUE, FRESH_OPAQUE, REVOKED, REVOKED_API, REVOKED_SSF)


class DrillError(Exception):
    """The drill could not be set up (exit 2)."""


# -- Redis ----------------------------------------------------------------------------------------------------


class Redis(processes.RedisServer):
    """The shared ``redis-server``, no persistence; ``kill()`` is SIGKILL, ``start()`` restarts it where it was.

    Its failures are the drill's (exit 2): ``DrillError``.
    """

    def start(self, port: int | None = None, *, timeout: float = 10.0) -> Redis:
        """Start on a free port the first time, then (a restart) on the port it had."""
        if port is None and self.port:
            port = self.port
        try:
            super().start(port, timeout=timeout)
        except processes.RedisNotInstalled as exc:
            raise DrillError("redis-server is not installed (Debian: apt-get install redis-server)") from exc
        except RuntimeError as exc:  # it never answered PING
            raise DrillError(str(exc)) from exc
        return self


# -- the DevIdP -----------------------------------------------------------------------------------------------


def _devidp(issuer: str) -> DevIdP:
    idp = DevIdP(issuer, max_events=100_000)
    idp.add_audience(OPAQUE_AUDIENCE, format="opaque")
    return idp


class ServedIdP(processes.ServedIdP):
    """The shared served ``DevIdP``, with an audience of opaque tokens; serving once made."""

    def __init__(self) -> None:
        super().__init__(make=_devidp, timeout_keep_alive=60)
        try:
            self.start(timeout=30)
        except RuntimeError as exc:
            raise DrillError(str(exc)) from exc

    def token(self, **form: str) -> str:
        """A token from the token endpoint over HTTP, for ``dev-client``."""
        data = {"grant_type": "client_credentials", **form}
        response = httpx.post(f"{self.issuer}/token", data=data, auth=CLIENT, timeout=10)
        if response.status_code != 200:
            raise DrillError(f"the DevIdP refused a token request: {response.status_code} {response.text[:200]}")
        return str(response.json()["access_token"])

    async def revoke(self, client: httpx.AsyncClient, token: str) -> None:
        """RFC 7009 revocation with the token's client's credentials (the DevIdP pushes the SET)."""
        data = {"token": token, "token_type_hint": "access_token"}
        response = await client.post(f"{self.issuer}/revoke", data=data, auth=CLIENT)
        if response.status_code != 200:
            raise DrillError(f"the DevIdP refused a revocation: {response.status_code}")


# -- the app's processes --------------------------------------------------------------------------------------


class App(processes.UvicornProcess):
    """``uvicorn tests.fleet_app:app --port 0`` from the repository root, configured by ``env``."""

    def __init__(self, env: dict[str, str]) -> None:
        environment = {name: value for name, value in os.environ.items() if not name.startswith("FLEET_")}
        super().__init__(
            "tests.fleet_app:app", "--no-access-log", "--log-level", "info", env={**environment, **env}, cwd=ROOT
        )

    def ready(self, deadline: float) -> str:
        try:
            return super().ready(deadline)
        except RuntimeError as exc:
            raise DrillError(f"an app process did not start: {exc}") from None


# -- the load -------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What every request answered: by phase, kind and status; and by process for the revoked-in-outage ones."""

    phase: str = "before"
    phases: list[str] = field(default_factory=lambda: ["before"])
    counts: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    by_process: Counter[tuple[str, str, int, int]] = field(default_factory=Counter)
    #: When each revoked-in-outage token last got a 200 from a process other than the one that revoked it.
    last_ok_elsewhere: dict[str, float] = field(default_factory=dict)

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.phases.append(phase)

    def record(self, kind: str, process: int, status: int) -> None:
        self.counts[(self.phase, kind, status)] += 1
        self.by_process[(self.phase, kind, process, status)] += 1
        if kind in (REVOKED_API, REVOKED_SSF) and status == 200 and process != 0:
            self.last_ok_elsewhere[kind] = time.monotonic()


class Drill:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tally = Tally()
        self.tokens: dict[str, str] = {}
        self.live = {GOOD_JWT, GOOD_OPAQUE, FRESH_OPAQUE, REVOKED}  # the kinds the load sends now
        self.restarted_at: list[float] = []

    async def run(self, idp: ServedIdP, redis: Redis, apps: list[App]) -> None:
        self.idp, self.redis, self.apps = idp, redis, apps
        args = self.args
        limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2)
        async with httpx.AsyncClient(timeout=15, limits=limits) as client:
            await self._prepare(client)
            stop = asyncio.Event()
            loops = [asyncio.create_task(self._load(client, stop)) for _ in range(args.concurrency)]
            minting = asyncio.create_task(self._mint(stop))
            try:
                await self._script(client)
            finally:
                stop.set()
                await asyncio.gather(*loops, minting)

    async def _prepare(self, client: httpx.AsyncClient) -> None:
        idp = self.idp
        self.tokens[GOOD_JWT] = idp.token()
        self.tokens[GOOD_OPAQUE] = idp.token(resource=OPAQUE_AUDIENCE)
        self.tokens[FRESH_OPAQUE] = idp.token(resource=OPAQUE_AUDIENCE)
        for kind in (REVOKED, REVOKED_API, REVOKED_SSF):
            self.tokens[kind] = idp.token()
        for app in self.apps:  # every process has seen them: the revocation must beat a verified-cache hit
            for kind in (GOOD_JWT, REVOKED, REVOKED_API, REVOKED_SSF):
                response = await client.get(f"{app.url}/photos", headers=_bearer(self.tokens[kind]))
                if response.status_code != 200:
                    raise DrillError(f"{kind}: {app.url} answered {response.status_code} before the drill")
        started = time.monotonic()
        await idp.revoke(client, self.tokens[REVOKED])
        await self._refused_everywhere(client, self.tokens[REVOKED], started, "the token revoked before the load")

    async def _refused_everywhere(self, client: httpx.AsyncClient, token: str, started: float, what: str) -> float:
        deadline = started + 5.0
        pending = set(range(len(self.apps)))
        while pending and time.monotonic() < deadline:
            for index in sorted(pending):
                response = await client.get(f"{self.apps[index].url}/photos", headers=_bearer(token))
                if response.status_code == 401:
                    pending.discard(index)
            await asyncio.sleep(0.005)
        if pending:
            raise DrillError(f"{what} is still accepted by processes {sorted(pending)} after 5 s")
        took = time.monotonic() - started
        print(f"{what}: refused by every process {took * 1000:.0f} ms after the revocation", flush=True)
        return took

    async def _load(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        rng = random.Random()  # noqa: S311 - which request to send next, not a secret
        while not stop.is_set():
            kind = rng.choice(sorted(self.live))
            index = rng.randrange(len(self.apps))
            path = "/transfers" if "opaque" in kind else "/photos"
            try:
                response = await client.get(f"{self.apps[index].url}{path}", headers=_bearer(self.tokens[kind]))
                status = response.status_code
            except httpx.HTTPError:
                status = 0  # no answer at all: counted, and a failure like a 5xx
            self.tally.record(kind, index, status)

    async def _mint(self, stop: asyncio.Event) -> None:
        """A new opaque token every 0.2 s: requests with it are first sights, introspected."""
        while not stop.is_set():
            self.tokens[FRESH_OPAQUE] = self.idp.idp.issue_token(["read"], audience=OPAQUE_AUDIENCE)
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except asyncio.TimeoutError:
                continue

    async def _script(self, client: httpx.AsyncClient) -> None:
        args = self.args
        await asyncio.sleep(args.up)
        for number in range(1, args.rounds + 1):
            self.redis.kill()
            self.tally.enter(f"down {number}")
            print(f"round {number}: redis-server killed (SIGKILL)", flush=True)
            if number == 1:
                await asyncio.sleep(min(0.5, args.down / 4))
                await self._revoke_in_outage(client)
            await asyncio.sleep(args.down)
            await asyncio.get_running_loop().run_in_executor(None, self.redis.start)
            self.restarted_at.append(time.monotonic())
            self.tally.enter(f"restarted {number}")
            print(f"round {number}: redis-server restarted on port {self.redis.port}", flush=True)
            await asyncio.sleep(args.settle)
            self.tally.enter(f"settled {number}")
            await asyncio.sleep(max(0.0, args.up - args.settle))

    async def late_joiner(self, env: dict[str, str]) -> dict[str, int]:
        """A process started now (after Redis lost its data): what it answers each revoked token, once ready."""
        app = App(env)
        try:
            await asyncio.get_running_loop().run_in_executor(None, app.ready, time.monotonic() + STARTUP)
            async with httpx.AsyncClient(timeout=15) as client:
                answers = {}
                for kind in (REVOKED, REVOKED_API, REVOKED_SSF):
                    response = await client.get(f"{app.url}/photos", headers=_bearer(self.tokens[kind]))
                    answers[kind] = response.status_code
                return answers
        finally:
            app.stop()

    async def _revoke_in_outage(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            f"{self.apps[0].url}/admin/revoke",
            params={"jti": _jti(self.tokens[REVOKED_API])},
            headers={"X-Admin-Secret": ADMIN_SECRET},
        )
        print(f"guard.revoke() on process 1 while Redis is down: {response.status_code} {response.json()}", flush=True)
        self.live.add(REVOKED_API)  # process 1 applied it before it answered
        started = time.monotonic()
        await self.idp.revoke(client, self.tokens[REVOKED_SSF])
        # The DevIdP pushes the SET after it answered the revocation: process 1 refuses the token once the
        # push has landed, which is when the drill starts holding it to that.
        deadline = started + 5.0
        while time.monotonic() < deadline:
            response = await client.get(f"{self.apps[0].url}/photos", headers=_bearer(self.tokens[REVOKED_SSF]))
            if response.status_code == 401:
                break
            await asyncio.sleep(0.005)
        else:
            raise DrillError("process 1 did not apply the pushed revocation within 5 s while Redis was down")
        took = (time.monotonic() - started) * 1000
        print(
            f"RFC 7009 revocation at the DevIdP while Redis is down: pushed, refused by process 1 after {took:.0f} ms"
        )
        self.live.add(REVOKED_SSF)

    def fleet_status(self) -> list[dict[str, Any]]:
        return [httpx.get(f"{app.url}/status", timeout=10).json()["status"]["fleet"] for app in self.apps]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


# -- the report -------------------------------------------------------------------------------------------------


def report(drill: Drill) -> list[str]:
    """Print the table; the failures found (empty: the drill passed)."""
    tally = drill.tally
    statuses = sorted({status for (_phase, _kind, status) in tally.counts})
    header = ["phase", "kind", *(str(status) if status else "no answer" for status in statuses), "total"]
    rows = []
    for phase in tally.phases:
        for kind in KINDS:
            cells = [tally.counts[(phase, kind, status)] for status in statuses]
            if sum(cells):
                rows.append([phase, kind, *(str(cell) for cell in cells), str(sum(cells))])
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    print()
    for number, row in enumerate([header, *rows]):
        print(
            "  ".join(
                cell.ljust(width) if column < 2 else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if number == 0:
            print("  ".join("-" * width for width in widths))
    failures = []
    for (phase, kind, status), count in sorted(tally.counts.items()):
        if status == 0 or (status >= 500 and status != 503):
            failures.append(f"{count} x {status or 'no answer'} for {kind} in phase {phase}")
        if kind == REVOKED and status == 200:
            failures.append(f"{count} x 200 for the token revoked before the load, in phase {phase}")
    for (phase, kind, process, status), count in sorted(tally.by_process.items()):
        if kind in (REVOKED_API, REVOKED_SSF) and status == 200:
            if process == 0:
                failures.append(f"{count} x 200 for {kind} from process 1, which revoked it, in phase {phase}")
            elif phase.startswith("settled"):
                failures.append(f"{count} x 200 for {kind} from process {process + 1} in phase {phase}")
    first_restart = drill.restarted_at[0] if drill.restarted_at else None
    for kind in (REVOKED_API, REVOKED_SSF):
        last = tally.last_ok_elsewhere.get(kind)
        if last is None:
            print(f"{kind}: never accepted by another process after it was revoked")
        elif first_restart is not None:
            print(f"{kind}: last accepted by another process {(last - first_restart) * 1000:+.0f} ms from the restart")
    print()
    for index, status in enumerate(drill.fleet_status()):
        revocations = status["revocations"]
        shared = status.get("shared_introspection", {})
        print(
            f"process {index + 1}: revocation entries {revocations['entries']}, stale {revocations['stale']}, "
            f"pending {revocations['pending']}, resyncs {revocations['resyncs']}, received {revocations['received']}; "
            f"shared introspection hits {shared.get('hits')}, store failures {shared.get('failures')}"
        )
        if revocations["stale"] or revocations["pending"]:
            failures.append(f"process {index + 1} ends with a stale revocation list or unpublished entries")
    return failures


# -- main -----------------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=4, help="app processes (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="kill/restart cycles (default 2)")
    parser.add_argument("--down", type=float, default=4.0, help="seconds Redis stays down (default 4)")
    parser.add_argument("--up", type=float, default=6.0, help="seconds Redis stays up, before and after (default 6)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after a restart not yet 'settled'")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent load loops (default 16)")
    parser.add_argument(
        "--late-joiner",
        action="store_true",
        help="at the end, start one more process (as a deploy or a crash restart would) and ask it the revoked tokens",
    )
    args = parser.parse_args(argv)
    if args.processes < 2 or args.rounds < 1 or args.concurrency < 1 or not 0 < args.settle < args.up:
        parser.error("--processes ≥ 2, --rounds ≥ 1, --concurrency ≥ 1, and 0 < --settle < --up")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    redis: Redis | None = None
    idp: ServedIdP | None = None
    apps: list[App] = []
    try:
        redis = Redis()
        redis.start()
        idp = ServedIdP()
        env = {
            "FLEET_ISSUER": idp.issuer,
            "FLEET_AUDIENCE": f"{idp.idp.default_audience} {OPAQUE_AUDIENCE}",
            "FLEET_SHARED_STORE": redis.url,
            "FLEET_SSF_AUTHORIZATION": PUSH_AUTHORIZATION,
            "FLEET_ADMIN_SECRET": ADMIN_SECRET,
        }
        apps = [App(env) for _ in range(args.processes)]
        deadline = time.monotonic() + STARTUP
        for app in apps:
            app.ready(deadline)
        idp.idp.add_stream(push_url=f"{apps[0].url}/ssf/events", authorization=PUSH_AUTHORIZATION, audience="dev-api")
        print(
            f"fleet drill: redis-server on port {redis.port}, DevIdP {idp.issuer}, {len(apps)} processes "
            f"{' '.join(app.url for app in apps)}; {args.rounds} rounds of {args.down:g} s down / {args.up:g} s up, "
            f"{args.concurrency} concurrent load loops",
            flush=True,
        )
        drill = Drill(args)
        asyncio.run(drill.run(idp, redis, apps))
        failures = report(drill)
        if args.late_joiner:
            answers = asyncio.run(drill.late_joiner(env))
            print(f"a process started after the last restart answers the revoked tokens: {answers}")
            failures += [
                f"{status} for {kind} from a process started after the restart"
                for kind, status in answers.items()
                if status != 401
            ]
        requests = sum(drill.tally.counts.values())
    except DrillError as exc:
        print(f"fleet drill could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        for app in apps:
            app.stop()
        if idp is not None:
            idp.stop()
        if redis is not None:
            redis.kill()
    print(f"\n{requests} requests in {time.monotonic() - started:.0f} s")
    if failures:
        print("FAILED:")
        for failure in failures:
            print(f"  {failure}")
        for index, app in enumerate(apps):
            tail = "".join(app.output[-15:])
            print(f"\n-- process {index + 1}, last lines --\n{tail}")
        return 1
    print("passed: no 5xx other than 503, no answer missing, no revoked token let through where it must not be")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
