"""The client side of DPoP (RFC 9449): a proof-signing key and an ``httpx.Auth`` that uses it.

``DPoPKey`` holds the client's private key and signs one proof per request (§4.2)::

    key = DPoPKey.generate()                 # ES256; also ES384, ES512, EdDSA, PS256/384/512, RS256/384/512
    proof = key.proof("GET", "https://api.example/photos?page=2", access_token=token)

``DPoPAuth`` adds ``Authorization: DPoP <token>`` and a fresh ``DPoP`` proof to every request of an
``httpx.Client`` or ``httpx.AsyncClient``, keeps the last ``DPoP-Nonce`` each origin sent, and retries
a request once when the server asks for a nonce (§8 at an authorization server, §9 at a resource
server)::

    auth = DPoPAuth(key)                               # no token yet: the token request itself
    answer = client.post(token_endpoint, data=form, auth=auth).json()   # token_type "DPoP"
    auth.access_token = answer["access_token"]
    client.get("https://api.example/photos", auth=auth)

A proof is made for the URL the request is sent to; httpx follows redirects (when asked to) without
asking the auth again, so a redirected request carries a proof for the first URL, which a server
refuses. A request whose body is a stream cannot be sent twice: it gets no nonce retry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tokenguard._dpop import jwk_thumbprint

__all__ = ["DPOP_KEY_ALGORITHMS", "DPoPAuth", "DPoPKey", "access_token_hash"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey

# RFC 7518 §3.4: each ES* algorithm names its curve, and its signature is R || S of the curve's size.
_EC_CURVES: dict[str, tuple[type[ec.EllipticCurve], str, hashes.HashAlgorithm]] = {
    "ES256": (ec.SECP256R1, "P-256", hashes.SHA256()),
    "ES384": (ec.SECP384R1, "P-384", hashes.SHA384()),
    "ES512": (ec.SECP521R1, "P-521", hashes.SHA512()),
}
# RFC 7518 §3.3 (RS*: PKCS #1 v1.5) and §3.5 (PS*: PSS); the number is the SHA-2 size.
_RSA: dict[str, hashes.HashAlgorithm] = {
    "PS256": hashes.SHA256(),
    "PS384": hashes.SHA384(),
    "PS512": hashes.SHA512(),
    "RS256": hashes.SHA256(),
    "RS384": hashes.SHA384(),
    "RS512": hashes.SHA512(),
}
#: The algorithms a ``DPoPKey`` signs proofs with: those a guard accepts by default.
DPOP_KEY_ALGORITHMS: tuple[str, ...] = (*_EC_CURVES, *_RSA, "EdDSA")

#: Origins whose last nonce a ``DPoPAuth`` remembers (least recently used go first).
_MAX_ORIGINS = 64
#: RFC 9449 §8.1: nonce = 1*NQCHAR, NQCHAR = %x21 / %x23-5B / %x5D-7E.
_NONCE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# RFC 9110 §11.2 / §5.6.2: token, and auth-param = token BWS "=" BWS ( token / quoted-string ).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CHALLENGE_PART = re.compile(
    rf'\s*(?:(?P<name>{_TOKEN})\s*=\s*(?P<value>{_TOKEN}|"(?:[^"\\]|\\.)*")|(?P<scheme>{_TOKEN}(?:\s+[A-Za-z0-9._~+/-]+=*(?=\s*(?:,|$)))?)|(?P<comma>,))'
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int | None = None) -> str:
    """An unsigned integer as base64url big-endian bytes (RFC 7518 §2 Base64urlUInt)."""
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(length, "big"))


def _check_key(alg: str, key: object) -> None:
    if alg in _EC_CURVES:
        curve, name, _ = _EC_CURVES[alg]
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, curve):
            raise ValueError(f"an {alg} DPoP key must be an EC {name} private key")
    elif alg in _RSA:
        # RFC 7518 §3.3, §3.5: "A key of size 2048 bits or larger MUST be used with these algorithms."
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
            raise ValueError(f"a {alg} DPoP key must be an RSA private key of at least 2048 bits")
    elif alg == "EdDSA":
        if not isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
            raise ValueError("an EdDSA DPoP key must be an Ed25519 or Ed448 private key")
    else:
        raise ValueError(f"a DPoP key signs with one of {list(DPOP_KEY_ALGORITHMS)}, not {alg!r}")


def _public_jwk(key: PrivateKey) -> dict[str, str]:
    """The public members of ``key`` only (RFC 7517 §4, RFC 7518 §6, RFC 8037 §2)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        numbers = key.public_key().public_numbers()
        size = (key.curve.key_size + 7) // 8
        crv = next(name for curve, name, _ in _EC_CURVES.values() if isinstance(key.curve, curve))
        return {"kty": "EC", "crv": crv, "x": _uint(numbers.x, size), "y": _uint(numbers.y, size)}
    if isinstance(key, rsa.RSAPrivateKey):
        public = key.public_key().public_numbers()
        return {"kty": "RSA", "n": _uint(public.n), "e": _uint(public.e)}
    crv = "Ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "Ed448"
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": crv, "x": _b64url(raw)}


def _htu(url: str) -> str:
    """RFC 9449 §4.2: "The HTTP target URI ... without query and fragment parts"."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ValueError("a DPoP proof is made for an absolute URL (scheme://host/path)")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def access_token_hash(access_token: str) -> str:
    """RFC 9449 §4.2 ``ath``: base64url of the SHA-256 of the ASCII access token."""
    return _b64url(hashlib.sha256(access_token.encode("ascii")).digest())


class DPoPKey:
    """A client's private key for DPoP proofs: it signs, and only its public part is ever shown.

    ``DPoPKey(private_key, alg)`` wraps a ``cryptography`` private key (EC on the algorithm's curve
    for ES*, RSA of 2048 bits or more for PS*/RS*, Ed25519/Ed448 for EdDSA);
    ``DPoPKey.generate(alg)`` makes a fresh one. The key's identity for a server is ``thumbprint``,
    the RFC 7638 thumbprint of ``public_jwk``, which a bound token names in ``cnf.jkt``.
    """

    __slots__ = ("_alg", "_jwk", "_private", "_thumbprint")

    def __init__(self, private_key: PrivateKey, alg: str) -> None:
        _check_key(alg, private_key)
        self._alg = alg
        self._private = private_key
        self._jwk = _public_jwk(private_key)
        self._thumbprint = jwk_thumbprint(self._jwk)

    @classmethod
    def generate(cls, alg: str = "ES256") -> DPoPKey:
        """A fresh key for ``alg``: the alg's curve for ES*, Ed25519 for EdDSA, RSA 2048 for PS*/RS*."""
        private: PrivateKey
        if alg in _EC_CURVES:
            private = ec.generate_private_key(_EC_CURVES[alg][0]())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        elif alg in _RSA:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(f"a DPoP key signs with one of {list(DPOP_KEY_ALGORITHMS)}, not {alg!r}")
        return cls(private, alg)

    @property
    def alg(self) -> str:
        """The JWS algorithm of its proofs (``ES256``, ``EdDSA``, ...)."""
        return self._alg

    @property
    def public_jwk(self) -> dict[str, str]:
        """The public JWK a proof carries in its header: the key type's public members, nothing else."""
        return dict(self._jwk)

    @property
    def thumbprint(self) -> str:
        """RFC 7638 SHA-256 thumbprint of ``public_jwk``, base64url: the ``cnf.jkt`` of a token bound to it."""
        return self._thumbprint

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        iat: float | None = None,
        jti: str | None = None,
    ) -> str:
        """A DPoP proof JWT for one request (RFC 9449 §4.2), for the ``DPoP`` header.

        ``htm`` is ``method`` as given, ``htu`` is ``url`` without its query and fragment. ``ath`` is
        set when an ``access_token`` is given (a request to a resource server), ``nonce`` when the
        server provided one. ``iat`` defaults to now (whole seconds), ``jti`` to 128 random bits.
        """
        header = {"typ": "dpop+jwt", "alg": self._alg, "jwk": self._jwk}
        claims: dict[str, Any] = {
            "jti": jti if jti is not None else secrets.token_urlsafe(16),
            "htm": method,
            "htu": _htu(url),
            "iat": int(time.time()) if iat is None else iat,
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        signing_input = f"{_segment(header)}.{_segment(claims)}".encode("ascii")
        return f"{signing_input.decode('ascii')}.{_b64url(self._sign(signing_input))}"

    def _sign(self, data: bytes) -> bytes:
        key = self._private
        if isinstance(key, ec.EllipticCurvePrivateKey):
            # RFC 7518 §3.4: the JWS signature is R || S, each the curve's size, not DER.
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(_EC_CURVES[self._alg][2])))
            size = (key.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if isinstance(key, rsa.RSAPrivateKey):
            digest = _RSA[self._alg]
            if self._alg.startswith("PS"):
                # RFC 7518 §3.5: MGF1 with the same hash, and a salt as long as the hash output.
                pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
                return key.sign(data, pss, digest)
            return key.sign(data, padding.PKCS1v15(), digest)
        return key.sign(data)

    def __repr__(self) -> str:
        return f"DPoPKey(alg={self._alg!r}, thumbprint={self._thumbprint!r})"


def _segment(value: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii"))


def _origin(url: httpx.URL) -> str:
    """The origin a nonce belongs to (RFC 6454): scheme, host and port."""
    return f"{url.scheme}://{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"


def _challenges(values: list[str]) -> list[tuple[str, dict[str, str]]]:
    """The challenges of ``WWW-Authenticate`` fields (RFC 9110 §11.6.1): (scheme, auth-params), lenient."""
    found: list[tuple[str, dict[str, str]]] = []
    for value in values:
        position = 0
        while position < len(value):
            match = _CHALLENGE_PART.match(value, position)
            if match is None or match.end() == position:
                break  # unparsable from here on: keep what was read
            position = match.end()
            if match.group("scheme"):
                found.append((match.group("scheme").split()[0].lower(), {}))
            elif match.group("name") and found:
                raw = match.group("value")
                text = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
                found[-1][1].setdefault(match.group("name").lower(), text)
    return found


def _asks_for_nonce(response: httpx.Response) -> bool:
    """The server refused the proof for want of its nonce: §9 (401 challenge) or §8 (400 error)."""
    if response.status_code == 401:
        challenges = _challenges(response.headers.get_list("www-authenticate"))
        return any(scheme == "dpop" and params.get("error") == "use_dpop_nonce" for scheme, params in challenges)
    if response.status_code == 400:
        try:
            body = json.loads(response.content)
        except ValueError:
            return False
        return isinstance(body, dict) and body.get("error") == "use_dpop_nonce"
    return False


def _may_ask_for_nonce(response: httpx.Response) -> bool:
    """Whether the answer's body must be read to know: a 400 that carries a new nonce."""
    return response.status_code == 400 and "dpop-nonce" in response.headers


class DPoPAuth(httpx.Auth):
    """``httpx.Auth`` for DPoP: a fresh proof per request, the server's nonces, one retry when asked.

    ``access_token``, when set, is sent as ``Authorization: DPoP <token>`` and hashed into each
    proof's ``ath``; leave it ``None`` for the token request (a client authenticating with Basic
    then sets its own ``Authorization`` header, which is left alone), and assign it afterwards.

    Each ``DPoP-Nonce`` a server sends is remembered for its origin and put in later proofs (RFC
    9449 §8.2). A 401 with a ``DPoP`` challenge ``error="use_dpop_nonce"`` (§9) or a 400
    ``{"error": "use_dpop_nonce"}`` (§8), with a ``DPoP-Nonce``, is retried exactly once with a new
    proof carrying that nonce; the second answer is returned whatever it is.

    ``clock`` gives each proof's ``iat`` (seconds since the epoch); share the servers' clock in tests.
    One ``DPoPAuth`` may serve several clients and threads at once.
    """

    def __init__(
        self, key: DPoPKey, access_token: str | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not isinstance(key, DPoPKey):
            raise TypeError(f"DPoPAuth needs a DPoPKey, got {type(key).__name__}")
        self.key = key
        self.access_token = access_token
        self.clock = clock
        self._nonces: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def nonce_for(self, url: str | httpx.URL) -> str | None:
        """The last nonce the origin of ``url`` sent, if any."""
        with self._lock:
            return self._nonces.get(_origin(httpx.URL(url)))

    def _remember(self, url: httpx.URL, response: httpx.Response) -> str | None:
        nonce: str | None = response.headers.get("dpop-nonce")
        if nonce is None or _NONCE.fullmatch(nonce) is None:
            return None
        origin = _origin(url)
        with self._lock:
            self._nonces[origin] = nonce
            self._nonces.move_to_end(origin)
            while len(self._nonces) > _MAX_ORIGINS:
                self._nonces.popitem(last=False)
        return nonce

    def _sign(self, request: httpx.Request, token: str | None, nonce: str | None) -> None:
        if token is not None:
            request.headers["Authorization"] = f"DPoP {token}"
        request.headers["DPoP"] = self.key.proof(
            request.method, str(request.url), access_token=token, nonce=nonce, iat=int(self.clock())
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.access_token  # one value for both tries, even if it is reassigned meanwhile
        self._sign(request, token, self.nonce_for(request.url))
        response = yield request
        nonce = self._remember(request.url, response)
        if nonce is None or not _asks_for_nonce(response) or not _replayable(request):
            return
        self._sign(request, token, nonce)
        response = yield request
        self._remember(request.url, response)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if _may_ask_for_nonce(response):
                response.read()
            try:
                request = flow.send(response)
            except StopIteration:
                break

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if _may_ask_for_nonce(response):
                await response.aread()
            try:
                request = flow.send(response)
            except StopIteration:
                break

    def __repr__(self) -> str:
        return f"DPoPAuth(key={self.key!r}, access_token={'set' if self.access_token else None})"


def _replayable(request: httpx.Request) -> bool:
    """Whether the request's body can be sent again (a stream is read once)."""
    try:
        request.content  # noqa: B018 - raises when the body is an unread stream
    except httpx.RequestNotRead:
        return False
    return True
