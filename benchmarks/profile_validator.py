"""Where tokenguard's uncached validator spends its time: ``python -m benchmarks --profile``.

Two views per algorithm: a stage breakdown timed directly (no profiler overhead) through the
validator's own steps, and cProfile's top functions by own time. The stage breakdown reaches into
``tokenguard.jwt_validator`` internals; when those change it says so and prints the cProfile view only.
"""

from __future__ import annotations

import asyncio
import base64
import cProfile
import io
import json
import pstats
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._common import ALGORITHMS, IssuerTransport, Keys, mint
from benchmarks.bench_validation import _raw_verifier, authenticator


def _per_op(operation: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        operation()
    return (time.perf_counter() - start) / n * 1e6


def _per_op_async(loop: asyncio.AbstractEventLoop, operation: Callable[[], Awaitable[object]], n: int) -> float:
    async def batch() -> float:
        start = time.perf_counter()
        for _ in range(n):
            await operation()
        return (time.perf_counter() - start) / n * 1e6

    return loop.run_until_complete(batch())


def _stages(alg: str, token: str, keys: Keys, validator: Any, loop: asyncio.AbstractEventLoop, n: int) -> None:
    from tokenguard import _jose as module
    from tokenguard import jwt_validator as validator_module

    parsed = module.parse_jws(token)
    head, body, signature = token.split(".")
    alg_checked, kid = validator._check_header(parsed.header)
    keys_now = validator._jwks.current()
    verify = _raw_verifier(alg, keys.public[alg])
    data = parsed.signing_input
    raw_signature = parsed.signature
    raw, first, second = module.split_compact(token)
    body_bytes = module._b64decode(body)
    assert validator.validate_nowait(token) is not None  # the header is remembered from now on
    stages: list[tuple[str, float]] = [
        ("validate(), whole (uncached, header remembered)", _per_op_async(loop, lambda: validator.validate(token), n)),
        ("  split_compact (shape, +/= refused)", _per_op(lambda: module.split_compact(token), n)),
        ("  header memo lookup", _per_op(lambda: validator._headers.get(raw[:first]), n)),
        (
            "  decode_compact, header remembered",
            _per_op(lambda: module.decode_compact(raw, first, second, parsed.header), n),
        ),
        (
            "    _b64url x2 (payload, signature)",
            _per_op(lambda: (module._b64url(raw[first + 1 : second]), module._b64url(raw[second + 1 :])), n),
        ),
        ("    strict_loads (payload)", _per_op(lambda: module.strict_loads(body_bytes), n)),
        (
            "      for scale: json.loads (payload), no hooks",
            _per_op(lambda: json.loads(body_bytes.decode()), n),
        ),
        (
            "      for scale: base64.urlsafe_b64decode x2",
            _per_op(
                lambda: (
                    base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)),
                    base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                ),
                n,
            ),
        ),
        ("  (first sight of a header: decode_compact adds)", _per_op(lambda: module._b64decode(head), n)),
        ("  (first sight of a header: _check_header)", _per_op(lambda: validator._check_header(parsed.header), n)),
        ("  _check_issuer_and_lifetime", _per_op(lambda: validator._check_issuer_and_lifetime(parsed.claims), n)),
        (
            "  _verify_signature (candidate keys + prepared verifier)",
            _per_op(lambda: validator._verify_signature(parsed, alg_checked, kid, keys_now), n),
        ),
        ("    for scale: raw cryptography verify", _per_op(lambda: verify(raw_signature, data), n)),
        (
            "  _access_token (aud, identity, scopes, AccessToken)",
            _per_op(lambda: validator._access_token(parsed.claims, kid), n),
        ),
        ("  token_digest (SHA-256, cached path only)", _per_op(lambda: validator_module.token_digest(token), n)),
        ("Authenticator.validate adds: a dot count", _per_op(lambda: token.count("."), n)),
    ]
    print(f"\n{alg}: stage breakdown, µs per call ({n} calls each)")
    total = stages[0][1]
    for name, micros in stages:
        print(f"  {name:<56} {micros:8.2f} µs  {100 * micros / total:5.1f}%")


def _cprofile(alg: str, token: str, validator: Any, loop: asyncio.AbstractEventLoop, n: int) -> None:
    async def batch() -> None:
        for _ in range(n):
            await validator.validate(token)

    profiler = cProfile.Profile()
    profiler.enable()
    loop.run_until_complete(batch())
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
    print(f"\n{alg}: cProfile, top functions by own time ({n} validations; the profiler inflates Python calls)")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])


def profile(loop: asyncio.AbstractEventLoop, *, quick: bool = False) -> None:
    keys = Keys()
    transport = IssuerTransport(keys.jwks())
    n = 300 if quick else 3000
    for alg in ALGORITHMS:
        token = mint(keys, alg)
        validator = authenticator(transport, loop, verified_cache_size=0).validator
        try:
            _stages(alg, token, keys, validator, loop, n)
        except (AttributeError, TypeError, ValueError) as exc:
            print(f"\n{alg}: stage breakdown unavailable ({type(exc).__name__}: {exc}); jwt_validator changed")
        _cprofile(alg, token, validator, loop, n)
