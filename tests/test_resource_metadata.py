"""RFC 9728 protected resource metadata (issue 7, item 1), through real apps and the DevIdP.

The middleware serves ``/.well-known/oauth-protected-resource`` (path-inserted for a resource
with a path, §3.1) without a token: ``resource`` (the audience or ``resource=``), the issuers as
``authorization_servers``, ``scopes_supported`` derived from the routes and rules, ``["header"]``
bearer methods, and the user's own members. Every 400/401/403 challenge names its URL (§5.1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Security
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from conftest import dpop_challenge
from tokenguard import (
    AccessToken,
    ConfigurationError,
    Rule,
    TokenGuard,
    public,
    require_any_scope,
    require_auth_level,
    require_authorization_details,
    require_scopes,
)
from tokenguard.events import DecisionEvent
from tokenguard.fastapi import current_token, scopes
from tokenguard.resource_metadata import ResourceMetadata, metadata_url
from tokenguard.testing import RESOURCE_CLIENT_ID, RESOURCE_CLIENT_SECRET, DevIdP

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def endpoint() -> Callable[[Request], Any]:
    """A fresh endpoint function (marks are attributes: tests never share a marked function)."""

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return ok


def guard(app: Any, dev_idp: DevIdP, **options: Any) -> TestClient:
    settings: dict[str, Any] = {
        "issuer": dev_idp.issuer,
        "audience": dev_idp.default_audience,
        "http_client": dev_idp.http_client,
        "client_id": RESOURCE_CLIENT_ID,
        "client_secret": RESOURCE_CLIENT_SECRET,
        "clock": dev_idp.clock,
        **options,
    }
    app.add_middleware(TokenGuard, **settings)
    return TestClient(app)


def photos_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/photos", require_scopes("read:photos")(endpoint())),
            Route("/photos/upload", require_any_scope("write:photos", "admin")(endpoint()), methods=["POST"]),
            Route("/transfers", require_authorization_details("payment_initiation")(endpoint()), methods=["POST"]),
            Route("/me", endpoint()),
            Route("/health", public(endpoint())),
            Mount("/static", StaticFiles(directory=".", check_dir=False)),
        ]
    )


# -- the document ------------------------------------------------------------------------------------


def test_document_describes_the_resource_without_a_token(dev_idp: DevIdP) -> None:
    """GET, no token: resource, authorization_servers, scopes and RAR types from the routes and rules, header only."""
    client = guard(photos_app(), dev_idp, rules=[Rule("/static", scopes="read:static")])
    response = client.get(WELL_KNOWN)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "public, max-age=3600"
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json() == {
        "resource": dev_idp.default_audience,
        "authorization_servers": [dev_idp.issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["admin", "read:photos", "read:static", "write:photos"],
        "authorization_details_types_supported": ["payment_initiation"],
    }


def test_scopes_supported_tracks_the_routes(dev_idp: DevIdP) -> None:
    """A route added after the first request shows up in the next document; no scopes, no member."""
    app = Starlette(routes=[Route("/me", endpoint())])
    client = guard(app, dev_idp)
    assert "scopes_supported" not in client.get(WELL_KNOWN).json()
    app.router.routes.append(Route("/reports", require_scopes("read:reports")(endpoint())))
    assert client.get(WELL_KNOWN).json()["scopes_supported"] == ["read:reports"]


def test_scopes_of_fastapi_routes_and_included_routers_are_listed(dev_idp: DevIdP) -> None:
    """FastAPI path functions (either decorator order) and included routers contribute their scopes."""
    app = FastAPI()
    router = APIRouter()

    @router.get("/items")
    @require_scopes("read:items")
    async def items() -> list[str]:
        return []

    @require_scopes("write:things")
    @app.post("/things")
    async def things() -> dict[str, str]:
        return {}

    app.include_router(router, prefix="/v1")
    client = guard(app, dev_idp)
    assert client.get(WELL_KNOWN).json()["scopes_supported"] == ["read:items", "write:things"]
    assert client.get("/docs").status_code == 200  # FastAPI's own docs stay public, as before


def editor(token: Annotated[AccessToken, Security(scopes, scopes=["edit:albums"])]) -> AccessToken:
    """A dependency of its own that needs a scope (module level: FastAPI resolves annotations by name)."""
    return token


def test_scopes_of_fastapi_security_dependencies_are_listed(dev_idp: DevIdP) -> None:
    """``Security(scopes, scopes=[...])`` counts as a declaration, nested ones with their parents' scopes,
    and the scopes listed are exactly those the OpenAPI document gives the same routes."""
    app = FastAPI()
    router = APIRouter()

    @app.delete("/photos/{photo_id}")
    async def delete(photo_id: int, token: Annotated[AccessToken, Security(scopes, scopes=["write:photos"])]) -> None:
        return None

    @router.post("/albums")
    async def albums(token: Annotated[AccessToken, Security(editor, scopes=["write:albums"])]) -> None:
        return None

    @app.get("/me")
    async def me(token: Annotated[AccessToken, Depends(current_token)]) -> None:
        return None

    app.include_router(router, prefix="/v1")
    client = guard(app, dev_idp)
    listed = client.get(WELL_KNOWN).json()["scopes_supported"]
    assert listed == ["edit:albums", "write:albums", "write:photos"]
    openapi = client.get("/openapi.json").json()
    named = {
        name
        for path in openapi["paths"].values()
        for operation in path.values()
        for requirement in operation.get("security", [])
        for names in requirement.values()
        for name in names
    }
    assert named == set(listed)


def test_head_is_answered_and_other_methods_are_405(dev_idp: DevIdP) -> None:
    """HEAD gets the headers without a body; POST gets 405 with ``Allow``."""
    client = guard(photos_app(), dev_idp)
    head = client.head(WELL_KNOWN)
    assert head.status_code == 200
    assert head.content == b""
    post = client.post(WELL_KNOWN)
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"


def test_user_members_are_added(dev_idp: DevIdP) -> None:
    """``resource_metadata={...}`` adds members such as resource_name and resource_documentation."""
    extra = {"resource_name": "Photos", "resource_documentation": "https://docs.example.com/photos"}
    document = guard(photos_app(), dev_idp, resource_metadata=extra).get(WELL_KNOWN).json()
    assert document["resource_name"] == "Photos"
    assert document["resource_documentation"] == "https://docs.example.com/photos"
    assert document["resource"] == dev_idp.default_audience


def test_user_may_replace_the_derived_scope_list(dev_idp: DevIdP) -> None:
    """An explicit scopes_supported replaces the derived one (e.g. scopes only FastAPI dependencies name)."""
    client = guard(photos_app(), dev_idp, resource_metadata={"scopes_supported": ["a", "b"]})
    assert client.get(WELL_KNOWN).json()["scopes_supported"] == ["a", "b"]


def test_several_issuers_are_all_authorization_servers(dev_idp: DevIdP) -> None:
    """With ``issuer=[...]`` every issuer is listed, in the configured order."""
    second = "https://login.example.com"
    client = guard(photos_app(), dev_idp, issuer=[dev_idp.issuer, second])
    assert client.get(WELL_KNOWN).json()["authorization_servers"] == [dev_idp.issuer, second]


def test_serving_the_document_costs_no_issuer_call(dev_idp: DevIdP) -> None:
    """The metadata is built from configuration and routes: nothing is fetched to serve it."""
    events: list[DecisionEvent] = []
    client = guard(photos_app(), dev_idp, on_decision=events.append)
    dev_idp.clear_events()
    assert client.get(WELL_KNOWN).status_code == 200
    assert guard_status(client)["jwks"]["fetches"] == 0
    assert [(e.outcome, e.reason, e.status, e.route) for e in events] == [("allow", "public", 200, WELL_KNOWN)]


def guard_status(client: TestClient) -> dict[str, Any]:
    """The guard's status, found through the app's built middleware stack."""
    app: Any = client.app
    stack = app.middleware_stack
    while stack is not None and not isinstance(stack, TokenGuard):
        stack = getattr(stack, "app", None)
    assert isinstance(stack, TokenGuard)
    return stack.status()


# -- path-inserted form (§3.1) and the resource identifier ----------------------------------------------


@pytest.mark.parametrize(
    ("resource", "url"),
    [
        ("https://api.example.com", "https://api.example.com/.well-known/oauth-protected-resource"),
        ("https://api.example.com/", "https://api.example.com/.well-known/oauth-protected-resource"),
        ("https://api.example.com/v1", "https://api.example.com/.well-known/oauth-protected-resource/v1"),
        ("https://api.example.com/v1/", "https://api.example.com/.well-known/oauth-protected-resource/v1"),
        ("https://api.example.com:8443/a/b", "https://api.example.com:8443/.well-known/oauth-protected-resource/a/b"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/.well-known/oauth-protected-resource"),
    ],
)
def test_metadata_url_inserts_the_well_known_path_after_the_host(resource: str, url: str) -> None:
    """RFC 9728 §3.1: the well-known string goes between host and path; a terminating slash goes first."""
    assert metadata_url(resource) == url


def test_resource_with_a_path_is_served_at_the_path_inserted_url(dev_idp: DevIdP) -> None:
    """Audience https://api.example.com/v1: served at /.well-known/oauth-protected-resource/v1 (and the bare path)."""
    app = photos_app()
    client = guard(app, dev_idp, audience="https://api.example.com/v1")
    inserted = client.get(f"{WELL_KNOWN}/v1")
    assert inserted.status_code == 200
    assert inserted.json()["resource"] == "https://api.example.com/v1"
    assert client.get(WELL_KNOWN).json() == inserted.json()
    challenge = client.get("/me").headers["www-authenticate"]
    assert challenge.endswith('resource_metadata="https://api.example.com/.well-known/oauth-protected-resource/v1"')


def test_first_https_audience_is_the_resource(dev_idp: DevIdP) -> None:
    """Audiences ["photos-api", "https://photos.example"]: the URL one is the resource identifier."""
    client = guard(photos_app(), dev_idp, audience=["photos-api", "https://photos.example"])
    assert client.get(WELL_KNOWN).json()["resource"] == "https://photos.example"


def test_explicit_resource_names_a_resource_whose_audience_is_not_a_url(dev_idp: DevIdP) -> None:
    """``resource=`` gives the identifier when tokens carry an opaque audience; the challenge follows it."""
    client = guard(photos_app(), dev_idp, audience="photos-api", resource="https://photos.example/api")
    assert client.get(f"{WELL_KNOWN}/api").json()["resource"] == "https://photos.example/api"
    assert (
        'resource_metadata="https://photos.example/.well-known/oauth-protected-resource/api"'
        in (client.get("/me").headers["www-authenticate"])
    )


def test_no_url_audience_serves_nothing_and_logs_why(dev_idp: DevIdP, caplog: pytest.LogCaptureFixture) -> None:
    """Audience "photos-api" and no ``resource=``: no document, no resource_metadata, and an INFO log saying why."""
    with caplog.at_level(logging.INFO, logger="tokenguard"):
        client = guard(photos_app(), dev_idp, audience="photos-api")
        response = client.get(WELL_KNOWN)
    assert response.status_code == 401  # an unmatched path under the default policy, like any other
    assert "resource_metadata" not in response.headers["www-authenticate"]
    assert any(
        "resource metadata is not served" in r.getMessage() and "resource=" in r.getMessage() for r in caplog.records
    )


def test_feature_can_be_turned_off(dev_idp: DevIdP) -> None:
    """``resource_metadata=False``: the path is an ordinary path and challenges carry no resource_metadata."""

    async def own(request: Request) -> PlainTextResponse:
        return PlainTextResponse("mine")

    app = photos_app()
    app.router.routes.append(Route(WELL_KNOWN, public(own)))
    client = guard(app, dev_idp, resource_metadata=False)
    assert client.get(WELL_KNOWN).text == "mine"
    realm = dev_idp.default_audience
    assert client.get("/me").headers["www-authenticate"] == f'Bearer realm="{realm}"' + dpop_challenge(realm)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"resource_metadata": {"resource": "https://x.example"}}, "resource="),
        ({"resource_metadata": {"authorization_servers": ["https://x.example"]}}, "issuer"),
        ({"resource_metadata": {"bearer_methods_supported": ["header", "body"]}}, "header"),
        ({"resource_metadata": {"resource_name": object()}}, "JSON"),
        ({"resource_metadata": {"": "x"}}, "keys"),
        ({"resource_metadata": "yes"}, "resource_metadata"),
        ({"resource": "http://photos.example"}, "resource"),
        ({"resource": "https://photos.example?tenant=a"}, "query"),
        ({"resource": "https://photos.example#top"}, "fragment"),
        ({"resource": "photos"}, "resource"),
    ],
)
def test_bad_options_are_refused_at_construction(dev_idp: DevIdP, options: dict[str, Any], message: str) -> None:
    """Members tokenguard derives, non-JSON values, and resource identifiers RFC 9728 cannot use are refused."""
    with pytest.raises(ConfigurationError, match=message):
        TokenGuard(photos_app(), issuer=dev_idp.issuer, audience=dev_idp.default_audience, **options)


def test_document_object_builds_the_same_members() -> None:
    """``ResourceMetadata`` is framework-free: the document is a plain dict; paths include the bare form."""
    metadata = ResourceMetadata("https://api.example.com/v2", ("https://idp.example.com",), {"resource_name": "X"})
    assert metadata.url == "https://api.example.com/.well-known/oauth-protected-resource/v2"
    assert metadata.paths == (f"{WELL_KNOWN}/v2", WELL_KNOWN)
    assert metadata.document(["b", "a", "a"]) == {
        "resource": "https://api.example.com/v2",
        "authorization_servers": ["https://idp.example.com"],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["a", "b"],
        "resource_name": "X",
    }


# -- resource_metadata in every challenge (§5.1) -----------------------------------------------------------


def challenge_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/photos", require_scopes("read:photos")(endpoint())),
            Route("/mfa", require_auth_level(acr_values=["urn:mfa"])(endpoint())),
            Route("/pay", require_authorization_details("payment_initiation")(endpoint())),
        ]
    )


@pytest.mark.parametrize(
    ("path", "headers", "status", "error"),
    [
        ("/photos", {}, 401, None),
        ("/photos", {"Authorization": "Bearer"}, 400, "invalid_request"),
        ("/photos", {"Authorization": "Bearer not-a-jwt.x"}, 401, "invalid_token"),
        ("/photos", "no-scope", 403, "insufficient_scope"),
        ("/mfa", "no-scope", 401, "insufficient_user_authentication"),
        ("/pay", "no-scope", 403, "insufficient_scope"),
    ],
    ids=["missing", "malformed", "invalid", "scope", "step-up", "details"],
)
def test_every_refusal_names_the_metadata(
    dev_idp: DevIdP, path: str, headers: Any, status: int, error: str | None
) -> None:
    """400, 401 (bare or not) and 403 all carry ``resource_metadata="<url>"`` as their last parameter."""
    if headers == "no-scope":
        headers = bearer(dev_idp.issue_token(scopes=["other"]))
    response = guard(challenge_app(), dev_idp).get(path, headers=headers)
    assert response.status_code == status
    challenge = response.headers["www-authenticate"]
    assert challenge.endswith(f'resource_metadata="{dev_idp.default_audience}{WELL_KNOWN}"')
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)


def test_websocket_denial_names_the_metadata(dev_idp: DevIdP) -> None:
    """A refused WebSocket handshake carries the same challenge."""

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()  # pragma: no cover - never reached without a token

    client = guard(Starlette(routes=[WebSocketRoute("/ws", socket)]), dev_idp)
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/ws"):
        pass  # pragma: no cover - the connection is refused
    assert f'resource_metadata="{dev_idp.default_audience}{WELL_KNOWN}"' in denied.value.headers["www-authenticate"]


def test_guard_exposes_the_url_for_other_adapters(dev_idp: DevIdP) -> None:
    """``TokenGuard.resource_metadata_url`` is the URL challenges use (``None`` when turned off)."""
    on = TokenGuard(photos_app(), issuer=dev_idp.issuer, audience="https://photos.example")
    off = TokenGuard(photos_app(), issuer=dev_idp.issuer, audience="https://photos.example", resource_metadata=False)
    assert on.resource_metadata_url == f"https://photos.example{WELL_KNOWN}"
    assert off.resource_metadata_url is None
