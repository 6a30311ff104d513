"""Signature verification, prepared once per (key, algorithm) (RFC 7518 §3).

Keys are loaded by PyJWT (``PyJWK``); verifying calls ``cryptography`` directly with padding and hash
objects built once, instead of PyJWT's per-call wrapper that rebuilds them. The primitives are the
ones PyJWT uses: PKCS#1 v1.5 (RS*), PSS with salt length = hash length (PS*, RFC 7518 §3.5), ECDSA with
the raw R||S signature converted to DER (ES*, RFC 7518 §3.4), Ed25519/Ed448 (RFC 8037 §3.1), and
HMAC compared in constant time (HS*, RFC 7518 §3.2).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

Verifier = Callable[[bytes, bytes], bool]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_HMAC_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
# RFC 7518 §3.4: the curve each ES* algorithm is defined on.
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

_cache: dict[tuple[str, int], tuple[Any, Verifier]] = {}
_CACHE_LIMIT = 512


def verifier(alg: str, key: Any) -> Verifier:
    """A function ``(signing_input, signature) -> bool`` for this key and algorithm.

    Memoised per (alg, key object): the entry holds the key, so its id cannot be reused while cached.
    A key that does not fit the algorithm gets a verifier that always says no.
    """
    entry = _cache.get((alg, id(key)))
    if entry is not None and entry[0] is key:
        return entry[1]
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    made = _make(alg, key)
    _cache[(alg, id(key))] = (key, made)
    return made


def _refuse(_message: bytes, _signature: bytes) -> bool:
    return False


def _make(alg: str, key: Any) -> Verifier:
    family, bits = alg[:2], alg[2:]
    if family in ("RS", "PS") and isinstance(key, rsa.RSAPublicKey) and bits in _HASHES:
        return _rsa(key, family, _HASHES[bits]())
    if family == "ES" and isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES.get(alg):
        return _ecdsa(key, _HASHES[bits]())
    if alg == "EdDSA" and isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return _eddsa(key)
    if alg in _HMAC_DIGESTS and isinstance(key, bytes):
        return _hmac(key, _HMAC_DIGESTS[alg])
    return _refuse


def _rsa(key: rsa.RSAPublicKey, family: str, digest: hashes.HashAlgorithm) -> Verifier:
    scheme: padding.AsymmetricPadding = (
        padding.PKCS1v15() if family == "RS" else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    )

    def verify(message: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, message, scheme, digest)
        except InvalidSignature:
            return False
        return True

    return verify


def _ecdsa(key: ec.EllipticCurvePublicKey, digest: hashes.HashAlgorithm) -> Verifier:
    size = (key.curve.key_size + 7) // 8
    algorithm = ec.ECDSA(digest)

    def verify(message: bytes, signature: bytes) -> bool:
        # RFC 7518 §3.4: the JWS signature is R || S, each exactly the curve's octet length.
        if len(signature) != 2 * size:
            return False
        der = encode_dss_signature(int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"))
        try:
            key.verify(der, message, algorithm)
        except InvalidSignature:
            return False
        return True

    return verify


def _eddsa(key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) -> Verifier:
    def verify(message: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    return verify


def _hmac(secret: bytes, digest: Callable[..., Any]) -> Verifier:
    def verify(message: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(hmac.new(secret, message, digest).digest(), signature)

    return verify
