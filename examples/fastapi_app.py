"""The same photo API with FastAPI: decorators on path functions, or FastAPI-style dependencies.

Run it against the development identity provider (each in its own terminal):

    tokenguard dev-idp --port 9000
    uvicorn examples.fastapi_app:app --port 8000

then call it as README's Examples section shows. ``POST /transfers`` takes a JSON body
(``-H 'Content-Type: application/json' -d '{"amount": 5, "to": "bob"}'``); settings come from the
environment, as in ``starlette_app``.

The decorators mark the function without wrapping it, so they work above or below ``@app.get``.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import Depends, FastAPI, Security
from pydantic import BaseModel

from tokenguard import AccessToken, TokenGuard, public, require_scopes, sensitive
from tokenguard.fastapi import current_token, scopes


class Transfer(BaseModel):
    amount: float
    to: str


def create_app(*, issuer: str, audience: str, **guard_options: Any) -> FastAPI:
    app = FastAPI(title="Photos API")

    @app.get("/photos")
    @require_scopes("read:photos")
    async def list_photos(token: AccessToken = Depends(current_token)) -> dict[str, Any]:
        return {"owner": token.identity, "scopes": sorted(token.scopes)}

    @require_scopes("write:photos")  # the other order works just as well
    @app.delete("/photos/{photo_id}")
    async def delete_photo(photo_id: int, token: AccessToken = Depends(current_token)) -> dict[str, Any]:
        return {"deleted": photo_id, "by": token.identity}

    @app.post("/transfers")
    @sensitive
    async def transfer(
        body: Transfer, token: AccessToken = Security(scopes, scopes=["write:transfers"])
    ) -> dict[str, Any]:
        return {"transferred": body.amount, "to": body.to, "by": token.identity, "checked": token.source}

    @app.get("/health")
    @public
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(TokenGuard, issuer=issuer, audience=audience, **guard_options)
    return app


app = create_app(
    issuer=os.environ.get("TOKENGUARD_ISSUER", "http://127.0.0.1:9000"),
    audience=os.environ.get("TOKENGUARD_AUDIENCE", "https://api.tokenguard.test"),
    client_id=os.environ.get("TOKENGUARD_CLIENT_ID", "dev-api"),
    client_secret=os.environ.get("TOKENGUARD_CLIENT_SECRET", "dev-api-secret"),
)
