"""DPoP proofs (RFC 9449 §4.3), JWK thumbprints (RFC 7638) and stateless server nonces (RFC 9449 §8, §9).

Pure and framework-free: the caller hands in the proof text, the request's method and URL, the access
token and the time; ``check_proof`` makes every RFC 9449 §4.3 check that needs nothing else and returns
a ``DPoPProof``. Two checks stay with the caller because they need state: ``jti`` uniqueness (§11.1,
the replay store) and whether ``nonce`` is one the server issued (§8, §9: ``DPoPNonces.accepts``), as
does the binding of the token's ``cnf.jkt`` to ``DPoPProof.jkt`` (§6.1, §7.1).

Everything that reads request data is capped in size before it is read and linear by construction:
``str.find``/``split``/``translate``, set membership and C-level codecs, never a backtracking regex.
Every refusal is ``InvalidDPoPProof`` (reason ``bad_dpop_proof``) with a short fixed description that
never repeats the proof, the token or any value the client chose.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from tokenguard._jose import _b64decode, parse_jws
from tokenguard._signatures import _make as _prepared_verifier
from tokenguard.errors import ConfigurationError, InvalidDPoPProof, InvalidToken

__all__ = [
    "DEFAULT_DPOP_ALGORITHMS",
    "MAX_PROOF_BYTES",
    "DPoPNonces",
    "DPoPProof",
    "DPoPProofRefused",
    "check_algorithms",
    "check_proof",
    "dpop_header_values",
    "jwk_thumbprint",
    "normalize_htu",
]

#: RFC 9449 §4.3 point 5: registered asymmetric JWS algorithms only (RFC 7518 §3.3-3.5, RFC 8037 §3.1);
#: never "none", never a MAC (HS*): the key is the client's own public key, carried in the proof.
DEFAULT_DPOP_ALGORITHMS: tuple[str, ...] = (
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
    "RS256",
    "RS384",
    "RS512",
    "EdDSA",
)
_SUPPORTED = frozenset(DEFAULT_DPOP_ALGORITHMS)

#: The largest proof read at all, checked before any decoding. A proof is a header with one public key
#: (an RSA-4096 JWK is about 750 bytes) and a few short claims: 8 KiB leaves room for RSA-8192.
MAX_PROOF_BYTES = 8192
#: Caps on client-chosen strings (RFC 9449 §11.1: a jti needs about 96 bits of randomness).
MAX_JTI_CHARS = 256
MAX_NONCE_CHARS = 256
#: The longest URL (without query and fragment) ``normalize_htu`` reads.
MAX_URL_CHARS = 8192

# RFC 7517 §4 / RFC 7518 §6.2.2, §6.3.2, RFC 8037 §2: members that only a private (or symmetric) key has.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# RFC 7638 §3.2 (RFC 8037 §2 for OKP): the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
# RFC 7518 §6.2.1.1 and §3.4: each ES* algorithm's curve, and its coordinate size in octets (§6.2.1.2).
_EC_CURVES: dict[str, tuple[str, ec.EllipticCurve, int]] = {
    "ES256": ("P-256", ec.SECP256R1(), 32),
    "ES384": ("P-384", ec.SECP384R1(), 48),
    "ES512": ("P-521", ec.SECP521R1(), 66),
}
# RFC 8037 §2, §3.1: the curves EdDSA signs with, and their public key sizes in octets.
_OKP_CURVES = {"Ed25519": 32, "Ed448": 57}
_CURVE_NAMES = {"EC": frozenset(curve for curve, _, _ in _EC_CURVES.values()), "OKP": frozenset(_OKP_CURVES)}
# RFC 7518 §3.3, §3.5: RSA keys of 2048 bits or more. The upper bounds are a cost cap, not an RFC
# rule: a verification with a 64-bit exponent and an 8192-bit modulus stays well under a millisecond.
_RSA_MIN_BITS, _RSA_MAX_BITS, _RSA_MAX_EXPONENT_BITS = 2048, 8192, 64

# RFC 3986 §2.3, §2.2: unreserved characters and sub-delims.
_ALPHA_DIGIT = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_UNRESERVED = frozenset(_ALPHA_DIGIT + "-._~")
_SUB_DELIMS = "!$&'()*+,;="
_HEX = frozenset("0123456789abcdefABCDEF")
# RFC 3986 §3.3: what a path may hold as is (pchar and "/"); "%" is checked and normalised apart.
_PATH_SAFE = "-._~" + _SUB_DELIMS + ":@/%"
# RFC 3986 §3.2.2: reg-name and the inside of an IP-literal (IPv6address, IPvFuture).
_REG_NAME = _UNRESERVED | frozenset(_SUB_DELIMS + "%")
_IP_LITERAL = _UNRESERVED | frozenset(_SUB_DELIMS + ":")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
# RFC 9449 §8.1: NONCE = 1*NQCHAR; NQCHAR = %x21 / %x23-5B / %x5D-7E (printable ASCII but '"' and '\').
_NQCHAR = frozenset(chr(code) for code in range(0x21, 0x7F)) - {'"', "\\"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- the result ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DPoPProof:
    """A DPoP proof that passed every check of ``check_proof`` (RFC 9449 §4.3)."""

    #: RFC 7638 SHA-256 thumbprint of the proof's public key, base64url without padding: what a bound
    #: token's ``cnf.jkt`` must equal (RFC 9449 §6.1).
    jkt: str
    #: For the caller's replay store (RFC 9449 §11.1): unique within the ``iat`` window.
    jti: str
    iat: float
    htm: str
    #: The ``htu`` claim as normalised by ``normalize_htu``.
    htu: str
    #: For the caller's ``DPoPNonces.accepts`` (RFC 9449 §8, §9); ``None`` when the proof has none.
    nonce: str | None
    alg: str


_CHECK_REASONS = {
    "htu": "dpop_htu_mismatch",
    "htm": "dpop_htm_mismatch",
    "iat": "dpop_iat_out_of_window",
    "ath": "dpop_ath_mismatch",
}


class DPoPProofRefused(InvalidDPoPProof):
    """``InvalidDPoPProof`` that also says which check refused the proof, for decision events and metrics.

    ``check`` is one of a fixed set of codes: ``size``, ``malformed``, ``typ``, ``alg``, ``crit``,
    ``jwk``, ``private_key``, ``key``, ``jti``, ``htm``, ``htu``, ``iat``, ``ath``, ``nonce``,
    ``signature``. It is never rendered; the response carries the reason and description only.
    """

    def __init__(self, check: str, description: str) -> None:
        self.check = check
        # The checks an operator most needs to tell apart (a proxy rewriting the URL, clock skew, a
        # client hashing the wrong token) get reason codes of their own; the rest is bad_dpop_proof.
        super().__init__(_CHECK_REASONS.get(check), description=description)

    def __reduce__(self) -> tuple[type[DPoPProofRefused], tuple[str, str]]:
        # Exceptions are re-created from their args, which hold the description only.
        return type(self), (self.check, self.description)


# -- RFC 7638 thumbprints --------------------------------------------------------------------------------------


def _b64url_member(jwk: Mapping[str, Any], name: str) -> bytes:
    """A key member holding canonical, unpadded, non-empty base64url (RFC 7518 §6.2.1, §6.3.1, RFC 8037 §2)."""
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError("a key member is missing or not a string")
    try:
        return _b64decode(value)
    except InvalidToken:
        raise ValueError("a key member is not canonical base64url") from None


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 JWK SHA-256 thumbprint of a public key, base64url without padding.

    RFC 7638 §3: the required members only (EC: crv, kty, x, y; RSA: e, kty, n; OKP: crv, kty, x),
    in lexicographic order, no whitespace, UTF-8, SHA-256 (§3.1, §3.2; RFC 8037 §2 for OKP). Raises
    ``ValueError`` for a key type or curve other than those (EC on P-256/P-384/P-521, RSA, OKP on
    Ed25519/Ed448), or a member missing, not a string, or not canonical base64url. Other members,
    private ones included, are ignored: refusing a private key is the caller's decision.
    """
    if not isinstance(jwk, Mapping):
        raise ValueError("a JWK is a JSON object")
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _THUMBPRINT_MEMBERS:
        raise ValueError("unsupported key type")
    crv = jwk.get("crv")
    if kty in _CURVE_NAMES and (not isinstance(crv, str) or crv not in _CURVE_NAMES[kty]):
        raise ValueError("unsupported curve")
    for name in _THUMBPRINT_MEMBERS[kty]:
        if name not in ("crv", "kty"):
            _b64url_member(jwk, name)
    # Every value is now a curve name or base64url: no character needs escaping (RFC 7638 §3.3), so the
    # canonical form is written out directly, members in the order of _THUMBPRINT_MEMBERS.
    canonical = "{" + ",".join(f'"{name}":"{jwk[name]}"' for name in _THUMBPRINT_MEMBERS[kty]) + "}"
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


# -- RFC 9449 §4.3 point 9: htu ---------------------------------------------------------------------------------


def _normalise_percent(text: str, *, lower: bool) -> str:
    """RFC 3986 §6.2.2.1-6.2.2.2: every "%" starts a triplet of two hex digits, written upper-case, and
    a triplet that encodes an unreserved character is decoded. ``lower``: the rest is lower-cased (a host).
    Linear: one split, one pass over the pieces."""
    pieces = text.split("%")
    out = [pieces[0].lower() if lower else pieces[0]]
    for piece in pieces[1:]:
        digits = piece[:2]
        if len(digits) != 2 or not _HEX.issuperset(digits):
            raise ValueError("a percent sign that does not start a percent-encoded octet")
        char = chr(int(digits, 16))
        rest = piece[2:].lower() if lower else piece[2:]
        if char in _UNRESERVED:
            out.append(char.lower() if lower else char)
        else:
            out.append("%" + digits.upper())
        out.append(rest)
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path ("/..."), as one pass over its segments with a stack.

    A "." or ".." that is the last segment leaves the path ending in "/" ("/a/b/.." is "/a/").
    """
    segments = path[1:].split("/")
    last = len(segments) - 1
    out: list[str] = []
    for index, segment in enumerate(segments):
        if segment == ".":
            if index == last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if index == last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _host_and_port(authority: str, scheme: str) -> str:
    """The authority normalised (RFC 3986 §6.2.2.1, §6.2.3): host lower-cased, default or empty port
    dropped. No userinfo (RFC 9110 §4.2.4: deprecated in http(s) URIs) and a non-empty host (§4.2.1)."""
    if not authority.isascii() or "@" in authority:
        raise ValueError("userinfo or a non-ASCII authority")
    if authority.startswith("["):
        close = authority.find("]")
        host, after = authority[: close + 1], authority[close + 1 :]
        if close < 2 or not _IP_LITERAL.issuperset(host[1:-1]) or (after and after[0] != ":"):
            raise ValueError("a malformed IP literal")
        host, port = host.lower(), after[1:]
    else:
        host, _, port = authority.partition(":")
        if not host or not _REG_NAME.issuperset(host):
            raise ValueError("a missing or malformed host")
        host = _normalise_percent(host, lower=True)
    if port:
        if not port.isdigit() or len(port) > 5 or int(port) > 65535:
            raise ValueError("a malformed port")
        port = str(int(port))
    if not port or port == _DEFAULT_PORTS[scheme]:
        return host
    return f"{host}:{port}"


def normalize_htu(url: str) -> str:
    """An absolute http(s) URL as ``htu`` is compared (RFC 9449 §4.3 point 9, RFC 3986 §6.2.2-6.2.3).

    Query and fragment removed (RFC 9449 §4.2, §4.3 point 9); scheme and host lower-cased, an empty or
    default port dropped, percent-encoding normalised (hex upper-cased, unreserved characters decoded),
    dot segments removed, an empty path made "/". Characters a URI cannot hold as they are (a space,
    non-ASCII) are percent-encoded as UTF-8 first (RFC 3987 §3.1), so a URL built from a decoded path
    compares equal to the URI a client sent. Raises ``ValueError`` unless ``url`` is an absolute http or
    https URL with a host (no userinfo), or when the part before any query is over ``MAX_URL_CHARS``.
    """
    if not isinstance(url, str):
        raise ValueError("a URL is a string")
    end = len(url)
    for mark in ("?", "#"):
        found = url.find(mark, 0, end)
        if found != -1:
            end = found
    if end > MAX_URL_CHARS:
        raise ValueError("the URL is too long")
    base = url[:end]
    colon = base.find(":")
    scheme = base[:colon].lower() if colon > 0 and base[:colon].isascii() else ""
    if scheme not in _DEFAULT_PORTS or not base.startswith("//", colon + 1):
        raise ValueError("not an absolute http or https URL")
    rest = base[colon + 3 :]
    slash = rest.find("/")
    authority, path = (rest, "") if slash == -1 else (rest[:slash], rest[slash:])
    host = _host_and_port(authority, scheme)
    if not path:
        return f"{scheme}://{host}/"  # RFC 3986 §6.2.3: an empty path is "/" for http(s)
    try:
        path = quote(path, safe=_PATH_SAFE)
    except UnicodeEncodeError:
        raise ValueError("the path holds a lone surrogate") from None
    return f"{scheme}://{host}{_remove_dot_segments(_normalise_percent(path, lower=False))}"


# -- the header ------------------------------------------------------------------------------------------------


def dpop_header_values(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Every ``DPoP`` header value of an ASGI header list, in order (names compared case-insensitively).

    RFC 9449 §4.3 point 1: more than one is a refusal, which is the caller's to make (``len(...) > 1``).
    """
    return [value for name, value in headers if len(name) == 4 and name.lower() == b"dpop"]


# -- RFC 9449 §4.3: the proof ----------------------------------------------------------------------------------


def check_algorithms(algorithms: Iterable[str]) -> frozenset[str]:
    """A DPoP algorithm allow-list as an option: a non-empty subset of ``DEFAULT_DPOP_ALGORITHMS``.

    Raises ``ConfigurationError`` naming what is wrong ("none", HS*, unknown names, an empty list).
    """
    if isinstance(algorithms, str):
        raise ConfigurationError("DPoP algorithms must be a list of names, not one string")
    chosen = frozenset(algorithms)
    unknown = sorted(str(name) for name in chosen - _SUPPORTED)
    if unknown:
        raise ConfigurationError(
            f"DPoP algorithms must be asymmetric signature algorithms from {list(DEFAULT_DPOP_ALGORITHMS)};"
            f" not {unknown}"
        )
    if not chosen:
        raise ConfigurationError("DPoP algorithms must name at least one algorithm")
    return chosen


def _refuse(check: str, description: str) -> DPoPProofRefused:
    return DPoPProofRefused(check, description)


def _key_fits(jwk: Mapping[str, Any], alg: str) -> bool:
    """RFC 7518 §3.3-3.5, RFC 8037 §3.1: the key type (and curve) ``alg`` is defined for; and the JWK's own
    ``alg``, ``use`` and ``key_ops``, when given, allow verifying with it (RFC 7517 §4.2-4.4)."""
    kty = jwk.get("kty")
    if alg in _EC_CURVES:
        fits = kty == "EC" and jwk.get("crv") == _EC_CURVES[alg][0]
    elif alg == "EdDSA":
        crv = jwk.get("crv")
        fits = kty == "OKP" and isinstance(crv, str) and crv in _OKP_CURVES
    else:
        fits = kty == "RSA"
    key_ops = jwk.get("key_ops")
    return (
        fits
        and jwk.get("alg", alg) == alg
        and jwk.get("use", "sig") == "sig"
        and (key_ops is None or (isinstance(key_ops, list) and "verify" in key_ops))
    )


def _uint(jwk: Mapping[str, Any], name: str) -> int:
    """RFC 7518 §2 Base64urlUInt: the minimum number of octets, so no leading zero octet."""
    raw = _b64url_member(jwk, name)
    if raw[0] == 0:
        raise ValueError("a Base64urlUInt with a leading zero octet")
    return int.from_bytes(raw, "big")


def _public_key(jwk: Mapping[str, Any], alg: str) -> Any:
    """The public key of a JWK that fits ``alg`` (``_key_fits``), loaded with ``cryptography``; ValueError."""
    if alg in _EC_CURVES:
        _, curve, size = _EC_CURVES[alg]
        x, y = _b64url_member(jwk, "x"), _b64url_member(jwk, "y")
        # RFC 7518 §6.2.1.2-6.2.1.3: each coordinate is exactly the curve's size; the point must be on it.
        if len(x) != size or len(y) != size:
            raise ValueError("an EC coordinate of the wrong length")
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
    if alg == "EdDSA":
        x = _b64url_member(jwk, "x")
        if jwk["crv"] == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(x)
        return ed448.Ed448PublicKey.from_public_bytes(x)
    n, e = _uint(jwk, "n"), _uint(jwk, "e")
    if not _RSA_MIN_BITS <= n.bit_length() <= _RSA_MAX_BITS or e.bit_length() > _RSA_MAX_EXPONENT_BITS:
        raise ValueError("an RSA key of an unacceptable size")
    return rsa.RSAPublicNumbers(e, n).public_key()


def _ath(access_token: str) -> str:
    """RFC 9449 §4.2: base64url of the SHA-256 hash of the ASCII encoding of the access token's value."""
    return _b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def check_proof(
    proof: str,
    *,
    method: str,
    url: str,
    access_token: str | None,
    now: float,
    algorithms: frozenset[str] | None = None,
    iat_window: float = 60.0,
    leeway: float = 0.0,
) -> DPoPProof:
    """``_check_proof``, with any unexpected error in a client's proof refused as malformed, never a 500.

    The proof is the client's JSON: a value of a type no check foresaw (a list where a string belongs)
    must be a 401 ``invalid_dpop_proof``, not an internal error.
    """
    try:
        return _check_proof(
            proof,
            method=method,
            url=url,
            access_token=access_token,
            now=now,
            algorithms=algorithms,
            iat_window=iat_window,
            leeway=leeway,
        )
    except InvalidDPoPProof:
        raise
    except Exception:
        raise _refuse("malformed", "The DPoP proof is not a well-formed JWT.") from None


def _check_proof(
    proof: str,
    *,
    method: str,
    url: str,
    access_token: str | None,
    now: float,
    algorithms: frozenset[str] | None = None,
    iat_window: float = 60.0,
    leeway: float = 0.0,
) -> DPoPProof:
    """Check one DPoP proof against the request it came with (RFC 9449 §4.3) and return what it proves.

    ``proof`` is the one ``DPoP`` header value (decoded as ASCII; more than one header is the caller's
    refusal, §4.3 point 1); ``method`` the request method; ``url`` the URL the client used (query and
    fragment are ignored); ``access_token`` the token presented with the proof, or ``None`` where there
    is none (a token endpoint); ``now`` the time in seconds. ``algorithms`` narrows
    ``DEFAULT_DPOP_ALGORITHMS`` (anything else in it is never accepted); ``iat`` must be within
    ``iat_window`` + ``leeway`` seconds of ``now``, either side (§4.3 point 11, §11.1).

    Not checked here: ``jti`` uniqueness (the replay store), the ``nonce`` value (``DPoPNonces``) and
    the token's ``cnf.jkt`` against ``DPoPProof.jkt`` (§4.3 points 10, 12). Any failure raises
    ``DPoPProofRefused``, an ``InvalidDPoPProof`` (reason ``bad_dpop_proof``).
    """
    # Size first, before any decoding (a header value of any length could arrive).
    if not isinstance(proof, str):
        raise _refuse("malformed", "The DPoP proof is not a well-formed JWT.")
    if len(proof) > MAX_PROOF_BYTES:
        raise _refuse("size", "The DPoP proof is too large.")
    # §4.3 point 2: a single, well-formed JWT: exactly one compact JWS (RFC 7515 §7.1), strict base64url
    # and strict JSON objects (_jose, _strictjson). Optional whitespace around a field value is not part
    # of it (RFC 9110 §5.5).
    try:
        parsed = parse_jws(proof.strip(" \t"))
    except InvalidToken:
        raise _refuse("malformed", "The DPoP proof is not a well-formed JWT.") from None
    header, claims = parsed.header, parsed.claims

    # §4.3 point 4 (§4.2): typ is exactly dpop+jwt, so no other kind of JWT passes for a proof.
    if header.get("typ") != "dpop+jwt":
        raise _refuse("typ", "The DPoP proof must have the typ dpop+jwt.")
    # §4.3 point 5: an asymmetric algorithm on the allow-list; never none, never a MAC.
    allowed = _SUPPORTED if algorithms is None else _SUPPORTED & algorithms
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:
        raise _refuse("alg", "The DPoP proof's signature algorithm is not accepted.")
    # RFC 7515 §4.1.11: extensions named in crit must be understood; none are here.
    if "crit" in header:
        raise _refuse("crit", "The DPoP proof uses a critical header parameter that is not supported.")
    # §4.2 jwk, §4.3 point 7: a public key, never a private or a symmetric one (kty oct carries "k").
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise _refuse("jwk", "The DPoP proof must carry its public key in the jwk header.")
    if not _PRIVATE_MEMBERS.isdisjoint(jwk) or jwk.get("kty") == "oct":
        raise _refuse("private_key", "The DPoP proof's jwk header must be a public key.")
    if not _key_fits(jwk, alg):
        raise _refuse("key", "The DPoP proof's key does not fit its signature algorithm.")
    try:
        jkt = jwk_thumbprint(jwk)
    except ValueError:
        raise _refuse("jwk", "The DPoP proof's jwk header is not a valid public key.") from None

    # §4.3 point 3 (§4.2): the required claims, each of its type.
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
        raise _refuse("jti", "The DPoP proof's jti claim is missing or malformed.")
    # §4.3 point 8: htm equals the request method (methods are case-sensitive, RFC 9110 §9.1).
    htm = claims.get("htm")
    if not isinstance(htm, str) or htm != method:
        raise _refuse("htm", "The DPoP proof's htm claim does not match the request method.")
    # §4.3 point 9: htu equals the request URI without query and fragment, after RFC 3986 §6.2.2 and
    # §6.2.3 normalisation of both.
    claimed = claims.get("htu")
    htu = ""
    try:
        if isinstance(claimed, str):
            htu = normalize_htu(claimed)
        matches = bool(htu) and htu == normalize_htu(url)
    except ValueError:
        matches = False
    if not matches:
        raise _refuse("htu", "The DPoP proof's htu claim does not match the request URL.")
    # §4.3 point 11, §11.1: iat is a JSON number within the window around now, either side. Written so
    # that NaN anywhere refuses.
    iat = claims.get("iat")
    if not isinstance(iat, (int, float)) or isinstance(iat, bool):
        raise _refuse("iat", "The DPoP proof's iat claim is missing or malformed.")
    if not now - iat_window - leeway <= iat <= now + iat_window + leeway:
        raise _refuse("iat", "The DPoP proof's iat is outside the accepted time window.")
    # §4.3 point 12, §4.2: with an access token, ath is the hash of that token. Without one (a token
    # endpoint), ath is not checked.
    if access_token is not None:
        ath = claims.get("ath")
        if not isinstance(ath, str) or not access_token.isascii() or ath != _ath(access_token):
            raise _refuse("ath", "The DPoP proof's ath claim does not match the access token.")
    # §4.2, §8.1: a nonce, when present, has the DPoP-Nonce syntax; whether it is current is the caller's.
    nonce = claims.get("nonce")
    if nonce is not None and (
        not isinstance(nonce, str) or not 0 < len(nonce) <= MAX_NONCE_CHARS or not _NQCHAR.issuperset(nonce)
    ):
        raise _refuse("nonce", "The DPoP proof's nonce claim is malformed.")

    # §4.3 point 6: the signature verifies with the key in jwk. Last: the most expensive step. The
    # verifier is built afresh (not memoised): each proof brings its own key object.
    try:
        key = _public_key(jwk, alg)
    except (ValueError, TypeError):
        raise _refuse("jwk", "The DPoP proof's jwk header is not a valid public key.") from None
    if not _prepared_verifier(alg, key)(parsed.signing_input, parsed.signature):
        raise _refuse("signature", "The DPoP proof's signature is invalid.")
    return DPoPProof(jkt=jkt, jti=jti, iat=float(iat), htm=htm, htu=htu, nonce=nonce, alg=alg)


# -- RFC 9449 §8, §9: server nonces ----------------------------------------------------------------------------

#: Domain separation: these MACs mean "a DPoP nonce of this window" and nothing else made with the secret.
_NONCE_LABEL = b"tokenguard DPoP-Nonce v1:"
_NONCE_CHARS = 43  # base64url of 32 octets, unpadded


class DPoPNonces:
    """Stateless server nonces (RFC 9449 §8, §9): HMAC-SHA256(secret, time-window index), base64url.

    Time is cut into windows of ``lifetime`` seconds; the nonce of a window is a MAC of its index, so
    any process holding the same secret computes the same value without a store. A nonce is accepted in
    its own window and the next one: between ``lifetime`` and twice that after it became current.
    """

    __slots__ = ("_clock", "_lifetime", "_secret")

    def __init__(self, secret: bytes, *, lifetime: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        # RFC 2104 §3: a key shorter than the hash output (32 octets for SHA-256) is strongly discouraged.
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < 32:
            raise ConfigurationError("the DPoP nonce secret must be at least 32 random bytes")
        if (
            not isinstance(lifetime, (int, float))
            or isinstance(lifetime, bool)
            or not math.isfinite(lifetime)
            or lifetime <= 0
        ):
            raise ConfigurationError("the DPoP nonce lifetime must be a positive number of seconds")
        self._secret = bytes(secret)
        self._lifetime = float(lifetime)
        self._clock = clock

    def _window(self) -> int:
        return math.floor(self._clock() / self._lifetime)

    def _nonce(self, window: int) -> bytes:
        mac = hmac.new(self._secret, _NONCE_LABEL + str(window).encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=")

    def current(self) -> str:
        """The nonce to send now, in a ``DPoP-Nonce`` header (RFC 9449 §8.1: base64url is NQCHAR)."""
        return self._nonce(self._window()).decode("ascii")

    def accepts(self, nonce: str | None) -> bool:
        """Whether ``nonce`` is the current window's or the previous one's; compared in constant time."""
        if not isinstance(nonce, str) or len(nonce) != _NONCE_CHARS or not nonce.isascii():
            return False
        given = nonce.encode("ascii")
        window = self._window()
        current = hmac.compare_digest(given, self._nonce(window))
        previous = hmac.compare_digest(given, self._nonce(window - 1))
        return current or previous
