"""The HTTP side of ``DevIdP``: a Starlette app for metadata, JWKS, /authorize, /token, /introspect, /revoke.

Only wire formats live here: form parsing, client authentication, redirects, JSON answers and CORS.
Every decision is taken by the ``DevIdP`` methods these endpoints call.

CORS (``DevIdP(cors_origins=...)``) covers what a browser app calls with ``fetch``: the token and
revocation endpoints and the metadata and JWKS documents. Not /authorize, which the browser navigates
to, and not /introspect, which is for resource servers (servers, not browsers). A browser app may
send a ``DPoP`` proof to the token endpoint and read the ``DPoP-Nonce`` it answers with (RFC 9449).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenguard._dpop import dpop_header_values
from tokenguard.testing._model import Client, OAuthError

if TYPE_CHECKING:
    from tokenguard.testing._idp import DevIdP

# RFC 6749 §5.1: responses carrying tokens or credentials are not cached.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_CACHEABLE = {"Cache-Control": "public, max-age=300"}
_FORM = "application/x-www-form-urlencoded"
_MAX_BODY = 64 * 1024
_REALM = 'Basic realm="tokenguard-dev-idp"'
#: Request headers a browser app may send cross-origin: Basic credentials (a confidential client), the
#: form's content type, and what HTTP libraries add (Accept, X-Requested-With).
_CORS_HEADERS = ("Accept", "Authorization", "Content-Type", "X-Requested-With", "DPoP")
#: RFC 9449 §8: the token endpoint's nonce, which a browser app must be allowed to read.
_CORS_EXPOSED = ("DPoP-Nonce",)
_RESOURCE = "resource"


def build_app(idp: DevIdP) -> Starlette:
    """The ASGI app of ``idp``; endpoints sit under the issuer's path (RFC 8414 §3.1)."""
    base = urlsplit(idp.issuer).path.rstrip("/")

    async def metadata(request: Request) -> Response:
        return JSONResponse(idp.metadata(), headers=_CACHEABLE)

    async def jwks(request: Request) -> Response:
        return JSONResponse(idp.jwks(), headers=_CACHEABLE)

    async def authorize(request: Request) -> Response:
        try:
            params, resources = await _form(request) if request.method == "POST" else _unique(_parse(request.url.query))
            location = idp.authorize(params, resources=resources)
        except OAuthError as exc:
            # RFC 6749 §4.1.2.1: with a bad client or redirect URI, the user agent is sent nowhere.
            return _error(exc)
        return RedirectResponse(location, status_code=302, headers=_NO_STORE)

    async def token(request: Request) -> Response:
        try:
            form, resources = await _form(request)
            client = _authenticate(idp, request, form)
            tokens = idp.token_request(client, form, resources=resources, dpop=_dpop_proof(request))
        except OAuthError as exc:
            return _error(exc)
        headers = dict(_NO_STORE)
        if idp.dpop_nonces is not None:
            # RFC 9449 §8.2: the server may hand the client its next nonce with any answer.
            headers["DPoP-Nonce"] = idp.dpop_nonces.current()
        return JSONResponse(tokens.as_response(), headers=headers)

    async def introspect(request: Request) -> Response:
        try:
            form, _ = await _form(request)
            client = _authenticate(idp, request, form)
            token = _required(form, "token")
            answer = idp.introspect(token, token_type_hint=form.get("token_type_hint"), client_id=client.client_id)
        except OAuthError as exc:
            return _error(exc)
        return JSONResponse(answer, headers=_NO_STORE)

    async def revoke(request: Request) -> Response:
        try:
            form, _ = await _form(request)
            client = _authenticate(idp, request, form)
            token = _required(form, "token")
        except OAuthError as exc:
            return _error(exc)
        idp.revoke(token, token_type_hint=form.get("token_type_hint"), client_id=client.client_id)
        # RFC 7009 §2.2: 200 whether or not the token was known (an invalid token is no error).
        return Response(status_code=200, headers=_NO_STORE)

    def browser(path: str, endpoint: Callable[[Request], Awaitable[Response]], method: str) -> Route:
        """A route a browser app may call cross-origin, when the DevIdP has ``cors_origins``."""
        if not idp.cors_origins:
            return Route(path, endpoint, methods=[method])
        cors = Middleware(
            CORSMiddleware,
            allow_origins=idp.cors_origins,
            allow_methods=[method],
            allow_headers=_CORS_HEADERS,
            expose_headers=_CORS_EXPOSED,
        )
        plain = Middleware(_NoPlainOptions, allow=f"{method}, OPTIONS")
        return Route(path, endpoint, methods=[method, "OPTIONS"], middleware=[cors, plain])

    routes = [
        browser("/.well-known/oauth-authorization-server" + base, metadata, "GET"),
        browser(base + "/.well-known/openid-configuration", metadata, "GET"),
        browser(base + "/jwks", jwks, "GET"),
        Route(base + "/authorize", authorize, methods=["GET", "POST"]),
        browser(base + "/token", token, "POST"),
        Route(base + "/introspect", introspect, methods=["POST"]),
        browser(base + "/revoke", revoke, "POST"),
    ]
    return Starlette(routes=routes)


class _NoPlainOptions:
    """Behind ``CORSMiddleware``, which answers preflights: any other OPTIONS gets 405, as without CORS."""

    def __init__(self, app: ASGIApp, *, allow: str) -> None:
        self.app = app
        self.allow = allow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            # RFC 9110 §15.5.6: a 405 lists the methods the resource does take.
            refusal = PlainTextResponse("Method Not Allowed", status_code=405, headers={"Allow": self.allow})
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _error(exc: OAuthError) -> Response:
    """RFC 6749 §5.2: a JSON error body; 401 invalid_client carries a ``Basic`` challenge."""
    headers = {**_NO_STORE, **exc.headers}
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = _REALM
    return JSONResponse(exc.as_dict(), status_code=exc.status_code, headers=headers)


def _dpop_proof(request: Request) -> str | None:
    """The request's one ``DPoP`` proof, if any (RFC 9449 §4.3: "not more than one")."""
    values = dpop_header_values(request.scope["headers"])
    if len(values) > 1:
        raise OAuthError("invalid_dpop_proof", "The request has more than one DPoP header.")
    return values[0].decode("latin-1") if values else None


def _parse(text: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", "The request parameters are not valid form encoding.") from exc


def _unique(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The parameters, and the ``resource`` values apart: the one parameter that may repeat.

    RFC 6749 §3.1: parameters sent without a value are omitted, and none may be sent twice; but
    RFC 8707 §2: "Multiple resource parameters MAY be used".
    """
    params: dict[str, str] = {}
    resources: list[str] = []
    for name, value in pairs:
        if name == _RESOURCE:
            if value:
                resources.append(value)
            continue
        if name in params:
            raise OAuthError("invalid_request", f"The {name} parameter is repeated.")
        params[name] = value
    return {name: value for name, value in params.items() if value}, tuple(resources)


async def _form(request: Request) -> tuple[dict[str, str], tuple[str, ...]]:
    """The body of a POST: application/x-www-form-urlencoded only (RFC 6749 §3.2), size-capped."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != _FORM:
        raise OAuthError("invalid_request", f"The request body must be {_FORM}.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            raise OAuthError("invalid_request", "The request body is too large.")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise OAuthError("invalid_request", "The request body must be percent-encoded ASCII.") from exc
    return _unique(_parse(text))


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise OAuthError("invalid_request", f"The {name} parameter is missing.")
    return value


def _authenticate(idp: DevIdP, request: Request, form: Mapping[str, str]) -> Client:
    """client_secret_basic, client_secret_post, or a public client's bare ``client_id``: one of them (RFC 6749 §2.3)."""
    headers = request.headers.getlist("authorization")
    if len(headers) > 1:
        raise OAuthError("invalid_request", "More than one Authorization header.")
    if headers:
        scheme, _, credentials = headers[0].partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError("invalid_client", "Only Basic client authentication is accepted.", status_code=401)
        # RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each request."
        if "client_secret" in form:
            raise OAuthError("invalid_request", "More than one client authentication method was used.")
        return _basic(idp, credentials.strip(), form.get("client_id"))
    if "client_secret" in form:
        return idp.authenticate_client(_required(form, "client_id"), form["client_secret"])
    if "client_id" in form:
        # RFC 6749 §3.2.1: a public client sends its client_id to identify itself, and no credentials;
        # the DevIdP refuses this from a confidential client, which MUST authenticate (§2.3).
        return idp.authenticate_client(form["client_id"], None)
    raise OAuthError("invalid_client", "Client authentication is required.", status_code=401)


def _basic(idp: DevIdP, credentials: str, form_client_id: str | None) -> Client:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise OAuthError("invalid_client", "Malformed Basic credentials.", status_code=401) from exc
    raw_id, colon, raw_secret = decoded.partition(":")
    if not colon or not raw_id:
        raise OAuthError("invalid_client", "Malformed Basic credentials.", status_code=401)
    # RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined and base64-encoded.
    client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
    if form_client_id is not None and form_client_id not in (client_id, raw_id):
        raise OAuthError("invalid_request", "The client_id parameter does not match the Basic credentials.")
    try:
        return idp.authenticate_client(client_id, secret)
    except OAuthError:
        if (client_id, secret) == (raw_id, raw_secret):
            raise
    # Interoperability: some clients (Authlib among them) send id and secret without form-encoding;
    # the raw values must then match exactly, so this accepts nothing a compliant client could not send.
    return idp.authenticate_client(raw_id, raw_secret)
