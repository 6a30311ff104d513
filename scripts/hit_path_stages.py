"""Where a repeated token's server CPU goes: uvicorn + wrk, the guard's fast lane cut after each step.

    python scripts/hit_path_stages.py [--rounds 5] [--seconds 3]

Issue 16 measures the repeated-token target as uvicorn (1 worker, pinned to one core) driven by ``wrk``
(on the other core). This runs that setup for: the bare Starlette app; the hand-written PyJWT middleware
with a dict of verified tokens (``benchmarks.bench_asgi.DictCacheMiddleware``); and TokenGuard whose
``__call__`` stops after step N of its repeated-token path and calls the app (0: the headers read;
1: + the route decision; 2: + the token's SHA-256; 3: + the verified-cache hit; 4: + the credentials
objects; 5: + the decision counted), then the real guard ("full"). Rounds interleave the servers; the
table gives the median req/s, the ratio to the bare app and the server's CPU per request
(``/proc/<pid>/stat``). Cold CPU caches make the steps non-additive: read the differences as
orders of magnitude. Needs Linux, ``taskset`` and ``wrk`` (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("bare", "dict", "0", "1", "2", "3", "4", "5", "full")


def create() -> Any:
    """The app of one server, by ``STAGE`` (uvicorn ``--factory``)."""
    from benchmarks._common import IssuerTransport
    from benchmarks.bench_asgi import DictCacheMiddleware, guarded, starlette_app

    from tokenguard import TokenGuard
    from tokenguard.credentials import TokenCredentials, TokenUser
    from tokenguard.extract import host_and_authorization
    from tokenguard.jwt_validator import bytes_digest

    stage = os.environ["STAGE"]
    with open(os.environ["JWKS_FILE"]) as file:
        jwks = json.load(file)
    if stage == "bare":
        return starlette_app()
    if stage == "dict":
        return DictCacheMiddleware(starlette_app(), jwks)
    step = 99 if stage == "full" else int(stage)

    class Cut(TokenGuard):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if step == 99 or scope["type"] != "http":
                await TokenGuard.__call__(self, scope, receive, send)
                return
            host, values = host_and_authorization(scope.get("headers", ()))
            if step >= 1:
                decision = self.resolver.decide(scope, self.app, host)
            if step >= 2:
                digest = bytes_digest(values[0][7:])
            if step >= 3:
                hit = self.authenticator.hit(digest, decision.requirement)
                if hit is None:  # first sight: the real guard validates and caches it
                    await TokenGuard.__call__(self, scope, receive, send)
                    return
            if step >= 4:
                scope["auth"], scope["user"] = TokenCredentials(hit, None), TokenUser(hit)
            if step >= 5:
                self._decided(scope, decision, 0.0, "allow", "ok", 200, hit)
            await self.app(scope, receive, send)

    import benchmarks.bench_asgi as bench_asgi

    bench_asgi.TokenGuard = Cut  # type: ignore[misc]
    return guarded(starlette_app(), IssuerTransport(jwks), prefetch=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("needs wrk and taskset (Debian: apt-get install wrk)")
    sys.path.insert(0, str(ROOT))
    from benchmarks._common import Keys, mint

    keys = Keys()
    token = mint(keys, "RS256")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(keys.jwks(), file)
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for stage in STAGES:
            port = _free_port()
            env = {**os.environ, "STAGE": stage, "JWKS_FILE": file.name, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
            command = ["taskset", "-c", "1", sys.executable, "-m", "uvicorn", "hit_path_stages:create", "--factory"]
            command += ["--app-dir", str(ROOT / "scripts"), "--port", str(port), "--no-access-log"]
            command += ["--log-level", "warning"]
            # The commands are this script's constants, the interpreter running it and free ports.
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
            servers[stage] = (process, port)
        time.sleep(4)
        wrk = ["taskset", "-c", "0", "wrk", "-t1", "-c16", "-H", f"Authorization: Bearer {token}"]
        rps: dict[str, list[float]] = {stage: [] for stage in STAGES}
        cpu: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for _ in range(args.rounds):
            for stage, (process, port) in servers.items():
                before = _cpu_seconds(process.pid)
                out = subprocess.run(  # noqa: S603
                    [*wrk, "-d", f"{args.seconds}s", f"http://127.0.0.1:{port}/photos"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                used = _cpu_seconds(process.pid) - before
                done = re.search(r"(\d+) requests in", out)
                rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
                if done is None or rate is None or "Non-2xx" in out:
                    sys.exit(f"{stage}: wrk saw errors or non-200 answers:\n{out}")
                rps[stage].append(float(rate.group(1)))
                cpu[stage].append(used / int(done.group(1)) * 1e6)
        print(f"uvicorn 1 worker (core 1) + wrk -t1 -c16 (core 0), {args.rounds} rounds of {args.seconds} s")
        print(f"{'server':8s} {'req/s':>9s} {'vs bare':>8s} {'CPU/request':>12s}")
        for stage in STAGES:
            ratio = statistics.median(a / b for a, b in zip(rps[stage], rps["bare"], strict=True))
            print(
                f"{stage:8s} {statistics.median(rps[stage]):9.0f} {ratio:7.2f}x {statistics.median(cpu[stage]):9.1f} µs"
            )
    finally:
        for process, _port in servers.values():
            process.terminate()
            process.wait()
        os.unlink(file.name)


if __name__ == "__main__":
    main()
