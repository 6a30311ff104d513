"""`tokenguard dev-idp`: --audience, the banner's audiences, and one fitting hint per error.

Each error is run through the command itself (``main``), which binds ``--port 0`` before it builds
the DevIdP; the banner and the audiences are checked on the DevIdP the command builds, over its ASGI app.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import jwt
import pytest
from starlette.testclient import TestClient

from tokenguard.cli import main
from tokenguard.cli._devidp import _build, _describe
from tokenguard.cli._output import CliError, Printer
from tokenguard.testing import DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

PAYMENTS = "https://payments.example"
#: The hint that fits only a plain-http issuer off loopback.
TLS_HINT = "TLS proxy"


def fail(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``tokenguard dev-idp ARGV`` expecting a usage error: exit 2, nothing on stdout, one line on stderr."""
    code = main(["dev-idp", "--port", "0", "--no-color", *argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("tokenguard dev-idp: error: ")
    assert "Traceback" not in err
    return err


# -- one hint per error --------------------------------------------------------------------------------


def test_an_unreadable_key_file_says_so_without_the_issuer_hint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A key file that is not JSON: the error names --keys and the file, and says nothing about https or --issuer."""
    keys = tmp_path / "keys.json"
    keys.write_text("not json")
    err = fail(capsys, "--keys", str(keys))
    assert err.startswith(f"tokenguard dev-idp: error: --keys: cannot read the key file '{keys}'")
    assert "--issuer" not in err
    assert TLS_HINT not in err


def test_a_key_file_in_a_missing_directory_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Keys to be saved where no directory exists: the OS reason, about --keys only."""
    keys = tmp_path / "missing" / "keys.json"
    err = fail(capsys, "--keys", str(keys))
    assert f"--keys: cannot use the key file '{keys}': No such file or directory" in err
    assert "--issuer" not in err


def test_a_plain_http_issuer_off_loopback_gets_the_tls_proxy_hint(capsys: pytest.CaptureFixture[str]) -> None:
    """--issuer http://idp.example: refused, with the one hint that fits (a TLS proxy's https URL)."""
    err = fail(capsys, "--issuer", "http://idp.example:9000")
    assert "--issuer must use https://" in err
    assert TLS_HINT in err
    assert "--keys" not in err


@pytest.mark.parametrize(
    ("issuer", "message"),
    [
        ("ftp://idp.example", "--issuer must be an absolute https:// URL"),
        ("https://idp.example/?tenant=1", "--issuer must not have a query (RFC 8414 §2)"),
        ("https://idp.example/#top", "--issuer must not have a fragment"),
    ],
)
def test_other_issuer_errors_get_no_tls_hint(capsys: pytest.CaptureFixture[str], issuer: str, message: str) -> None:
    """A malformed --issuer is refused for what is wrong with it, without the plain-http hint."""
    err = fail(capsys, "--issuer", issuer)
    assert message in err
    assert TLS_HINT not in err


def test_a_non_loopback_host_without_issuer_is_told_to_give_one() -> None:
    """Serving on one non-loopback address with no --issuer: the hint is --issuer https://..., nothing else."""
    with pytest.raises(CliError) as caught:
        _build("192.0.2.10", 9000, None, None)
    assert caught.value.message.startswith("serving on 192.0.2.10 needs --issuer https://... (a TLS proxy in front)")
    assert "--keys" not in caught.value.message


def test_a_port_in_use_gets_the_port_hint_only(capsys: pytest.CaptureFixture[str]) -> None:
    """A port another socket listens on: 'cannot listen on HOST:PORT: Address already in use', and a --port hint."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        code = main(["dev-idp", "--port", str(port), "--no-color"])
        out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err == (
        f"tokenguard dev-idp: error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another server has it: pick another --port, or --port 0 for a free one)\n"
    )


@pytest.mark.parametrize("audience", ["payments", "https://payments.example#x", "urn with space"])
def test_a_malformed_audience_is_refused_before_binding(capsys: pytest.CaptureFixture[str], audience: str) -> None:
    """--audience must be what a client can send as resource= (RFC 8707 §2): an absolute URI, no fragment."""
    err = fail(capsys, "--audience", audience)
    assert "--audience must be an absolute URI without a fragment" in err
    assert repr(audience) in err
    assert TLS_HINT not in err


# -- --audience ---------------------------------------------------------------------------------------


def test_audiences_are_issued_for_and_printed() -> None:
    """--audience AUD: the DevIdP issues tokens for AUD on resource=AUD; the banner lists it and shows how."""
    idp = _build("127.0.0.1", 9000, None, None, (), (PAYMENTS, "urn:example:ledger"))
    assert set(idp.audiences) == {DEFAULT_AUDIENCE, PAYMENTS, "urn:example:ledger"}
    stream = io.StringIO()
    _describe(Printer(stream), idp, "generated now", listen="http://127.0.0.1:9000")
    banner = stream.getvalue()
    assert f"  audiences  {DEFAULT_AUDIENCE} (the default), {PAYMENTS}, urn:example:ledger\n" in banner
    assert "a client asks for another with resource=AUDIENCE, RFC 8707)" in banner
    assert f"-d grant_type=client_credentials -d resource={PAYMENTS} http://127.0.0.1:9000/token" in banner

    with TestClient(idp.app, base_url=idp.issuer) as client:
        response = client.post(
            "/token",
            data={"grant_type": "client_credentials", "resource": PAYMENTS},
            auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
        )
    assert jwt.decode(response.json()["access_token"], options={"verify_signature": False})["aud"] == PAYMENTS


def test_without_audience_the_banner_says_how_to_add_one() -> None:
    """Only the default audience: the banner names it and the --audience flag."""
    stream = io.StringIO()
    _describe(Printer(stream), _build("127.0.0.1", 9000, None, None), "generated now", listen="http://127.0.0.1:9000")
    banner = stream.getvalue()
    assert f"  audiences  {DEFAULT_AUDIENCE} (the default)\n" in banner
    assert "--audience AUD adds another" in banner
    assert "resource=" not in banner
