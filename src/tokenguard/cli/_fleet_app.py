"""The photos API of ``tokenguard demo --fleet``: one worker process of a fleet, configured by environment.

``tokenguard demo --fleet`` runs it as ``python -m uvicorn tokenguard.cli._fleet_app:app --port P``, once
per worker, each on its own port (so that each worker can be asked directly). Environment:

- ``TOKENGUARD_FLEET_ISSUER``, ``TOKENGUARD_FLEET_AUDIENCE``: the IdP and the audience its tokens name;
- ``TOKENGUARD_FLEET_CLIENT_ID``, ``TOKENGUARD_FLEET_CLIENT_SECRET``: the API's credentials at the IdP
  (introspection), its ``client_id`` also the ``aud`` of the Shared Signals it receives;
- ``TOKENGUARD_FLEET_SHARED_STORE``: the ``redis://`` URL of the fleet's shared store;
- ``TOKENGUARD_FLEET_PUSH_AUTHORIZATION``: the ``Authorization`` header the IdP's pushes to
  ``/ssf/events`` carry (RFC 8935).

Routes: ``GET /photos`` (``read:photos``; an ordinary route: the JWT is checked locally), ``GET /health``
(``@public``), ``GET /status`` (``@public``, loopback callers only: this worker's pid and its counters of
Shared Signals applied and revocations received through the shared store; nothing secret).
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import SharedSignals, TokenGuard, public, require_scopes

PUSH_PATH = "/ssf/events"
_PREFIX = "TOKENGUARD_FLEET_"
_LOOPBACK = frozenset({"127.0.0.1", "::1"})


def setting(name: str) -> str:
    """``TOKENGUARD_FLEET_<name>``; a clear error when it is missing."""
    value = os.environ.get(_PREFIX + name, "")
    if not value:
        raise RuntimeError(f"{_PREFIX}{name} is not set: this app is started by `tokenguard demo --fleet`")
    return value


@require_scopes("read:photos")
async def photos(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.user.identity, "photos": 2, "pid": os.getpid()})


@public
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "pid": os.getpid()})


@public
async def status(request: Request) -> JSONResponse:
    if request.client is None or request.client.host not in _LOOPBACK:
        return JSONResponse({"error": "forbidden"}, status_code=403)
    guard: TokenGuard = request.scope["tokenguard"]
    fleet: dict[str, Any] = guard.status().get("fleet", {})
    signals = fleet.get("shared_signals", {})
    revocations = fleet.get("revocations", {})
    return JSONResponse(
        {
            "pid": os.getpid(),
            "signals_applied": signals.get("applied", 0),
            "revocations_received": revocations.get("received", 0),
            "revocations": revocations.get("entries", 0),
        },
        headers={"Cache-Control": "no-store"},
    )


def build() -> Starlette:
    issuer = setting("ISSUER")
    client_id = setting("CLIENT_ID")
    app = Starlette(routes=[Route("/photos", photos), Route("/health", health), Route("/status", status)])
    app.add_middleware(
        TokenGuard,
        issuer=issuer,
        audience=setting("AUDIENCE"),
        client_id=client_id,
        client_secret=setting("CLIENT_SECRET"),
        shared_store=setting("SHARED_STORE"),
        shared_signals=SharedSignals(
            transmitter=issuer,
            push_path=PUSH_PATH,
            push_authorization=setting("PUSH_AUTHORIZATION"),
            audience=client_id,
        ),
    )
    return app


app = build()
