"""`tokenguard check` and `inspect --issuer` against issuers that cannot be reached: which failure it is.

Each failure is produced for real where a test can do it on this machine alone: a closed loopback port
(refused), a plain TCP server spoken to over https:// (TLS on a plain-HTTP port), a TLS server with a
self-signed certificate (verification failure, and plain http:// sent to it), and a `.invalid` name
(DNS). Timeouts, which a test cannot produce without waiting, are the exact httpx exceptions with the
cause httpx gives them, raised through respx.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import AUDIENCE, ISSUER, METADATA_URL, OPENID_URL, Issuer
from tokenguard.cli import main
from tokenguard.cli._output import unreachable
from tokenguard.testing import ManualClock

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def run(capsys: pytest.CaptureFixture[str], *argv: str, **options: Any) -> tuple[int, str, str]:
    code = main(list(argv), **options)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests talk to loopback sockets directly: a proxy from the environment would change the failure."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# -- real endpoints on loopback ---------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: bound once to pick it, then closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class _PlainHTTP(socketserver.BaseRequestHandler):
    """Answers whatever arrives with a plain-text HTTP 400, as a plain HTTP server does to a TLS hello."""

    def handle(self) -> None:
        self.request.recv(4096)
        self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _serve(server: socketserver.TCPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def plain_port() -> Iterator[int]:
    """A plain (no TLS) HTTP server on loopback."""
    yield from _serve(socketserver.ThreadingTCPServer(("127.0.0.1", 0), _PlainHTTP))


def _self_signed(directory: Path) -> ssl.SSLContext:
    """A server context with a self-signed certificate for 127.0.0.1 (no CA this machine trusts)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture
def tls_port(tmp_path: Path) -> Iterator[int]:
    """A TLS server on loopback whose certificate is self-signed."""
    context = _self_signed(tmp_path)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                with context.wrap_socket(self.request, server_side=True) as tls:
                    tls.recv(4096)
                    tls.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            except (ssl.SSLError, OSError):
                pass  # the client gave up on the handshake, or spoke plain HTTP: what the tests are about

    yield from _serve(socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler))


def _check_json(capsys: pytest.CaptureFixture[str], issuer: str, **options: Any) -> tuple[dict[str, Any], str]:
    """`check --json`: exit 2, one JSON document on stdout, one line on stderr; returns (document, stderr)."""
    code, out, err = run(capsys, "check", "--issuer", issuer, "--json", **options)
    assert code == 2, out + err
    document = json.loads(out)
    assert document["ok"] is False
    assert document["exit_code"] == 2
    assert document["error"]["kind"] == "unreachable"
    assert err.count("\n") == 1
    assert err.startswith(f"tokenguard check: error: cannot reach the issuer {issuer}: ")
    return document, err


def test_connection_refused_names_the_port_nothing_listens_on(
    capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    """A closed port: "connection refused: nothing is listening on 127.0.0.1:PORT", in text and JSON."""
    issuer = f"http://127.0.0.1:{closed_port}"
    code, out, err = run(capsys, "check", "--issuer", issuer)
    assert code == 2
    assert out == ""
    assert f"connection refused: nothing is listening on 127.0.0.1:{closed_port}" in err
    assert "ConnectError" not in err
    document, _ = _check_json(capsys, issuer)
    assert document["error"]["reason"] == "connection_refused"
    assert [attempt["reason"] for attempt in document["metadata_attempts"]] == ["connection_refused"] * 2
    assert document["metadata_attempts"][0]["url"] == f"{issuer}/.well-known/oauth-authorization-server"


def test_tls_spoken_to_a_plain_http_port(capsys: pytest.CaptureFixture[str], plain_port: int) -> None:
    """https:// to a port that speaks plain HTTP: said as such, with the loopback hint to use http://."""
    document, err = _check_json(capsys, f"https://127.0.0.1:{plain_port}")
    assert document["error"]["reason"] == "tls_to_plain_port"
    assert f"TLS spoken to a plain-HTTP port: 127.0.0.1:{plain_port}" in err
    assert "use http://, which is allowed on loopback" in err


def test_plain_http_sent_to_a_tls_port(capsys: pytest.CaptureFixture[str], tls_port: int) -> None:
    """http:// to a TLS port: the server drops the request; said as the likely TLS port it is."""
    document, err = _check_json(capsys, f"http://127.0.0.1:{tls_port}")
    assert document["error"]["reason"] == "plain_http_to_tls_port"
    assert "plain HTTP sent to a TLS port (try https://)" in err


def test_a_certificate_that_does_not_verify(capsys: pytest.CaptureFixture[str], tls_port: int) -> None:
    """A self-signed certificate: verification failure, with OpenSSL's own short reason."""
    document, err = _check_json(capsys, f"https://127.0.0.1:{tls_port}")
    assert document["error"]["reason"] == "tls_certificate"
    assert "TLS certificate verification failed for 127.0.0.1: self-signed certificate" in err


def test_inspect_says_the_same_as_check(
    capsys: pytest.CaptureFixture[str], clock: ManualClock, tls_port: int, closed_port: int
) -> None:
    """`inspect --issuer` names the failure in the same words, exit 2, without the token."""
    for issuer, words in (
        (f"https://127.0.0.1:{tls_port}", "TLS certificate verification failed for 127.0.0.1: self-signed"),
        (f"http://127.0.0.1:{closed_port}", f"connection refused: nothing is listening on 127.0.0.1:{closed_port}"),
    ):
        token = Issuer(clock, issuer=issuer).token()
        code, _, err = run(capsys, "inspect", token, "--issuer", issuer, "--audience", AUDIENCE, clock=clock)
        assert code == 2
        assert err.startswith(f"tokenguard inspect: error: could not check the token against {issuer}: cannot reach")
        assert words in err
        assert err.count("\n") == 1
        assert token not in err


def _resolver_says_no_such_name() -> bool:
    try:
        socket.getaddrinfo("no-such-host.invalid", 443)
    except socket.gaierror as exc:
        return exc.errno == socket.EAI_NONAME
    return False


def test_dns_name_not_found_for_real(capsys: pytest.CaptureFixture[str]) -> None:
    """`.invalid` never resolves (RFC 6761 §6.4): the lookup fails and the check says so."""
    if not _resolver_says_no_such_name():
        pytest.skip("this machine's resolver does not answer 'no such name' for .invalid")
    document, err = _check_json(capsys, "https://no-such-host.invalid")
    assert document["error"]["reason"] == "dns_not_found"
    assert "DNS name not found: no-such-host.invalid has no address" in err


# -- the same classification from the exact httpx exceptions --------------------------------
# respx re-raises a side effect's exception "from" its own wrapper, which replaces the cause httpx
# gives it; httpx's own MockTransport hands the exception on untouched, so the chain is httpx's.


def _failing_client(error: Exception, cause: BaseException) -> Any:
    """An ``http_client`` factory whose every request fails as httpx fails: the httpx error, from
    httpcore's error of the same name, from the OS's or the event loop's."""
    inner = getattr(httpcore, type(error).__name__)

    def handler(request: httpx.Request) -> httpx.Response:
        fresh, root = type(error)(*error.args), type(cause)(*cause.args)  # one chain per request
        try:
            raise inner(str(error)) from root
        except Exception as core:
            raise fresh from core

    return lambda: httpx.AsyncClient(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("error", "cause", "reason", "words"),
    [
        (
            httpx.ConnectError("[Errno -2] Name or service not known"),
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "dns_not_found",
            "DNS name not found: idp.example.com has no address",
        ),
        (
            httpx.ConnectError("[Errno -3] Temporary failure in name resolution"),
            socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
            "dns_failed",
            "DNS lookup of idp.example.com failed (Temporary failure in name resolution)",
        ),
        (
            httpx.ConnectTimeout(""),
            TimeoutError(),
            "timeout",
            "timed out: idp.example.com:443 did not accept a connection within 5s",
        ),
        (
            httpx.ReadTimeout(""),
            TimeoutError(),
            "timeout",
            "timed out: idp.example.com:443 accepted the connection but sent no answer within 5s",
        ),
        (
            httpx.ConnectError("[Errno 113] No route to host"),
            OSError(113, "No route to host"),
            "no_route",
            "no route to idp.example.com:443 (No route to host)",
        ),
    ],
)
def test_each_failure_from_its_httpx_exception(
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    cause: BaseException,
    reason: str,
    words: str,
) -> None:
    """DNS, timeouts and routing, classified from the exception chain httpx raises (not its text)."""
    document, err = _check_json(capsys, ISSUER, http_client=_failing_client(error, cause))
    assert document["error"]["reason"] == reason
    assert words in err
    assert [attempt["url"] for attempt in document["metadata_attempts"]] == [METADATA_URL, OPENID_URL]


def test_the_text_of_an_exception_is_not_what_decides() -> None:
    """A message that says "refused" but a cause that is a timeout is a timeout, and the reverse."""
    url = "https://idp.example.com/.well-known/oauth-authorization-server"
    misleading = httpx.ConnectError("connection refused")
    misleading.__cause__ = TimeoutError("nothing")
    assert unreachable(misleading, url, timeout=5).code == "timeout"
    worded = httpx.ConnectError("timed out, certificate, DNS")
    worded.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert unreachable(worded, url, timeout=5).code == "connection_refused"
