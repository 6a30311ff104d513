"""Memory under a flood of distinct garbage tokens: every cache must stay bounded, JWKS fetches rate-limited.

N requests go through Starlette + TokenGuard in-process, each with a token never seen before, in four
kinds taken in turn: an opaque string; a JWS naming an unknown ``kid`` (valid issuer and lifetime, so
it reaches the JWKS refetch path); a JWS with a known ``kid`` and a wrong signature (a full RSA
verify); a JWS whose payload is not JSON. Tokens are made on the fly and dropped, so the process holds
none of them. Resident memory is read from ``/proc/self/statm`` after a warm-up and at the end.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import math
import os
import resource
import time
from collections.abc import Iterator

from benchmarks._common import IssuerTransport, Keys, Result, claims, mint
from benchmarks.bench_asgi import Harness, guarded, starlette_app

#: Issue 5, target 4 (issue 16 left it as it was): under 50 MB of growth, at most one JWKS fetch per
#: cool-down. Its verdict is set here; ``benchmarks.targets.judge`` clears it in a quick run.
GROWTH_LIMIT_MB = 50.0
COOLDOWN = 30.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def garbage_tokens(keys: Keys) -> Iterator[str]:
    """An endless stream of distinct bad tokens, four kinds in turn."""
    valid = mint(keys, "RS256")
    head, body, signature = valid.split(".")
    payload = _b64(json.dumps(claims()).encode())
    for i in range(1 << 62):
        kind, tag = i % 4, f"{i:012x}"
        if kind == 0:
            yield f"opaque-{tag}-{os.urandom(4).hex()}"
        elif kind == 1:
            header = _b64(json.dumps({"alg": "RS256", "typ": "at+jwt", "kid": f"rotated-{tag}"}).encode())
            yield f"{header}.{payload}.{signature}"
        elif kind == 2:
            yield f"{head}.{body}.{tag}{signature[12:]}"
        else:
            yield f"{head}.{tag}x.{signature}"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best we have (kilobytes on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(keys: Keys, loop: asyncio.AbstractEventLoop, requests: int) -> Result:
    """Send ``requests`` garbage tokens and report resident growth and JWKS fetches."""
    transport = IssuerTransport(keys.jwks())
    harness = Harness(
        guarded(starlette_app(), transport, jwks_refetch_cooldown=COOLDOWN), garbage_tokens(keys), expect=401
    )
    began = time.perf_counter()
    loop.run_until_complete(harness.batch(min(20_000, max(400, requests // 10))))  # warm-up: allocator, caches
    gc.collect()
    before = _rss_bytes()
    start = time.perf_counter()
    remaining = requests
    while remaining:
        step = min(remaining, 100_000)
        loop.run_until_complete(harness.batch(step))
        remaining -= step
    end = time.perf_counter()
    gc.collect()
    after = _rss_bytes()
    growth_mb = (after - before) / 1e6
    # The first fetch is the cold start; every later one must be an unknown-kid refetch a cool-down apart.
    allowed = 1 + math.ceil((end - began) / COOLDOWN)
    fetches = transport.jwks_fetches
    result = Result("memory", f"{requests:,} distinct garbage tokens", "single", baseline=None)
    result.value, result.value_unit = growth_mb, "MB RSS growth"
    result.note = (
        f"RSS {before / 1e6:.1f} -> {after / 1e6:.1f} MB ({growth_mb:+.2f} MB) after warm-up; "
        f"{fetches} JWKS fetches in {end - began:.0f} s "
        f"(≤ {allowed} allowed: the first, then 1 per {COOLDOWN:g} s cool-down); all 401; "
        f"{requests / (end - start):,.0f} req/s; peak RSS of the whole run {_peak_mb():.0f} MB"
    )
    result.target_text = f"<{GROWTH_LIMIT_MB:g} MB, ≤1 fetch/cool-down"
    result.target_ok = growth_mb < GROWTH_LIMIT_MB and fetches <= allowed
    return result


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux reports kilobytes
