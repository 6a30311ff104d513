"""The app uvicorn serves for the ``--server`` cases: ``uvicorn benchmarks._server_app:create --factory``.

``BENCH_SERVER_MODE`` is ``bare``, ``dict`` (the hand-written PyJWT middleware with a dict of verified
tokens) or ``guard``; for ``dict`` and ``guard``, ``BENCH_JWKS_FILE`` names the JWKS the
benchmark's tokens are signed for (served in-process through ``httpx.MockTransport``, never a network)
and ``BENCH_VERIFIED_CACHE`` sizes the verified-token cache.
"""

from __future__ import annotations

import json
import os
from typing import Any

from benchmarks._common import IssuerTransport
from benchmarks.bench_asgi import DictCacheMiddleware, guarded, starlette_app


def create() -> Any:
    app = starlette_app()
    if os.environ.get("BENCH_SERVER_MODE", "bare") == "bare":
        return app
    with open(os.environ["BENCH_JWKS_FILE"]) as file:
        jwks = json.load(file)
    if os.environ["BENCH_SERVER_MODE"] == "dict":
        return DictCacheMiddleware(app, jwks)
    transport = IssuerTransport(jwks)
    cache_size = int(os.environ.get("BENCH_VERIFIED_CACHE", "10000"))
    return guarded(app, transport, verified_cache_size=cache_size, prefetch=True)
