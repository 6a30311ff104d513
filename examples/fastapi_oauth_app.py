"""Swagger UI that signs in: the photo API's ``/docs`` against a development identity provider.

    python -m examples.fastapi_oauth_app          # the DevIdP on :9000, the API on :8000
    # open http://127.0.0.1:8000/docs, click Authorize, tick read:photos, Authorize, then
    # "Try it out" on GET /photos (200), and on POST /photos or DELETE /photos/{photo_id} (403: no write:photos)

``TOKENGUARD_IDP_PORT`` and ``PORT`` choose other ports (``0``: a free one; the first line printed
names both). Both ports are taken before anything is served: when one is in use, it exits with
``cannot listen on 127.0.0.1:PORT: Address already in use``, rather than trusting whatever
listens there as its identity provider.

``install_openapi`` puts the issuer's authorization and token endpoints (read from its RFC 8414
metadata) and the scopes the routes declare in the OpenAPI document, and turns on PKCE in Swagger
UI. Two things the issuer must do for a browser to sign in, both set up by ``create_idp`` here:

- register the docs client with Swagger UI's redirect page (``/docs/oauth2-redirect``) as a redirect URI;
- answer CORS requests on its token endpoint from the API's origin (``cors_origins``): Swagger UI
  posts the code there from the page's origin.

The docs client is a public client (RFC 6749 §2.1): Swagger UI runs in the browser, where a secret
would be shown to every visitor of ``/docs``, so it has none; PKCE S256 protects its code instead.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from fastapi import Depends, FastAPI, Security

from tokenguard import AccessToken, TokenGuard, public, require_scopes
from tokenguard.fastapi import current_token, install_openapi, require
from tokenguard.testing import DevIdP

AUDIENCE = "https://photos.example"
DOCS_CLIENT_ID = "photos-docs"  # a public client: no secret for Swagger UI to show its visitors
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
    docs_client_secret: str | None = None,
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


def create_idp(port: int, *, cors_origins: Sequence[str] = (), audience: str = AUDIENCE, **options: Any) -> DevIdP:
    """A DevIdP at ``http://127.0.0.1:PORT`` that knows the docs client (a public client: code + PKCE)
    and lets Swagger UI on ``cors_origins`` call its token endpoint."""
    idp = DevIdP.local(port, default_audience=audience, cors_origins=cors_origins, **options)
    idp.register_client(DOCS_CLIENT_ID, scopes=SCOPES, redirect_uris=DOCS_REDIRECT_URIS, audience=audience)
    return idp


def listen(port: int, variable: str) -> socket.socket:
    """A socket listening on 127.0.0.1:PORT (``0``: a free port); exits with the reason when it cannot.

    The message is the one ``tokenguard dev-idp`` gives, with the hint that fits here.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or exc
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}: {reason} (set {variable} to use another port)") from exc
    return sock


def main() -> None:
    import uvicorn

    # Both ports are taken first: were the IdP's in use, the API would trust whatever listens there.
    idp_socket = listen(int(os.environ.get("TOKENGUARD_IDP_PORT", "9000")), "TOKENGUARD_IDP_PORT")
    api_socket = listen(int(os.environ.get("PORT", "8000")), "PORT")
    idp_port, api_port = idp_socket.getsockname()[1], api_socket.getsockname()[1]
    idp = create_idp(idp_port, cors_origins=[f"http://127.0.0.1:{api_port}", f"http://localhost:{api_port}"])
    idp_server = uvicorn.Server(uvicorn.Config(idp.app, host="127.0.0.1", port=idp_port))
    threading.Thread(target=idp_server.run, kwargs={"sockets": [idp_socket]}, name="dev-idp", daemon=True).start()
    print(f"DevIdP at {idp.issuer}; open http://127.0.0.1:{api_port}/docs", flush=True)
    api_server = uvicorn.Server(uvicorn.Config(create_app(issuer=idp.issuer), host="127.0.0.1", port=api_port))
    api_server.run(sockets=[api_socket])


app = create_app(issuer=os.environ.get("TOKENGUARD_ISSUER", "http://127.0.0.1:9000"))

if __name__ == "__main__":
    main()
