"""`tokenguard demo`: the leaked-refresh-token story, run as a user runs it and checked step by step."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import require_scopes
from tokenguard.cli import _demo, main
from tokenguard.cli._demo import CLIENT_ID, build_idp
from tokenguard.cli._demo import main as play
from tokenguard.cli._output import Printer
from tokenguard.testing import ManualClock, OAuthError

STEPS = [
    "Step 1/8  leak",
    "Step 2/8  attacker refresh",
    "Step 3/8  legitimate replay",
    "Step 4/8  detection",
    "Step 5/8  chain revocation",
    "Step 6/8  both refused",
    "Step 7/8  re-authentication",
    "Step 8/8  revocation pushed",
]
# Anything that could be a usable token: a compact JWS, or a long base64url run (refresh tokens, codes).
WHOLE_TOKEN = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|[A-Za-z0-9_-]{40,}")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
WIDTH = 100
# Every URL the story has reason to show, whole.
URLS = {
    "https://idp.tokenguard.test",
    "https://photos.tokenguard.test",
    "http://127.0.0.1/callback",
    "http://127.0.0.1/callback?…",
    "https://idp.tokenguard.test/jwks",
    "https://idp.tokenguard.test/introspect",
}


def section(output: str, start: str, end: str | None) -> str:
    """The lines of one step."""
    tail = output.split(start, 1)[1]
    return tail.split(end, 1)[0] if end else tail


def logical(output: str) -> str:
    """The output with each wrapped exchange or guard line joined back into one line (continuation
    lines are indented to the text column: 20 spaces, then text)."""
    return re.sub(r"\n {20}(?=\S)", " ", output)


def owners(output: str) -> Counter[str | None]:
    """Lines of the eight steps by whose part of the story they tell: "guard" (the guard's calls to
    the IdP and its verdicts), "idp" (clients' exchanges with the IdP, the IdP's events), "api" (the
    requests to the API and their answers) or None (narration, titles)."""
    steps = output.split(STEPS[0], 1)[1].split("\nSummary\n", 1)[0]
    counts: Counter[str | None] = Counter()
    owner: str | None = None
    waiting: list[str] = []  # requests still waiting for their answer: the guard's come inside the API's
    for line in steps.splitlines():
        label, arrow = line[2:12].strip(), line[13:14]
        if arrow == "→":
            owner = "guard" if label == "guard" else "idp" if line[15:18] == "idp" else "api"
            waiting.append(owner)
        elif arrow == "←":
            owner = waiting.pop()
        elif label in ("guard", "idp event"):
            owner = "guard" if label == "guard" else "idp"
        elif not (line.startswith(" " * 20) and line[20:21].strip()):
            owner = None  # a continuation line keeps its owner; anything else is narration
        counts[owner] += 1
    return counts


def run_demo(encoding: str) -> subprocess.CompletedProcess[bytes]:
    """`python -m tokenguard.cli demo` as a user runs it, its output encoded as ``encoding``."""
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    env.pop("NO_COLOR", None)
    return subprocess.run([sys.executable, "-m", "tokenguard.cli", "demo"], capture_output=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def demo_run() -> subprocess.CompletedProcess[str]:
    """The demo in a UTF-8 subprocess, once for the module."""
    result = run_demo("utf-8")
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    )


def test_demo_subprocess_exits_0_and_prints_all_eight_steps_and_the_summary(
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
            "revocation pushed",
        ],
        start=1,
    ):
        assert re.search(rf"^\s+{number}\s+{name}\s+.*\s+ok$", summary, re.MULTILINE), name
    assert "Every step behaved as expected." in out


def test_demo_output_is_plain_when_not_a_terminal(demo_run: subprocess.CompletedProcess[str]) -> None:
    """Piped output carries no ANSI colour codes."""
    assert "\x1b[" not in demo_run.stdout


def test_demo_never_prints_a_whole_token(demo_run: subprocess.CompletedProcess[str]) -> None:
    """Tokens, codes, verifiers and key ids appear only abbreviated, like eyJhbGc…(758 chars)."""
    assert WHOLE_TOKEN.search(demo_run.stdout) is None
    assert re.search(r"eyJhbGc…\(\d+ chars\) \[AT1\]", demo_run.stdout)
    assert re.search(r"refresh_token=\S{7}…\(43 chars\) \[RT1\]", demo_run.stdout)


def test_demo_shows_each_exchange_of_the_story(demo_run: subprocess.CompletedProcess[str]) -> None:
    """Each step shows the HTTP exchanges it is about, with the statuses the story needs."""
    out = logical(demo_run.stdout)
    leak = section(out, STEPS[0], STEPS[1])
    assert "GET /authorize" in leak
    assert "code_challenge_method=S256" in leak
    assert re.search(r"←\s+302  Location=http://127\.0\.0\.1/callback\?… ", leak)
    assert "DEBUG oauth: POST /token" in leak  # the log line that leaks
    attacker = section(out, STEPS[1], STEPS[2])
    assert re.search(
        r"attacker → idp  POST /token  grant_type=refresh_token refresh_token=\S+ chars\) \[RT1\] "
        r"client_id=photos-web\n",
        attacker,
    )
    assert re.search(r"←\s+200  access_token=\S+ chars\) \[AT2\] expires_in=300", attacker)
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
    assert re.search(
        r"attacker → api  POST /transfers  Authorization=Bearer \S+ chars\) \[AT2\].*\n"
        r"\s+guard → idp  POST /introspect  token=\S+ chars\) \[AT2\].*\n"
        r"\s+←\s+200  active=false\n"
        r"\s+guard\s+.*asked the IdP, which answered: not active \(revoked\)\. Refused with 401.*\n"
        r"\s+←\s+401  error=invalid_token",
        refused,
    )
    assert re.search(r"GET /photos .*\[AT2\]\n\s+guard\s+.*without calling the IdP.*\n\s+←\s+200 ", refused)
    assert "The clock moves on 5m 30s" in refused
    assert re.search(r"guard\s+found AT2 still signed by the IdP, but its exp passed 31s ago", refused)
    assert "The access token has expired." in refused
    reauth = section(out, STEPS[6], "\nSummary\n")
    assert re.search(r"POST /transfers .*\n(.*\n)*?\s+←\s+200  transferred=20", reauth)


def test_demo_tells_what_the_guard_did_from_the_guard_itself(demo_run: subprocess.CompletedProcess[str]) -> None:
    """The guard's own calls to the IdP: metadata and keys at first sight (again only once their
    max-age has passed), introspection only on the @sensitive route; and its verdicts."""
    out = logical(demo_run.stdout)
    calls = re.findall(r"guard → idp  (\S+ \S+)", out)
    assert calls[:2] == ["GET /.well-known/oauth-authorization-server", "GET /jwks"]
    assert calls.count("POST /introspect") == 3  # AT1, AT2 and AT3 on POST /transfers; never on GET /photos
    assert calls.count("GET /jwks") == 2  # the second once the clock passed the JWKS max-age (step 7)
    first = section(out, STEPS[0], STEPS[1])
    assert "read the IdP's metadata and public keys, which it keeps for later requests, then checked AT1" in first
    assert "/photos needs read:photos, which AT1 carries: 200, and list_photos runs." in first
    assert re.search(r"guard\s+recognised AT1: it passed the full check in an earlier request", first)
    step7 = section(out, STEPS[6], STEPS[7])
    assert "found its copy of the IdP's keys past the max-age the IdP set and fetched them again" in step7


def test_demo_explains_401_and_200_in_plain_words_before_rfc_numbers(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    """Step 6 says why the same token got 401 on one route and 200 on the other, RFC numbers last."""
    refused = section(logical(demo_run.stdout), STEPS[5], STEPS[6])
    why = " ".join(refused.split("Why 401 there and 200 here?", 1)[1].split("The clock moves on", 1)[0].split())
    sensitive = why.index("/transfers is @sensitive: the guard asked the IdP, which knows the grant is revoked, so 401")
    local = why.index("/photos is not: the guard checked AT2 on its own")
    assert sensitive < local < why.index("RFC 7662")


def test_demo_gives_the_guard_at_least_the_idps_space(demo_run: subprocess.CompletedProcess[str]) -> None:
    """Lines of the guard's part (its calls to the IdP, its verdicts) are at least as many as the IdP's."""
    counts = owners(demo_run.stdout)
    assert counts["guard"] >= counts["idp"] > 0, counts
    assert counts["api"] >= 16, counts  # eight requests to the API, each with its answer


def test_demo_lines_fit_in_100_columns(demo_run: subprocess.CompletedProcess[str]) -> None:
    """No line is longer than 100 columns, and no URL is cut to fit."""
    lines = demo_run.stdout.splitlines()
    assert max(len(line) for line in lines) <= WIDTH, [line for line in lines if len(line) > WIDTH]
    for url in re.findall(r"https?://[^\s\"]+", demo_run.stdout):
        assert url.rstrip(",;)") in URLS, url


def test_demo_under_an_ascii_only_terminal() -> None:
    """PYTHONIOENCODING=ascii: exit 0, pure ASCII (-> for arrows, ... for ellipses), still within 100 columns."""
    result = run_demo("ascii")
    assert result.returncode == 0, result.stdout.decode("ascii", "replace") + result.stderr.decode("ascii", "replace")
    assert result.stderr == b""
    out = result.stdout.decode("ascii")  # raises on any byte that is not ASCII
    assert "Every step behaved as expected." in out
    assert re.search(r"attacker -> api GET /photos  Authorization=Bearer eyJhbGc\.\.\.\(\d+ chars\) \[AT2\]", out)
    assert re.search(r"<-\s+401  error=invalid_token", out)
    assert "OAuth 2.1 sec. 4.3.1" in out
    assert max(len(line) for line in out.splitlines()) <= WIDTH


def test_demo_client_is_public_and_the_leak_is_the_refresh_token_alone(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    """photos-web is a public client: token requests carry client_id and no secret; the log line leaks only RT1."""
    out = logical(demo_run.stdout)
    assert "photos-web, a single-page app: a public client (no secret)" in out
    assert "OAuth 2.1 §4.3.1 requires it for public clients" in out
    token_requests = [line for line in out.splitlines() if "photos-web → idp  POST /token" in line]
    assert len(token_requests) == 4  # the code exchange, the replay, the new login, its refresh
    assert all(line.endswith("client_id=photos-web") for line in token_requests)
    assert "client_secret" not in out
    assert "Basic photos-web" not in out  # only photos-api, a confidential client, authenticates
    log_line = next(line for line in out.splitlines() if "DEBUG oauth" in line)
    assert re.fullmatch(r"\s+DEBUG oauth: POST /token client_id=photos-web -> 200 "
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
    """On a TTY the output is coloured, and colour never pushes a line past 100 columns; --no-color
    (and NO_COLOR) turn colour off there too."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    for argv, coloured in ((["demo"], True), (["demo", "--no-color"], False)):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stdout", terminal)
        assert main(argv) == 0
        assert ("\x1b[" in terminal.getvalue()) is coloured
        assert max(len(line) for line in ANSI.sub("", terminal.getvalue()).splitlines()) <= WIDTH
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
    assert "The story did not go as told: step 1 failed; 7 later step(s) did not run." in out
    assert max(len(line) for line in out.splitlines()) <= WIDTH


def test_demo_exits_1_when_the_guard_lets_the_revoked_token_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /transfers without @sensitive: the guard never asks the IdP, the revoked AT2 gets 200 in
    step 6, and the demo says so and exits 1, as it must when the guard's part goes wrong."""

    @require_scopes("write:transfers")
    async def unmarked_transfer(request: Request) -> JSONResponse:
        return JSONResponse({"transferred": (await request.json()).get("amount"), "checked": request.auth.source})

    routes: list[Any] = [
        Route("/transfers", unmarked_transfer, methods=["POST"]) if route.path == "/transfers" else route
        for route in _demo.ROUTES
    ]
    monkeypatch.setattr(_demo, "ROUTES", routes)
    stream = io.StringIO()
    assert play(Printer(stream)) == 1
    out = stream.getvalue()
    assert "UNEXPECTED  POST /transfers with the revoked token should answer 401 at once" in out
    assert re.search(r"^\s+6\s+both refused\s+.*FAILED$", out, re.MULTILINE)
    assert "The story did not go as told: step 6 failed." in out
    assert max(len(line) for line in out.splitlines()) <= WIDTH


def test_demo_shows_a_pushed_revocation_closing_the_window_on_an_ordinary_route(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    """Step 8: the IdP pushes alice's sign-out (a CAEP session-revoked SET); the guard refuses her token on
    GET /photos at once, as revoked, without calling the IdP (the push did the work)."""
    step8 = section(logical(demo_run.stdout), STEPS[7], "\nSummary\n")
    assert "SET(s) pushed to the API: CAEP session-revoked, subject iss_sub alice" in step8
    photos = re.findall(r"←\s+(\d{3})  ", step8)
    assert photos == ["200", "401"]
    assert 'error_description="The access token was revoked."' in step8
    assert "guard → idp  POST /introspect" not in step8
