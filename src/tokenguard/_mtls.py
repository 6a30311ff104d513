"""The thumbprint of the request's TLS client certificate, for certificate-bound tokens (RFC 8705 §3).

RFC 8705 §3.1: a certificate-bound token carries ``cnf["x5t#S256"]``, the base64url-encoded (no
padding) SHA-256 of the certificate's DER encoding; the resource server compares it with the same
thumbprint of the certificate the client presented on the TLS connection (§3). Whether that
certificate chains to a trusted CA does not matter here (§2.2, self-signed binding): the TLS
handshake proved the client holds its key, and the token names the certificate.

``client_certificate_thumbprint(scope, header=..., trusted_proxies=...)`` takes the certificate from:

1. the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"][0]``, a PEM string,
   the client's own certificate first) when the server terminates TLS and the client sent one;
2. else, only when the peer is inside ``trusted_proxies``, the configured ``header``:
   ``x-forwarded-client-cert`` in Envoy's XFCC format, the first element (the certificate the
   first proxy saw: the client's), its ``Cert`` (a URL-encoded PEM) or ``Hash`` (hex SHA-256 of the
   DER); any other name holds one certificate in PEM, plain or URL-encoded (nginx
   ``$ssl_client_escaped_cert``, AWS ALB ``X-Amzn-Mtls-Clientcert``);
3. else ``None``.

The proxy must set the header itself and drop any copy the client sent (Envoy: ``SANITIZE_SET``).
A connection that carries a certificate decides by it, even from a trusted proxy: a proxy that
connects with its own client certificate makes every bound token fail (closed), never opens a way
to claim another certificate.

Nothing here raises on request data: a missing, malformed or oversized certificate or header gives
``None`` (so a bound token is refused). Values are cut to ``MAX_CERTIFICATE`` before they are read;
the parsing is linear (``str`` methods, ``unquote``, strict base64, one DER parse).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from cryptography import x509

from tokenguard._origin import Network, forwarded_pairs, peer_is_trusted

__all__ = [
    "MAX_CERTIFICATE",
    "XFCC_HEADER",
    "certificate_thumbprint_from_der",
    "certificate_thumbprint_from_pem",
    "client_certificate_thumbprint",
]

#: A certificate, or the header that carries one, longer than this is not read (16 KiB).
MAX_CERTIFICATE = 16 * 1024
#: Envoy's header (https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers).
XFCC_HEADER = "x-forwarded-client-cert"

# RFC 7468 §5.1: the CERTIFICATE label; §3: the base64 text between the boundaries, whitespace allowed.
_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"
_WHITESPACE = b" \t\r\n"
_HEX_SHA256 = re.compile(r"[0-9A-Fa-f]{64}")


def certificate_thumbprint_from_der(der: bytes) -> str:
    """``x5t#S256`` of a DER-encoded certificate: base64url(SHA-256(DER)) without padding (RFC 8705 §3.1)."""
    if not isinstance(der, (bytes, bytearray, memoryview)):
        raise TypeError(f"a DER certificate is bytes, got {type(der).__name__}")
    return _b64url(hashlib.sha256(der).digest())


def certificate_thumbprint_from_pem(pem: str | bytes) -> str:
    """``x5t#S256`` of one PEM-encoded X.509 certificate (RFC 7468 §5), or ``ValueError``.

    The text must be exactly one ``CERTIFICATE`` block (whitespace around it and inside the base64
    is allowed), at most ``MAX_CERTIFICATE`` long, whose content parses as a DER certificate. The
    thumbprint is of the DER bytes as sent, never of a re-encoding.
    """
    if isinstance(pem, (bytes, bytearray)):
        if len(pem) > MAX_CERTIFICATE:
            raise ValueError("the PEM certificate is too large")
        try:
            text = bytes(pem).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("a PEM certificate is ASCII text") from None
    elif isinstance(pem, str):
        text = pem
    else:
        raise TypeError(f"a PEM certificate is str or bytes, got {type(pem).__name__}")
    if len(text) > MAX_CERTIFICATE:
        raise ValueError("the PEM certificate is too large")
    text = text.strip(" \t\r\n")
    if not text.startswith(_BEGIN) or not text.endswith(_END) or text.count("-----") != 4:
        raise ValueError("not exactly one PEM CERTIFICATE block")
    body = text[len(_BEGIN) : -len(_END)]
    try:
        der = base64.b64decode(body.encode("ascii").translate(None, _WHITESPACE), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ValueError("the PEM certificate's base64 text is malformed") from None
    _check_certificate(der)
    return certificate_thumbprint_from_der(der)


def client_certificate_thumbprint(
    scope: Mapping[str, Any],
    *,
    header: str | None = None,
    trusted_proxies: Sequence[Network] = (),
) -> str | None:
    """The ``x5t#S256`` thumbprint of the client certificate this request came with, or ``None``."""
    chain = _tls_chain(scope)
    if chain is not None:
        return _thumbprint_or_none(chain)
    if header is None or not peer_is_trusted(scope, trusted_proxies):
        return None
    name = header.lower().encode("latin-1", "replace")
    values = [value for key, value in scope.get("headers") or () if key.lower() == name]
    if not values:
        return None
    if name == XFCC_HEADER.encode():
        # A list header: later fields only continue the list (RFC 9110 §5.3), the first element is first.
        return _from_xfcc(_text(values[0]))
    if len(values) > 1:
        return None  # one certificate per request: two header fields are ambiguous
    return _from_pem_header(_text(values[0]))


def _tls_chain(scope: Mapping[str, Any]) -> str | None:
    """The client's certificate from the ASGI TLS extension, when the server terminated TLS and the
    client sent one (https://asgi.readthedocs.io/en/latest/specs/tls.html: ``client_cert_chain``, an
    iterable of PEM strings, the client certificate first)."""
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
    chain = tls.get("client_cert_chain") if isinstance(tls, Mapping) else None
    if not isinstance(chain, (list, tuple)) or not chain:
        return None
    first = chain[0]
    return first if isinstance(first, str) and first else None


def _from_xfcc(value: str | None) -> str | None:
    """Envoy's XFCC: ``,``-separated elements of ``;``-separated ``Key=Value`` pairs, values quoted when
    they hold ``,;=`` — the shape of RFC 7239 §4. The first element is the one the first proxy (the
    one the client connected to) added. ``Cert`` is the URL-encoded PEM of the client certificate;
    ``Hash`` the hex SHA-256 of its DER. Both present must agree."""
    if value is None:
        return None
    pairs = forwarded_pairs(value, limit=MAX_CERTIFICATE)
    if pairs is None:
        return None
    from_hash: str | None = None
    if "hash" in pairs:
        if _HEX_SHA256.fullmatch(pairs["hash"]) is None:
            return None
        from_hash = _b64url(bytes.fromhex(pairs["hash"]))
    if "cert" not in pairs:
        return from_hash
    from_cert = _from_pem_header(pairs["cert"])
    if from_cert is None or (from_hash is not None and not hmac.compare_digest(from_cert, from_hash)):
        return None
    return from_cert


def _from_pem_header(value: str | None) -> str | None:
    """A header holding one PEM certificate, URL-encoded (nginx, AWS ALB, Envoy's ``Cert``) or plain
    (line breaks replaced by spaces, as a header cannot hold them)."""
    if value is None or len(value) > MAX_CERTIFICATE:
        return None
    value = value.strip(" \t")
    if "%" in value:
        # Percent-decoding only: "+" stays "+", as base64 needs (never form decoding).
        # An invalid UTF-8 sequence decodes to U+FFFD, which no PEM text holds.
        value = unquote(value)
    return _thumbprint_or_none(value)


def _thumbprint_or_none(pem: str) -> str | None:
    try:
        return certificate_thumbprint_from_pem(pem)
    except (ValueError, TypeError):
        return None


def _text(value: Any) -> str | None:
    """A header value as text, cut one character past ``MAX_CERTIFICATE`` (so an oversized value is
    seen as such, and nothing longer is ever decoded or parsed)."""
    if not isinstance(value, (bytes, bytearray)):
        return None
    return bytes(value[: MAX_CERTIFICATE + 1]).decode("latin-1")


def _check_certificate(der: bytes) -> None:
    """``ValueError`` unless ``der`` is one DER-encoded X.509 certificate (RFC 5280 §4.1)."""
    if not der:
        raise ValueError("the PEM certificate is empty")
    try:
        x509.load_der_x509_certificate(der)
    except Exception as exc:  # whatever the parser raises, the text is not a certificate
        raise ValueError("not an X.509 certificate") from exc


def _b64url(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
