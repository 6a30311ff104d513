"""The HTTP side of ``DevIdP``: a Starlette app for metadata, JWKS, /authorize, /token, /introspect, /revoke,
/logout, /register (RFC 7591 dynamic client registration), and the Shared Signals transmitter's (``_ssf``)
metadata, stream, verification and poll endpoints.

Only wire formats live here: form parsing, client authentication, redirects, JSON answers and CORS.
Every decision is taken by the ``DevIdP`` methods these endpoints call.

/introspect answers RFC 7662 JSON, or an RFC 9701 signed JWT (``DevIdP.introspect_jwt``) when the
request's ``Accept`` names ``application/token-introspection+jwt``.

CORS (``DevIdP(cors_origins=...)``) covers what a browser app calls with ``fetch``: the token,
revocation and registration endpoints and the metadata and JWKS documents. Not /authorize, which the browser navigates
to, and not /introspect, which is for resource servers (servers, not browsers). A browser app may
send a ``DPoP`` proof to the token endpoint and read the ``DPoP-Nonce`` it answers with (RFC 9449).

/register is open (RFC 7591 §3: no initial access token), as befits a development IdP: it takes one
JSON object of client metadata and answers 201 with the client information, or 400 with an RFC 7591
§3.2.2 error (``invalid_redirect_uri``, ``invalid_client_metadata``), a body that is not JSON included.

The Shared Signals endpoints take JSON and a confidential client's HTTP Basic credentials, and a
receiver sees and manages only its own streams (SSF 1.0 §8: the stream's ``aud`` is its client_id):
another's is 404, as one that does not exist. Errors have the OAuth shape (``error``,
``error_description``; 401 with a Basic challenge) except a malformed poll request, which is
answered as RFC 8936 answers one (``err``, ``description``). The app's lifespan runs the transmitter's
delivery task, so a served DevIdP pushes each SET as soon as it is queued.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenguard._dpop import dpop_header_values
from tokenguard._strictjson import strict_loads
from tokenguard.errors import ConfigurationError
from tokenguard.testing._idp import INTROSPECTION_JWT
from tokenguard.testing._model import Client, OAuthError
from tokenguard.testing._ssf import WELL_KNOWN, Stream, StreamLimitReached, parse_poll_request, parse_stream_request

if TYPE_CHECKING:
    from tokenguard.testing._idp import DevIdP

# RFC 6749 §5.1: responses carrying tokens or credentials are not cached.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_CACHEABLE = {"Cache-Control": "public, max-age=300"}
_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"
_MAX_BODY = 64 * 1024
_REALM = 'Basic realm="tokenguard-dev-idp"'
#: Request headers a browser app may send cross-origin: Basic credentials (a confidential client), the
#: form's content type, and what HTTP libraries add (Accept, X-Requested-With).
_CORS_HEADERS = ("Accept", "Authorization", "Content-Type", "X-Requested-With", "DPoP")
#: RFC 9449 §8: the token endpoint's nonce, which a browser app must be allowed to read.
_CORS_EXPOSED = ("DPoP-Nonce",)
_RESOURCE = "resource"
#: SSF §8.1.4.2: the receiver's ``state``, echoed in the verification event; bounded here.
_MAX_STATE = 1024


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
            hint = form.get("token_type_hint")
            if _accepts(request, INTROSPECTION_JWT):
                # RFC 9701 §4: the resource server asked for a signed answer; §5: it gets one.
                signed = idp.introspect_jwt(token, token_type_hint=hint, client_id=client.client_id)
                return Response(signed, media_type=INTROSPECTION_JWT, headers=_NO_STORE)
            answer = idp.introspect(token, token_type_hint=hint, client_id=client.client_id)
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

    async def logout(request: Request) -> Response:
        try:
            form, _ = await _form(request)
            _operator_client(idp, request)
            username = _required(form, "username")
            revoked = _configured(lambda: idp.logout(username))
        except OAuthError as exc:
            return _error(exc)
        return JSONResponse({"grants_revoked": revoked}, headers=_NO_STORE)

    async def register(request: Request) -> Response:
        """RFC 7591 §3.1: register a client from its metadata; 201 and the §3.2.1 client information."""
        try:
            document = await _registration_document(request)
            answer = idp.register_dynamic_client(document)
        except OAuthError as exc:
            return _error(exc)
        # RFC 7591 §3.2.1: "HTTP 201 Created", and the answer holds a client secret: never cached.
        return JSONResponse(answer, status_code=201, headers=_NO_STORE)

    async def ssf_metadata(request: Request) -> Response:
        return JSONResponse(idp.ssf_metadata(), headers=_CACHEABLE)

    async def ssf_streams(request: Request) -> Response:
        """SSF 1.0 §8.1.1: POST creates (201), GET reads one or all (200), DELETE deletes (204)."""
        try:
            client = _operator_client(idp, request)
            if request.method == "POST":
                stream = _create_stream(idp, client, await _json(request))
                return JSONResponse(idp.stream_configuration(stream), status_code=201, headers=_NO_STORE)
            stream_id = _unique(_parse(request.url.query))[0].get("stream_id")
            if request.method == "GET" and stream_id is None:
                # §8.1.1.2: without a stream_id, every stream of this receiver (an empty list for none).
                mine = [s for s in idp.streams.values() if s.audience == client.client_id]
                return JSONResponse([idp.stream_configuration(s) for s in mine], headers=_NO_STORE)
            if stream_id is None:
                raise OAuthError("invalid_request", "The stream_id parameter is missing.")  # §8.1.1.5: MUST include
            stream = _own_stream(idp, client, stream_id)
            if request.method == "GET":
                return JSONResponse(idp.stream_configuration(stream), headers=_NO_STORE)
            idp.remove_stream(stream.stream_id)
        except OAuthError as exc:
            return _error(exc)
        return Response(status_code=204, headers=_NO_STORE)

    async def ssf_verify(request: Request) -> Response:
        """SSF 1.0 §8.1.4.2: a verification event on the receiver's stream; 204 once it is queued."""
        try:
            client = _basic_client(idp, request)
            document = await _json(request)
            stream_id, state = document.get("stream_id"), document.get("state")
            if not isinstance(stream_id, str) or not stream_id:
                raise OAuthError("invalid_request", "stream_id is required, a string.")
            if state is not None and (not isinstance(state, str) or len(state) > _MAX_STATE):
                raise OAuthError("invalid_request", f"state must be a string of at most {_MAX_STATE} characters.")
            stream = _own_stream(idp, client, stream_id)
            _configured(lambda: idp.verify_stream(stream.stream_id, state))
        except OAuthError as exc:
            return _error(exc)
        return Response(status_code=204, headers=_NO_STORE)

    async def ssf_poll(request: Request) -> Response:
        """RFC 8936 §2.4: acknowledge, then answer with the SETs not acknowledged yet."""
        try:
            client = _basic_client(idp, request)
            stream = _own_stream(idp, client, request.path_params["stream_id"])
            if stream.method != "poll":
                raise OAuthError("not_found", "This stream delivers by push, not poll.", status_code=404)
            document = await _json(request)
        except OAuthError as exc:
            return _poll_error(exc) if exc.status_code == 400 else _error(exc)
        try:
            max_events, immediately, ack, errors = parse_poll_request(document)
        except ConfigurationError as exc:
            return _poll_error(OAuthError("invalid_request", str(exc)))
        sets, more = await idp.transmitter.poll(
            stream, max_events=max_events, return_immediately=immediately, ack=ack, errors=errors
        )
        return JSONResponse({"sets": sets, "moreAvailable": more}, headers=_NO_STORE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Served, the DevIdP pushes each SET as soon as it is queued, from whichever thread queued it.
        async with idp.delivering():
            yield

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
        Route(base + "/logout", logout, methods=["POST"]),
        browser(base + "/register", register, "POST"),
        # SSF 1.0 §7.2: the well-known part goes between host and path, as RFC 8414 §3.1 puts its own.
        Route(WELL_KNOWN + base, ssf_metadata, methods=["GET"]),
        Route(base + "/ssf/streams", ssf_streams, methods=["GET", "POST", "DELETE"]),
        Route(base + "/ssf/verify", ssf_verify, methods=["POST"]),
        Route(base + "/ssf/poll/{stream_id}", ssf_poll, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


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


def _accepts(request: Request, media_type: str) -> bool:
    """Whether ``Accept`` names ``media_type`` (RFC 9110 §12.5.1: case-insensitive; ``q=0`` means "not")."""
    for header in request.headers.getlist("accept"):
        for item in header.split(","):
            name, *parameters = (part.strip() for part in item.split(";"))
            if name.lower() == media_type and all(_weight(p) != 0.0 for p in parameters):
                return True
    return False


def _weight(parameter: str) -> float | None:
    """The ``q`` of one media-range parameter (RFC 9110 §12.4.2), ``None`` for any other parameter."""
    name, _, value = parameter.partition("=")
    if name.strip().lower() != "q":
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


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


async def _body(request: Request, media_type: str) -> bytes:
    """The body of a request of ``media_type``, size-capped."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != media_type:
        raise OAuthError("invalid_request", f"The request body must be {media_type}.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            raise OAuthError("invalid_request", "The request body is too large.")
    return bytes(body)


async def _form(request: Request) -> tuple[dict[str, str], tuple[str, ...]]:
    """The body of a POST: application/x-www-form-urlencoded only (RFC 6749 §3.2), size-capped."""
    body = await _body(request, _FORM)
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


# -- Shared Signals (SSF 1.0) ----------------------------------------------------------------------


async def _json(request: Request) -> dict[str, Any]:
    """An application/json body holding one object (SSF §8.1.1.1, §8.1.4.2; RFC 8936 §2.4), strictly decoded."""
    body = await _body(request, _JSON)
    try:
        return strict_loads(body)
    except ValueError as exc:
        raise OAuthError("invalid_request", "The request body must be a JSON object.") from exc


async def _registration_document(request: Request) -> dict[str, Any]:
    """An RFC 7591 §3.1 request body: one JSON object; anything else is ``invalid_client_metadata`` (§3.2.2)."""
    try:
        body = await _body(request, _JSON)  # the same content type check and size cap as the other bodies
        return strict_loads(body)
    except OAuthError as exc:
        raise OAuthError("invalid_client_metadata", exc.description) from exc
    except ValueError as exc:
        raise OAuthError("invalid_client_metadata", "The request body must be a JSON object (RFC 7591 §3.1).") from exc


def _basic_client(idp: DevIdP, request: Request) -> Client:
    """A confidential client by its HTTP Basic credentials (RFC 6749 §2.3.1); 401 with a challenge otherwise."""
    headers = request.headers.getlist("authorization")
    if len(headers) > 1:
        raise OAuthError("invalid_request", "More than one Authorization header.")
    scheme, _, credentials = headers[0].partition(" ") if headers else ("", "", "")
    if scheme.lower() != "basic":
        raise OAuthError("invalid_client", "A confidential client's Basic credentials are required.", status_code=401)
    # A public client has no secret, so no Basic credentials of one can match: only confidential ones pass.
    return _basic(idp, credentials.strip(), None)


def _operator_client(idp: DevIdP, request: Request) -> Client:
    """``_basic_client``, registered by whoever runs this DevIdP (``register_client``, the default clients):
    ending users' sessions (``/logout``) and receiving every Shared Signals event (``/ssf/streams``) are
    the operator's services, never an anonymous registrant's (``/register`` is open to anyone)."""
    client = _basic_client(idp, request)
    if client.client_id in idp.dynamic_clients:
        raise OAuthError(
            "unauthorized_client", "A dynamically registered client may not use this endpoint.", status_code=403
        )
    return client


def _configured(action: Callable[[], Any]) -> Any:
    """Run a DevIdP method whose refusal of an argument (``ConfigurationError``) is the client's 400."""
    try:
        return action()
    except ConfigurationError as exc:
        raise OAuthError("invalid_request", str(exc)) from exc


def _create_stream(idp: DevIdP, client: Client, document: Mapping[str, Any]) -> Stream:
    """SSF §8.1.1.1: a stream for this receiver, its ``aud`` the client's id (Transmitter-Supplied)."""
    request = _configured(lambda: parse_stream_request(document))
    try:
        stream: Stream = idp.transmitter.add(request, client.client_id)
    except StreamLimitReached as exc:
        # SSF §8.1.1.1: 409 when the transmitter will not hold another stream for this receiver.
        raise OAuthError("too_many_streams", str(exc), status_code=409) from exc
    return stream


def _own_stream(idp: DevIdP, client: Client, stream_id: str) -> Stream:
    """SSF §8.1.1.2: 404 "if there is no Event Stream with the given stream_id for this Event Receiver"."""
    stream = idp.transmitter.get(stream_id, audience=client.client_id)
    if stream is None:
        raise OAuthError("not_found", "No such stream for this client.", status_code=404)
    return stream


def _poll_error(exc: OAuthError) -> Response:
    """A refused poll request as RFC 8936 answers one: 400 with ``err`` and ``description`` (RFC 8935 §2.3)."""
    body = {"err": exc.error, "description": exc.description}
    return JSONResponse(body, status_code=400, headers=_NO_STORE)
