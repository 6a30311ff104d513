"""Client-certificate thumbprints for certificate-bound tokens (``tokenguard._mtls``, RFC 8705 §3).

Real certificates made with ``cryptography``; every thumbprint is checked against one computed another
way (cryptography's own fingerprint, and ``openssl`` when it is installed). The certificate comes from
the ASGI TLS extension, else from a trusted proxy's header: Envoy's XFCC (``Hash``, ``Cert``), or a
PEM header as nginx and AWS ALB send it. Junk and oversized input give ``None``, never an exception.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenguard._mtls import (
    MAX_CERTIFICATE,
    certificate_thumbprint_from_der,
    certificate_thumbprint_from_pem,
    client_certificate_thumbprint,
)
from tokenguard._origin import MAX_FORWARDED, parse_trusted_proxies

TRUSTED = parse_trusted_proxies(["10.0.0.0/8", "2001:db8::/32"])
PROXY = "10.0.0.5"


def make_certificate(
    common_name: str, key: Any, issuer: tuple[x509.Certificate, Any] | None = None, *, sans: int = 1
) -> x509.Certificate:
    """A real X.509 certificate: self-signed, or signed by ``issuer`` (certificate, key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"client{i}.example") for i in range(sans)]), critical=False
        )
    )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA = make_certificate("test CA", CA_KEY)
CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())
CLIENT = make_certificate("client", CLIENT_KEY, (CA, CA_KEY))
OTHER = make_certificate("other client", ec.generate_private_key(ec.SECP256R1()))
RSA_CLIENT = make_certificate("rsa client", rsa.generate_private_key(public_exponent=65537, key_size=2048), sans=150)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def expected(cert: x509.Certificate) -> str:
    """The x5t#S256 computed independently: cryptography's SHA-256 fingerprint, base64url, no padding."""
    return base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).decode("ascii").rstrip("=")


def scope(*headers: tuple[str, str], client: str | None = PROXY, chain: Any = None) -> dict[str, Any]:
    made: dict[str, Any] = {
        "type": "http",
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
        "client": (client, 50000) if client is not None else None,
    }
    if chain is not None:
        made["extensions"] = {"tls": {"client_cert_chain": chain, "client_cert_error": None}}
    return made


# -- thumbprints ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cert", [CLIENT, CA, OTHER, RSA_CLIENT], ids=["client", "ca", "self-signed", "rsa"])
def test_thumbprints_match_an_independent_computation(cert: x509.Certificate) -> None:
    thumbprint = expected(cert)
    assert len(thumbprint) == 43  # 32 bytes, base64url without padding (RFC 8705 §3.1)
    assert "=" not in thumbprint
    assert certificate_thumbprint_from_der(der(cert)) == thumbprint
    assert certificate_thumbprint_from_der(bytearray(der(cert))) == thumbprint
    assert certificate_thumbprint_from_pem(pem(cert)) == thumbprint
    assert certificate_thumbprint_from_pem(pem(cert).encode("ascii")) == thumbprint


def test_distinct_certificates_have_distinct_thumbprints() -> None:
    prints = {certificate_thumbprint_from_pem(pem(cert)) for cert in (CLIENT, CA, OTHER, RSA_CLIENT)}
    assert len(prints) == 4


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_thumbprint_matches_openssl(tmp_path: Path) -> None:
    """``openssl x509 -fingerprint -sha256`` (hex of the DER's SHA-256) gives the same digest."""
    path = tmp_path / "client.pem"
    path.write_text(pem(CLIENT))
    done = subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
    )
    hex_digest = done.stdout.strip().split("=", 1)[1].replace(":", "")
    openssl_print = base64.urlsafe_b64encode(bytes.fromhex(hex_digest)).decode().rstrip("=")
    assert certificate_thumbprint_from_pem(pem(CLIENT)) == openssl_print


def test_pem_layouts_that_are_still_one_certificate() -> None:
    text = pem(CLIENT)
    assert certificate_thumbprint_from_pem(text.replace("\n", "\r\n")) == expected(CLIENT)
    assert certificate_thumbprint_from_pem("\n\n  " + text + "  \n") == expected(CLIENT)
    # One line of base64 (no breaks), and breaks replaced by spaces or tabs (nginx's old $ssl_client_cert).
    body = "".join(text.splitlines()[1:-1])
    one_line = f"-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----"
    assert certificate_thumbprint_from_pem(one_line) == expected(CLIENT)
    assert certificate_thumbprint_from_pem(text.replace("\n", " ")) == expected(CLIENT)
    assert certificate_thumbprint_from_pem(text.replace("\n", "\n\t")) == expected(CLIENT)


JUNK_PEM = {
    "empty": "",
    "text": "hello",
    "no-end": pem(CLIENT).split("-----END")[0],
    "two-certificates": pem(CLIENT) + pem(CA),
    "text-before": "subject=CN=client\n" + pem(CLIENT),
    "private-key": CLIENT_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode(),
    "public-key": CLIENT_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode(),
    "not-base64": "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----",
    "bad-padding": "-----BEGIN CERTIFICATE-----\nMIIB=\n-----END CERTIFICATE-----",
    "empty-body": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----",
    "base64-not-der": "-----BEGIN CERTIFICATE-----\n"
    + base64.b64encode(b"x" * 300).decode()
    + "\n-----END CERTIFICATE-----",
    "truncated-der": "-----BEGIN CERTIFICATE-----\n"
    + base64.b64encode(der(CLIENT)[:-10]).decode()
    + "\n-----END CERTIFICATE-----",
    "trailing-der": "-----BEGIN CERTIFICATE-----\n"
    + base64.b64encode(der(CLIENT) + b"\x00\x00").decode()
    + "\n-----END CERTIFICATE-----",
    "non-ascii": pem(CLIENT).replace("M", "\u041c", 1),
    "oversized": pem(CLIENT) + " " * MAX_CERTIFICATE,
}


@pytest.mark.parametrize("junk", JUNK_PEM.values(), ids=JUNK_PEM.keys())
def test_junk_pem_is_a_value_error(junk: str) -> None:
    with pytest.raises(ValueError):  # the message varies with the kind of junk
        certificate_thumbprint_from_pem(junk)
    if junk.isascii():
        with pytest.raises(ValueError):
            certificate_thumbprint_from_pem(junk.encode("ascii"))


def test_non_ascii_bytes_and_wrong_types() -> None:
    with pytest.raises(ValueError, match="ASCII"):
        certificate_thumbprint_from_pem(pem(CLIENT).encode() + b"\xff")
    with pytest.raises(TypeError):
        certificate_thumbprint_from_pem(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        certificate_thumbprint_from_der("not bytes")  # type: ignore[arg-type]


# -- the ASGI TLS extension -----------------------------------------------------------------------------------


def test_the_tls_extension_gives_the_clients_certificate() -> None:
    """https://asgi.readthedocs.io/en/latest/specs/tls.html: ``client_cert_chain``, the client's first."""
    assert client_certificate_thumbprint(scope(chain=[pem(CLIENT), pem(CA)])) == expected(CLIENT)
    assert client_certificate_thumbprint(scope(chain=(pem(OTHER),), client=None)) == expected(OTHER)


def test_the_tls_extension_wins_over_a_header_even_from_a_trusted_proxy() -> None:
    """The connection proves its own certificate; a header could only claim another."""
    made = scope(("x-forwarded-client-cert", f"Hash={hashlib.sha256(der(OTHER)).hexdigest()}"), chain=[pem(CLIENT)])
    assert client_certificate_thumbprint(made, header="x-forwarded-client-cert", trusted_proxies=TRUSTED) == (
        expected(CLIENT)
    )


def test_without_a_certificate_in_the_tls_extension_the_trusted_header_is_read() -> None:
    xfcc = ("x-forwarded-client-cert", f"Hash={hashlib.sha256(der(OTHER)).hexdigest()}")
    for chain in ([], ()):
        made = scope(xfcc, chain=chain)
        assert client_certificate_thumbprint(made, header="x-forwarded-client-cert", trusted_proxies=TRUSTED) == (
            expected(OTHER)
        )
    assert client_certificate_thumbprint(scope(chain=[])) is None


@pytest.mark.parametrize("chain", [["junk"], [""], [5], "not a list", [b"bytes"], {"a": 1}, [pem(CLIENT) * 2]])
def test_junk_in_the_tls_extension_is_no_certificate(chain: Any) -> None:
    assert client_certificate_thumbprint(scope(chain=chain)) is None


def test_odd_extension_shapes() -> None:
    assert client_certificate_thumbprint({"type": "http", "extensions": None}) is None
    assert client_certificate_thumbprint({"type": "http", "extensions": {"tls": None}}) is None
    assert client_certificate_thumbprint({"type": "http", "extensions": {"tls": {}}}) is None
    assert client_certificate_thumbprint({"type": "http"}) is None


# -- Envoy's X-Forwarded-Client-Cert ----------------------------------------------------------------------------


def xfcc_cert(cert: x509.Certificate) -> str:
    """Envoy's ``Cert``: the URL-encoded PEM (its docs: ``Cert="-----BEGIN%20CERTIFICATE-----%0aMIID..."``)."""
    return quote(pem(cert), safe="")


def xfcc_hash(cert: x509.Certificate) -> str:
    return hashlib.sha256(der(cert)).hexdigest()


XFCC_CASES = {
    "hash": f"Hash={xfcc_hash(CLIENT)}",
    "hash-upper": f"hash={xfcc_hash(CLIENT).upper()}",
    "cert": f"Cert={xfcc_cert(CLIENT)}",
    "cert-quoted": f'Cert="{xfcc_cert(CLIENT)}"',
    "envoy-full": (
        f"By=spiffe://cluster.local/ns/foo/sa/bar;Hash={xfcc_hash(CLIENT)};Cert={xfcc_cert(CLIENT)};"
        'Subject="CN=client,O=Example;L=Here";URI=spiffe://cluster.local/ns/client;DNS=client0.example'
    ),
    # The first element is the one the client-facing proxy added; later ones are later hops.
    "two-elements": f"Hash={xfcc_hash(CLIENT)};By=spiffe://a,By=spiffe://b;Hash={xfcc_hash(OTHER)}",
    "rsa-cert-and-chain": f"Hash={xfcc_hash(CLIENT)};Cert={xfcc_cert(CLIENT)};Chain={xfcc_cert(CLIENT)}{xfcc_cert(CA)}",
}


@pytest.mark.parametrize("value", XFCC_CASES.values(), ids=XFCC_CASES.keys())
def test_xfcc_from_a_trusted_proxy(value: str) -> None:
    made = scope(("x-forwarded-client-cert", value))
    assert client_certificate_thumbprint(made, header="x-forwarded-client-cert", trusted_proxies=TRUSTED) == (
        expected(CLIENT)
    )
    # The header name is matched case-insensitively, as HTTP field names are.
    assert client_certificate_thumbprint(made, header="X-Forwarded-Client-Cert", trusted_proxies=TRUSTED) == (
        expected(CLIENT)
    )


def test_xfcc_for_a_large_certificate() -> None:
    value = f"Hash={xfcc_hash(RSA_CLIENT)};Cert={xfcc_cert(RSA_CLIENT)}"
    assert len(value) > MAX_FORWARDED  # longer than a Forwarded header is read: XFCC has its own cap
    made = scope(("x-forwarded-client-cert", value))
    assert client_certificate_thumbprint(made, header="x-forwarded-client-cert", trusted_proxies=TRUSTED) == (
        expected(RSA_CLIENT)
    )


@pytest.mark.parametrize("client", ["203.0.113.9", "2001:db9::1", "::ffff:11.0.0.1", None, "junk"])
def test_xfcc_from_anyone_else_is_ignored(client: str | None) -> None:
    made = scope(("x-forwarded-client-cert", f"Hash={xfcc_hash(CLIENT)}"), client=client)
    assert client_certificate_thumbprint(made, header="x-forwarded-client-cert", trusted_proxies=TRUSTED) is None


@pytest.mark.parametrize("client", ["2001:db8::7", "10.200.0.1", "::ffff:10.0.0.1"])
def test_xfcc_from_trusted_ipv6_and_cidr_peers(client: str) -> None:
    made = scope(("x-forwarded-client-cert", f"Hash={xfcc_hash(CLIENT)}"), client=client)
    assert client_certificate_thumbprint(made, header="x-forwarded-client-cert", trusted_proxies=TRUSTED) == (
        expected(CLIENT)
    )


def test_no_header_configured_or_no_trusted_proxies_means_no_header_is_read() -> None:
    made = scope(("x-forwarded-client-cert", f"Hash={xfcc_hash(CLIENT)}"))
    assert client_certificate_thumbprint(made, trusted_proxies=TRUSTED) is None
    assert client_certificate_thumbprint(made, header="x-forwarded-client-cert") is None
    # Another header configured: XFCC is not read either.
    assert client_certificate_thumbprint(made, header="x-ssl-client-cert", trusted_proxies=TRUSTED) is None


XFCC_JUNK = {
    "no-hash-no-cert": "By=spiffe://a;URI=spiffe://b",
    "short-hash": f"Hash={xfcc_hash(CLIENT)[:-2]}",
    "long-hash": f"Hash={xfcc_hash(CLIENT)}00",
    "not-hex": "Hash=" + "g" * 64,
    "hash-and-cert-disagree": f"Hash={xfcc_hash(OTHER)};Cert={xfcc_cert(CLIENT)}",
    "duplicate-hash": f"Hash={xfcc_hash(CLIENT)};Hash={xfcc_hash(CLIENT)}",
    "unterminated-quote": f'Hash={xfcc_hash(CLIENT)};Subject="CN=x',
    "cert-junk": "Cert=-----BEGIN%20CERTIFICATE-----%0Anope%0A-----END%20CERTIFICATE-----",
    "cert-bad-percent": "Cert=%ff%fe%fd",
    "empty-first-element": f",Hash={xfcc_hash(CLIENT)}",
    "garbage": ";;==,,\"'",
    "first-element-too-long": f"Hash={xfcc_hash(CLIENT)};Subject=" + "a" * MAX_CERTIFICATE,
}


@pytest.mark.parametrize("value", XFCC_JUNK.values(), ids=XFCC_JUNK.keys())
def test_junk_xfcc_is_no_certificate(value: str) -> None:
    made = scope(("x-forwarded-client-cert", value))
    assert client_certificate_thumbprint(made, header="x-forwarded-client-cert", trusted_proxies=TRUSTED) is None


def test_a_long_xfcc_list_is_read_up_to_its_first_element() -> None:
    value = f"Hash={xfcc_hash(CLIENT)}" + f",By=spiffe://hop;Hash={xfcc_hash(OTHER)}" * 1000
    assert len(value) > 4 * MAX_CERTIFICATE
    made = scope(("x-forwarded-client-cert", value))
    assert client_certificate_thumbprint(made, header="x-forwarded-client-cert", trusted_proxies=TRUSTED) == (
        expected(CLIENT)
    )


# -- PEM headers (nginx, AWS ALB) -------------------------------------------------------------------------------


PEM_HEADERS = {
    # nginx $ssl_client_escaped_cert: the PEM, URL-encoded.
    "nginx": ("x-ssl-client-cert", quote(pem(CLIENT), safe="")),
    # AWS ALB X-Amzn-Mtls-Clientcert: URL-encoded, "+", "=" and "/" left as they are.
    "alb": ("X-Amzn-Mtls-Clientcert", quote(pem(CLIENT), safe="+=/")),
    # A plain PEM: line breaks replaced by spaces, as a header cannot hold them.
    "plain": ("x-client-cert", pem(CLIENT).strip().replace("\n", " ")),
}


@pytest.mark.parametrize(("name", "value"), PEM_HEADERS.values(), ids=PEM_HEADERS.keys())
def test_pem_header_from_a_trusted_proxy(name: str, value: str) -> None:
    made = scope((name, value), ("x-forwarded-client-cert", f"Hash={xfcc_hash(OTHER)}"))
    assert client_certificate_thumbprint(made, header=name, trusted_proxies=TRUSTED) == expected(CLIENT)
    assert client_certificate_thumbprint(made, header=name.upper(), trusted_proxies=TRUSTED) == expected(CLIENT)
    untrusted = scope((name, value), client="203.0.113.9")
    assert client_certificate_thumbprint(untrusted, header=name, trusted_proxies=TRUSTED) is None


def test_pem_header_refusals() -> None:
    def read(*headers: tuple[str, str]) -> str | None:
        return client_certificate_thumbprint(scope(*headers), header="x-ssl-client-cert", trusted_proxies=TRUSTED)

    good = quote(pem(CLIENT), safe="")
    assert read(("x-ssl-client-cert", good)) == expected(CLIENT)
    assert read() is None
    assert read(("x-ssl-client-cert", "")) is None
    assert read(("x-ssl-client-cert", "-")) is None  # nginx's value when no certificate was sent
    assert read(("x-ssl-client-cert", good), ("x-ssl-client-cert", good)) is None  # two: ambiguous
    assert read(("x-ssl-client-cert", good + "%20" * MAX_CERTIFICATE)) is None  # oversized
    assert read(("x-ssl-client-cert", quote(pem(CLIENT) + pem(CA), safe=""))) is None  # a chain, not one
    assert read(("x-ssl-client-cert", "%E2%82" + good)) is None  # invalid UTF-8 once decoded
    assert read(("x-ssl-client-cert", quote(pem(CLIENT), safe="").replace("%0A", "+"))) is None  # form-encoded


def test_header_values_that_are_not_bytes() -> None:
    made = {"type": "http", "client": (PROXY, 1), "headers": [(b"x-ssl-client-cert", None)]}
    assert client_certificate_thumbprint(made, header="x-ssl-client-cert", trusted_proxies=TRUSTED) is None
    made = {"type": "http", "client": (PROXY, 1), "headers": [(b"x-forwarded-client-cert", 5)]}
    assert client_certificate_thumbprint(made, header="x-forwarded-client-cert", trusted_proxies=TRUSTED) is None


# -- nothing escapes ----------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["x-forwarded-client-cert", "x-ssl-client-cert"]),
    value=st.one_of(
        st.text(alphabet=st.characters(max_codepoint=255), max_size=80),
        st.text(alphabet='Hash=Cert;,"\\%0aAF-', max_size=120),
        st.builds(lambda cut: XFCC_CASES["envoy-full"][:cut], st.integers(0, 2000)),
        st.builds(lambda cut: quote(pem(CLIENT), safe="")[:cut], st.integers(0, 1200)),
    ),
    chain=st.one_of(st.none(), st.lists(st.text(max_size=40), max_size=2)),
)
def test_only_a_thumbprint_or_none(name: str, value: str, chain: list[str] | None) -> None:
    made = scope((name, value), chain=chain)
    result = client_certificate_thumbprint(made, header=name, trusted_proxies=TRUSTED)
    assert result is None or result in {expected(CLIENT), expected(OTHER)}
