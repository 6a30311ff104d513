"""TokenGuard on FastAPI apps, and ``tokenguard.fastapi``'s dependencies (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Security
from fastapi.testclient import TestClient
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse

from conftest import AUDIENCE, ISSUER, Issuer, dpop_challenge
from tokenguard import AccessToken, ConfigurationError, TokenGuard, public, require_any_scope, require_scopes
from tokenguard.events import DecisionEvent
from tokenguard.fastapi import bearer_scheme, current_token, require, scopes
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)

REALM = AUDIENCE


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wire_form(response: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A refusal as the client receives it, with its ``error_description`` (the only text that may
    differ between two refusals of one kind) blanked in the body and the challenge.

    Headers keep their order and byte values; ``content-length`` is checked against the body, then
    dropped (it follows the description's length).
    """
    body = json.loads(response.content)
    assert list(body)[:2] == (["error", "error_description"] if "error" in body else ["error_description"])
    body["error_description"] = "..."
    headers: list[tuple[bytes, bytes]] = []
    for name, value in response.headers.raw:
        if name.lower() == b"content-length":
            assert int(value) == len(response.content)
            continue
        if name.lower() == b"www-authenticate":
            start = value.find(b'error_description="')
            if start >= 0:
                end = value.index(b'"', start + len(b'error_description="'))
                value = value[:start] + b'error_description="..."' + value[end + 1 :]
        headers.append((name.lower(), value))
    return response.status_code, headers, json.dumps(body, separators=(",", ":")).encode()


def pagination(limit: int = Query(10, le=100)) -> dict[str, int]:
    return {"limit": limit}


def build_app() -> FastAPI:
    app = FastAPI()

    @require_scopes("read:photos")  # above the route decorator
    @app.get("/above/{photo_id}")
    async def above(photo_id: int, q: str = "none") -> dict[str, Any]:
        return {"photo_id": photo_id, "q": q}

    @app.get("/below/{photo_id}")
    @require_scopes("read:photos")  # below the route decorator
    async def below(photo_id: int, page: Annotated[dict[str, int], Depends(pagination)]) -> dict[str, Any]:
        return {"photo_id": photo_id, **page}

    @app.post("/any")
    @require_any_scope("write:photos", "admin")
    async def any_scope(request: Request) -> dict[str, Any]:
        return {"identity": request.user.identity, "scopes": request.auth.scopes}

    @app.get("/health")
    @public
    def health(request: Request) -> dict[str, bool]:  # a sync path function
        return {"authenticated": request.user.is_authenticated}

    @app.get("/plain")
    async def plain() -> dict[str, str]:
        return {"plain": "yes"}

    @app.get("/me")
    async def me(token: Annotated[AccessToken, Depends(current_token)]) -> dict[str, Any]:
        return {"identity": token.identity, "scopes": sorted(token.scopes), "source": token.source}

    @app.get("/maybe")
    @public
    async def maybe(token: Annotated[AccessToken, Depends(current_token)]) -> dict[str, str]:
        return {"identity": token.identity}

    @app.post("/photos")
    async def upload(token: Annotated[AccessToken, Security(scopes, scopes=["write:photos"])]) -> dict[str, str]:
        return {"uploader": token.identity}

    @app.delete("/photos/{photo_id}")
    async def delete(
        photo_id: int, token: Annotated[AccessToken, Security(require, scopes=["write:photos", "admin"])]
    ) -> dict[str, Any]:
        return {"deleted": photo_id}

    return app


def guarded(app: Any, clock: ManualClock, **options: Any) -> TestClient:
    app.add_middleware(TokenGuard, issuer=ISSUER, audience=AUDIENCE, clock=clock, **options)
    return TestClient(app)


@pytest.fixture
def client(idp: Issuer, clock: ManualClock) -> TestClient:
    return guarded(build_app(), clock)


# -- decorator order and FastAPI's signature handling ------------------------------------------------


@pytest.mark.parametrize("where", ["above", "below"])
def test_require_scopes_in_either_order(client: TestClient, idp: Issuer, where: str) -> None:
    """@require_scopes above or below @app.get guards the route: 401, 403, then 200."""
    assert client.get(f"/{where}/1").status_code == 401
    assert client.get(f"/{where}/1", headers=bearer(idp.token(scope="other"))).status_code == 403
    assert client.get(f"/{where}/1", headers=bearer(idp.token())).status_code == 200


def test_fastapi_sees_the_original_signature(client: TestClient, idp: Issuer) -> None:
    """Path params, query params and Depends work on decorated path functions (nothing wrapped)."""
    headers = bearer(idp.token())
    assert client.get("/above/5", params={"q": "cats"}, headers=headers).json() == {"photo_id": 5, "q": "cats"}
    assert client.get("/below/6", params={"limit": 3}, headers=headers).json() == {"photo_id": 6, "limit": 3}
    assert client.get("/below/6", params={"limit": 1000}, headers=headers).status_code == 422
    assert client.get("/above/not-an-int", headers=headers).status_code == 422


def test_openapi_shows_the_original_parameters(client: TestClient) -> None:
    """The generated OpenAPI document lists the real parameters of decorated functions."""
    document = client.get("/openapi.json").json()
    above = {p["name"] for p in document["paths"]["/above/{photo_id}"]["get"]["parameters"]}
    below = {p["name"] for p in document["paths"]["/below/{photo_id}"]["get"]["parameters"]}
    assert above == {"photo_id", "q"}
    assert below == {"photo_id", "limit"}


def test_require_any_scope_and_request_auth(client: TestClient, idp: Issuer) -> None:
    """request.user / request.auth are there for FastAPI path functions too."""
    response = client.post("/any", headers=bearer(idp.token(scope="admin", sub="carol")))
    assert response.json() == {"identity": "carol", "scopes": ["admin"]}
    assert client.post("/any", headers=bearer(idp.token(scope="read:photos"))).status_code == 403


def test_public_sync_path_function(client: TestClient) -> None:
    """@public works on a sync path function, with an unauthenticated user."""
    assert client.get("/health").json() == {"authenticated": False}


def test_undecorated_fastapi_route_is_guarded(client: TestClient, idp: Issuer) -> None:
    """Secure by default on FastAPI too."""
    assert client.get("/plain").status_code == 401
    assert client.get("/plain", headers=bearer(idp.token(scope=""))).json() == {"plain": "yes"}


def test_functools_wraps_wrapper_on_fastapi(idp: Issuer, clock: ManualClock) -> None:
    """A functools.wraps wrapper between the mark and @app.get keeps both the mark and the signature."""
    app = FastAPI()

    def audited(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await func(*args, **kwargs)

        return wrapper

    @app.get("/wrapped/{n}")
    @audited
    @require_scopes("admin")
    async def wrapped(n: int) -> dict[str, int]:
        return {"n": n}

    client = guarded(app, clock)
    assert client.get("/wrapped/3", headers=bearer(idp.token(scope="x"))).status_code == 403
    assert client.get("/wrapped/3", headers=bearer(idp.token(scope="admin"))).json() == {"n": 3}


def test_class_based_endpoint_in_fastapi(idp: Issuer, clock: ManualClock) -> None:
    """A Starlette HTTPEndpoint added to a FastAPI app keeps its per-method marks."""

    class Photos(HTTPEndpoint):
        @public
        async def get(self, request: Request) -> JSONResponse:
            return JSONResponse({"list": []})

        @require_scopes("write:photos")
        async def put(self, request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

    app = FastAPI()
    app.add_route("/photos", Photos)
    client = guarded(app, clock)
    assert client.get("/photos").status_code == 200
    assert client.put("/photos", headers=bearer(idp.token())).status_code == 403
    assert client.put("/photos", headers=bearer(idp.token(scope="write:photos"))).status_code == 200


def test_marks_on_router_path_functions_in_either_order(idp: Issuer, clock: ManualClock) -> None:
    """Marks above @router.get work for routes of an included router too."""
    router = APIRouter()

    @require_scopes("admin")
    @router.get("/x")
    async def x() -> dict[str, str]:
        return {"x": "y"}

    @public
    @router.get("/y")
    async def y() -> dict[str, str]:
        return {"y": "z"}

    app = FastAPI()
    app.include_router(router, prefix="/r")
    client = guarded(app, clock)
    assert client.get("/r/y").status_code == 200
    assert client.get("/r/x", headers=bearer(idp.token(scope="x"))).status_code == 403


# -- tokenguard.fastapi dependencies ----------------------------------------------------------------------


def test_current_token_returns_the_access_token(client: TestClient, idp: Issuer) -> None:
    """Depends(current_token) hands the validated AccessToken to the path function."""
    body = client.get("/me", headers=bearer(idp.token(sub="dave", scope="b a"))).json()
    assert body == {"identity": "dave", "scopes": ["a", "b"], "source": "jwt"}


def test_current_token_on_a_public_route_is_401(client: TestClient) -> None:
    """On a route the guard left open, current_token has no token: 401 with a bare challenge.

    Bare means no ``error=``; the RFC 9728 §5.1 pointer to the resource metadata is still there.
    """
    response = client.get("/maybe")
    assert response.status_code == 401
    metadata = f"{REALM}/.well-known/oauth-protected-resource"
    expected = f'Bearer realm="{REALM}", resource_metadata="{metadata}"' + dpop_challenge(REALM, metadata)
    assert response.headers["www-authenticate"] == expected
    assert response.headers["cache-control"] == "no-store"
    # The same refusal, byte for byte, as the guard's own for a request without a token.
    assert response.content == client.get("/plain").content
    assert response.headers.raw == client.get("/plain").headers.raw


def test_security_scopes_grants_with_every_scope(client: TestClient, idp: Issuer) -> None:
    """Security(scopes, scopes=[...]) lets a token with the scopes through."""
    response = client.post("/photos", headers=bearer(idp.token(scope="write:photos")))
    assert response.json() == {"uploader": "alice"}


def test_security_scopes_missing_is_403_with_challenge(client: TestClient, idp: Issuer) -> None:
    """A missing scope is 403 with WWW-Authenticate insufficient_scope naming the scopes."""
    response = client.post("/photos", headers=bearer(idp.token(scope="read:photos")))
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer realm="{REALM}"')
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="write:photos"' in challenge
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "error": "insufficient_scope",
        "error_description": "The access token does not grant the scope this resource requires.",
        "scope": "write:photos",
    }


def test_security_refusal_is_the_guards_refusal(idp: Issuer, clock: ManualClock) -> None:
    """One renderer: a 403 from Security(scopes, ...) is, on the wire, the 403 of @require_scopes on the
    same app (status, body members and their order, every header and its order; only the description
    text may differ), and the guard reports it as its own decision."""
    app = FastAPI()

    @app.post("/decorated")
    @require_scopes("write:photos")
    async def decorated() -> dict[str, str]:
        return {"ok": "yes"}

    @app.post("/dependency")
    async def dependency(token: Annotated[AccessToken, Security(scopes, scopes=["write:photos"])]) -> dict[str, str]:
        return {"ok": "yes"}

    events: list[DecisionEvent] = []
    client = guarded(app, clock, on_decision=events.append)
    headers = bearer(idp.token(scope="read:photos"))
    by_guard = client.post("/decorated", headers=headers)
    by_dependency = client.post("/dependency", headers=headers)
    assert by_guard.status_code == by_dependency.status_code == 403
    assert wire_form(by_dependency) == wire_form(by_guard)
    assert dict(wire_form(by_dependency)[1])[b"cache-control"] == b"no-store"
    assert json.loads(by_dependency.content)["scope"] == "write:photos"
    refused = events[-1]
    assert (refused.outcome, refused.reason, refused.status, refused.route) == (
        "deny",
        "insufficient_scope",
        403,
        "/dependency",
    )
    # Granted, the dependency hands the token on as before.
    assert client.post("/dependency", headers=bearer(idp.token(scope="write:photos"))).json() == {"ok": "yes"}


def test_require_alias_needs_every_scope(client: TestClient, idp: Issuer) -> None:
    """``require`` is ``scopes``: all listed scopes are needed."""
    assert client.delete("/photos/1", headers=bearer(idp.token(scope="write:photos"))).status_code == 403
    ok = client.delete("/photos/1", headers=bearer(idp.token(scope="write:photos admin")))
    assert ok.json() == {"deleted": 1}
    refused = client.delete("/photos/1", headers=bearer(idp.token(scope="admin")))
    assert 'scope="admin write:photos"' in refused.headers["www-authenticate"]


def test_security_scopes_accumulate_from_router_dependencies(idp: Issuer, clock: ManualClock) -> None:
    """Scopes from a router-level Security and a route-level one are both required."""
    router = APIRouter(dependencies=[Security(scopes, scopes=["tenant"])])

    @router.get("/reports")
    async def reports(token: Annotated[AccessToken, Security(scopes, scopes=["reports"])]) -> dict[str, str]:
        return {"ok": "yes"}

    app = FastAPI()
    app.include_router(router)
    client = guarded(app, clock)
    assert client.get("/reports", headers=bearer(idp.token(scope="reports"))).status_code == 403
    assert client.get("/reports", headers=bearer(idp.token(scope="tenant"))).status_code == 403
    assert client.get("/reports", headers=bearer(idp.token(scope="tenant reports"))).status_code == 200


def test_forged_token_never_reaches_the_dependency(client: TestClient, idp: Issuer) -> None:
    """The middleware refuses a bad token first: 401 invalid_token, never the dependency's 403."""
    response = client.post("/photos", headers=bearer(idp.token(aud="https://other.example", scope="x")))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [("GET", "/me", "/me"), ("POST", "/photos", "/photos"), ("DELETE", "/photos/1", "/photos/{photo_id}")],
)
def test_dependencies_without_the_guard_fail_and_say_why(
    idp: Issuer, caplog: pytest.LogCaptureFixture, method: str, path: str, template: str
) -> None:
    """Without the middleware nothing was validated: the dependencies never trust the header. The
    refusal they raise has no guard to render it, so it is a 500, and an ERROR names the cause."""
    client = TestClient(build_app(), raise_server_exceptions=False)
    token = idp.token(scope="write:photos admin")
    with caplog.at_level(logging.ERROR, logger="tokenguard"):
        response = client.request(method, path, headers=bearer(token))
    assert response.status_code == 500
    assert "alice" not in response.text
    assert token not in response.text
    assert "www-authenticate" not in response.headers
    errors = [record for record in caplog.records if record.name == "tokenguard" and record.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "TokenGuard middleware is missing" in message
    assert f"route {template} " in message
    assert token not in message


def test_in_a_test_the_exception_itself_names_the_missing_guard(idp: Issuer) -> None:
    """A test client that re-raises server errors shows why at once, not a bare refusal."""
    client = TestClient(build_app())  # raise_server_exceptions=True, as tests usually run
    with pytest.raises(ConfigurationError, match=r"TokenGuard middleware is missing: route /me .*add_middleware"):
        client.get("/me", headers=bearer(idp.token()))


def test_no_missing_guard_error_with_the_guard(
    client: TestClient, idp: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    """With the guard, a dependency's refusal is an ordinary refusal: nothing is logged as missing."""
    with caplog.at_level(logging.ERROR, logger="tokenguard"):
        assert client.get("/maybe").status_code == 401
        assert client.post("/photos", headers=bearer(idp.token(scope="read:photos"))).status_code == 403
    assert "middleware is missing" not in caplog.text


# -- OpenAPI ----------------------------------------------------------------------------------------------


def test_openapi_generation_works(client: TestClient) -> None:
    """FastAPI's OpenAPI document is generated without error and lists every route."""
    response = client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/above/{photo_id}", "/below/{photo_id}", "/me", "/photos", "/photos/{photo_id}"} <= set(paths)


def test_openapi_declares_the_bearer_scheme_and_scopes(client: TestClient) -> None:
    """Routes using the dependencies carry the bearer security scheme; Security lists its scopes."""
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes[bearer_scheme.scheme_name] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": bearer_scheme.model.description,
    }
    assert document["paths"]["/me"]["get"]["security"] == [{bearer_scheme.scheme_name: []}]
    assert document["paths"]["/photos"]["post"]["security"] == [{bearer_scheme.scheme_name: ["write:photos"]}]
    assert "security" not in document["paths"]["/plain"]["get"]


def test_bearer_scheme_does_not_refuse_on_its_own(idp: Issuer, clock: ManualClock) -> None:
    """The scheme is documentation only: on a public route with a Basic header the path function still runs."""
    app = FastAPI()

    @app.get("/open")
    @public
    async def open_route(creds: Annotated[Any, Depends(bearer_scheme)]) -> dict[str, bool]:
        return {"none": creds is None}

    client = guarded(app, clock)
    assert client.get("/open", headers={"Authorization": "Basic YTpi"}).json() == {"none": True}
