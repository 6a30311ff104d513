"""Under a real server: uvicorn (1 worker) on 127.0.0.1, driven by a small asyncio load generator.

Two uvicorn processes are started for the whole group (bare Starlette, and Starlette + TokenGuard);
the load generator runs in this process on keep-alive HTTP/1.1 connections, loopback only, each batch
bounded in requests (calibrated) and by a hard time limit. On a 2-core machine the server gets one
core and the generator the other; the generator's own CPU use is reported so a saturated generator
shows up instead of passing for a slow server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import Case, Keys, Result, mint
from benchmarks.bench_asgi import BARE, DISTINCT_PREFIX, PATH, REPEATED

GROUP = "uvicorn 1 worker"
CPU_GROUP = "uvicorn CPU/request"
CONNECTIONS = 16
BATCH_TIME_LIMIT = 20.0
_ROOT = Path(__file__).resolve().parent.parent


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
        self.completed = 0
        self.cpu_per_request: list[float] = []  # server CPU seconds per request, one entry per batch

    async def batch(self, n: int) -> float:
        loop = asyncio.get_running_loop()
        server_start, cpu_start, start = self.server.cpu_seconds(), time.process_time(), time.perf_counter()
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
        server_cpu = self.server.cpu_seconds() - server_start
        self.server_cpu += server_cpu
        self.completed += load.completed
        self.cpu_per_request.append(server_cpu / max(load.completed, 1))
        if load.unexpected:
            raise AssertionError(f"{load.unexpected} of {load.completed} requests did not answer 200")
        # Requests per second are what was answered, even if the time limit cut the batch short.
        return elapsed * n / max(load.completed, 1)

    def note(self) -> str:
        generator = 100 * self.cpu / max(self.wall, 1e-9)
        server = 100 * self.server_cpu / max(self.wall, 1e-9)
        per_request = 1e6 * self.server_cpu / max(self.completed, 1)
        busy = f"server busy {server:.0f}% of one core ({per_request:.1f} µs CPU/request)"
        return f"{busy}; load generator {generator:.0f}%"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """One uvicorn process (1 worker) on 127.0.0.1, started and stopped by this benchmark only."""

    def __init__(self, mode: str, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        command = [
            sys.executable, "-m", "uvicorn", "benchmarks._server_app:create", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--log-level", "warning", "--no-access-log", "--lifespan", "on",
        ]  # fmt: skip
        environment = {**os.environ, **env, "BENCH_SERVER_MODE": mode, "PYTHONPATH": _pythonpath()}
        self.process = subprocess.Popen(command, cwd=_ROOT, env=environment, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.log.seek(0)
        output = self.log.read().decode(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"uvicorn did not start: {output}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux ``/proc``; 0 elsewhere)."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _pythonpath() -> str:
    paths = [str(_ROOT), str(_ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(path for path in paths if path)


class Bundle:
    """The server cases, plus what only exists after they ran: CPU rows and notes; ``close`` stops the servers."""

    def __init__(self, servers: list[Server], generators: dict[str, _Generator], jwks_path: str) -> None:
        self.servers, self.generators, self.jwks_path = servers, generators, jwks_path
        self.cases = [
            Case(GROUP, name, "rps", generator.batch, baseline=None if name == BARE else BARE)
            for name, generator in generators.items()
        ]

    def cpu_results(self, rounds: int) -> list[Result]:
        """Server CPU per request, per round: the capacity of one worker, whatever the load generator managed."""
        results = []
        for name, generator in self.generators.items():
            result = Result(CPU_GROUP, name, "us", baseline=None if name == BARE else BARE)
            result.seconds = generator.cpu_per_request[-rounds:]
            results.append(result)
        return results

    def notes(self) -> list[tuple[str, Callable[[], str]]]:
        return [(f"{GROUP} / {name}", generator.note) for name, generator in self.generators.items()]

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        if os.path.exists(self.jwks_path):
            os.unlink(self.jwks_path)


def cases(keys: Keys, *, distinct: int) -> Bundle:
    """Start the two servers and build the three cases (bare, repeated token, distinct tokens)."""
    jwks_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115
    with jwks_file:
        json.dump(keys.jwks(), jwks_file)
    cache = str(max(1, distinct // 2))
    servers: list[Server] = []
    try:
        servers.append(Server("bare", {}))
        servers.append(Server("guard", {"BENCH_JWKS_FILE": jwks_file.name, "BENCH_VERIFIED_CACHE": cache}))
    except BaseException:
        for server in servers:
            server.stop()
        os.unlink(jwks_file.name)
        raise
    bare, guard = servers
    token = _request(mint(keys, "RS256"))
    pool = [_request(mint(keys, "RS256")) for _ in range(distinct)]
    generators = {
        BARE: _Generator(bare, itertools.repeat(token)),
        REPEATED: _Generator(guard, itertools.repeat(token)),
        f"{DISTINCT_PREFIX} ({distinct} cycled)": _Generator(guard, itertools.cycle(pool)),
    }
    return Bundle(servers, generators, jwks_file.name)


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
