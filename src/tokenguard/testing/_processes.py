"""Real processes for fleet-mode work: a ``redis-server``, a DevIdP served on a loopback port.

One copy of what the fleet tests, the outage drill, the fleet benchmark and ``tokenguard demo --fleet``
all need, so each starts, waits for and stops these parts the same way:

- ``free_port()``: a loopback port nothing listens on (probed, so another process may take it first:
  callers that bind later retry, ``RedisServer.start`` does);
- ``stop_process(process)``: terminate, wait, kill when it does not exit in time;
- ``RedisServer``: Debian's (or any) ``redis-server`` on a free loopback port, no persistence
  (``--save "" --appendonly no``), ready once it answers ``PING`` (raw RESP: no client library);
  ``kill()`` is a crash (SIGKILL), ``start(port=...)`` restarts it where it was;
- ``ServedIdP``: a ``DevIdP`` served by uvicorn from a thread of this process, on a socket bound before
  the DevIdP is made, so its issuer names the port it listens on;
- ``OutputProcess``: a child process whose output is read line by line (``wait_for`` a line);
  ``UvicornProcess``: ``python -m uvicorn <app> --port 0`` as one (``ready`` for the URL it serves on).

Every wait polls with a deadline; nothing sleeps to decide an outcome.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from tokenguard.testing._idp import DevIdP

__all__ = [
    "OutputProcess",
    "RedisNotInstalled",
    "RedisServer",
    "ServedIdP",
    "UvicornProcess",
    "free_port",
    "stop_process",
]

_POLL = 0.01  # seconds between two looks at something starting: a poll interval, bounded by a deadline


class RedisNotInstalled(RuntimeError):
    """No ``redis-server`` binary on PATH (Debian: ``apt-get install redis-server``; macOS: ``brew install redis``)."""


def free_port() -> int:
    """A loopback TCP port nothing listened on when it was probed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """Terminate ``process``, wait up to ``timeout`` seconds, then kill it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """A real ``redis-server`` on a loopback port, without persistence (module doc)."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("redis-server")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None, *, timeout: float = 10.0) -> RedisServer:
        """Start on a free port (or on ``port``, to restart a stopped server where it was); return once it
        answers PING. ``RedisNotInstalled`` without a binary, ``RuntimeError`` when it never answers."""
        if self.binary is None:
            raise RedisNotInstalled("redis-server is not installed (apt-get install redis-server, brew install redis)")
        for _attempt in range(3):  # a probed port may be taken before redis binds it: try another
            self.port = port if port is not None else free_port()
            argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            # argv: the redis-server found on PATH (or given) and fixed arguments, no outside input.
            self.process = subprocess.Popen(  # noqa: S603
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + timeout
            while self.process.poll() is None and time.monotonic() < deadline:
                if self.pings():
                    return self
                time.sleep(_POLL)
            self.kill()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} (3 attempts)")

    def pings(self) -> bool:
        """Whether the server answers PING now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """A crash: SIGKILL, nothing saved (there is no persistence anyway)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()

    stop = kill


class ServedIdP:
    """A ``DevIdP`` served over HTTP on a free loopback port, from a thread of this process.

    ``make(issuer)`` builds the DevIdP (default ``DevIdP(issuer)``) once the port is known;
    ``server_options`` go to ``DevIdP.server`` (uvicorn's config). The socket says TCP
    (``IPPROTO_TCP``): asyncio sets ``TCP_NODELAY`` only on such sockets, and without it every answer
    on a reused keep-alive connection waits about 40 ms for a delayed ACK.
    """

    def __init__(self, make: Callable[[str], DevIdP] | None = None, **server_options: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        issuer = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.idp = make(issuer) if make is not None else DevIdP(issuer)
        server_options.setdefault("log_level", "warning")
        self.server = self.idp.server(**server_options)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def issuer(self) -> str:
        return self.idp.issuer

    def start(self, timeout: float = 30.0) -> ServedIdP:
        """Serve, and return once uvicorn has started; ``RuntimeError`` when it does not in time."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the DevIdP did not start serving")
            time.sleep(_POLL)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class OutputProcess:
    """A child process whose combined output a thread reads line by line, so a caller can wait for a line.

    ``env`` replaces the environment (``PYTHONUNBUFFERED=1`` is added, so lines arrive as printed);
    ``output`` holds every line so far, for failure messages.
    """

    def __init__(
        self, argv: list[str], *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
    ) -> None:
        environment = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
        # argv: the caller's fixed arguments, no shell.
        self.popen = subprocess.Popen(  # noqa: S603
            argv,
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str, deadline: float) -> re.Match[str]:
        """The first line from now on matching ``pattern``; ``RuntimeError`` (with the output) if the
        process exits first or ``deadline`` (``time.monotonic()``) passes."""
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"exited ({self.popen.wait()}) before {pattern!r}:\n{''.join(self.output)}")
            if found := re.search(pattern, line):
                return found
        raise RuntimeError(f"no line matched {pattern!r} in time:\n{''.join(self.output)}")

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.popen, timeout)


class UvicornProcess(OutputProcess):
    """``python -m uvicorn <app> --host 127.0.0.1 --port 0 [options]``; ``ready`` waits for its URL."""

    RUNNING = r"Uvicorn running on (http://127\.0\.0\.1:\d+)"

    def __init__(
        self,
        app: str,
        *options: str,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "0", *options]
        super().__init__(argv, env=env, cwd=cwd)
        self.url = ""

    def ready(self, deadline: float) -> str:
        """The base URL, once uvicorn says it serves (after the lifespan startup)."""
        self.url = self.wait_for(self.RUNNING, deadline).group(1)
        return self.url
