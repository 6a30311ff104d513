"""The development identity provider's signing keys: generated, saved, loaded, published (RFC 7517).

Each key's ``kid`` is its RFC 7638 thumbprint, so a key loaded from a file keeps the ``kid`` it had
when it signed, and tokens issued before a restart still verify. A key file holds the *private*
JWKS: it is written readable by its owner only, and must never be served.

A ``SigningKey`` signs with any asymmetric algorithm a ``TokenGuard`` accepts by default
(``ALGORITHMS``): RSA keys for RS256/384/512 and PS256/384/512 (RFC 7518 §3.3, §3.5), EC keys on the
algorithm's own curve for ES256/384/512 (RFC 7518 §3.4), Ed25519 or Ed448 keys for EdDSA (RFC 8037).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tokenguard.errors import ConfigurationError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey

_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
# RFC 7518 §3.4: each ECDSA algorithm names its curve.
_EC_CURVES: dict[str, tuple[type[ec.EllipticCurve], str]] = {
    "ES256": (ec.SECP256R1, "P-256"),
    "ES384": (ec.SECP384R1, "P-384"),
    "ES512": (ec.SECP521R1, "P-521"),
}

#: Every algorithm a ``SigningKey`` signs with: the asymmetric algorithms a guard accepts by default.
ALGORITHMS: tuple[str, ...] = (*_RSA_ALGORITHMS, *_EC_CURVES, "EdDSA")

#: The algorithms a DevIdP's generated keys start with: one RSA and one EC key (RFC 7518 §3.1).
SIGNING_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")

# RFC 7638 §3.2 and RFC 8037 §2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# The members that are the key itself: ``jwk_extra`` may not change them.
_KEY_MEMBERS = frozenset({"kty", "n", "e", "crv", "x", "y"}) | _PRIVATE_MEMBERS


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url-encoded."""
    members = _THUMBPRINT_MEMBERS[str(jwk["kty"])]
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


@dataclass(frozen=True)
class SigningKey:
    """One private signing key, its algorithm and its ``kid``.

    ``alg`` is one of ``ALGORITHMS`` and ``private`` a key of its type: RSA of at least 2048 bits
    for RS*/PS*, EC on P-256/P-384/P-521 for ES256/ES384/ES512, Ed25519 or Ed448 for EdDSA.
    ``kid`` defaults to the key's RFC 7638 thumbprint.

    ``jwk_extra`` shapes the published JWK (``public_jwk``) to look like a given issuer's: its
    members are added to ``kid``, ``use`` and ``alg`` or replace them, and a member given as
    ``None`` is left out (``{"alg": None}`` publishes a key without ``alg``, as some issuers do;
    ``{"kid": None}`` one without ``kid``). It cannot change the key material (``kty``, ``n``,
    ``e``, ``crv``, ``x``, ``y``, private members), and is not written to a key file.
    """

    alg: str
    private: PrivateKey = field(repr=False)
    kid: str = ""
    jwk_extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check_key(self.alg, self.private)
        if not isinstance(self.kid, str):
            raise ConfigurationError(f"a signing key's kid must be a string, got {type(self.kid).__name__}")
        object.__setattr__(self, "jwk_extra", _check_extra(self.jwk_extra))
        if not self.kid:
            object.__setattr__(self, "kid", thumbprint(self._jwk(self.private.public_key())))

    @classmethod
    def generate(cls, alg: str = "RS256", *, kid: str = "", jwk_extra: Mapping[str, Any] | None = None) -> SigningKey:
        """A fresh key for ``alg``: RSA 2048 for RS*/PS*, the alg's curve for ES*, Ed25519 for EdDSA."""
        private: PrivateKey
        if alg in _RSA_ALGORITHMS:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg in _EC_CURVES:
            private = ec.generate_private_key(_EC_CURVES[alg][0]())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ConfigurationError(f"signing algorithm must be one of {list(ALGORITHMS)}, got {alg!r}")
        return cls(alg, private, kid=kid, jwk_extra={} if jwk_extra is None else jwk_extra)

    def public_jwk(self) -> dict[str, Any]:
        """The JWK a resource server verifies with (RFC 7517 §4): no private member.

        It has ``kid``, ``use`` (``sig``) and ``alg``, then the members of ``jwk_extra``.
        """
        jwk = self._jwk(self.private.public_key())
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        for name, value in self.jwk_extra.items():
            if value is None:
                jwk.pop(name, None)
            else:
                jwk[name] = copy.deepcopy(value)
        return jwk

    def private_jwk(self) -> dict[str, Any]:
        """The JWK with its private members, for a key file."""
        jwk = self._jwk(self.private)
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def _jwk(self, key: Any) -> dict[str, Any]:
        return dict(_jwk_algorithm(self.alg).to_jwk(key, as_dict=True))


def _jwk_algorithm(alg: str) -> type[RSAAlgorithm] | type[ECAlgorithm] | type[OKPAlgorithm]:
    if alg in _RSA_ALGORITHMS:
        return RSAAlgorithm
    if alg in _EC_CURVES:
        return ECAlgorithm
    return OKPAlgorithm


def _check_key(alg: object, key: object) -> None:
    if alg in _RSA_ALGORITHMS:
        # RFC 7518 §3.3, §3.5: "A key of size 2048 bits or larger MUST be used with these algorithms."
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
            article = "a" if alg.startswith("PS") else "an"  # "a PS256", "an RS256": as they are read aloud
            raise ConfigurationError(f"{article} {alg} signing key must be an RSA private key of at least 2048 bits")
    elif isinstance(alg, str) and alg in _EC_CURVES:
        # RFC 7518 §3.4: each ES* algorithm is ECDSA on one curve only.
        curve, name = _EC_CURVES[alg]
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, curve):
            raise ConfigurationError(f"an {alg} signing key must be an EC {name} private key")
    elif alg == "EdDSA":
        # RFC 8037 §3.1: EdDSA signs with an Ed25519 or Ed448 key.
        if not isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
            raise ConfigurationError("an EdDSA signing key must be an Ed25519 or Ed448 private key")
    else:
        raise ConfigurationError(f"signing algorithm must be one of {list(ALGORITHMS)}, got {alg!r}")


def _check_extra(extra: object) -> Mapping[str, Any]:
    if not isinstance(extra, Mapping):
        raise ConfigurationError(f"jwk_extra must be a mapping of JWK members, got {type(extra).__name__}")
    for name in extra:
        if not isinstance(name, str):
            raise ConfigurationError(f"jwk_extra: member names must be strings, got {name!r}")
        if name in _KEY_MEMBERS:
            raise ConfigurationError(f"jwk_extra cannot set or remove {name!r}: it is part of the key itself")
    return MappingProxyType(copy.deepcopy(dict(extra)))


class KeyRing:
    """The signing keys of one DevIdP: one per algorithm, published as a JWKS."""

    def __init__(self, keys: Iterable[SigningKey]) -> None:
        self._keys: dict[str, SigningKey] = {}
        for key in keys:
            if not isinstance(key, SigningKey):
                raise ConfigurationError(f"a key ring holds SigningKey objects, got {type(key).__name__}")
            if key.alg in self._keys:
                raise ConfigurationError(f"more than one {key.alg} key given")
            self._keys[key.alg] = key
        if not self._keys:
            raise ConfigurationError("a key ring needs at least one signing key")

    @classmethod
    def generate(cls, algorithms: Iterable[str] = SIGNING_ALGORITHMS) -> KeyRing:
        """Fresh keys, one per algorithm (see ``SigningKey.generate``): by default RS256 and ES256."""
        if isinstance(algorithms, str):
            raise ConfigurationError(f"algorithms must be a list of names, not the string {algorithms!r}")
        return cls(SigningKey.generate(alg) for alg in algorithms)

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any]) -> KeyRing:
        """Keys from a private JWKS document, as written by ``to_jwks(private=True)``."""
        entries = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(entries, list):
            raise ConfigurationError("a key file must be a JSON object with a 'keys' list")
        return cls(_signing_key(entry) for entry in entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Keys from a JSON key file written by ``save``.

        Whoever can write the file can sign tokens the DevIdP's JWKS vouches for: a file that another
        user owns (root aside: mounted secrets) or that others may write (a file planted in a shared
        directory such as a CI runner's ``/tmp``) is refused, on systems with owners and modes.
        """
        try:
            _check_key_file(path)
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read the key file {os.fspath(path)!r}: {exc}") from exc
        return cls.from_jwks(document)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private JWKS to ``path``, readable and writable by its owner only.

        Written to a new file beside it (created with mode 0600, never an existing one) and renamed over
        ``path``: a symlink planted at ``path`` is replaced, never followed to write the keys elsewhere.
        """
        text = json.dumps(self.to_jwks(private=True), indent=2)
        target = os.fspath(path)
        descriptor, temporary = tempfile.mkstemp(prefix=".keys-", dir=os.path.dirname(target) or ".")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def to_jwks(self, *, private: bool = False) -> dict[str, Any]:
        """The JWKS document: public keys only, unless ``private`` (for a key file)."""
        return {"keys": [key.private_jwk() if private else key.public_jwk() for key in self._keys.values()]}

    def with_key(self, key: SigningKey) -> KeyRing:
        """A new ring holding these keys and ``key`` (whose algorithm this ring must not have yet)."""
        return KeyRing([*self._keys.values(), key])

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


def _check_key_file(path: str | os.PathLike[str]) -> None:
    """Raise ``ValueError`` when the key file is another user's (root aside) or writable by group or others."""
    getuid = getattr(os, "getuid", None)
    if getuid is None:  # pragma: no cover - Windows: no POSIX owner and mode to check
        return
    status = os.stat(path)
    if status.st_uid not in (getuid(), 0):
        raise ValueError("it belongs to another user, who could have written keys of their own into it")
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError("others may write it (and so sign tokens this issuer vouches for): chmod 600 it")


def _signing_key(entry: object) -> SigningKey:
    if not isinstance(entry, dict):
        raise ConfigurationError("each key in a key file must be a JSON object")
    alg, kid = entry.get("alg"), entry.get("kid")
    if alg not in ALGORITHMS:
        raise ConfigurationError(f"key file: 'alg' must be one of {list(ALGORITHMS)}, got {alg!r}")
    if not _PRIVATE_MEMBERS & entry.keys():
        raise ConfigurationError("key file: a key has no private part (is this a public JWKS?)")
    try:
        private = _jwk_algorithm(str(alg)).from_jwk(entry)
    except Exception as exc:  # PyJWT raises several unrelated types for a bad JWK
        raise ConfigurationError(f"key file: cannot load the {alg} key: {type(exc).__name__}") from exc
    if not isinstance(
        private,
        (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey),
    ):
        raise ConfigurationError("key file: a key has no private part (is this a public JWKS?)")
    key = SigningKey(str(alg), private)
    if kid is not None and kid != key.kid:
        # A kid that is not the key's thumbprint was edited by hand: keep it, tokens name it.
        key = SigningKey(str(alg), key.private, kid=str(kid))
    return key
