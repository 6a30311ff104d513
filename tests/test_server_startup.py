"""A misconfigured guard stops real servers at startup, with the option named.

Starlette builds its middleware on the first ASGI call, the lifespan ``startup`` event; uvicorn and
hypercorn, by default (``lifespan="auto"``), take an exception raised there for "no lifespan
support" and serve anyway. Each case here runs the real server as a process, with its default
settings, and checks it exits without serving and prints the field and the fix.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

pytest.importorskip("uvicorn")

#: Module sources, each a complete app as a user would write it; ``{guard}`` is the middleware line.
STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from tokenguard import TokenGuard

async def photos(request):
    return JSONResponse({{"ok": True}})

app = Starlette(routes=[Route("/photos", photos)])
app.add_middleware(TokenGuard, {guard})
"""

FASTAPI_APP = """
from fastapi import FastAPI
from tokenguard import TokenGuard

app = FastAPI()

@app.get("/photos")
async def photos():
    return {{"ok": True}}

app.add_middleware(TokenGuard, {guard})
"""

#: Marks that cannot be combined are only found when the guard walks the routes, at lifespan startup.
CONFLICTING_MARKS_APP = """
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.responses import JSONResponse
from starlette.routing import Route
from tokenguard import TokenGuard, public, require_scopes

@public
class Photos(HTTPEndpoint):
    @require_scopes("write:photos")
    async def post(self, request):
        return JSONResponse({{}})

app = Starlette(routes=[Route("/photos", Photos)])
app.add_middleware(TokenGuard, {guard})
"""

GOOD = 'issuer="https://idp.example.com", audience="https://photos.example"'

#: (module source, guard options, what the server must print)
CASES = {
    "http_issuer": (
        STARLETTE_APP,
        'issuer="http://idp.example.com", audience="https://photos.example"',
        "issuer must use https:// (plain http is only allowed on loopback)",
    ),
    "missing_audience": (FASTAPI_APP, 'issuer="https://idp.example.com"', "audience is required"),
    "unknown_option": (
        STARLETTE_APP,
        GOOD + ', audiences="https://photos.example"',
        "'audiences' is not a TokenGuard option (did you mean 'audience'?)",
    ),
    "bad_value": (FASTAPI_APP, GOOD + ", leeway=-1", "leeway must be greater than or equal to 0"),
    "conflicting_marks": (CONFLICTING_MARKS_APP, GOOD, "@public cannot be combined with scopes"),
}

SERVERS = {
    "uvicorn": [sys.executable, "-m", "uvicorn", "app:app", "--port", "0"],
    "hypercorn": [sys.executable, "-m", "hypercorn", "app:app", "--bind", "127.0.0.1:0"],
    "gunicorn": [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "uvicorn.workers.UvicornWorker",
        "--workers",
        "2",
        "--bind",
        "127.0.0.1:0",
        "app:app",
    ],
}

#: uvicorn and gunicorn with every case; hypercorn with one error found when the guard is built and
#: one found when it walks the routes (the two paths the guard has).
MATRIX = [
    *[("uvicorn", case) for case in CASES],
    ("hypercorn", "http_issuer"),
    ("hypercorn", "conflicting_marks"),
    ("gunicorn", "missing_audience"),
    ("gunicorn", "conflicting_marks"),
]


def _write_app(directory: Path, source: str, guard: str) -> dict[str, str]:
    (directory / "app.py").write_text(textwrap.dedent(source.format(guard=guard)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(directory), *sys.path]), PYTHONUNBUFFERED="1")
    env.pop("PYTHONWARNINGS", None)
    return env


@pytest.mark.parametrize(("server", "case"), MATRIX, ids=[f"{server}-{case}" for server, case in MATRIX])
def test_a_misconfigured_guard_stops_the_server(server: str, case: str, tmp_path: Path) -> None:
    """The server exits at startup without serving, and its output names the field and the fix."""
    pytest.importorskip(server)
    source, guard, expected = CASES[case]
    env = _write_app(tmp_path, source, guard)
    try:
        done = subprocess.run(SERVERS[server], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:  # still serving: the failure this test exists for
        pytest.fail(f"{server} kept running with a misconfigured guard: {exc.stderr!r}")
    output = done.stdout + done.stderr
    assert expected in output
    assert "TokenGuard is misconfigured" in output
    # The servers' words for "the app could not start", not "lifespan unsupported, serving anyway".
    assert "appears unsupported" not in output
    assert "continuing without Lifespan support" not in output
    assert "Application startup complete" not in output
    if server == "uvicorn":
        assert done.returncode == 3  # uvicorn's STARTUP_FAILURE
    elif server == "gunicorn":
        # The arbiter halts with WORKER_BOOT_ERROR (3); when the second worker fails while the arbiter
        # is still spawning, the same HaltServer escapes as a traceback and the exit code is 1.
        assert done.returncode in (1, 3)
        assert "Worker failed to boot" in output
    else:
        # hypercorn's multi-process runner ends but reports 0 for a worker that failed its startup
        # (its exit code is read after the failed worker was already joined): the message is the signal.
        assert "Lifespan failure in startup" in output


def test_a_good_configuration_starts_and_guards(tmp_path: Path) -> None:
    """Control: the same harness with valid options serves, and the guard answers 401 without a token."""
    env = _write_app(tmp_path, STARLETTE_APP, GOOD)
    process = subprocess.Popen(
        SERVERS["uvicorn"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            if match := re.search(r"running on (http://127\.0\.0\.1:\d+)", line):
                base = match.group(1)
                break
        else:
            pytest.fail(f"uvicorn did not start: {''.join(lines)}")
        assert "Application startup complete" in "".join(lines)
        response = httpx.get(f"{base}/photos", timeout=10)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    finally:
        process.terminate()
        process.wait(timeout=10)
