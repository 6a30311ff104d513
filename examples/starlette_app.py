"""A photo-sharing API protected by tokenguard (Starlette).

Run it against the development identity provider (each in its own terminal):

    tokenguard dev-idp --port 9000
    uvicorn examples.starlette_app:app --port 8000

Then get a token from the DevIdP and call the API (README's Examples section runs the same):

    TOKEN=$(curl -s -u dev-client:dev-client-secret -d grant_type=client_credentials \
            -d scope="read:photos write:transfers" http://127.0.0.1:9000/token | python3 -c \
            "import json,sys; print(json.load(sys.stdin)['access_token'])")
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/photos
    curl -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
         -d '{"amount": 5, "to": "bob"}' http://127.0.0.1:8000/transfers

Settings come from the environment: TOKENGUARD_ISSUER (default ``http://127.0.0.1:9000``),
TOKENGUARD_AUDIENCE (``https://api.tokenguard.test``, the DevIdP's default audience), and
TOKENGUARD_CLIENT_ID and TOKENGUARD_CLIENT_SECRET, the introspection credentials of ``@sensitive``
routes (the DevIdP's resource-server client, ``dev-api`` / ``dev-api-secret``).
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenguard import TokenGuard, public, require_scopes, sensitive

PHOTOS = [{"id": 1, "title": "Sunrise"}, {"id": 2, "title": "Harbour"}]


@require_scopes("read:photos")
async def list_photos(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.user.identity, "scopes": request.auth.scopes, "photos": PHOTOS})


@sensitive  # introspected on every call (through a 30 s cache): a revoked token stops here at once
@require_scopes("write:transfers")
async def transfer(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse(
        {"transferred": body.get("amount"), "by": request.user.identity, "checked": request.auth.source}
    )


@public
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(*, issuer: str, audience: str, **guard_options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/photos", list_photos),
            Route("/transfers", transfer, methods=["POST"]),
            Route("/health", health),
        ]
    )
    app.add_middleware(TokenGuard, issuer=issuer, audience=audience, **guard_options)
    return app


app = create_app(
    issuer=os.environ.get("TOKENGUARD_ISSUER", "http://127.0.0.1:9000"),
    audience=os.environ.get("TOKENGUARD_AUDIENCE", "https://api.tokenguard.test"),
    client_id=os.environ.get("TOKENGUARD_CLIENT_ID", "dev-api"),
    client_secret=os.environ.get("TOKENGUARD_CLIENT_SECRET", "dev-api-secret"),
)
