"""``tokenguard demo --fleet``: a revocation reaching ordinary routes across several worker processes.

The in-process story (``_demo``) ends with a Shared Signals push refusing a token on an ordinary route
of one API. This one plays that step with real processes and real sockets: a ``redis-server`` (the
fleet's ``shared_store``), the development IdP served over HTTP from a thread of this process, and
``WORKERS`` uvicorn processes of the photos API (``tokenguard.cli._fleet_app``), each on its own port so
that each can be asked directly. The IdP pushes its revocation to worker 1 only; the others learn it
through Redis (the revocation list's pub/sub feed). Every process started is stopped in a ``finally``.

Exit status: 0 when every worker refused the revoked token within ``PROPAGATION`` seconds, 2 when
``redis-server`` is missing, 1 otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from tokenguard.cli._output import CliError, Printer, abbreviate
from tokenguard.testing import DevIdP
from tokenguard.testing._model import DEV_USER_GRANT
from tokenguard.testing._processes import RedisNotInstalled, RedisServer, ServedIdP, free_port, stop_process

WORKERS = 3
#: Seconds within which every worker must refuse the revoked token for the story to pass.
PROPAGATION = 1.0
#: Seconds the demo polls the workers after the revocation before giving up.
POLL_DEADLINE = 2.0
STARTUP = 30.0  # seconds a process may take to answer, on a loaded machine
API_AUDIENCE = "https://photos.tokenguard.test"
API_CLIENT_ID = "photos-api"
APP_CLIENT_ID = "photos-app"
SCOPES = "read:photos"
USER = "alice"
PUSH_PATH = "/ssf/events"
INSTALL_HINT = (
    "tokenguard demo --fleet needs redis-server on PATH (the fleet's shared store). Install it: "
    "apt-get install redis-server (Debian, Ubuntu) or brew install redis (macOS)."
)
_DESCRIPTION = re.compile(r'error_description="([^"]*)"')
_TEXT = 20  # where an exchange's text starts, as in the in-process demo


class FleetDemoError(Exception):
    """Something the story needs did not start (a process, a port): the story cannot go on."""


# -- the processes: tokenguard.testing._processes, with the story's clients and its own errors ---------


def start_redis(redis: RedisServer) -> RedisServer:
    """Start the fleet's ``redis-server``; the shared helper's errors become the demo's own."""
    try:
        return redis.start()
    except RedisNotInstalled as exc:
        raise CliError(INSTALL_HINT) from exc  # one line on stderr, exit 2
    except RuntimeError as exc:
        raise FleetDemoError(f"redis-server did not answer PING (port {redis.port}, 3 attempts)") from exc


def _story_devidp(issuer: str) -> DevIdP:
    return DevIdP(issuer, default_audience=API_AUDIENCE, default_clients=False)


class StoryIdP(ServedIdP):
    """The shared ``ServedIdP`` with the story's two clients, registered with secrets it keeps."""

    def __init__(self) -> None:
        super().__init__(make=_story_devidp)
        self.app_secret = "photos-app-" + secrets.token_urlsafe(16)
        self.api_secret = "photos-api-" + secrets.token_urlsafe(16)
        # The client alice's token is for (confidential: it may use the dev-user grant), and the API,
        # a resource server that may introspect any token.
        self.idp.register_client(
            APP_CLIENT_ID, self.app_secret, scopes=SCOPES, audience=API_AUDIENCE, grant_types=[DEV_USER_GRANT]
        )
        self.idp.register_client(API_CLIENT_ID, self.api_secret, scopes=(), grant_types=(), introspection=True)

    def start(self, timeout: float = STARTUP) -> StoryIdP:
        try:
            super().start(timeout)
        except RuntimeError as exc:
            raise FleetDemoError("the development IdP did not start serving") from exc
        return self


class Worker:
    """``python -m uvicorn tokenguard.cli._fleet_app:app --port P``: one worker of the photos API."""

    def __init__(self, number: int, env: Mapping[str, str]) -> None:
        self.number = number
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        environment = {name: value for name, value in os.environ.items() if not name.startswith("TOKENGUARD_FLEET_")}
        environment.update(env, PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "uvicorn", "tokenguard.cli._fleet_app:app", "--host", "127.0.0.1"]
        # argv: this Python and fixed arguments; the environment carries the settings.
        self.process = subprocess.Popen(  # noqa: S603
            [*argv, "--port", str(self.port), "--no-access-log", "--log-level", "warning"],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid

    @property
    def name(self) -> str:
        return f"worker {self.number}"

    def wait_healthy(self, http: httpx.Client, deadline: float) -> float:
        """Poll ``/health`` until it answers 200; seconds it took."""
        started = time.monotonic()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FleetDemoError(f"{self.name} exited ({self.process.returncode}): {self.output()}")
            try:
                if http.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # a poll interval, bounded by the deadline
        raise FleetDemoError(f"{self.name} did not answer /health within {STARTUP:.0f}s: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        text = self.log.read().decode("utf-8", "replace").strip()
        return text[-600:] or "no output"

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


# -- the story -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    before: dict[int, int] = field(default_factory=dict)  # worker number -> status before the revocation
    latency: dict[int, float] = field(default_factory=dict)  # worker number -> seconds to its first 401
    last: dict[int, int] = field(default_factory=dict)  # worker number -> last status seen
    applied: dict[int, int] = field(default_factory=dict)  # SETs each worker received and applied itself
    received: dict[int, int] = field(default_factory=dict)  # revocations each worker heard through Redis
    why: dict[int, str] = field(default_factory=dict)  # worker number -> its 401's error_description
    failures: list[str] = field(default_factory=list)


class FleetStory:
    STEPS = 6

    def __init__(self, out: Printer) -> None:
        self.out = out
        self.outcome = Outcome()
        self.step = 0

    # -- printing, in the style of the in-process demo -----------------------------------------------

    def title(self, name: str) -> None:
        self.step += 1
        self.out.line()
        self.out.line(self.out.style(f"Step {self.step}/{self.STEPS}  {name}", "bold", "cyan"))

    def say(self, text: str) -> None:
        for line in self.out.wrap(text, indent="    "):
            self.out.line(self.out.style(line, "dim"))

    def labelled(self, label: str, color: str, text: str) -> None:
        lines = self.out.wrap(text, indent=" " * _TEXT)
        for number, line in enumerate(lines):
            head = self.out.style(f"{label:>10}", color) if number == 0 else " " * 10
            self.out.line(f"  {head}{line[12:]}")

    def failed(self, text: str) -> None:
        self.outcome.failures.append(text)
        for number, line in enumerate(self.out.wrap(text, indent=" " * 16)):
            head = self.out.style("UNEXPECTED", "bold", "red") if number == 0 else " " * 10
            self.out.line(f"    {head}{line[14:]}")

    def request(self, actor: str, target: str, what: str, detail: str = "") -> None:
        color = "blue" if actor.startswith("worker") else "green"
        head = f"  {self.out.style(f'{actor:>10}', color)} → {target}"
        shown = 2 + 10 + 1 + len(self.out.fit("→")) + 1 + len(target)
        text = self.out.style(what, "bold") + (f"  {detail}" if detail else "")
        self.out.line(head + " " * max(1, _TEXT - shown) + text)

    def answer(self, status: int, detail: str = "") -> None:
        color = "green" if status < 300 else "yellow" if status < 400 else "red"
        shown = 2 + 10 + 1 + len(self.out.fit("←")) + 1
        text = self.out.style(str(status), "bold", color) + (f"  {detail}" if detail else "")
        self.out.line(f"  {' ' * 10} ←" + " " * max(1, _TEXT - shown + 1) + text)

    # -- the steps -----------------------------------------------------------------------------------

    def run(self, redis: RedisServer) -> int:
        idp: StoryIdP | None = None
        workers: list[Worker] = []
        http = httpx.Client(timeout=5.0)
        try:
            self.title("redis-server")
            start_redis(redis)
            self.labelled("started", "yellow", f"{redis.binary} on {redis.url} (no persistence)")
            self.say("The fleet's shared store: the revocation list every worker reads, and its pub/sub feed.")

            self.title("identity provider")
            idp = StoryIdP()
            idp.start()
            push_authorization = "Bearer fleet-demo-push-" + secrets.token_urlsafe(24)
            env = {
                "TOKENGUARD_FLEET_ISSUER": idp.issuer,
                "TOKENGUARD_FLEET_AUDIENCE": API_AUDIENCE,
                "TOKENGUARD_FLEET_CLIENT_ID": API_CLIENT_ID,
                "TOKENGUARD_FLEET_CLIENT_SECRET": idp.api_secret,
                "TOKENGUARD_FLEET_SHARED_STORE": redis.url,
                "TOKENGUARD_FLEET_PUSH_AUTHORIZATION": push_authorization,
            }
            workers = [Worker(number, env) for number in range(1, WORKERS + 1)]
            stream = idp.idp.add_stream(
                push_url=workers[0].url + PUSH_PATH, authorization=push_authorization, audience=API_CLIENT_ID
            )
            self.labelled("started", "yellow", f"DevIdP, issuer {idp.issuer} (a thread of this process)")
            self.labelled(
                "clients",
                "yellow",
                f"{APP_CLIENT_ID} (confidential, {SCOPES}, tokens for {API_AUDIENCE}); "
                f"{API_CLIENT_ID} (the API: may introspect)",
            )
            self.labelled(
                "ssf",
                "yellow",
                f"push stream {stream[:8]}… to worker 1 only: {workers[0].url}{PUSH_PATH} (aud {API_CLIENT_ID})",
            )

            self.title("workers")
            self.say(
                f"{WORKERS} processes of the photos API, each on its own port: python -m uvicorn "
                "tokenguard.cli._fleet_app:app. GET /photos needs read:photos (an ordinary route: the guard "
                "checks the JWT alone); each worker's TokenGuard has shared_store=Redis and receives Shared "
                f"Signals on {PUSH_PATH}."
            )
            deadline = time.monotonic() + STARTUP
            for worker in workers:
                took = worker.wait_healthy(http, deadline)
                self.labelled(worker.name, "blue", f"pid {worker.pid}, {worker.url}, /health 200 after {took:.1f}s")

            self.title("alice's token, everywhere")
            token_url = idp.idp.endpoint("token")
            self.request(APP_CLIENT_ID, "idp", "POST /token", f"grant_type=dev-user username={USER} scope={SCOPES}")
            response = http.post(
                token_url,
                data={"grant_type": DEV_USER_GRANT, "username": USER, "scope": SCOPES},
                auth=(APP_CLIENT_ID, idp.app_secret),
            )
            token = response.json().get("access_token") if response.status_code == 200 else None
            if not isinstance(token, str):
                self.answer(response.status_code, response.text[:60])
                self.failed("the IdP gave alice no access token")
                return self.summary()
            self.answer(response.status_code, f"access_token={abbreviate(token)}")
            for worker in workers:
                self.request(APP_CLIENT_ID, worker.name, "GET /photos", f"Authorization=Bearer {abbreviate(token)}")
                answer = http.get(f"{worker.url}/photos", headers={"Authorization": f"Bearer {token}"})
                self.outcome.before[worker.number] = answer.status_code
                self.answer(answer.status_code, f"pid={_pid(answer)}")
                if answer.status_code != 200:
                    self.failed(f"{worker.name} should accept alice's token (200), answered {answer.status_code}")

            self.title("revocation, pushed to one worker")
            self.say(
                "The token is revoked at the IdP (RFC 7009). The IdP pushes a CAEP session-revoked SET about "
                "it to worker 1 only; worker 1 verifies it and records the revocation in Redis; workers 2 "
                f"and 3 hear it through Redis pub/sub. Each worker is asked again until it answers 401 "
                f"(for at most {POLL_DEADLINE:.0f}s)."
            )
            self.request(
                APP_CLIENT_ID, "idp", "POST /revoke", f"token={abbreviate(token)} token_type_hint=access_token"
            )
            started = time.monotonic()
            revoked = http.post(
                idp.idp.endpoint("revoke"),
                data={"token": token, "token_type_hint": "access_token"},
                auth=(APP_CLIENT_ID, idp.app_secret),
            )
            self.answer(revoked.status_code)
            self.poll(http, workers, token, started)
            for worker in workers:
                self.report(http, worker)
            delivered = idp.idp.ssf_status(stream).get("delivered", 0)
            self.labelled("idp", "yellow", f"{delivered} SET(s) delivered on its one stream, to worker 1")
            return self.summary()
        except FleetDemoError as exc:
            self.failed(str(exc))
            return self.summary()
        finally:
            http.close()
            self.step = self.STEPS - 1
            self.title("stop")
            for worker in workers:
                worker.stop()
            if idp is not None:
                idp.stop()
            redis.stop()
            self.labelled("stopped", "yellow", f"{len(workers)} worker(s), the IdP and redis-server")
            self.print_summary()

    def poll(self, http: httpx.Client, workers: list[Worker], token: str, started: float) -> None:
        """Ask each worker not yet refusing, in turn, until each has answered 401 or the deadline passed."""
        headers = {"Authorization": f"Bearer {token}"}
        waiting = {worker.number: worker for worker in workers}
        while waiting and time.monotonic() - started < POLL_DEADLINE:
            for number, worker in list(waiting.items()):
                try:
                    response = http.get(f"{worker.url}/photos", headers=headers, timeout=0.5)
                except httpx.HTTPError:
                    continue
                self.outcome.last[number] = response.status_code
                if response.status_code == 401:
                    self.outcome.latency[number] = time.monotonic() - started
                    self.outcome.why[number] = _description(response)
                    del waiting[number]
            time.sleep(0.002)  # a poll interval, bounded by the deadline

    def report(self, http: httpx.Client, worker: Worker) -> None:
        number = worker.number
        try:
            status: dict[str, Any] = http.get(f"{worker.url}/status").json()
        except (httpx.HTTPError, ValueError):
            status = {}
        applied = int(status.get("signals_applied", 0))
        received = int(status.get("revocations_received", 0))
        self.outcome.applied[number], self.outcome.received[number] = applied, received
        latency = self.outcome.latency.get(number)
        if latency is None:
            self.labelled(
                worker.name, "blue", f"GET /photos still {self.outcome.last.get(number)} after {POLL_DEADLINE:.0f}s"
            )
            self.failed(f"{worker.name} did not refuse the revoked token within {POLL_DEADLINE:.0f}s")
            return
        how = (
            f"received the SET itself ({applied} applied)"
            if applied
            else f"never received the SET: it learned the revocation through Redis ({received} from the feed)"
        )
        why = self.outcome.why.get(number)
        refused = f"GET /photos 401 ({why})" if why else "GET /photos 401"
        self.labelled(worker.name, "blue", f"{refused} after {latency * 1000:.0f} ms; {how}")
        if latency > PROPAGATION:
            self.failed(f"{worker.name} refused after {latency:.2f}s, more than {PROPAGATION:.0f}s")
        if number == 1 and applied < 1:
            self.failed("worker 1 should have received and applied the pushed SET")
        if number > 1 and applied:
            self.failed(f"{worker.name} should not have received the SET itself")

    # -- the end -------------------------------------------------------------------------------------

    def summary(self) -> int:
        ok = not self.outcome.failures and len(self.outcome.latency) == WORKERS
        ok = ok and all(latency <= PROPAGATION for latency in self.outcome.latency.values())
        return 0 if ok else 1

    def print_summary(self) -> None:
        out = self.out
        out.line()
        out.line(out.style("Summary", "bold"))
        rows = []
        for number in range(1, WORKERS + 1):
            before = self.outcome.before.get(number)
            latency = self.outcome.latency.get(number)
            after = f"401 after {latency * 1000:.0f} ms" if latency is not None else "not refused"
            via = "SSF push" if self.outcome.applied.get(number) else "Redis feed" if latency is not None else "-"
            rows.append([f"worker {number}", str(before or "-"), after, via])
        out.table(["WORKER", "BEFORE", "AFTER THE REVOCATION", "LEARNED IT THROUGH"], rows)
        out.line()
        if self.summary() == 0:
            out.line(out.style(f"Every worker refused the revoked token within {PROPAGATION:.0f}s.", "bold", "green"))
            for line in out.wrap(
                "One push, to one process; every process refused the token on an ordinary route, where the JWT is "
                "checked without calling the IdP: shared_store= (Redis) carried the revocation list to them "
                "(README, Fleet mode).",
                indent="",
            ):
                out.line(line)
        else:
            out.line(
                out.style(
                    f"The fleet story did not go as told: {len(self.outcome.failures)} problem(s).", "bold", "red"
                )
            )


def _description(response: httpx.Response) -> str:
    """The ``error_description`` of a 401's ``WWW-Authenticate`` challenge (RFC 6750 §3), if any."""
    found = _DESCRIPTION.search(response.headers.get("www-authenticate", ""))
    return found.group(1) if found else ""


def _pid(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "?"
    return str(body.get("pid", "?")) if isinstance(body, dict) else "?"


def intro(out: Printer) -> None:
    out.line(out.style("tokenguard demo --fleet: one revocation, every worker process", "bold"))
    for line in out.wrap(
        f"Real processes on loopback ports: redis-server, the development IdP (served from this process) and "
        f"{WORKERS} workers of a photos API behind TokenGuard. The IdP pushes a revocation to worker 1 only; "
        "the others must refuse the token too, within a second. Tokens are shown abbreviated, never whole.",
        indent="",
    ):
        out.line(line)


def main(out: Printer) -> int:
    """Play the fleet story; 0 when every worker refused in time, 1 otherwise, 2 without redis-server."""
    redis = RedisServer()  # not started: its binary is looked up on PATH
    if redis.binary is None:
        raise CliError(INSTALL_HINT)  # one line on stderr, exit 2
    missing = [name for name in ("uvicorn", "redis") if importlib.util.find_spec(name) is None]
    if missing:
        raise CliError(f"tokenguard demo --fleet needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    intro(out)
    return FleetStory(out).run(redis)
