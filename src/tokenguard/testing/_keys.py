"""The development identity provider's signing keys: generated, saved, loaded, published (RFC 7517).

Each key's ``kid`` is its RFC 7638 thumbprint, so a key loaded from a file keeps the ``kid`` it had
when it signed, and tokens issued before a restart still verify. A key file holds the *private*
JWKS: it is written readable by its owner only, and must never be served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tokenguard.errors import ConfigurationError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: The algorithms the DevIdP signs with: one RSA and one EC key (RFC 7518 §3.1).
SIGNING_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")

# RFC 7638 §3.2: the required members of each key type, in the thumbprint's lexicographic order.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url-encoded."""
    members = _THUMBPRINT_MEMBERS[str(jwk["kty"])]
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


@dataclass(frozen=True)
class SigningKey:
    """One private signing key, its algorithm and its ``kid``."""

    alg: str
    private: PrivateKey = field(repr=False)
    kid: str = ""

    def __post_init__(self) -> None:
        _check_key(self.alg, self.private)
        if not self.kid:
            object.__setattr__(self, "kid", thumbprint(self._jwk(self.private.public_key())))

    def public_jwk(self) -> dict[str, Any]:
        """The JWK a resource server verifies with (RFC 7517 §4): no private member."""
        jwk = self._jwk(self.private.public_key())
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def private_jwk(self) -> dict[str, Any]:
        """The JWK with its private members, for a key file."""
        jwk = self._jwk(self.private)
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def _jwk(self, key: Any) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        return dict(algorithm.to_jwk(key, as_dict=True))


def _check_key(alg: str, key: object) -> None:
    if alg == "RS256":
        # RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
            raise ConfigurationError("an RS256 signing key must be an RSA private key of at least 2048 bits")
    elif alg == "ES256":
        # RFC 7518 §3.4: ES256 is ECDSA on P-256 only.
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ConfigurationError("an ES256 signing key must be an EC P-256 private key")
    else:
        raise ConfigurationError(f"signing algorithm must be one of {list(SIGNING_ALGORITHMS)}, got {alg!r}")


class KeyRing:
    """The signing keys of one DevIdP: one per algorithm, published as a JWKS."""

    def __init__(self, keys: Iterable[SigningKey]) -> None:
        self._keys: dict[str, SigningKey] = {}
        for key in keys:
            if key.alg in self._keys:
                raise ConfigurationError(f"more than one {key.alg} key given")
            self._keys[key.alg] = key
        if not self._keys:
            raise ConfigurationError("a key ring needs at least one signing key")

    @classmethod
    def generate(cls) -> KeyRing:
        """Fresh keys: RSA 2048 for RS256 and EC P-256 for ES256."""
        return cls(
            [
                SigningKey("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                SigningKey("ES256", ec.generate_private_key(ec.SECP256R1())),
            ]
        )

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any]) -> KeyRing:
        """Keys from a private JWKS document, as written by ``to_jwks(private=True)``."""
        entries = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(entries, list):
            raise ConfigurationError("a key file must be a JSON object with a 'keys' list")
        return cls(_signing_key(entry) for entry in entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Keys from a JSON key file written by ``save``."""
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read the key file {os.fspath(path)!r}: {exc}") from exc
        return cls.from_jwks(document)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private JWKS to ``path``, readable and writable by its owner only."""
        text = json.dumps(self.to_jwks(private=True), indent=2)
        descriptor = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT: tighten it

    def to_jwks(self, *, private: bool = False) -> dict[str, Any]:
        """The JWKS document: public keys only, unless ``private`` (for a key file)."""
        return {"keys": [key.private_jwk() if private else key.public_jwk() for key in self._keys.values()]}

    def key_for(self, alg: str) -> SigningKey:
        """The key that signs with ``alg``; ``ConfigurationError`` when there is none."""
        try:
            return self._keys[alg]
        except KeyError:
            raise ConfigurationError(f"no signing key for {alg!r}; have {self.algorithms}") from None

    def by_kid(self, kid: object) -> SigningKey | None:
        return next((key for key in self._keys.values() if key.kid == kid), None)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(key.kid for key in self._keys.values())

    def __repr__(self) -> str:
        return f"KeyRing(kids={list(self.kids)!r})"


def _signing_key(entry: object) -> SigningKey:
    if not isinstance(entry, dict):
        raise ConfigurationError("each key in a key file must be a JSON object")
    alg, kid = entry.get("alg"), entry.get("kid")
    if alg not in SIGNING_ALGORITHMS:
        raise ConfigurationError(f"key file: 'alg' must be one of {list(SIGNING_ALGORITHMS)}, got {alg!r}")
    if not _PRIVATE_MEMBERS & entry.keys():
        raise ConfigurationError("key file: a key has no private part (is this a public JWKS?)")
    algorithm = RSAAlgorithm if alg == "RS256" else ECAlgorithm
    try:
        private = algorithm.from_jwk(entry)
    except Exception as exc:  # PyJWT raises several unrelated types for a bad JWK
        raise ConfigurationError(f"key file: cannot load the {alg} key: {type(exc).__name__}") from exc
    if not isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ConfigurationError("key file: a key has no private part (is this a public JWKS?)")
    key = SigningKey(str(alg), private)
    if kid is not None and kid != key.kid:
        # A kid that is not the key's thumbprint was edited by hand: keep it, tokens name it.
        key = SigningKey(str(alg), key.private, kid=str(kid))
    return key
