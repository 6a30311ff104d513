"""Shared test helpers: real keys, real signed tokens, a real JWKS served through respx, a manual clock.

Keys and clock are the package's own (``tokenguard.testing.SigningKey`` and ``ManualClock``); the
private keys behind them are generated once per test session (RSA generation is slow).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokenguard.testing import ManualClock, SigningKey
from tokenguard.testing import _processes as processes

ISSUER = "https://idp.example.com"
AUDIENCE = "https://api.example.com"
METADATA_URL = f"{ISSUER}/.well-known/oauth-authorization-server"
OPENID_URL = f"{ISSUER}/.well-known/openid-configuration"
JWKS_URL = f"{ISSUER}/jwks"
INTROSPECTION_URL = f"{ISSUER}/introspect"
T0 = 1_800_000_000.0

#: How the issuer publishes its keys: without ``alg``, so a key is not tied to one algorithm.
NO_ALG = {"alg": None}

_KEY_CACHE: dict[str, Any] = {}


def private_key(kind: str, slot: int = 0) -> Any:
    """Keys are expensive to make (RSA); each kind/slot is generated once per test session."""
    name = f"{kind}-{slot}"
    if name not in _KEY_CACHE:
        if kind == "rsa":
            _KEY_CACHE[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kind == "ec256":
            _KEY_CACHE[name] = ec.generate_private_key(ec.SECP256R1())
        elif kind == "ec384":
            _KEY_CACHE[name] = ec.generate_private_key(ec.SECP384R1())
        elif kind == "ed25519":
            _KEY_CACHE[name] = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(kind)
    return _KEY_CACHE[name]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Issuer:
    """A real authorization server's signing side: keys, JWKS, metadata, minted tokens."""

    def __init__(self, clock: ManualClock, issuer: str = ISSUER) -> None:
        self.clock = clock
        self.issuer = issuer
        self.keys: list[SigningKey] = [
            SigningKey("RS256", private_key("rsa"), kid="rsa-1", jwk_extra=NO_ALG),
            SigningKey("ES256", private_key("ec256"), kid="ec-1", jwk_extra=NO_ALG),
            SigningKey("EdDSA", private_key("ed25519"), kid="ed-1", jwk_extra=NO_ALG),
        ]
        self.jwks_headers: dict[str, str] = {"Cache-Control": "max-age=3600"}
        self.jwks_calls = 0
        self.metadata_calls = 0
        self.openid_calls = 0
        self.down = False
        self.jwks_override: Any = None

    def key(self, kid: str) -> SigningKey:
        return next(k for k in self.keys if k.kid == kid)

    def republish(self, kid: str, **jwk_extra: Any) -> None:
        """Publish the key ``kid`` with these JWK members instead (``None`` leaves one out)."""
        index = self.keys.index(self.key(kid))
        self.keys[index] = dataclasses.replace(self.keys[index], jwk_extra=jwk_extra)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": JWKS_URL,
            "introspection_endpoint": INTROSPECTION_URL,
            "token_endpoint": f"{self.issuer}/token",
        }

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "alice",
            "client_id": "photos-app",
            "scope": "read:photos",
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        kid: str | None = "rsa-1",
        *,
        alg: str | None = None,
        headers: dict[str, Any] | None = None,
        key: Any = None,
        **claims: Any,
    ) -> str:
        """A token signed by one of the issuer's keys (or ``key``); claims override the defaults."""
        signing = self.key(kid) if kid is not None and key is None else None
        algorithm = alg or (signing.alg if signing else "RS256")
        header: dict[str, Any] = {"typ": "at+jwt"}
        if kid is not None:
            header["kid"] = kid
        header.update(headers or {})
        header = {k: v for k, v in header.items() if v is not None}
        private = key if key is not None else (signing.private if signing else private_key("rsa"))
        return jwt.encode(self.claims(**claims), private, algorithm=algorithm, headers=header)

    def raw_token(self, header: dict[str, Any], claims: dict[str, Any], kid: str = "rsa-1") -> str:
        """A JWS over exactly these JSON objects, signed with the key ``kid`` (for malformed-claim tests)."""
        signing = self.key(kid)
        head = b64url(json.dumps(header).encode())
        body = b64url(json.dumps(claims).encode())
        algorithm = jwt.get_algorithm_by_name(signing.alg)
        signature = algorithm.sign(f"{head}.{body}".encode(), signing.private)
        return f"{head}.{body}.{b64url(signature)}"

    def install(self, router: respx.MockRouter) -> None:
        """Serve metadata and JWKS through respx; ``down`` makes them fail like a dead host."""

        def metadata(request: httpx.Request) -> httpx.Response:
            self.metadata_calls += 1
            if self.down:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(200, json=self.metadata())

        def jwks(request: httpx.Request) -> httpx.Response:
            self.jwks_calls += 1
            if self.down:
                raise httpx.ConnectError("connection refused", request=request)
            if self.jwks_override is not None:
                return self.jwks_override  # type: ignore[no-any-return]
            return httpx.Response(200, json=self.jwks(), headers=self.jwks_headers)

        def openid(request: httpx.Request) -> httpx.Response:
            self.openid_calls += 1
            if self.down:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(404)

        router.get(METADATA_URL).mock(side_effect=metadata)
        router.get(OPENID_URL).mock(side_effect=openid)
        router.get(JWKS_URL).mock(side_effect=jwks)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def idp(clock: ManualClock, respx_mock: respx.MockRouter) -> Issuer:
    issuer = Issuer(clock)
    issuer.install(respx_mock)
    return issuer


def now() -> float:
    return time.time()


@pytest.fixture
def issuer(respx_mock: respx.MockRouter, clock: ManualClock) -> Any:
    """The issuer of the assurance tests (``assurance_kit.RespxIssuer``): a ``KeyRing``, metadata, JWKS and
    RFC 7662 over respx, on the test's clock."""
    from assurance_kit import RespxIssuer

    return RespxIssuer(respx_mock, clock)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


#: The DPoP challenge's algorithms (RFC 9449 §7.1): DPoP is accepted by default.
DPOP_ALGS = "ES256 ES384 ES512 PS256 PS384 PS512 RS256 RS384 RS512 EdDSA"


def dpop_challenge(realm: str, metadata: str | None = None) -> str:
    """What follows the Bearer challenge in the same field: ``, DPoP realm=..., algs=...`` (RFC 9449 §7.2)."""
    value = f', DPoP realm="{realm}", algs="{DPOP_ALGS}"'
    return value + (f', resource_metadata="{metadata}"' if metadata is not None else "")


# -- A real Redis (tests/test_redis_store.py) ------------------------------------------------------


class RedisServer(processes.RedisServer):
    """``tokenguard.testing._processes.RedisServer`` for tests: a real ``redis-server`` on a free loopback port,
    without persistence; ``stop()`` kills it.

    ``start()`` skips the test when no ``redis-server`` is installed (``.ci/run`` installs Debian's) and fails
    it when the server never answers PING.
    """

    def start(self, port: int | None = None, *, timeout: float = 10.0) -> RedisServer:
        """Start on a free port (or on ``port``, e.g. to restart a stopped server where it was)."""
        try:
            super().start(port, timeout=timeout)
        except processes.RedisNotInstalled:
            pytest.skip("redis-server is not installed (Debian: apt-get install redis-server); Redis tests need one")
        except RuntimeError as exc:  # never answered PING
            pytest.fail(str(exc))
        return self


@pytest.fixture(scope="session")
def redis_server() -> Any:  # Iterator[str]: the URL, e.g. redis://127.0.0.1:PORT/0
    """The URL of a real ``redis-server`` for this test session; skips when none is installed."""
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()
