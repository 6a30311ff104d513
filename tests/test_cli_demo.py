"""`tokenguard demo`: the leaked-refresh-token story, run as a user runs it and checked step by step."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

from tokenguard.cli import main
from tokenguard.cli._demo import CLIENT_ID, build_idp
from tokenguard.cli._demo import main as play
from tokenguard.cli._output import Printer
from tokenguard.testing import ManualClock, OAuthError

STEPS = [
    "Step 1/7  leak",
    "Step 2/7  attacker refresh",
    "Step 3/7  legitimate replay",
    "Step 4/7  detection",
    "Step 5/7  chain revocation",
    "Step 6/7  both refused",
    "Step 7/7  re-authentication",
]
# Anything that could be a usable token: a compact JWS, or a long base64url run (refresh tokens, codes).
WHOLE_TOKEN = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|[A-Za-z0-9_-]{40,}")


def section(output: str, start: str, end: str | None) -> str:
    """The lines of one step."""
    tail = output.split(start, 1)[1]
    return tail.split(end, 1)[0] if end else tail


@pytest.fixture(scope="module")
def demo_run() -> subprocess.CompletedProcess[str]:
    """`python -m tokenguard.cli demo`, once for the module: a subprocess, as a user runs it."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "tokenguard.cli", "demo"], capture_output=True, text=True, timeout=120, env=env
    )


def test_demo_subprocess_exits_0_and_prints_all_seven_steps_and_the_summary(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    """The whole story plays without network or configuration, in order, and ends with a summary table."""
    assert demo_run.returncode == 0, demo_run.stdout + demo_run.stderr
    assert demo_run.stderr == ""
    out = demo_run.stdout
    positions = [out.index(step) for step in STEPS]
    assert positions == sorted(positions)
    summary = out.split("\nSummary\n", 1)[1]
    assert re.search(r"#\s+STEP\s+WHAT HAPPENED\s+RESULT", summary)
    for number, name in enumerate(
        [
            "leak",
            "attacker refresh",
            "legitimate replay",
            "detection",
            "chain revocation",
            "both refused",
            "re-authentication",
        ],
        start=1,
    ):
        assert re.search(rf"^\s+{number}\s+{name}\s+.*\s+ok$", summary, re.MULTILINE), name
    assert "Every step behaved as expected." in out


def test_demo_output_is_plain_when_not_a_terminal(demo_run: subprocess.CompletedProcess[str]) -> None:
    """Piped output carries no ANSI colour codes."""
    assert "\x1b[" not in demo_run.stdout


def test_demo_never_prints_a_whole_token(demo_run: subprocess.CompletedProcess[str]) -> None:
    """Tokens, codes and verifiers appear only abbreviated, like eyJhbGc…(758 chars)."""
    assert WHOLE_TOKEN.search(demo_run.stdout) is None
    assert re.search(r"eyJhbGc…\(\d+ chars\) \[AT1\]", demo_run.stdout)
    assert re.search(r"refresh_token=\S{7}…\(43 chars\) \[RT1\]", demo_run.stdout)


def test_demo_shows_each_exchange_of_the_story(demo_run: subprocess.CompletedProcess[str]) -> None:
    """Each step shows the HTTP exchanges it is about, with the statuses the story needs."""
    out = demo_run.stdout
    leak = section(out, STEPS[0], STEPS[1])
    assert "GET /authorize" in leak
    assert "code_challenge_method=S256" in leak
    assert re.search(r"←\s+302 ", leak)
    assert "DEBUG photos-web.oauth" in leak  # the log line that leaks
    attacker = section(out, STEPS[1], STEPS[2])
    assert re.search(
        r"attacker → idp  POST /token  grant_type=refresh_token refresh_token=\S+ chars\) \[RT1\] "
        r"client_id=photos-web\n",
        attacker,
    )
    assert re.search(r"←\s+200  access_token=\S+ chars\) \[AT2\]", attacker)
    replay = section(out, STEPS[2], STEPS[3])
    assert re.search(
        r"photos-web → idp  POST /token  grant_type=refresh_token refresh_token=\S+ chars\) \[RT1\]", replay
    )
    assert re.search(r"←\s+400  error=invalid_grant", replay)
    assert "replay_detected" in section(out, STEPS[3], STEPS[4])
    revocation = section(out, STEPS[4], STEPS[5])
    assert "chain_revoked" in revocation
    assert revocation.count("active=false") == 4
    refused = section(out, STEPS[5], STEPS[6])
    assert re.search(r"POST /transfers .*\[AT2\].*\n\s+←\s+401  error=invalid_token", refused)
    assert re.search(r"GET /photos .*\[AT2\]\n\s+←\s+200 ", refused)
    assert "clock +" in refused
    assert "The access token has expired." in refused
    reauth = section(out, STEPS[6], "\nSummary\n")
    assert re.search(r"POST /transfers .*\n\s+←\s+200  transferred=20", reauth)


def test_demo_client_is_public_and_the_leak_is_the_refresh_token_alone(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    """photos-web is a public client: token requests carry client_id and no secret; the log line leaks only RT1."""
    out = demo_run.stdout
    assert "photos-web (public: a single-page app, no secret;" in out
    assert "OAuth 2.1 §4.3.1 requires for public clients" in out
    token_requests = [line for line in out.splitlines() if "photos-web → idp  POST /token" in line]
    assert len(token_requests) == 4  # the code exchange, the replay, the new login, its refresh
    assert all(line.endswith("client_id=photos-web") for line in token_requests)
    assert "client_secret" not in out
    assert "Basic photos-web" not in out  # only photos-api, a confidential client, authenticates
    log_line = next(line for line in out.splitlines() if "DEBUG photos-web.oauth" in line)
    assert re.fullmatch(r"\s+DEBUG photos-web\.oauth POST /token client_id=photos-web -> 200 "
                        r"refresh_token=\S{7}…\(43 chars\)", log_line)  # fmt: skip
    assert "Authorization" not in log_line


def test_demo_idp_registers_photos_web_as_a_public_client() -> None:
    """The demo's IdP knows photos-web without a secret: client_id alone authenticates it, a secret does not."""
    idp = build_idp(ManualClock())
    client = idp.clients[CLIENT_ID]
    assert client.public
    assert client.grant_types == {"authorization_code", "refresh_token"}
    assert idp.authenticate_client(CLIENT_ID, None) is client
    with pytest.raises(OAuthError) as refused:
        idp.authenticate_client(CLIENT_ID, "photos-web-secret")
    assert refused.value.error == "invalid_client"


def test_demo_in_process_through_main(capsys: pytest.CaptureFixture[str]) -> None:
    """`tokenguard demo` through cli.main: exit 0, plain output under --no-color."""
    assert main(["demo", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert "Every step behaved as expected." in out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_demo_colours_only_a_terminal_and_no_color_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a TTY the output is coloured; --no-color (and NO_COLOR) turn colour off there too."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    for argv, coloured in ((["demo"], True), (["demo", "--no-color"], False)):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stdout", terminal)
        assert main(argv) == 0
        assert ("\x1b[" in terminal.getvalue()) is coloured
    monkeypatch.setenv("NO_COLOR", "1")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["demo"]) == 0
    assert "\x1b[" not in terminal.getvalue()


def test_demo_exits_1_when_the_story_breaks() -> None:
    """An IdP that will not let alice in: step 1 fails, later steps do not run, the summary says so."""
    stream = io.StringIO()
    assert play(Printer(stream), users=["bob"]) == 1
    out = stream.getvalue()
    assert "UNEXPECTED" in out
    assert re.search(r"^\s+1\s+leak\s+.*FAILED$", out, re.MULTILINE)
    assert re.search(r"^\s+7\s+re-authentication\s+.*not run$", out, re.MULTILINE)
    assert "The story did not go as told: step 1 failed; 6 later step(s) did not run." in out
