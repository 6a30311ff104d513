"""What every benchmark group shares: real keys, access-token-sized JWTs, a JWKS served in-process, the case model.

Keys are generated once per run (RSA-2048, P-256, Ed25519); tokens are signed with PyJWT and look like
what an RFC 9068 authorization server issues (header with ``kid`` and ``typ: at+jwt``, ten-odd claims,
≈ 900 characters for RS256). The JWKS is served by an ``httpx.MockTransport``, so tokenguard fetches it
through its real HTTP path without a network.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example.com"
AUDIENCE = "https://photos.example"
METADATA_URL = f"{ISSUER}/.well-known/oauth-authorization-server"
JWKS_URL = f"{ISSUER}/jwks"
ALGORITHMS = ("RS256", "ES256", "EdDSA")
KIDS = {"RS256": "rsa-2048", "ES256": "p-256", "EdDSA": "ed25519"}

#: Peers that are not installed, with the cases skipped for them (printed under the table).
SKIPPED: list[str] = []


def optional(package: str, build: Callable[[], list[Case]], *, hint: str = "pip install -e '.[bench]'") -> list[Case]:
    """The cases ``build`` makes, or none (noted in ``SKIPPED`` with ``hint``) when ``package`` is not installed."""
    try:
        return build()
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != package:
            raise
        note = f"{package} is not installed: its cases are skipped ({hint})"
        if note not in SKIPPED:
            SKIPPED.append(note)
        return []


#: One batch of a case: run ``n`` operations, return the elapsed seconds (maybe as an awaitable).
Batch = Callable[[int], "float | Awaitable[float]"]


@dataclass
class Case:
    """One row of the table: a group, a name, a batch function and what it is compared with.

    ``unit`` is ``"us"`` (microseconds per operation, lower is better) or ``"rps"`` (requests per
    second, higher is better). ``baseline`` names the case of the same group the ratio is taken to,
    round by round; ``None`` marks the baseline itself. The targets rows are held to live in
    ``benchmarks.targets`` and are applied once the whole run is in.
    """

    group: str
    name: str
    unit: str
    batch: Batch
    baseline: str | None = None
    n: int = 0


@dataclass
class Result:
    """Per-round measurements of one case, in seconds per operation, plus what the table shows."""

    group: str
    name: str
    unit: str
    seconds: list[float] = field(default_factory=list)
    baseline: str | None = None
    ratios: list[float] = field(default_factory=list)
    deltas_us: list[float] = field(default_factory=list)
    value: float | None = None  # for single-shot rows (memory): the number shown instead of a median
    value_unit: str = ""
    note: str = ""
    target_text: str = ""  # what the row is held to (``benchmarks.targets``), empty for most rows
    target_ok: bool | None = None  # the verdict; None when not judged (a quick run, or a needed row absent)

    def values(self) -> list[float]:
        """The per-round values in display units: µs/op, or req/s."""
        if self.unit == "rps":
            return [1.0 / s for s in self.seconds]
        return [s * 1e6 for s in self.seconds]


class Keys:
    """The issuer's three signing keys and their public JWKS."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {
            "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ES256": ec.generate_private_key(ec.SECP256R1()),
            "EdDSA": ed25519.Ed25519PrivateKey.generate(),
        }
        self.public: dict[str, Any] = {alg: key.public_key() for alg, key in self.private.items()}

    def jwks(self) -> dict[str, Any]:
        keys = []
        for alg, public in self.public.items():
            if alg == "RS256":
                jwk = json.loads(RSAAlgorithm.to_jwk(public))
            elif alg == "ES256":
                jwk = json.loads(ECAlgorithm.to_jwk(public))
            else:
                jwk = json.loads(OKPAlgorithm.to_jwk(public))
            jwk.update({"kid": KIDS[alg], "use": "sig", "alg": alg})
            keys.append(jwk)
        return {"keys": keys}


def claims(now: float | None = None, **overrides: Any) -> dict[str, Any]:
    """Claims of a typical RFC 9068 access token, valid for an hour."""
    issued = int(now if now is not None else time.time())
    body: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "248289761001",
        "aud": AUDIENCE,
        "client_id": "s6BhdRkqt3",
        "scope": "openid profile email read:photos write:photos",
        "iat": issued,
        "nbf": issued,
        "exp": issued + 3600,
        "auth_time": issued - 120,
        "acr": "urn:mace:incommon:iap:silver",
        "amr": ["pwd", "otp"],
        "jti": uuid.uuid4().hex,
        "sid": uuid.uuid4().hex,
    }
    body.update(overrides)
    return body


def mint(keys: Keys, alg: str, **overrides: Any) -> str:
    """A signed access token for ``alg`` (``kid`` and ``typ: at+jwt`` in the header)."""
    headers = {"kid": KIDS[alg], "typ": "at+jwt"}
    return jwt.encode(claims(**overrides), keys.private[alg], algorithm=alg, headers=headers)


class IssuerTransport:
    """Serves RFC 8414 metadata and the JWKS through ``httpx.MockTransport``, counting fetches."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.jwks_fetches = 0
        self.metadata_fetches = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url == METADATA_URL:
            self.metadata_fetches += 1
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": JWKS_URL})
        if url == JWKS_URL:
            self.jwks_fetches += 1
            return httpx.Response(200, json=self.jwks, headers={"Cache-Control": "max-age=3600"})
        return httpx.Response(404)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
