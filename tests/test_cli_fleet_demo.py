"""`tokenguard demo --fleet`: a revocation pushed to one worker is refused by all three, run as a user runs it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WHOLE_TOKEN = re.compile(r"eyJ[\w-]{20,}\.[\w-]{20,}\.")


def run_fleet_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenguard.cli", "demo", "--fleet", "--no-color"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        env={**env, "PYTHONIOENCODING": "utf-8"},
    )


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_fleet_demo_every_worker_answers_200_then_401_within_a_second() -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("redis")
    result = run_fleet_demo(dict(os.environ))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for step in range(1, 7):
        assert f"Step {step}/6" in out
    # Before the revocation: 200 from each worker, each answering from its own process.
    before = re.findall(r"→ worker (\d) GET /photos .*\n\s+←\s+(\d{3})  pid=(\d+)", out)
    assert [(worker, status) for worker, status, _pid in before] == [("1", "200"), ("2", "200"), ("3", "200")]
    assert len({pid for _worker, _status, pid in before}) == 3
    # After it: 401 from each, within a second; worker 1 got the push, workers 2 and 3 the Redis feed.
    flat = re.sub(r"\s+", " ", out)  # wrapped lines joined
    after = {
        worker: (int(ms), how)
        for worker, ms, how in re.findall(r"worker (\d) GET /photos 401 \([^)]*\) after (\d+) ms; (\w+ \w+)", flat)
    }
    assert sorted(after) == ["1", "2", "3"], out
    assert all(ms < 1000 for ms, _how in after.values()), after
    assert [how for _ms, how in after.values()] == ["received the", "never received", "never received"], after
    rows = re.findall(r"^  worker (\d)\s+200\s+401 after (\d+) ms\s+(SSF push|Redis feed)$", out, re.MULTILINE)
    assert [(worker, via) for worker, _ms, via in rows] == [("1", "SSF push"), ("2", "Redis feed"), ("3", "Redis feed")]
    assert "Every worker refused the revoked token within 1s." in out
    assert WHOLE_TOKEN.search(out) is None
    assert all(len(line) <= 100 for line in out.splitlines())


def test_fleet_demo_without_redis_server_exits_2_with_the_install_hint(tmp_path: Path) -> None:
    # PATH holds the python bin dir only (with a python that has no redis-server beside it).
    bin_dir = Path(sys.executable).parent
    if (bin_dir / "redis-server").exists():
        bin_dir = tmp_path
        (bin_dir / "python").symlink_to(sys.executable)
    result = run_fleet_demo({**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "redis-server" in result.stderr
    assert "apt-get install redis-server" in result.stderr
    assert "brew install redis" in result.stderr
    assert "Step 1/6" not in result.stdout
