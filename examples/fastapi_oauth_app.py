"""Swagger UI that signs in: the photo API's ``/docs`` against a development identity provider.

    python -m examples.fastapi_oauth_app          # the DevIdP on :9000, the API on :8000
    # open http://127.0.0.1:8000/docs, click Authorize, tick read:photos, Authorize, then
    # "Try it out" on GET /photos (200), and on POST /photos or DELETE /photos/{photo_id} (403: no write:photos)

``install_openapi`` puts the issuer's authorization and token endpoints (read from its RFC 8414
metadata) and the scopes the routes declare in the OpenAPI document, and turns on PKCE in Swagger
UI. Two things the issuer must do for a browser to sign in, both set up by ``create_idp`` and
``idp_app`` here:

- register the docs client with Swagger UI's redirect page (``/docs/oauth2-redirect``) as a redirect URI;
- answer CORS requests on its token endpoint from the API's origin: Swagger UI posts the code there.

The DevIdP has no public clients yet, so the docs client has a secret, which Swagger UI sends (and
shows to every visitor of ``/docs``): fine for a development issuer, never for a real one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from fastapi import Depends, FastAPI, Security
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from tokenguard import AccessToken, TokenGuard, public, require_scopes
from tokenguard.fastapi import current_token, install_openapi, require
from tokenguard.testing import DevIdP

AUDIENCE = "https://photos.example"
DOCS_CLIENT_ID = "photos-docs"
DOCS_CLIENT_SECRET = "photos-docs-secret"  # development only: Swagger UI shows it to every visitor
SCOPES = {
    "read:photos": "See your photos",
    "write:photos": "Upload and delete your photos",
}
#: Swagger UI's redirect page on any loopback port (RFC 8252 §7.3: the DevIdP ignores the port).
DOCS_REDIRECT_URIS = ("http://127.0.0.1/docs/oauth2-redirect", "http://localhost/docs/oauth2-redirect")


def create_app(
    *,
    issuer: str,
    audience: str = AUDIENCE,
    docs_client_id: str = DOCS_CLIENT_ID,
    docs_client_secret: str | None = DOCS_CLIENT_SECRET,
    **guard_options: Any,
) -> FastAPI:
    app = FastAPI(title="Photos API")

    @app.get("/photos")
    @require_scopes("read:photos")
    async def list_photos(token: AccessToken = Depends(current_token)) -> dict[str, Any]:
        return {"owner": token.identity, "scopes": sorted(token.scopes)}

    @app.post("/photos")
    @require_scopes("write:photos")
    async def upload_photo(token: AccessToken = Depends(current_token)) -> dict[str, Any]:
        return {"uploaded_by": token.identity}

    @app.delete("/photos/{photo_id}")  # FastAPI's style works too: the scope check is in the dependency
    async def delete_photo(
        photo_id: int, token: AccessToken = Security(require, scopes=["write:photos"])
    ) -> dict[str, Any]:
        return {"deleted": photo_id, "by": token.identity}

    @app.get("/health")
    @public
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(TokenGuard, issuer=issuer, audience=audience, **guard_options)
    install_openapi(app, client_id=docs_client_id, client_secret=docs_client_secret, scope_descriptions=SCOPES)
    return app


def create_idp(port: int, *, audience: str = AUDIENCE, **options: Any) -> DevIdP:
    """A DevIdP at ``http://127.0.0.1:PORT`` that knows the docs client (authorization code + PKCE)."""
    idp = DevIdP.local(port, default_audience=audience, **options)
    idp.register_client(
        DOCS_CLIENT_ID,
        DOCS_CLIENT_SECRET,
        scopes=SCOPES,
        redirect_uris=DOCS_REDIRECT_URIS,
        audience=audience,
        grant_types=("authorization_code", "refresh_token"),
    )
    return idp


def idp_app(idp: DevIdP, *, allow_origins: Sequence[str]) -> ASGIApp:
    """The DevIdP's app behind CORS, so Swagger UI on ``allow_origins`` may post to its token endpoint."""
    return CORSMiddleware(
        idp.app,
        allow_origins=list(allow_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Accept", "Authorization", "Content-Type", "X-Requested-With"],
    )


def main() -> None:
    import uvicorn

    idp_port, api_port = int(os.environ.get("TOKENGUARD_IDP_PORT", "9000")), int(os.environ.get("PORT", "8000"))
    idp = create_idp(idp_port)
    origins = [f"http://127.0.0.1:{api_port}", f"http://localhost:{api_port}"]
    idp_server = uvicorn.Server(uvicorn.Config(idp_app(idp, allow_origins=origins), host="127.0.0.1", port=idp_port))
    threading.Thread(target=idp_server.run, name="dev-idp", daemon=True).start()
    print(f"DevIdP at {idp.issuer}; open http://127.0.0.1:{api_port}/docs")
    uvicorn.run(create_app(issuer=idp.issuer), host="127.0.0.1", port=api_port)


app = create_app(issuer=os.environ.get("TOKENGUARD_ISSUER", "http://127.0.0.1:9000"))

if __name__ == "__main__":
    main()
