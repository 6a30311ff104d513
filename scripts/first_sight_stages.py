"""Where a first-sight token's time goes: the Starlette app in-process, built up one layer at a time.

    python scripts/first_sight_stages.py [--rounds 7] [--requests 2000] [--tokens 2000]

Issue 16 asks where a first-sight RS256 token's time goes beyond the validator's own. Every request
carries a token the guard has not verified yet: ``--tokens`` distinct tokens are cycled and the
verified cache holds half as many, so each one misses and evicts an entry, the steady state of a full
cache (the benchmark suite's "distinct RS256 tokens" row). The servers, each layer adding one thing:

- bare: the Starlette app alone;
- signature only: a middleware that does the RSA verify and nothing else (``VerifyOnlyMiddleware``);
- validator: a middleware that calls ``JWTValidator.validate_nowait`` (no verified cache), then the app;
- + verified cache: the same with the guard's verified cache (the token's SHA-256, an insert that
  evicts the least recently used entry);
- guard, cut after validation: ``TokenGuard``'s fast lane (headers, route decision, SHA-256, cache
  lookup, ``Authenticator.miss``), then the app: no credentials objects, nothing counted;
- guard: ``TokenGuard`` as shipped.

Rounds interleave the servers; the table gives the median µs per request and the step from the row
above. The same harness as ``python -m benchmarks`` (``benchmarks.bench_asgi.Harness``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _servers(keys: Any, pool: list[str], loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    from benchmarks._common import AUDIENCE, ISSUER, IssuerTransport
    from benchmarks.bench_asgi import Harness, VerifyOnlyMiddleware, guarded, starlette_app

    from tokenguard import TokenGuard
    from tokenguard.authenticator import Authenticator
    from tokenguard.config import GuardConfig
    from tokenguard.credentials import TokenCredentials, TokenUser
    from tokenguard.extract import host_and_authorization
    from tokenguard.jwt_validator import JWTValidator, bytes_digest

    transport = IssuerTransport(keys.jwks())
    size = max(1, len(pool) // 2)

    def validator(cache_size: int) -> JWTValidator:
        config = GuardConfig(issuer=ISSUER, audience=AUDIENCE, verified_cache_size=cache_size)
        authenticator = Authenticator(config, http_client=transport.client())
        loop.run_until_complete(authenticator.prefetch())
        return authenticator.validator

    class ValidatorOnly:
        """The validator between the server and the app: the token's bytes, validated, then the app."""

        def __init__(self, app: Any, validator: JWTValidator) -> None:
            self.app, self.validator = app, validator

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            value = next(value for name, value in scope["headers"] if name == b"authorization")
            raw = value[7:]
            digest = bytes_digest(raw) if self.validator.caches else None
            scope["auth"] = self.validator.validate_nowait(raw.decode("ascii"), digest)
            await self.app(scope, receive, send)

    class CutAfterValidation(TokenGuard):
        """The guard's fast lane up to an allowed first-sight token, then the app."""

        credentials = False

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await TokenGuard.__call__(self, scope, receive, send)
                return
            host, values = host_and_authorization(scope.get("headers", ()))
            requirement = self.resolver.decide(scope, self.app, host).requirement
            raw = values[0][7:]
            digest = bytes_digest(raw)
            hit = self.authenticator.hit(digest, requirement)
            if hit is None:
                hit = self.authenticator.miss(raw, digest, requirement)
            if hit is None:  # keys still to fetch (the warm-up's first request): the guard itself
                await TokenGuard.__call__(self, scope, receive, send)
                return
            if self.credentials:
                scope["auth"], scope["user"] = TokenCredentials(hit, None), TokenUser(hit)
            await self.app(scope, receive, send)

    class CutAfterCredentials(CutAfterValidation):
        credentials = True

    def cut_guard(cut: type[TokenGuard]) -> Any:
        app = starlette_app()
        app.add_middleware(
            cut,
            issuer=ISSUER,
            audience=AUDIENCE,
            http_client=transport.client(),
            verified_cache_size=size,
        )
        return app

    apps = {
        "bare Starlette": starlette_app(),
        "signature only (RSA verify)": VerifyOnlyMiddleware(starlette_app(), keys.public["RS256"]),
        "validator, no verified cache": ValidatorOnly(starlette_app(), validator(0)),
        "+ verified cache (SHA-256, insert, evict)": ValidatorOnly(starlette_app(), validator(size)),
        "guard, cut after validation": cut_guard(CutAfterValidation),
        "guard, cut after request.auth, request.user": cut_guard(CutAfterCredentials),
        "guard as shipped": guarded(starlette_app(), transport, verified_cache_size=size),
    }
    servers = {}
    for name, app in apps.items():
        harness = Harness(app, itertools.cycle(pool))
        for _ in range(50):
            if loop.run_until_complete(harness.request()) != 200:
                raise AssertionError(f"{name}: the warm-up request was refused")
        servers[name] = harness
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000, help="requests per server per round")
    parser.add_argument("--tokens", type=int, default=2000, help="distinct tokens cycled (RS256)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks._common import Keys, mint

    keys = Keys()
    pool = [mint(keys, "RS256") for _ in range(args.tokens)]
    loop = asyncio.new_event_loop()
    servers = _servers(keys, pool, loop)
    samples: dict[str, list[float]] = {name: [] for name in servers}
    for round_number in range(args.rounds):
        print(f"  round {round_number + 1}/{args.rounds}", file=sys.stderr)
        for name, harness in servers.items():
            gc.collect()
            samples[name].append(loop.run_until_complete(harness.batch(args.requests)) / args.requests * 1e6)
    cache = max(1, args.tokens // 2)
    print(f"\n{args.tokens} distinct RS256 tokens cycled, verified cache {cache}, {args.rounds} rounds")
    print(f"{'server':44s} {'µs/request':>10s} {'step':>8s} {'vs bare':>8s}")
    previous = bare = None
    for name, values in samples.items():
        median = statistics.median(values)
        bare = median if bare is None else bare
        step = "" if previous is None else f"{median - previous:+.1f}"
        print(f"{name:44s} {median:10.1f} {step:>8s} {median - bare:+8.1f}")
        previous = median


if __name__ == "__main__":
    main()
