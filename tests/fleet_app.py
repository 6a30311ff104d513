"""The app of the fleet tests and of ``scripts/fleet_drill.py``: one process of a fleet, configured by environment.

Run as ``uvicorn tests.fleet_app:app --port P`` from the repository root, once per process of the fleet.

- ``FLEET_ISSUER``, ``FLEET_AUDIENCE`` (required): the DevIdP's issuer and the audiences its tokens name
  (separated by spaces);
- ``FLEET_CLIENT_ID`` / ``FLEET_CLIENT_SECRET``: the introspection credentials (the DevIdP's resource
  server, ``dev-api`` / ``dev-api-secret``, by default);
- ``FLEET_SHARED_STORE``: a ``redis://`` URL for ``shared_store``; unset or empty: no shared store (each
  process on its own, the control);
- ``FLEET_SSF_AUTHORIZATION``: when set, the process is a Shared Signals receiver on ``/ssf/events``
  (RFC 8935 push) whose transmitter is the issuer and which expects exactly this ``Authorization``
  header; ``FLEET_SSF_AUDIENCE`` is the SETs' ``aud`` (default ``dev-api``);
- ``FLEET_ADMIN_SECRET``: the value of the ``X-Admin-Secret`` header ``POST /admin/revoke`` demands.

Routes: ``GET /photos`` (an ordinary route: a JWT is validated locally), ``GET /transfers`` (``@sensitive``:
every token is introspected), ``GET /status`` (``@public``: this process's pid and ``guard.status()``),
``POST /admin/revoke?jti=...`` (``@public`` for the guard, but only with the admin secret: test only;
a real app would protect it with a scope).
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import SharedSignals, TokenGuard, public, sensitive
from tokenguard.store import StoreUnavailable

PUSH_PATH = "/ssf/events"


def _guard(request: Request) -> TokenGuard:
    guard: TokenGuard = request.scope["tokenguard"]
    return guard


async def photos(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity, "pid": os.getpid()})


@sensitive
async def transfers(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity, "pid": os.getpid()})


@public
async def status(request: Request) -> JSONResponse:
    guard = _guard(request)
    snapshot: dict[str, Any] = dict(guard.status())
    return JSONResponse({"pid": os.getpid(), "status": snapshot}, headers={"Cache-Control": "no-store"})


@public
async def admin_revoke(request: Request) -> JSONResponse:
    given = request.headers.get("x-admin-secret", "")
    expected = os.environ.get("FLEET_ADMIN_SECRET", "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return JSONResponse({"error": "forbidden"}, status_code=403)
    jti = request.query_params.get("jti", "")
    try:
        await _guard(request).revoke(jti=jti)
    except StoreUnavailable:
        # Applied in this process already; published to the others when the store is back.
        return JSONResponse({"revoked": jti, "published": False, "pid": os.getpid()}, status_code=202)
    return JSONResponse({"revoked": jti, "published": True, "pid": os.getpid()})


def build() -> Starlette:
    issuer = os.environ["FLEET_ISSUER"]
    options: dict[str, Any] = {
        "issuer": issuer,
        "audience": os.environ["FLEET_AUDIENCE"].split(),
        "client_id": os.environ.get("FLEET_CLIENT_ID", "dev-api"),
        "client_secret": os.environ.get("FLEET_CLIENT_SECRET", "dev-api-secret"),
    }
    if store := os.environ.get("FLEET_SHARED_STORE"):
        options["shared_store"] = store
    if authorization := os.environ.get("FLEET_SSF_AUTHORIZATION"):
        options["shared_signals"] = SharedSignals(
            transmitter=issuer,
            push_path=PUSH_PATH,
            push_authorization=authorization,
            audience=os.environ.get("FLEET_SSF_AUDIENCE", "dev-api"),
        )
    app = Starlette(
        routes=[
            Route("/photos", photos),
            Route("/transfers", transfers),
            Route("/status", status),
            Route("/admin/revoke", admin_revoke, methods=["POST"]),
        ]
    )
    app.add_middleware(TokenGuard, **options)
    return app


app = build()
