"""Introspection (RFC 7662) through tokenguard's cache and single-flight, against doing without them.

Four variants of one ``Introspector`` (built by a real ``Authenticator``), all talking to an
in-process introspection endpoint (``httpx.MockTransport``) through tokenguard's real HTTP path:

- ``tokenguard``: as configured by default (TLRU cache for 30 s, single-flight);
- ``no cache``: ``introspection_cache_ttl=0`` (single-flight still shares concurrent calls);
- ``cache, no single-flight``: the default cache, with the single-flight patched out (here only);
- ``no cache, no single-flight``: both off, the naive client, for reference.

Measured per variant, each round:

- **repeated token**: µs per ``await introspector.introspect(token)`` for a token asked about
  before, over many iterations (``time.perf_counter``). With a cache this is a cache hit; without
  one it is a full round trip through httpx to an endpoint that answers at once;
- **100 concurrent, cold**: 100 ``introspect`` calls with one token gathered on an empty cache, the
  endpoint answering after 2 ms (a LAN round trip): upstream calls made, and wall time per request;
- **100 sequential**: upstream calls made by 100 requests one after another with one token.

``python benchmarks/bench_introspection.py [--rounds N]`` prints a table; ``run(rounds)`` returns
the rows for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tokenguard.authenticator import Authenticator
from tokenguard.config import GuardConfig, IntrospectionOptions
from tokenguard.introspection import Introspector

ISSUER = "https://idp.example.com"
AUDIENCE = "https://photos.example"
INTROSPECTION_URL = f"{ISSUER}/introspect"
TOKEN = "2YotnFZFEjr1zCsicMWpAA-opaque-access-token-0123456789"
CONCURRENT = 100
UPSTREAM_LATENCY = 0.002  # seconds the endpoint takes in the concurrent case
HIT_ITERATIONS = 20_000
CALL_ITERATIONS = 400
BURSTS = 5

GROUP = "introspection"
TOKENGUARD = "tokenguard"
VARIANTS: dict[str, dict[str, Any]] = {
    TOKENGUARD: {"cache_ttl": 30.0, "single_flight": True},
    "no cache": {"cache_ttl": 0.0, "single_flight": True},
    "cache, no single-flight": {"cache_ttl": 30.0, "single_flight": False},
    "no cache, no single-flight": {"cache_ttl": 0.0, "single_flight": False},
}


class Upstream:
    """The issuer's introspection endpoint, in process: counts calls, answers after ``latency`` s."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.calls = 0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        now = int(time.time())
        answer = {
            "active": True,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "248289761001",
            "client_id": "s6BhdRkqt3",
            "scope": "read:photos write:transfers",
            "token_type": "Bearer",
            "iat": now,
            "exp": now + 3600,
        }
        return httpx.Response(200, json=answer)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))


class _NoFlight:
    """Stands in for ``SingleFlight`` in the benchmark only: every caller makes its own call."""

    async def run(self, key: bytes, factory: Callable[[], Awaitable[Any]]) -> Any:
        return await factory()


def build(variant: str, upstream: Upstream) -> Authenticator:
    options = VARIANTS[variant]
    config = GuardConfig(
        issuer=ISSUER,
        audience=(AUDIENCE,),
        introspection=IntrospectionOptions(
            endpoint=INTROSPECTION_URL,
            client_id="photos-api",
            client_secret="benchmark-secret",
            cache_ttl=options["cache_ttl"],
            # One token, asked about by 100 callers at once when single-flight is patched out: the
            # first-sight budget (never-seen opaque tokens) would refuse most of them; it is not what
            # this benchmark measures, so it is opened wide for every variant alike.
            first_sight_burst=100_000,
            first_sight_concurrency=CONCURRENT,
        ),
    )
    authenticator = Authenticator(config, http_client=upstream.client)
    if not options["single_flight"]:
        authenticator.introspector._flight = _NoFlight()  # type: ignore[assignment]
    return authenticator


@dataclass
class Sample:
    """One round of one variant."""

    repeated_us: float
    burst_calls: float
    burst_us: float
    sequential_calls: int


async def _repeated(variant: str) -> float:
    """µs per introspect() of a token asked about before (a cache hit when there is a cache)."""
    upstream = Upstream()
    authenticator = build(variant, upstream)
    introspector: Introspector = authenticator.introspector
    await introspector.introspect(TOKEN)
    n = HIT_ITERATIONS if VARIANTS[variant]["cache_ttl"] else CALL_ITERATIONS
    start = time.perf_counter()
    for _ in range(n):
        await introspector.introspect(TOKEN)
    elapsed = time.perf_counter() - start
    await authenticator.aclose()
    return elapsed / n * 1e6


async def _burst(variant: str) -> tuple[float, float]:
    """Upstream calls and µs per request for CONCURRENT identical requests on a cold cache."""
    calls, seconds = [], []
    for _ in range(BURSTS):
        upstream = Upstream(UPSTREAM_LATENCY)
        authenticator = build(variant, upstream)
        start = time.perf_counter()
        await asyncio.gather(*(authenticator.introspector.introspect(TOKEN) for _ in range(CONCURRENT)))
        seconds.append(time.perf_counter() - start)
        calls.append(upstream.calls)
        await authenticator.aclose()
    return statistics.mean(calls), statistics.median(seconds) / CONCURRENT * 1e6


async def _sequential(variant: str) -> int:
    upstream = Upstream()
    authenticator = build(variant, upstream)
    for _ in range(CONCURRENT):
        await authenticator.introspector.introspect(TOKEN)
    await authenticator.aclose()
    return upstream.calls


async def _round(order: list[str]) -> dict[str, Sample]:
    samples = {}
    for variant in order:
        repeated = await _repeated(variant)
        burst_calls, burst_us = await _burst(variant)
        samples[variant] = Sample(repeated, burst_calls, burst_us, await _sequential(variant))
    return samples


def measure(rounds: int) -> dict[str, list[Sample]]:
    """Every variant, ``rounds`` times, round-robin with a rotating start so noise hits all alike."""
    names = list(VARIANTS)
    results: dict[str, list[Sample]] = {name: [] for name in names}
    loop = asyncio.new_event_loop()
    try:
        for index in range(rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for variant, sample in loop.run_until_complete(_round(order)).items():
                results[variant].append(sample)
    finally:
        loop.close()
    return results


def run(rounds: int) -> list[dict[str, Any]]:
    """Rows for the benchmark harness: ``group``, ``case``, ``unit`` ("us"), per-round ``samples``, ``baseline``."""
    rows: list[dict[str, Any]] = []
    for variant, samples in measure(max(1, rounds)).items():
        baseline = None if variant == TOKENGUARD else TOKENGUARD
        calls = statistics.median(s.burst_calls for s in samples)
        sequential = statistics.median(s.sequential_calls for s in samples)
        rows.append(
            {
                "group": GROUP,
                "case": f"{variant}: repeated token",
                "unit": "us",
                "samples": [s.repeated_us for s in samples],
                "baseline": None if baseline is None else f"{baseline}: repeated token",
                "note": "cache hit" if VARIANTS[variant]["cache_ttl"] else "full call, 0 ms upstream",
                "variant": variant,
            }
        )
        rows.append(
            {
                "group": GROUP,
                "case": f"{variant}: {CONCURRENT} concurrent, cold",
                "unit": "us",
                "samples": [s.burst_us for s in samples],
                "baseline": None if baseline is None else f"{baseline}: {CONCURRENT} concurrent, cold",
                "note": f"{calls:g} upstream calls / {CONCURRENT} requests; {sequential:g} / {CONCURRENT} sequential",
                "variant": variant,
                "upstream_calls": [s.burst_calls for s in samples],
                "sequential_calls": [s.sequential_calls for s in samples],
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """One line per variant: repeated-token cost, and upstream calls for the concurrent and sequential cases."""
    header = (
        "variant",
        "repeated token µs/op (median [q1..q3])",
        f"upstream calls / {CONCURRENT} concurrent",
        "burst µs/request",
        f"upstream calls / {CONCURRENT} sequential",
    )
    lines = [header]
    for variant in VARIANTS:
        repeated = next(r for r in rows if r["variant"] == variant and r["case"].endswith("repeated token"))
        burst = next(r for r in rows if r["variant"] == variant and r["case"].endswith("cold"))
        lines.append(
            (
                variant,
                _spread(repeated["samples"]) + ("" if VARIANTS[variant]["cache_ttl"] else " (no hit: full call)"),
                f"{statistics.median(burst['upstream_calls']):g}",
                f"{statistics.median(burst['samples']):.1f}",
                f"{statistics.median(burst['sequential_calls']):g}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines]
    text.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(text)


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{median:.2f} [{q1:.2f}..{q3:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()
    rows = run(args.rounds)
    print(
        f"tokenguard introspection, {args.rounds} rounds; upstream: in-process MockTransport, "
        f"{UPSTREAM_LATENCY * 1e3:g} ms latency in the concurrent case, none otherwise"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
