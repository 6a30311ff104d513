"""Under a real server: uvicorn (1 worker, then 2) on 127.0.0.1, driven by a small asyncio load generator.

Two uvicorn servers are started per worker count for the whole group (bare Starlette, and Starlette +
TokenGuard): with ``--workers 1`` one process, with ``--workers 2`` a supervisor and two worker
processes sharing its socket. The load generator runs in this process on keep-alive HTTP/1.1
connections, loopback only, each batch bounded in requests (calibrated) and by a hard time limit. On a
2-core machine one worker gets one core and the generator the other, while two workers share both
cores with the generator; the generator's own CPU use is reported so a saturated generator shows up
instead of passing for a slow server. Server CPU is read from ``/proc`` while the processes run (a
supervisor's ``cutime`` counts only reaped children): for 2 workers, summed over the worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import Case, Keys, Result, mint
from benchmarks.bench_asgi import BARE, DICT_CACHE, DISTINCT_PREFIX, PATH, REPEATED

GROUP = "uvicorn 1 worker"
CPU_GROUP = "uvicorn CPU/request"
WORKERS_GROUP = "uvicorn 2 workers"
WORKERS_CPU_GROUP = "uvicorn 2 workers CPU/request"
#: The worker counts run, each with its req/s group and its server-CPU-per-request group, in table order.
GROUPS = {1: (GROUP, CPU_GROUP), 2: (WORKERS_GROUP, WORKERS_CPU_GROUP)}
CONNECTIONS = 16
BATCH_TIME_LIMIT = 20.0
_ROOT = Path(__file__).resolve().parent.parent
_PROC = os.path.isdir("/proc/self")


class _Load:
    """Shared state of one batch: what to send next, how many answers came back, when to stop."""

    def __init__(self, requests: Iterator[bytes], total: int, deadline: float) -> None:
        self.requests, self.remaining, self.deadline = requests, total, deadline
        self.completed = 0
        self.unexpected = 0

    def take(self) -> bytes | None:
        if self.remaining <= 0 or time.perf_counter() >= self.deadline:
            return None
        self.remaining -= 1
        return next(self.requests)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: send, read one response (``Content-Length`` framing), send the next."""

    def __init__(self, load: _Load, done: asyncio.Future[None]) -> None:
        self.load, self.done = load, done
        self.buffer = b""
        self.transport: Any = None  # asyncio's or uvloop's TCP transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._next()

    def _next(self) -> None:
        request = self.load.take()
        if request is None:
            self.transport.close()
        else:
            self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].lower()
            at = head.find(b"content-length:")
            line_end = head.find(b"\r\n", at)
            length = int(head[at + 15 : line_end if line_end >= 0 else len(head)])
            if len(buffer) < end + 4 + length:
                break
            self.load.completed += 1
            self.load.unexpected += head[9:12] != b"200"
            buffer = buffer[end + 4 + length :]
            self._next()
        self.buffer = buffer

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _request(token: str) -> bytes:
    return f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode("ascii")


class _Generator:
    def __init__(self, server: Server, requests: Iterator[bytes]) -> None:
        self.server, self.port, self.requests = server, server.port, requests
        self.cpu = 0.0
        self.wall = 0.0
        self.server_cpu = 0.0
        self.worker_cpu: dict[int, float] = {}  # server CPU seconds per worker process (pid), all batches
        self.supervisor_cpu = 0.0  # with several workers: the supervisor's own CPU seconds, all batches
        self.completed = 0
        self.cpu_per_request: list[float] = []  # server CPU seconds per request, one entry per batch

    async def batch(self, n: int) -> float:
        loop = asyncio.get_running_loop()
        supervisor_start = self.server.supervisor_seconds()
        server_start, cpu_start, start = self.server.cpu_by_process(), time.process_time(), time.perf_counter()
        load = _Load(self.requests, n, start + BATCH_TIME_LIMIT)
        waits = []
        for _ in range(min(CONNECTIONS, n)):
            done: asyncio.Future[None] = loop.create_future()
            await loop.create_connection(lambda done=done: _Connection(load, done), "127.0.0.1", self.port)
            waits.append(done)
        # A server that stops answering must fail the batch, never hang the run.
        await asyncio.wait_for(asyncio.gather(*waits), BATCH_TIME_LIMIT + 10)
        elapsed = time.perf_counter() - start
        self.cpu += time.process_time() - cpu_start
        self.wall += elapsed
        # Per process, so a worker that appeared during the batch counts from zero.
        spent = {pid: cpu - server_start.get(pid, 0.0) for pid, cpu in self.server.cpu_by_process().items()}
        self.supervisor_cpu += self.server.supervisor_seconds() - supervisor_start
        server_cpu = sum(spent.values())
        for pid, cpu in spent.items():
            self.worker_cpu[pid] = self.worker_cpu.get(pid, 0.0) + cpu
        self.server_cpu += server_cpu
        self.completed += load.completed
        self.cpu_per_request.append(server_cpu / max(load.completed, 1))
        if load.unexpected:
            raise AssertionError(f"{load.unexpected} of {load.completed} requests did not answer 200")
        # Requests per second are what was answered, even if the time limit cut the batch short.
        return elapsed * n / max(load.completed, 1)

    def note(self) -> str:
        wall = max(self.wall, 1e-9)
        generator = 100 * self.cpu / wall
        server = 100 * self.server_cpu / wall
        per_request = 1e6 * self.server_cpu / max(self.completed, 1)
        if self.server.workers == 1:
            busy = f"server busy {server:.0f}% of one core ({per_request:.1f} µs CPU/request)"
        else:
            each = " + ".join(f"{100 * cpu / wall:.0f}%" for _, cpu in sorted(self.worker_cpu.items()))
            busy = (
                f"{self.server.workers} workers busy {server:.0f}% of one core in all ({each}; "
                f"{per_request:.1f} µs CPU/request), supervisor {100 * self.supervisor_cpu / wall:.0f}%"
            )
        return f"{busy}; load generator {generator:.0f}%"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, …), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()
    except OSError:
        return None


def _cpu(fields: list[str]) -> float:
    """User + system CPU seconds of a process (all its threads) from its ``/proc/<pid>/stat`` fields."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``, from ``/proc/<pid>/task/*/children`` or else a scan of every ppid."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    if os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        found = []
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    found += [int(child) for child in children.read().split()]
            except OSError:  # the thread ended meanwhile
                continue
        return found
    scanned = (int(entry) for entry in os.listdir("/proc") if entry.isdigit())  # no CONFIG_PROC_CHILDREN
    return [child for child in scanned if (fields := _stat(child)) is not None and int(fields[1]) == pid]


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def _is_worker(pid: int) -> bool:
    """A process ``multiprocessing`` spawned to run a target (uvicorn's workers), not its resource tracker."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"--multiprocessing-fork" in cmdline.read().split(b"\0")
    except OSError:
        return False


class Server:
    """One uvicorn server on 127.0.0.1, started and stopped by this benchmark only.

    With ``workers`` > 1, ``process`` is uvicorn's supervisor and the requests are served by its worker
    processes, whose CPU is read from ``/proc`` while they run.
    """

    def __init__(self, mode: str, env: dict[str, str], workers: int = 1) -> None:
        self.port = _free_port()
        self.workers = workers
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        # With several workers the supervisor binds the socket before they start, so a connection that
        # succeeds proves nothing: each worker's "Application startup complete." line does, hence the
        # info level there (startup and shutdown lines only: --no-access-log keeps requests silent).
        level = "warning" if workers == 1 else "info"
        command = [
            sys.executable, "-m", "uvicorn", "benchmarks._server_app:create", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
            "--log-level", level, "--no-access-log", "--lifespan", "on",
        ]  # fmt: skip
        environment = {**os.environ, **env, "BENCH_SERVER_MODE": mode, "PYTHONPATH": _pythonpath()}
        self.process = subprocess.Popen(command, cwd=_ROOT, env=environment, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _output(self) -> str:
        # pread: the file offset is shared with the server, which may still be writing.
        return os.pread(self.log.fileno(), 1 << 20, 0).decode(errors="replace")

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                pass
        except OSError:
            return False
        if self.workers == 1:
            return True
        started = self._output().count("Application startup complete.")
        # Without /proc (not Linux) the workers cannot be listed, and their CPU reads as 0.
        return started >= self.workers and (not _PROC or len(self.worker_pids()) == self.workers)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20 + 10 * (self.workers - 1)
        while time.monotonic() < deadline:
            # A worker that fails to load the app is restarted by the supervisor forever: its death fails the start.
            if self.process.poll() is not None or (self.workers > 1 and "] died" in self._output()):
                break
            if self._ready():
                return
            time.sleep(0.05)
        output = self._output()[-2000:]
        self.stop()
        raise RuntimeError(f"uvicorn did not start: {output}")

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the server itself with 1 worker, else the supervisor's workers."""
        if self.workers == 1:
            return [self.process.pid]
        return [pid for pid in _descendants(self.process.pid) if _is_worker(pid)]

    def cpu_by_process(self) -> dict[int, float]:
        """User + system CPU seconds so far of each process serving requests (Linux ``/proc``; empty elsewhere)."""
        found = {}
        for pid in self.worker_pids():
            fields = _stat(pid)
            if fields is not None:
                found[pid] = _cpu(fields)
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time of the processes serving requests so far, summed (0 without ``/proc``)."""
        return sum(self.cpu_by_process().values())

    def supervisor_seconds(self) -> float:
        """With several workers, the supervisor's own CPU seconds (its pings to the workers); else 0."""
        fields = _stat(self.process.pid) if self.workers > 1 else None
        return 0.0 if fields is None else _cpu(fields)

    def stop(self) -> None:
        # The supervisor stops its workers on SIGTERM; any it left behind (it was killed) are killed here,
        # by pid, after checking each is still the same process (its start time).
        spawned = [(pid, fields[19]) for pid in _descendants(self.process.pid) if (fields := _stat(pid))]
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid, started in spawned:
            fields = _stat(pid)
            if fields is not None and fields[19] == started and fields[0] != "Z":
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                    os.kill(pid, signal.SIGKILL)
        self.log.close()


def _pythonpath() -> str:
    paths = [str(_ROOT), str(_ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(path for path in paths if path)


class Bundle:
    """The server cases, plus what only exists after they ran: CPU rows and notes; ``close`` stops the servers.

    ``runs`` holds, per case, its worker count, its name (a row of ``GROUPS[workers]``) and its generator.
    """

    def __init__(self, servers: list[Server], runs: list[tuple[int, str, _Generator]], jwks_path: str) -> None:
        self.servers, self.runs, self.jwks_path = servers, runs, jwks_path
        self.cases = [
            Case(GROUPS[workers][0], name, "rps", generator.batch, baseline=None if name == BARE else BARE)
            for workers, name, generator in runs
        ]

    def cpu_results(self, rounds: int) -> list[Result]:
        """Server CPU per request, per round: the capacity of the workers, whatever the load generator managed."""
        results = []
        for workers, name, generator in self.runs:
            result = Result(GROUPS[workers][1], name, "us", baseline=None if name == BARE else BARE)
            result.seconds = generator.cpu_per_request[-rounds:]
            results.append(result)
        return results

    def notes(self) -> list[tuple[str, Callable[[], str]]]:
        found = [(f"{GROUPS[workers][0]} / {name}", generator.note) for workers, name, generator in self.runs]
        counts = sorted({workers for workers, _, _ in self.runs if workers > 1})
        cpus = os.cpu_count()
        for workers in counts:
            if cpus is not None and cpus <= workers:
                found.append((GROUPS[workers][0], lambda workers=workers: _sharing(workers, cpus)))
        return found

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        if os.path.exists(self.jwks_path):
            os.unlink(self.jwks_path)


def _sharing(workers: int, cpus: int) -> str:
    return (
        f"{cpus} CPUs for {workers} workers and the load generator: the generator shares the cores with the "
        "workers (its share is in the notes above), so these req/s are bounded by the machine as much as by "
        "the workers; the CPU/request rows are the workers' cost whatever the generator managed"
    )


def cases(keys: Keys, *, distinct: int, workers: tuple[int, ...] = tuple(GROUPS)) -> Bundle:
    """Start two servers per worker count and build the three cases of each (bare, repeated token, distinct tokens);
    with 1 worker, a third server and case: the hand-written PyJWT middleware with a dict cache, repeated token.

    Each worker has its own verified cache, holding ``distinct / (2 x workers)`` tokens: a worker that
    gets more than ``1 / (2 x workers)`` of the requests sees more other tokens than that before one comes
    back, so every request misses, as with one worker holding half of them.
    """
    jwks_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115
    with jwks_file:
        json.dump(keys.jwks(), jwks_file)
    token = _request(mint(keys, "RS256"))
    pool = [_request(mint(keys, "RS256")) for _ in range(distinct)]
    servers: list[Server] = []
    runs: list[tuple[int, str, _Generator]] = []
    try:
        for count in workers:
            cache = str(max(1, distinct // (2 * count)))
            bare = Server("bare", {}, workers=count)
            servers.append(bare)
            guard = Server("guard", {"BENCH_JWKS_FILE": jwks_file.name, "BENCH_VERIFIED_CACHE": cache}, workers=count)
            servers.append(guard)
            runs.append((count, BARE, _Generator(bare, itertools.repeat(token))))
            if count == 1:  # the least a cache costs, beside the guard (issue 16), on the 1-worker server
                hand = Server("dict", {"BENCH_JWKS_FILE": jwks_file.name}, workers=count)
                servers.append(hand)
                runs.append((count, DICT_CACHE, _Generator(hand, itertools.repeat(token))))
            runs += [
                (count, REPEATED, _Generator(guard, itertools.repeat(token))),
                (count, f"{DISTINCT_PREFIX} ({distinct} cycled)", _Generator(guard, itertools.cycle(pool))),
            ]
    except BaseException:
        for server in servers:
            server.stop()
        os.unlink(jwks_file.name)
        raise
    return Bundle(servers, runs, jwks_file.name)


def server_stack() -> str:
    """What uvicorn's ``auto`` settings pick here: uvloop/asyncio and httptools/h11."""
    names = []
    for module, fast, slow in (("uvloop", "uvloop", "asyncio"), ("httptools", "httptools", "h11")):
        try:
            __import__(module)
            names.append(fast)
        except ImportError:
            names.append(slow)
    return "+".join(names)
