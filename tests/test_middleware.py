"""End-to-end tests of ``TokenGuard`` through real Starlette apps (docs/ARCHITECTURE.md).

Tokens are signed by conftest's ``Issuer`` with real keys; its metadata and JWKS are served
through respx; time is the injected ``ManualClock``. Raw ASGI calls are used where a test must
send header bytes that an HTTP client would refuse to build.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, BaseUser, requires
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import AUDIENCE, ISSUER, METADATA_URL, OPENID_URL, Issuer, b64url, dpop_challenge, private_key
from tokenguard import TokenCredentials, TokenGuard, TokenUser, public, require_any_scope, require_scopes
from tokenguard.testing import ManualClock

# Most tests never reach the JWKS (public routes, refusals before any key lookup).
pytestmark = pytest.mark.respx(assert_all_called=False)

REALM = AUDIENCE  # the default realm is the first audience
METADATA = f"{AUDIENCE}/.well-known/oauth-protected-resource"  # RFC 9728 §3.1, named in every challenge


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def whoami(request: Request) -> JSONResponse:
    auth = request.auth
    return JSONResponse(
        {
            "identity": request.user.identity,
            "authenticated": request.user.is_authenticated,
            "scopes": auth.scopes,
            "claims": auth.claims,
            "source": auth.source,
            "auth_type": type(auth).__name__,
            "user_type": type(request.user).__name__,
        }
    )


@require_scopes("read:photos")
async def photos(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.user.identity, "scopes": request.auth.scopes})


@require_any_scope("write:photos", "admin")
async def upload(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@public
async def health(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse(
        {"authenticated": user.is_authenticated, "display_name": user.display_name, "scopes": request.auth.scopes}
    )


async def plain(request: Request) -> JSONResponse:
    return JSONResponse({"identity": request.user.identity})


@requires("read:photos")
async def starlette_requires(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


class PhotoEndpoint(HTTPEndpoint):
    @public
    async def get(self, request: Request) -> JSONResponse:
        return JSONResponse({"public": True})

    @require_scopes("write:photos")
    async def post(self, request: Request) -> JSONResponse:
        return JSONResponse({"identity": request.user.identity})


def logged(func: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A typical user decorator: a ``functools.wraps`` wrapper."""

    @functools.wraps(func)
    async def wrapper(request: Request) -> Response:
        return await func(request)

    return wrapper


@logged
@require_scopes("admin")
async def wrapped_below(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@require_scopes("admin")
@logged
async def wrapped_above(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


ROUTES = [
    Route("/me", whoami),
    Route("/photos", photos),
    Route("/upload", upload, methods=["POST"]),
    Route("/health", health),
    Route("/plain", plain, methods=["GET", "POST"]),
    Route("/starlette-requires", starlette_requires),
    Route("/class", PhotoEndpoint),
    Route("/wrapped-below", wrapped_below),
    Route("/wrapped-above", wrapped_above),
]


def make_app(clock: ManualClock, routes: list[Any] | None = None, **options: Any) -> Starlette:
    app = Starlette(routes=ROUTES if routes is None else routes)
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, **options)
    return app


@pytest.fixture
def client(idp: Issuer, clock: ManualClock) -> TestClient:
    return TestClient(make_app(clock))


def challenge_of(response: httpx.Response) -> str:
    value = response.headers["www-authenticate"]
    assert value.startswith(f'Bearer realm="{REALM}"')
    return value


async def asgi_http(
    app: Any, *, method: str = "GET", path: str = "/me", headers: Iterable[tuple[bytes, bytes]] = ()
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Drive ``app`` with one raw ASGI HTTP request; exceptions propagate to the test."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages: list[dict[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {name.lower(): value for name, value in start["headers"]}, body


# -- secure by default -----------------------------------------------------------------------------


def test_undecorated_route_needs_a_token(client: TestClient) -> None:
    """A route without marks is refused without a token: secure by default."""
    response = client.get("/plain")
    assert response.status_code == 401
    # RFC 9728 §5.1 (issue 7): even the bare challenge names the resource metadata.
    expected = f'Bearer realm="{REALM}", resource_metadata="{METADATA}"' + dpop_challenge(REALM, METADATA)
    assert challenge_of(response) == expected


def test_undecorated_route_accepts_a_valid_token(client: TestClient, idp: Issuer) -> None:
    """A route without marks accepts any valid token, whatever its scopes."""
    response = client.get("/plain", headers=bearer(idp.token(scope="unrelated")))
    assert response.status_code == 200
    assert response.json() == {"identity": "alice"}


def test_default_public_opens_undecorated_routes(idp: Issuer, clock: ManualClock) -> None:
    """``default="public"`` lets undecorated routes through; marked routes stay guarded."""
    client = TestClient(make_app(clock, default="public"))
    open_response = client.get("/starlette-requires")
    assert open_response.status_code == 403  # reached the app: Starlette's own @requires refused
    assert "www-authenticate" not in open_response.headers
    assert client.get("/photos").status_code == 401
    assert client.get("/photos", headers=bearer(idp.token())).status_code == 200


def test_public_route_needs_no_token_and_user_is_anonymous(client: TestClient) -> None:
    """@public routes run without a token; request.user/auth are usable and unauthenticated."""
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"authenticated": False, "display_name": "", "scopes": []}


def test_public_route_ignores_a_garbage_authorization_header(client: TestClient) -> None:
    """A @public route is not refused because of a malformed header: nothing is checked there."""
    response = client.get("/health", headers={"Authorization": "Bearer not a token"})
    assert response.status_code == 200
    assert response.json()["authenticated"] is False


def test_unmatched_path_gets_the_default_policy(client: TestClient, idp: Issuer) -> None:
    """A path no route matches is 401 without a token (no route discovery) and 404 with one."""
    assert client.get("/does-not-exist").status_code == 401
    assert client.get("/does-not-exist", headers=bearer(idp.token())).status_code == 404


def test_unmatched_path_with_default_public_is_a_plain_404(idp: Issuer, clock: ManualClock) -> None:
    """With ``default="public"`` an unmatched path reaches the app's 404 without a token."""
    client = TestClient(make_app(clock, default="public"))
    assert client.get("/does-not-exist").status_code == 404


# -- request.auth and request.user -------------------------------------------------------------------


def test_request_auth_and_user_describe_the_token(client: TestClient, idp: Issuer) -> None:
    """request.auth is an AuthCredentials subclass with scopes, claims, source; user.identity is sub."""
    token = idp.token(scope="read:photos write:photos", sub="bob")
    body = client.get("/me", headers=bearer(token)).json()
    assert body["auth_type"] == "TokenCredentials"
    assert body["user_type"] == "TokenUser"
    assert body["identity"] == "bob"
    assert body["authenticated"] is True
    assert sorted(body["scopes"]) == ["read:photos", "write:photos"]
    assert body["source"] == "jwt"
    assert body["claims"]["sub"] == "bob"
    assert body["claims"]["iss"] == ISSUER
    assert issubclass(TokenCredentials, AuthCredentials)
    assert issubclass(TokenUser, BaseUser)


def test_client_credentials_token_identity_is_client_id(client: TestClient, idp: Issuer) -> None:
    """A token without ``sub`` (client credentials) has the client_id as identity."""
    body = client.get("/me", headers=bearer(idp.token(sub=None, client_id="billing-job"))).json()
    assert body["identity"] == "billing-job"


def test_auth_objects_are_plain_python_types(idp: Issuer, clock: ManualClock) -> None:
    """scopes is a list of str and claims a JSON-serialisable dict, inside the endpoint itself."""
    seen: dict[str, Any] = {}

    async def inspect(request: Request) -> Response:
        seen["scopes"], seen["claims"] = request.auth.scopes, request.auth.claims
        seen["auth"], seen["user"] = request.auth, request.user
        return Response("ok")

    client = TestClient(make_app(clock, [Route("/inspect", inspect)]))
    assert client.get("/inspect", headers=bearer(idp.token(scope="b a"))).status_code == 200
    assert isinstance(seen["auth"], AuthCredentials)
    assert isinstance(seen["user"], BaseUser)
    assert isinstance(seen["scopes"], list)
    assert sorted(seen["scopes"]) == ["a", "b"]
    assert isinstance(seen["claims"], dict)
    assert json.loads(json.dumps(seen["claims"]))["scope"] == "b a"


def test_reprs_never_contain_the_token(client: TestClient, idp: Issuer, clock: ManualClock) -> None:
    """The repr of request.auth / request.user names scopes and identity, never the raw token."""
    seen: dict[str, str] = {}
    token = idp.token()

    async def inspect(request: Request) -> Response:
        seen["text"] = repr(request.auth) + repr(request.user) + repr(request.auth.token)
        return Response("ok")

    TestClient(make_app(clock, [Route("/inspect", inspect)])).get("/inspect", headers=bearer(token))
    assert "alice" in seen["text"]
    assert token not in seen["text"]
    assert token.split(".")[2] not in seen["text"]


def test_starlette_requires_works_on_top(client: TestClient, idp: Issuer) -> None:
    """Starlette's own @requires reads request.auth.scopes: 200 with the scope, 403 without."""
    assert client.get("/starlette-requires", headers=bearer(idp.token(scope="read:photos"))).status_code == 200
    assert client.get("/starlette-requires", headers=bearer(idp.token(scope="other"))).status_code == 403


def test_request_auth_scopes_is_a_sorted_list_of_the_requests_own(idp: Issuer, clock: ManualClock) -> None:
    """``request.auth.scopes`` (made when first read): the granted scopes sorted, a list an endpoint may
    change without the next request with the same (cached) token seeing it; assigning it works too."""
    seen: list[list[str]] = []

    async def scopes(request: Request) -> JSONResponse:
        seen.append(list(request.auth.scopes))
        request.auth.scopes.append("written:by-endpoint")
        request.auth.scopes = [*request.auth.scopes, "assigned"]
        return JSONResponse({"scopes": request.auth.scopes})

    client = TestClient(make_app(clock, [Route("/scopes", scopes)]))
    token = idp.token(scope="write:photos read:photos admin")
    first = client.get("/scopes", headers=bearer(token))
    second = client.get("/scopes", headers=bearer(token))  # a verified-cache hit: the same AccessToken
    assert seen == [["admin", "read:photos", "write:photos"]] * 2
    expected = ["admin", "read:photos", "write:photos", "written:by-endpoint", "assigned"]
    assert first.json()["scopes"] == second.json()["scopes"] == expected


# -- decorators on Starlette endpoints ---------------------------------------------------------------


def test_require_scopes_on_an_endpoint(client: TestClient, idp: Issuer) -> None:
    """@require_scopes needs every scope: 200 with it, 403 without."""
    ok = client.get("/photos", headers=bearer(idp.token(scope="read:photos")))
    assert ok.status_code == 200
    assert ok.json() == {"owner": "alice", "scopes": ["read:photos"]}
    assert client.get("/photos", headers=bearer(idp.token(scope="read:photo"))).status_code == 403


def test_require_any_scope_on_an_endpoint(client: TestClient, idp: Issuer) -> None:
    """@require_any_scope is satisfied by one of its scopes."""
    assert client.post("/upload", headers=bearer(idp.token(scope="admin"))).status_code == 200
    assert client.post("/upload", headers=bearer(idp.token(scope="write:photos"))).status_code == 200
    refused = client.post("/upload", headers=bearer(idp.token(scope="read:photos")))
    assert refused.status_code == 403
    assert 'scope="admin write:photos"' in refused.headers["www-authenticate"]


def test_class_based_endpoint_methods_carry_their_own_marks(client: TestClient, idp: Issuer) -> None:
    """HTTPEndpoint methods are marked one by one: GET public, POST scoped."""
    assert client.get("/class").json() == {"public": True}
    assert client.post("/class").status_code == 401
    assert client.post("/class", headers=bearer(idp.token(scope="read:photos"))).status_code == 403
    assert client.post("/class", headers=bearer(idp.token(scope="write:photos"))).json() == {"identity": "alice"}


def test_head_on_class_endpoint_follows_get(client: TestClient) -> None:
    """HEAD on an HTTPEndpoint without ``head`` is dispatched to ``get`` and so takes its marks."""
    assert client.head("/class").status_code == 200


def test_marks_survive_functools_wraps_wrappers(client: TestClient, idp: Issuer) -> None:
    """A mark below or above a functools.wraps wrapper is found on the registered endpoint."""
    for path in ("/wrapped-below", "/wrapped-above"):
        assert client.get(path, headers=bearer(idp.token(scope="read:photos"))).status_code == 403, path
        assert client.get(path, headers=bearer(idp.token(scope="admin"))).status_code == 200, path


# -- extraction through the app (RFC 6750 §2.1) ------------------------------------------------------


def test_missing_token_gets_a_bare_challenge(client: TestClient) -> None:
    """No Authorization header: 401 with a challenge that carries no error attribute."""
    response = client.get("/me")
    assert response.status_code == 401
    assert "error=" not in challenge_of(response)
    assert response.headers["content-type"] == "application/json"
    assert "error" not in response.json()


def test_basic_scheme_gets_a_bare_challenge(client: TestClient) -> None:
    """Another scheme (Basic) counts as no bearer token: bare 401 challenge."""
    response = client.get("/me", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert response.status_code == 401
    assert "error=" not in challenge_of(response)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value",
    [b"Bearer", b"Bearer ", b"Bearer    ", b"Bearer a b", b"Bearer a,b", b"Bearer \x00abc", b"Bearer t\xc3\xa4st"],
)
async def test_empty_or_malformed_bearer_value_is_invalid_request(
    idp: Issuer, clock: ManualClock, value: bytes
) -> None:
    """An empty or malformed bearer value is 400 invalid_request."""
    status, headers, body = await asgi_http(make_app(clock), headers=[(b"authorization", value)])
    assert status == 400
    assert b'error="invalid_request"' in headers[b"www-authenticate"]
    assert json.loads(body)["error"] == "invalid_request"


@pytest.mark.anyio
async def test_several_authorization_headers_are_invalid_request(idp: Issuer, clock: ManualClock) -> None:
    """Two Authorization headers (even two valid tokens) are 400 invalid_request, never a pick."""
    token = idp.token().encode()
    headers = [(b"authorization", b"Bearer " + token), (b"Authorization", b"Bearer " + token)]
    status, response_headers, _ = await asgi_http(make_app(clock), headers=headers)
    assert status == 400
    assert b'error="invalid_request"' in response_headers[b"www-authenticate"]


def test_several_authorization_headers_through_the_client(client: TestClient, idp: Issuer) -> None:
    """A raw header list with a bearer and a Basic header is refused with 400 as well."""
    headers = [("Authorization", f"Bearer {idp.token()}"), ("Authorization", "Basic YTpi")]
    assert client.get("/me", headers=headers).status_code == 400


def test_access_token_query_parameter_is_never_read(client: TestClient, idp: Issuer) -> None:
    """RFC 6750 §2.3 URI query tokens are ignored: a valid token in ?access_token= is still a 401."""
    response = client.get("/me", params={"access_token": idp.token()})
    assert response.status_code == 401
    assert "error=" not in challenge_of(response)
    assert idp.jwks_calls == 0


def test_access_token_form_field_is_never_read(client: TestClient, idp: Issuer) -> None:
    """RFC 6750 §2.2 form-body tokens are ignored: a valid token in the body is still a 401."""
    response = client.post("/plain", data={"access_token": idp.token()})
    assert response.status_code == 401
    assert "error=" not in challenge_of(response)


def test_surrounding_whitespace_is_not_part_of_the_token(client: TestClient, idp: Issuer) -> None:
    """Leading and trailing whitespace of a field value is not part of it (RFC 9110 §5.5)."""
    assert client.get("/me", headers={"Authorization": f"  Bearer {idp.token()}  "}).status_code == 200


def test_scheme_is_case_insensitive(client: TestClient, idp: Issuer) -> None:
    """``bearer`` and ``BEARER`` are the same scheme (RFC 7235 §2.1)."""
    token = idp.token()
    for scheme in ("bearer", "BEARER", "BeArEr"):
        assert client.get("/me", headers={"Authorization": f"{scheme} {token}"}).status_code == 200, scheme


# -- CORS preflight -----------------------------------------------------------------------------------


def cors_app(clock: ManualClock, *, guard_outermost: bool) -> Starlette:
    cors = Middleware(
        CORSMiddleware,
        allow_origins=["https://app.example"],
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization"],
    )
    guard = Middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    middleware = [guard, cors] if guard_outermost else [cors, guard]
    return Starlette(routes=ROUTES, middleware=middleware)


PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}


def test_cors_preflight_passes_untouched(idp: Issuer, clock: ManualClock) -> None:
    """An OPTIONS with Origin and Access-Control-Request-Method reaches CORSMiddleware untouched."""
    client = TestClient(cors_app(clock, guard_outermost=True))
    response = client.options("/photos", headers=PREFLIGHT)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "www-authenticate" not in response.headers


def test_cors_preflight_reaches_the_app_without_cors_middleware(client: TestClient) -> None:
    """A preflight is not the guard's business even when nothing answers CORS: the app decides (405)."""
    response = client.options("/photos", headers=PREFLIGHT)
    assert response.status_code == 405
    assert "www-authenticate" not in response.headers


def test_preflight_to_an_endpoint_that_answers_options_is_guarded(idp: Issuer, clock: ManualClock) -> None:
    """A scoped endpoint that answers OPTIONS itself keeps its policy: a faked preflight never runs it anonymously."""
    ran: list[bool] = []

    @require_scopes("admin")
    async def options_handler(request: Request) -> JSONResponse:
        ran.append(True)
        return JSONResponse({"scopes": request.auth.scopes})

    client = TestClient(make_app(clock, [Route("/x", options_handler, methods=["GET", "OPTIONS"])]))
    assert client.options("/x", headers=PREFLIGHT).status_code == 401
    assert client.options("/x").status_code == 401  # not a preflight: guarded like GET
    assert client.get("/x", headers=bearer(idp.token())).status_code == 403
    assert ran == []
    assert client.options("/x", headers={**PREFLIGHT, **bearer(idp.token(scope="admin"))}).status_code == 200
    assert ran == [True]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Origin": "https://app.example"}, {"Access-Control-Request-Method": "GET"}],
    ids=["plain", "origin-only", "method-only"],
)
def test_options_that_is_not_a_preflight_is_guarded(idp: Issuer, clock: ManualClock, headers: dict[str, str]) -> None:
    """An OPTIONS without both preflight headers needs a token like any request."""
    client = TestClient(cors_app(clock, guard_outermost=True))
    response = client.options("/photos", headers=headers)
    assert response.status_code == 401


def test_cors_outside_the_guard_lets_browsers_read_refusals(idp: Issuer, clock: ManualClock) -> None:
    """With CORSMiddleware outermost a 401 carries Access-Control-Allow-Origin, so a browser can read it."""
    client = TestClient(cors_app(clock, guard_outermost=False))
    response = client.get("/photos", headers={"Origin": "https://app.example"})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "https://app.example"


# -- refusals: 401 vs 403, challenges, bodies ----------------------------------------------------------


def test_insufficient_scope_is_403_with_the_scope_attribute(client: TestClient, idp: Issuer) -> None:
    """A valid token without the route's scope: 403 insufficient_scope naming the needed scope."""
    response = client.get("/photos", headers=bearer(idp.token(scope="write:photos")))
    assert response.status_code == 403
    challenge = challenge_of(response)
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="read:photos"' in challenge
    assert response.json()["error"] == "insufficient_scope"
    assert response.json()["scope"] == "read:photos"


def test_forged_token_on_a_scoped_route_is_401_not_403(client: TestClient, idp: Issuer) -> None:
    """A token signed by a key the issuer never published gets 401 invalid_token, never 403."""
    forged = idp.token(key=private_key("rsa", slot=1), scope="nothing")
    response = client.get("/photos", headers=bearer(forged))
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge_of(response)


def test_expired_token_is_401_invalid_token(client: TestClient, idp: Issuer, clock: ManualClock) -> None:
    """A token past exp (beyond the leeway) is refused with invalid_token, the clock being injected."""
    token = idp.token()
    assert client.get("/me", headers=bearer(token)).status_code == 200
    clock.advance(300 + 31)
    response = client.get("/me", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge_of(response)


def test_wrong_audience_is_401(client: TestClient, idp: Issuer) -> None:
    """A token for another resource is 401 invalid_token even when it has the scope."""
    response = client.get("/photos", headers=bearer(idp.token(aud="https://other.example")))
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge_of(response)


def test_custom_realm_is_used_in_every_challenge(idp: Issuer, clock: ManualClock) -> None:
    """``realm=`` replaces the default realm in WWW-Authenticate."""
    client = TestClient(make_app(clock, realm="photos"))
    expected = f'Bearer realm="photos", resource_metadata="{METADATA}"' + dpop_challenge("photos", METADATA)
    assert client.get("/me").headers["www-authenticate"] == expected


def _segment(obj: Any) -> str:
    return b64url(json.dumps(obj).encode())


def nasty_values(idp: Issuer) -> list[bytes]:
    """Header values an attacker or a broken client may send."""
    valid = idp.token()
    head, body, signature = valid.split(".")
    deep = "[" * 5000 + "]" * 5000
    huge_exp, nan_exp = b64url(b'{"exp": 1e999}'), b64url(b'{"exp": NaN}')
    not_json, not_utf8 = b64url(b"not json"), b64url(bytes([0xFF, 0xFE]))
    return [
        b"",
        b" ",
        b"\t",
        b"Bearer",
        b"Bearer\t" + valid.encode(),
        b"Bearer  " + valid.encode(),
        b"Bearer " + valid.encode() + b" extra",
        b"Bearer " + valid.encode() + b"\x00",
        b"Bearer \xff\xfe\xfd",
        b"Bearer " + b"a" * 100_000,
        b"Bearer " + b"A" * 16_385,
        b"Bearer =",
        b"Bearer ====",
        b"Bearer .",
        b"Bearer ..",
        b"Bearer ...",
        b"Bearer a.b.c",
        b"Bearer a.b.c.d.e",
        b"Bearer " + f"{head}.{body}".encode(),
        b"Bearer " + f"{head}.{body}.".encode(),
        b"Bearer " + f"{head}.{body}.{signature}.x".encode(),
        b"Bearer " + f"{head}=.{body}.{signature}".encode(),
        b"Bearer " + f"{_segment({'alg': 'none'})}.{body}.".encode(),
        b"Bearer " + f"{_segment({'alg': 'none'})}.{body}.AAAA".encode(),
        b"Bearer " + f"{_segment({'alg': 'HS256', 'kid': 'rsa-1'})}.{body}.{signature}".encode(),
        b"Bearer " + f"{_segment({'alg': 'RS256', 'kid': 123})}.{body}.{signature}".encode(),
        b"Bearer " + f"{_segment({'alg': 'RS256', 'kid': 'x' * 5000})}.{body}.{signature}".encode(),
        b"Bearer " + f"{_segment({'alg': 'RS256', 'kid': 'rsa-1', 'crit': ['exp']})}.{body}.{signature}".encode(),
        b"Bearer " + f"{_segment({'alg': 'RS256', 'kid': 'rsa-1', 'jku': 'https://evil'})}.{body}.{signature}".encode(),
        b"Bearer " + f"{_segment([1, 2])}.{body}.{signature}".encode(),
        b"Bearer " + f"{_segment('str')}.{body}.{signature}".encode(),
        b"Bearer " + f"{b64url(deep.encode())}.{body}.{signature}".encode(),
        b"Bearer " + f"{head}.{huge_exp}.{signature}".encode(),
        b"Bearer " + f"{head}.{nan_exp}.{signature}".encode(),
        b"Bearer " + f"{head}.{not_json}.{signature}".encode(),
        b"Bearer " + f"{head}.{not_utf8}.{signature}".encode(),
        b"Bearer " + f"{_segment({'alg': 'RSA-OAEP', 'enc': 'A256GCM'})}.a.b.c.d".encode(),
        b"Bearer " + base64.b64encode(b"\x00" * 64),
        b"Bearer %00%0d%0a",
        b"Bearer abc\r\nX-Injected: 1",
        b"Basic",
        b"Basic \xff",
        b"Negotiate abc",
        b"Bearerabc",
        b"DPoP " + valid.encode(),
        "Bearer ünïcødé".encode(),
        b"\r\n",
    ]


@pytest.mark.anyio
async def test_no_garbage_header_causes_a_500(idp: Issuer, clock: ManualClock) -> None:
    """Every nasty Authorization value gets 400 or 401 with a Bearer challenge and a JSON body."""
    app = make_app(clock)
    for value in nasty_values(idp):
        status, headers, body = await asgi_http(app, path="/photos", headers=[(b"authorization", value)])
        assert status in (400, 401), value[:80]
        challenge = headers[b"www-authenticate"]
        assert challenge.startswith(f'Bearer realm="{REALM}"'.encode()), value[:80]
        assert b"\r" not in challenge
        assert b"\n" not in challenge
        document = json.loads(body)
        assert isinstance(document, dict)
        assert "error_description" in document
        if status == 400 or document.get("error"):
            assert b"error=" in challenge, value[:80]


@pytest.mark.anyio
async def test_every_refusal_has_a_challenge_and_a_json_body(idp: Issuer, clock: ManualClock) -> None:
    """400, 401 and 403 all carry ``WWW-Authenticate: Bearer realm=…`` and a JSON body; error= except when bare."""
    app = make_app(clock)
    cases = [
        ([], 401, None),
        ([(b"authorization", b"Basic abc")], 401, None),
        ([(b"authorization", b"Bearer ")], 400, "invalid_request"),
        ([(b"authorization", b"Bearer " + idp.token(aud="x").encode())], 401, "invalid_token"),
        ([(b"authorization", b"Bearer " + idp.token(scope="none").encode())], 403, "insufficient_scope"),
    ]
    for headers, expected_status, expected_error in cases:
        status, response_headers, body = await asgi_http(app, path="/photos", headers=headers)
        assert status == expected_status
        assert response_headers[b"content-type"] == b"application/json"
        assert response_headers[b"cache-control"] == b"no-store"
        challenge = response_headers[b"www-authenticate"].decode()
        assert challenge.startswith(f'Bearer realm="{REALM}"')
        assert json.loads(body).get("error") == expected_error
        if expected_error is None:
            assert "error=" not in challenge
        else:
            assert f'error="{expected_error}"' in challenge


def test_tokens_never_reach_logs_or_responses(
    client: TestClient, idp: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    """Refusals are logged by reason; neither the log nor the response repeats the raw token."""
    forged = idp.token(key=private_key("rsa", slot=1))
    with caplog.at_level(logging.DEBUG, logger="tokenguard"):
        response = client.get("/photos", headers=bearer(forged))
    assert response.status_code == 401
    assert caplog.records, "the refusal is logged"
    signature = forged.split(".")[2]
    for text in (caplog.text, response.text, str(response.headers)):
        assert signature not in text
        assert forged not in text


# -- keys that cannot be had -----------------------------------------------------------------------------


def take_issuer_down(idp: Issuer, respx_mock: respx.MockRouter) -> None:
    """Every discovery URL fails like a dead host (conftest serves only the RFC 8414 one)."""
    idp.down = True
    respx_mock.get(OPENID_URL).mock(side_effect=httpx.ConnectError("connection refused"))


def test_issuer_down_with_a_cold_cache_is_503(idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter) -> None:
    """No keys and an unreachable issuer: 503 with Retry-After, never a 401."""
    take_issuer_down(idp, respx_mock)
    client = TestClient(make_app(clock, retry_after=7))
    response = client.get("/me", headers=bearer(idp.token()))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"] == "temporarily_unavailable"
    assert "www-authenticate" not in response.headers


def test_bad_metadata_is_503(idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter) -> None:
    """Metadata naming another issuer is not trusted: the keys cannot be had, so 503."""
    respx_mock.get(METADATA_URL).mock(return_value=httpx.Response(200, json={"issuer": "https://evil.example"}))
    respx_mock.get(OPENID_URL).mock(return_value=httpx.Response(404))
    client = TestClient(make_app(clock))
    response = client.get("/me", headers=bearer(idp.token()))
    assert response.status_code == 503
    assert "retry-after" in response.headers


def test_keys_are_served_from_cache_while_the_issuer_is_down(client: TestClient, idp: Issuer) -> None:
    """Once fetched, keys keep working when the issuer goes down (no 503 for cached keys)."""
    assert client.get("/me", headers=bearer(idp.token())).status_code == 200
    idp.down = True
    assert client.get("/me", headers=bearer(idp.token())).status_code == 200
    assert idp.jwks_calls == 1


def test_missing_token_is_401_even_when_the_issuer_is_down(client: TestClient, idp: Issuer) -> None:
    """No key is needed to refuse a request without a token: still a bare 401."""
    idp.down = True
    assert client.get("/me").status_code == 401
    assert idp.metadata_calls == 0


# -- lifespan, prefetch, status -----------------------------------------------------------------------


def lifespan_app(clock: ManualClock, events: list[str], **options: Any) -> tuple[Starlette, TokenGuard]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=ROUTES, lifespan=lifespan)
    guard = TokenGuard(app, issuer=ISSUER, audience=AUDIENCE, clock=clock, **options)
    return app, guard


def test_lifespan_passes_through(idp: Issuer, clock: ManualClock) -> None:
    """The app's own startup and shutdown run under the guard."""
    events: list[str] = []
    _, guard = lifespan_app(clock, events)
    with TestClient(guard) as client:
        assert events == ["startup"]
        assert client.get("/health").status_code == 200
    assert events == ["startup", "shutdown"]
    assert idp.jwks_calls == 0  # no prefetch unless asked


def test_prefetch_warms_the_jwks_at_startup(idp: Issuer, clock: ManualClock) -> None:
    """``prefetch=True`` fetches metadata and JWKS during startup, before the first request."""
    events: list[str] = []
    _, guard = lifespan_app(clock, events, prefetch=True)
    assert guard.ready() is False
    with TestClient(guard) as client:
        assert (idp.metadata_calls, idp.jwks_calls) == (1, 1)
        assert guard.ready() is True
        assert client.get("/me", headers=bearer(idp.token())).status_code == 200
        assert (idp.metadata_calls, idp.jwks_calls) == (1, 1)
    assert events == ["startup", "shutdown"]


def test_prefetch_with_the_issuer_down_still_starts(
    idp: Issuer, clock: ManualClock, respx_mock: respx.MockRouter
) -> None:
    """A failed prefetch is logged; the app starts, is not ready, and token requests get 503."""
    take_issuer_down(idp, respx_mock)
    events: list[str] = []
    _, guard = lifespan_app(clock, events, prefetch=True)
    with TestClient(guard) as client:
        assert events == ["startup"]
        assert guard.ready() is False
        assert client.get("/health").status_code == 200
        assert client.get("/me", headers=bearer(idp.token())).status_code == 503


def test_status_snapshot(idp: Issuer, clock: ManualClock) -> None:
    """status() reports the issuer, the keys known and the caches; ready() follows the keys."""
    _, guard = lifespan_app(clock, [])
    before = guard.status()
    assert before["issuer"] == ISSUER
    assert before["jwks"]["keys"] == 0
    with TestClient(guard) as client:
        assert client.get("/me", headers=bearer(idp.token())).status_code == 200
    after = guard.status()
    assert sorted(after["jwks"]["kids"]) == ["ec-1", "ed-1", "rsa-1"]
    assert after["jwks"]["fresh"] is True
    assert after["verified_cache_entries"] == 1
    assert guard.ready() is True
    json.dumps(after)  # a health endpoint can serve it as is


def test_guard_can_wrap_an_app_directly(idp: Issuer, clock: ManualClock) -> None:
    """``TokenGuard(app, ...)`` without add_middleware reads the wrapped app's routes."""
    _, guard = lifespan_app(clock, [])
    client = TestClient(guard)
    assert client.get("/health").status_code == 200
    assert client.get("/photos", headers=bearer(idp.token(scope="x"))).status_code == 403


def test_guard_finds_routes_through_other_middleware(idp: Issuer, clock: ManualClock) -> None:
    """A guard wrapping another middleware still reads the routes of the app below it."""
    inner = Starlette(routes=ROUTES)
    wrapped = CORSMiddleware(inner, allow_origins=["https://app.example"])
    client = TestClient(TokenGuard(wrapped, issuer=ISSUER, audience=AUDIENCE, clock=clock))
    assert client.get("/health").status_code == 200
    assert client.get("/photos", headers=bearer(idp.token(scope="x"))).status_code == 403


def test_scope_carries_the_guard(idp: Issuer, clock: ManualClock) -> None:
    """The guard puts itself in the scope so adapters (FastAPI dependencies) find its realm."""
    seen: dict[str, Any] = {}

    @public
    async def endpoint(request: Request) -> Response:
        seen["guard"] = request.scope.get("tokenguard")
        return Response("ok")

    TestClient(make_app(clock, [Route("/x", endpoint)], realm="r")).get("/x")
    assert isinstance(seen["guard"], TokenGuard)
    assert seen["guard"].realm == "r"


def test_an_endpoint_raising_an_auth_error_gets_the_guards_refusal(idp: Issuer, clock: ManualClock) -> None:
    """An endpoint may refuse by raising ``InsufficientScope``: the guard renders it with the one renderer."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from tokenguard import InsufficientScope

    async def owner_only(request: Request) -> PlainTextResponse:
        if request.path_params["owner"] != request.user.identity:
            raise InsufficientScope(("admin",), "Only the owner may read this.")
        return PlainTextResponse("yours")

    app = Starlette(routes=[Route("/things/{owner}", owner_only)])
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    client = TestClient(app)
    token = {"Authorization": f"Bearer {idp.token(sub='alice')}"}
    assert client.get("/things/alice", headers=token).text == "yours"
    refused = client.get("/things/bob", headers=token)
    assert refused.status_code == 403
    assert refused.json() == {
        "error": "insufficient_scope",
        "error_description": "Only the owner may read this.",
        "scope": "admin",
    }
    assert refused.headers["cache-control"] == "no-store"
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
