"""Validating one access token, per algorithm: the raw-verify floor, the peers, and tokenguard.

Every case validates the same token over and over (signature, ``iss``, ``aud``, ``exp``), so the
numbers are the cost of one uncached decision. tokenguard is called as ``await validator.validate(token)``
on a warmed ``Authenticator`` whose JWKS came through an in-process ``httpx.MockTransport``, in a tight
loop inside one event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import warnings
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from benchmarks._common import (
    ALGORITHMS,
    AUDIENCE,
    ISSUER,
    JWKS_URL,
    Case,
    IssuerTransport,
    Keys,
    mint,
    optional,
)
from tokenguard.authenticator import Authenticator
from tokenguard.config import GuardConfig

warnings.filterwarnings("ignore", module=r"authlib(\..*)?")
warnings.filterwarnings("ignore", module=r"joserfc(\..*)?")
warnings.filterwarnings("ignore", message=r".*authlib\.jose.*")

FLOOR = "floor: cryptography verify"
FLOOR_PARSE = "floor + base64url/JSON parse"
PEERS = ("PyJWT jwt.decode", "PyJWT + PyJWKClient lookup", "joserfc decode + claims", "authlib.jose decode + validate")
TG_UNCACHED = "tokenguard validator, uncached"
TG_CACHED = "tokenguard validator, cached"
_SUBJECT = "248289761001"


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _raw_verifier(alg: str, public: Any) -> Callable[[bytes, bytes], None]:
    """``verify(signature, signing_input)`` with the primitive alone (JWS ES256 signatures are r||s)."""
    if alg == "RS256":
        pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
        return lambda signature, data: public.verify(signature, data, pkcs1, sha256)
    if alg == "ES256":
        ecdsa = ec.ECDSA(hashes.SHA256())

        def verify_es256(signature: bytes, data: bytes) -> None:
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            public.verify(der, data, ecdsa)

        return verify_es256
    return lambda signature, data: public.verify(signature, data)


def _loop_batch(operation: Callable[[], object]) -> Callable[[int], float]:
    def batch(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            operation()
        return time.perf_counter() - start

    return batch


def _floor_cases(alg: str, token: str, keys: Keys) -> list[Case]:
    verify = _raw_verifier(alg, keys.public[alg])
    signing_input, _, signature_b64 = token.rpartition(".")
    data, signature = signing_input.encode("ascii"), _b64(signature_b64)

    def verify_and_parse() -> None:
        head, body, sig = token.split(".")
        header, claims = json.loads(_b64(head)), json.loads(_b64(body))
        verify(_b64(sig), f"{head}.{body}".encode("ascii"))
        assert header["alg"] == alg
        assert claims["sub"] == _SUBJECT

    verify_and_parse()
    return [
        Case(alg, FLOOR, "us", _loop_batch(lambda: verify(signature, data))),
        Case(alg, FLOOR_PARSE, "us", _loop_batch(verify_and_parse), baseline=FLOOR),
    ]


def _pyjwt_cases(alg: str, token: str, keys: Keys, jwks: dict[str, Any]) -> list[Case]:
    public = keys.public[alg]

    def pyjwt_decode() -> dict[str, Any]:
        return jwt.decode(token, public, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)

    class OfflineJWKClient(jwt.PyJWKClient):
        def fetch_data(self) -> Any:
            raise RuntimeError("the benchmark never reaches the network")

    client = OfflineJWKClient(JWKS_URL, cache_jwk_set=True, lifespan=86_400)
    assert client.jwk_set_cache is not None
    client.jwk_set_cache.put(jwt.PyJWKSet.from_dict(jwks))

    def pyjwt_client() -> dict[str, Any]:
        key = client.get_signing_key_from_jwt(token)
        return jwt.decode(token, key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)

    for decode in (pyjwt_decode, pyjwt_client):
        assert decode()["sub"] == _SUBJECT
    return [
        Case(alg, PEERS[0], "us", _loop_batch(pyjwt_decode), baseline=FLOOR),
        Case(alg, PEERS[1], "us", _loop_batch(pyjwt_client), baseline=FLOOR),
    ]


def _joserfc_case(alg: str, token: str, jwks: dict[str, Any]) -> Case:
    from joserfc import jwt as joserfc_jwt
    from joserfc.jwk import KeySet

    key_set = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    registry = joserfc_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
    )

    def decode() -> dict[str, Any]:
        decoded = joserfc_jwt.decode(token, key_set, algorithms=[alg])
        registry.validate(decoded.claims)
        return decoded.claims

    assert decode()["sub"] == _SUBJECT
    return Case(alg, PEERS[2], "us", _loop_batch(decode), baseline=FLOOR)


def _authlib_case(alg: str, token: str, jwks: dict[str, Any]) -> Case:
    from authlib.jose import JsonWebKey, JsonWebToken

    decoder, key_set = JsonWebToken([alg]), JsonWebKey.import_key_set(jwks)
    options = {
        "iss": {"essential": True, "value": ISSUER},
        "aud": {"essential": True, "value": AUDIENCE},
        "exp": {"essential": True},
    }

    def decode() -> Any:
        claims = decoder.decode(token, key_set, claims_options=options)
        claims.validate()
        return claims

    assert decode()["sub"] == _SUBJECT
    return Case(alg, PEERS[3], "us", _loop_batch(decode), baseline=FLOOR)


def authenticator(transport: IssuerTransport, loop: asyncio.AbstractEventLoop, **options: Any) -> Authenticator:
    """A warmed ``Authenticator``: metadata and JWKS fetched through the mock transport already."""
    config = GuardConfig(issuer=ISSUER, audience=AUDIENCE, **options)
    auth = Authenticator(config, http_client=transport.client())
    loop.run_until_complete(auth.prefetch())
    return auth


def _tokenguard_cases(alg: str, token: str, transport: IssuerTransport, loop: asyncio.AbstractEventLoop) -> list[Case]:
    cases = []
    for name, cache_size in ((TG_UNCACHED, 0), (TG_CACHED, 10_000)):
        validate = authenticator(transport, loop, verified_cache_size=cache_size).validator.validate

        async def batch(n: int, validate: Callable[[str], Any] = validate) -> float:
            start = time.perf_counter()
            for _ in range(n):
                await validate(token)
            return time.perf_counter() - start

        assert loop.run_until_complete(validate(token)).subject == _SUBJECT
        cases.append(Case(alg, name, "us", batch, baseline=FLOOR))
    return cases


def cases(keys: Keys, loop: asyncio.AbstractEventLoop) -> list[Case]:
    """All validation cases, three algorithms, ready to run."""
    jwks = keys.jwks()
    transport = IssuerTransport(jwks)
    result: list[Case] = []
    for alg in ALGORITHMS:
        token = mint(keys, alg)
        result += _floor_cases(alg, token, keys)
        result += _pyjwt_cases(alg, token, keys, jwks)
        result += optional("joserfc", lambda alg=alg, token=token: [_joserfc_case(alg, token, jwks)])
        result += optional("authlib", lambda alg=alg, token=token: [_authlib_case(alg, token, jwks)])
        result += _tokenguard_cases(alg, token, transport, loop)
    return result
