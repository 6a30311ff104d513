"""The examples, live: README's own commands, as real processes, over real HTTP.

``tokenguard dev-idp`` and ``uvicorn examples.<module>:app`` run as subprocesses, started with the
arguments README's Examples section gives (the port replaced by ``--port 0``, which each prints; the
API told the DevIdP's address with ``TOKENGUARD_ISSUER``, as the examples' docstrings say). README's
curl blocks then run literally in bash, only their ports substituted; httpx covers the other paths
the docs promise (401, 403, step-up). Readiness is a line a process prints once its socket listens,
read by a thread: no sleeping, and every process is stopped in a ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from examples import fastapi_app, fastapi_oauth_app, payments_app, starlette_app

from tokenguard.testing._processes import OutputProcess

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAYMENTS = "https://payments.example"
MFA = "urn:tokenguard:acr:mfa"
DEV_USER = "urn:tokenguard:params:oauth:grant-type:dev-user"
CLIENT = ("dev-client", "dev-client-secret")
PAYMENT = {
    "type": "payment_initiation",
    "instructedAmount": {"amount": "500", "currency": "EUR"},
    "creditorAccount": {"iban": "12345"},
}
#: Where README's commands expect the DevIdP and the API.
README_IDP, README_API = "http://127.0.0.1:9000", "http://127.0.0.1:8000"
STARTUP = 20.0  # seconds a process may take to say it listens, on a loaded 2-core machine
needs_shell = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("bash")), reason="needs curl and bash")


# -- README's Examples section -----------------------------------------------------------------------------


def examples_section() -> str:
    start = README.index("\n## Examples\n")
    return README[start : README.index("\n## ", start + 1)]


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", examples_section(), re.DOTALL)


def logical_lines(block: str) -> list[str]:
    """The block's commands: continuation lines joined, blank ones dropped."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def server_block(marker: str) -> tuple[list[list[str]], str]:
    """The bash block that starts servers and names ``marker``, as argument lists; and the block after it."""
    blocks = bash_blocks()
    index = next(i for i, block in enumerate(blocks) if marker in block and "tokenguard dev-idp" in block)
    servers = [shlex.split(line, comments=True) for line in logical_lines(blocks[index])]
    return [argv for argv in servers if argv and argv[0] != "pip"], blocks[index + 1]


def with_port_zero(argv: list[str]) -> list[str]:
    """README's command with ``--port 0``: the process picks a free port and prints it."""
    position = argv.index("--port") + 1
    assert argv[position] in ("9000", "8000"), argv
    return [*argv[:position], "0", *argv[position + 1 :]]


def run_literally(block: str, idp: str, api: str) -> list[Any]:
    """Run a README block with bash, only its ports changed; the JSON documents it printed, in order."""
    assert README_IDP in block
    assert README_API in block
    script = "set -euo pipefail\n" + block.replace(README_IDP, idp).replace(README_API, api)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    decoder, text, documents = json.JSONDecoder(), done.stdout.strip(), []
    while text:  # curl prints each body as it came, without a newline between them
        document, end = decoder.raw_decode(text)
        documents.append(document)
        text = text[end:].lstrip()
    return documents


# -- processes ------------------------------------------------------------------------------------------------


class Process(OutputProcess):
    """A subprocess run from the repository root, without the caller's ``TOKENGUARD_*`` settings."""

    def __init__(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        environment = {name: value for name, value in os.environ.items() if not name.startswith("TOKENGUARD_")}
        super().__init__(argv, env={**environment, **(env or {})}, cwd=ROOT)

    def wait_for(self, pattern: str, deadline: float | None = None) -> re.Match[str]:
        """The first line (from here on) matching ``pattern``; fails if the process exits or is silent too long."""
        try:
            return super().wait_for(pattern, time.monotonic() + STARTUP if deadline is None else deadline)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None


@contextmanager
def dev_idp(argv: list[str]) -> Iterator[str]:
    """``tokenguard dev-idp ...`` on a free port; yields its issuer once its socket listens."""
    assert argv[:2] == ["tokenguard", "dev-idp"], argv
    process = Process([sys.executable, "-m", "tokenguard", *with_port_zero(argv)[1:]])
    try:
        issuer = process.wait_for(r"^\s+issuer\s+(http://127\.0\.0\.1:\d+)\s*$").group(1)
        process.wait_for(r"^Listening on ")  # bound before the banner: requests queue until served
        yield issuer
    finally:
        process.stop()


@contextmanager
def uvicorn(argv: list[str], issuer: str) -> Iterator[str]:
    """``uvicorn examples.X:app ...`` on a free port, pointed at ``issuer``; yields its base URL."""
    assert argv[0] == "uvicorn", argv
    assert argv[1].startswith("examples."), argv
    process = Process([sys.executable, "-m", *with_port_zero(argv)], env={"TOKENGUARD_ISSUER": issuer})
    try:
        yield process.wait_for(r"Uvicorn running on (http://127\.0\.0\.1:\d+)").group(1)
    finally:
        process.stop()


def token(issuer: str, **form: str) -> str:
    """A token from the DevIdP's token endpoint, asked for as README's curl does (client_secret_basic, a form)."""
    response = httpx.post(f"{issuer}/token", data=form, auth=CLIENT, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# -- the photo API: starlette_app and fastapi_app --------------------------------------------------------------


PHOTO_SERVERS, PHOTO_CLIENT_BLOCK = server_block("examples.starlette_app:app")


@pytest.fixture(scope="module")
def photos_idp() -> Iterator[str]:
    (idp_argv,) = [argv for argv in PHOTO_SERVERS if argv[0] == "tokenguard"]
    with dev_idp(idp_argv) as issuer:
        yield issuer


@pytest.fixture(scope="module", params=["starlette_app", "fastapi_app"])
def photo_api(request: pytest.FixtureRequest, photos_idp: str) -> Iterator[str]:
    """README's uvicorn line, for the module it names or its "# or examples.fastapi_app:app" alternative."""
    line = next(line for line in logical_lines(bash_blocks()[0]) if line.startswith("uvicorn "))
    assert f"examples.{request.param}:app" in line
    (argv,) = [argv for argv in PHOTO_SERVERS if argv[0] == "uvicorn"]
    argv = [argv[0], f"examples.{request.param}:app", *argv[2:]]
    with uvicorn(argv, photos_idp) as api:
        yield api


@needs_shell
def test_readme_photo_commands_run_as_written(photos_idp: str, photo_api: str) -> None:
    """README's curl block: a token from the DevIdP, GET /photos 200, POST /transfers 200 (JSON, introspected)."""
    photos, transfer = run_literally(PHOTO_CLIENT_BLOCK, photos_idp, photo_api)
    assert photos["owner"] == "dev-client"
    assert sorted(photos["scopes"]) == ["read:photos", "write:transfers"]
    assert transfer["transferred"] == 5
    assert (transfer["by"], transfer["checked"]) == ("dev-client", "introspection")


def test_photo_api_answers_401_403_and_200_as_documented(photos_idp: str, photo_api: str) -> None:
    """No token: 401; a token without read:photos: 403 insufficient_scope; with it: 200; /health is public."""
    with httpx.Client(base_url=photo_api, timeout=10) as api:
        anonymous = api.get("/photos")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        writer = token(photos_idp, grant_type="client_credentials", scope="write:transfers")
        denied = api.get("/photos", headers=bearer(writer))
        assert denied.status_code == 403
        assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
        reader = token(photos_idp, grant_type="client_credentials", scope="read:photos")
        assert api.get("/photos", headers=bearer(reader)).status_code == 200
        assert api.post("/transfers", json={"amount": 5, "to": "bob"}, headers=bearer(reader)).status_code == 403
        assert api.get("/health").status_code == 200


# -- the payments API ----------------------------------------------------------------------------------------


PAYMENT_SERVERS, PAYMENT_CLIENT_BLOCK = server_block("examples.payments_app:app")


@pytest.fixture(scope="module")
def payments() -> Iterator[tuple[str, str]]:
    """README's two payments commands: the DevIdP with the payments audience and scope, and the API."""
    idp_argv, api_argv = PAYMENT_SERVERS
    with dev_idp(idp_argv) as issuer, uvicorn(api_argv, issuer) as api:
        yield issuer, api


@needs_shell
def test_readme_payments_commands_run_as_written(payments: tuple[str, str]) -> None:
    """README's payments block: 450 to 12345 passes, 600 is 403 with the reason, the MFA admin adds a beneficiary."""
    transferred, refused, added = run_literally(PAYMENT_CLIENT_BLOCK, *payments)
    assert transferred == {"transferred": 450, "to": "12345", "by": "dev-client"}
    assert refused == {
        "error": "insufficient_scope",
        "error_description": "The amount exceeds what the payment authorization allows.",
    }
    assert added == {"added": "DE02", "by": "alice"}


def test_payments_authorization_details_decide_each_request(payments: tuple[str, str]) -> None:
    """Transfers and balances are checked against the token's RFC 9396 details; no details, no transfer."""
    issuer, api_url = payments
    details = json.dumps([PAYMENT, {"type": "account_information", "accounts": ["DE01"]}])
    granted = token(issuer, grant_type="client_credentials", resource=PAYMENTS, authorization_details=details)
    plain = token(issuer, grant_type="client_credentials", resource=PAYMENTS)
    with httpx.Client(base_url=api_url, timeout=10) as api:
        transfer = api.post("/transfers", json={"amount": 450, "to": "12345"}, headers=bearer(granted))
        assert transfer.status_code == 200
        elsewhere = api.post("/transfers", json={"amount": 450, "to": "99999"}, headers=bearer(granted))
        assert elsewhere.status_code == 403
        assert api.post("/transfers", json={"amount": 1, "to": "12345"}, headers=bearer(plain)).status_code == 403
        assert api.get("/accounts/DE01/balance", headers=bearer(granted)).json()["balance"] == "1234.56"
        assert api.get("/accounts/DE02/balance", headers=bearer(granted)).status_code == 403


def test_payments_step_up_needs_a_fresh_mfa_sign_in(payments: tuple[str, str]) -> None:
    """POST /beneficiaries: without the MFA acr, 401 insufficient_user_authentication naming it; with it, 201."""
    issuer, api_url = payments
    user = {"grant_type": DEV_USER, "username": "alice", "scope": "payments:admin", "resource": PAYMENTS}
    without_mfa = token(issuer, **user)
    with_mfa = token(issuer, **user, acr_values=MFA)
    no_scope = token(issuer, **{**user, "scope": "read"}, acr_values=MFA)
    with httpx.Client(base_url=api_url, timeout=10) as api:
        step_up = api.post("/beneficiaries", json={"iban": "DE02"}, headers=bearer(without_mfa))
        assert step_up.status_code == 401
        challenge = step_up.headers["www-authenticate"]
        assert 'error="insufficient_user_authentication"' in challenge
        assert f'acr_values="{MFA}"' in challenge
        assert 'max_age="300"' in challenge
        assert api.post("/beneficiaries", json={"iban": "DE02"}, headers=bearer(with_mfa)).status_code == 201
        assert api.post("/beneficiaries", json={"iban": "DE02"}, headers=bearer(no_scope)).status_code == 403


def test_payments_refuses_tokens_for_the_default_audience(payments: tuple[str, str]) -> None:
    """A token asked for without resource= is for https://api.tokenguard.test: the payments API says 401."""
    issuer, api_url = payments
    other = token(issuer, grant_type="client_credentials", authorization_details=json.dumps([PAYMENT]))
    response = httpx.post(f"{api_url}/transfers", json={"amount": 1, "to": "12345"}, headers=bearer(other))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


# -- fastapi_oauth_app: its own DevIdP, in one process --------------------------------------------------------


def oauth_app_argv() -> list[str]:
    """README's command for the Swagger UI example, run with this interpreter."""
    line = next(
        line for block in bash_blocks() for line in logical_lines(block) if "examples.fastapi_oauth_app" in line
    )
    argv = shlex.split(line, comments=True)
    assert argv == ["python", "-m", "examples.fastapi_oauth_app"]
    return [sys.executable, *argv[1:]]


@pytest.mark.parametrize("variable", ["TOKENGUARD_IDP_PORT", "PORT"])
def test_oauth_app_exits_when_a_port_is_taken(variable: str) -> None:
    """A port someone else listens on: exit 1 with dev-idp's 'cannot listen on HOST:PORT' message, nothing served."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(8)
        held.setblocking(False)
        port = held.getsockname()[1]
        ports = {"TOKENGUARD_IDP_PORT": "0", "PORT": "0", variable: str(port)}
        process = Process(oauth_app_argv(), env=ports)
        try:
            exit_code = process.popen.wait(timeout=STARTUP)
        finally:
            process.stop()
        with pytest.raises(BlockingIOError):
            held.accept()  # the example never talked to whatever holds the port
    output = "".join(process.output)
    assert exit_code == 1
    assert output.endswith(
        f"cannot listen on 127.0.0.1:{port}: Address already in use (set {variable} to use another port)\n"
    )
    assert "DevIdP at" not in output


def test_oauth_app_serves_its_docs_against_its_own_idp() -> None:
    """On free ports: the first line names both; the DevIdP issues a token the API accepts; /docs is served."""
    process = Process(oauth_app_argv(), env={"TOKENGUARD_IDP_PORT": "0", "PORT": "0"})
    try:
        issuer, api_url = process.wait_for(
            r"^DevIdP at (http://127\.0\.0\.1:\d+); open (http://127\.0\.0\.1:\d+)/docs"
        ).groups()
        reader = token(issuer, grant_type="client_credentials", scope="read:photos")
        with httpx.Client(base_url=api_url, timeout=10) as api:
            assert api.get("/docs").status_code == 200
            assert api.get("/photos").status_code == 401
            assert api.get("/photos", headers=bearer(reader)).json() == {
                "owner": "dev-client",
                "scopes": ["read:photos"],
            }
            assert api.post("/photos", headers=bearer(reader)).status_code == 403
    finally:
        process.stop()


# -- the docstrings give README's commands ---------------------------------------------------------------------


@pytest.mark.parametrize("module", [starlette_app, fastapi_app, payments_app, fastapi_oauth_app])
def test_docstring_commands_are_the_ones_readme_runs(module: ModuleType) -> None:
    """Every command in an example's docstring is one of README's Examples commands, which the tests above run."""
    assert module.__doc__ is not None
    readme_commands = set()
    for line in (line for block in bash_blocks() for line in logical_lines(block)):
        command, _, comment = line.partition("  #")
        readme_commands.add(command.strip())
        if alternative := re.fullmatch(r"\s*or (examples\.\w+:app)\s*", comment):  # "uvicorn X  # or Y"
            readme_commands.add(re.sub(r"examples\.\w+:app", alternative.group(1), command.strip()))
    docstring = module.__doc__.replace("\\\n", " ")
    commands = [
        re.sub(r"\s+", " ", line.split("  #")[0]).strip()
        for line in docstring.splitlines()
        if re.match(r"\s{4}(tokenguard|uvicorn|python|curl|TOKEN=)", line)
    ]
    assert commands, "the docstring shows how to run the example"
    normalised = {re.sub(r"\s+", " ", command) for command in readme_commands}
    assert [command for command in commands if command not in normalised] == []
