"""``tokenguard.fastapi.install_openapi``: the OAuth 2.0 security scheme in FastAPI's OpenAPI document.

Real FastAPI apps guarded by ``TokenGuard``, against the in-process DevIdP (real RFC 8414 metadata)
or an issuer served through respx; the document is read from ``/openapi.json`` as Swagger UI reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import pytest
import respx
from fastapi import APIRouter, Depends, FastAPI, Security
from fastapi.testclient import TestClient

from tokenguard import AccessToken, ConfigurationError, Rule, public, require_any_scope, require_scopes, sensitive
from tokenguard.fastapi import current_token, install_openapi, require, scopes
from tokenguard.testing import DevIdP

pytestmark = pytest.mark.respx(assert_all_called=False)

GuardedApp = Callable[..., Any]
LOGIN = "https://login.example.org"
LOGIN_METADATA = f"{LOGIN}/.well-known/oauth-authorization-server"
LOGIN_OPENID = f"{LOGIN}/.well-known/openid-configuration"


def build_app() -> FastAPI:
    """Every way a route states its policy: decorators, Security, a router's dependencies, none."""
    app = FastAPI(title="Photos")

    @app.get("/photos")
    @require_scopes("read:photos")
    async def list_photos() -> list[str]:
        return []

    @require_scopes("write:photos", "moderate")  # above the route decorator
    @app.delete("/photos/{photo_id}")
    async def delete_photo(photo_id: int) -> dict[str, int]:
        return {"deleted": photo_id}

    @app.post("/photos")
    async def upload(token: Annotated[AccessToken, Security(scopes, scopes=["write:photos"])]) -> dict[str, str]:
        return {"by": token.identity}

    @app.put("/albums/{album_id}")
    @require_scopes("write:photos")
    async def rename(album_id: int, token: Annotated[AccessToken, Security(require, scopes=["albums"])]) -> int:
        return album_id

    @app.get("/shared")
    @require_any_scope("read:photos", "admin")
    @require_scopes("share")
    async def shared() -> list[str]:
        return []

    @app.post("/transfers")
    @sensitive
    @require_scopes("write:transfers")
    async def transfer() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/me")
    async def me(token: Annotated[AccessToken, Depends(current_token)]) -> str:
        return token.identity

    @app.get("/plain")
    async def plain() -> str:
        return "plain"

    @app.get("/health")
    @public
    async def health() -> str:
        return "ok"

    @app.get("/hidden", include_in_schema=False)
    @require_scopes("secret")
    async def hidden() -> str:
        return "hidden"

    admin = APIRouter(prefix="/admin", dependencies=[Security(require, scopes=["admin"])])

    @admin.get("/users")
    @require_scopes("read:users")
    async def users() -> list[str]:
        return []

    app.include_router(admin)
    return app


def document_of(app: FastAPI) -> dict[str, Any]:
    with TestClient(app) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def security_of(document: dict[str, Any], path: str, method: str = "get") -> Any:
    return document["paths"][path][method].get("security")


def oauth(*alternatives: list[str]) -> list[dict[str, list[str]]]:
    """The security list of a guarded route: the OAuth2 alternatives, then a pasted bearer token."""
    return [*({"OAuth2": names} for names in alternatives), {"BearerToken": []}]


@pytest.fixture
def document(dev_idp: DevIdP, guarded_app: GuardedApp) -> dict[str, Any]:
    app = guarded_app(build_app())
    install_openapi(app, client_id="photos-docs", scope_descriptions={"read:photos": "See your photos"})
    return document_of(app)


# -- the scheme --------------------------------------------------------------------------------------


def test_the_oauth2_scheme_comes_from_the_issuers_metadata(document: dict[str, Any], dev_idp: DevIdP) -> None:
    """The authorization-code flow names the DevIdP's authorize and token endpoints (RFC 8414 metadata)."""
    scheme = document["components"]["securitySchemes"]["OAuth2"]
    assert scheme["type"] == "oauth2"
    flow = scheme["flows"]["authorizationCode"]
    assert flow["authorizationUrl"] == dev_idp.metadata()["authorization_endpoint"] == f"{dev_idp.issuer}/authorize"
    assert flow["tokenUrl"] == dev_idp.metadata()["token_endpoint"]
    assert list(scheme["flows"]) == ["authorizationCode"]


def test_the_flow_lists_every_scope_the_routes_declare(document: dict[str, Any]) -> None:
    """Decorators, Security(...) and router dependencies all feed the flow's scopes; descriptions apply."""
    declared = document["components"]["securitySchemes"]["OAuth2"]["flows"]["authorizationCode"]["scopes"]
    assert list(declared) == sorted(declared)
    assert set(declared) == {
        "admin",
        "albums",
        "moderate",
        "read:photos",
        "read:users",
        "share",
        "write:photos",
        "write:transfers",
    }
    assert declared["read:photos"] == "See your photos"
    assert "secret" not in declared  # a route left out of the document declares nothing there


def test_the_sign_in_scheme_comes_first_and_the_bearer_scheme_stays(document: dict[str, Any]) -> None:
    """Swagger UI's dialog starts with the sign-in; a token can still be pasted by hand."""
    schemes = document["components"]["securitySchemes"]
    assert list(schemes) == ["OAuth2", "BearerToken"]
    assert schemes["BearerToken"]["type"] == "http"
    assert schemes["BearerToken"]["scheme"] == "bearer"


# -- per-operation security ------------------------------------------------------------------------


def test_decorated_routes_list_their_scopes(document: dict[str, Any]) -> None:
    """@require_scopes in either order relative to @app.<method> gives the route's scopes."""
    assert security_of(document, "/photos") == oauth(["read:photos"])
    assert security_of(document, "/photos/{photo_id}", "delete") == oauth(["moderate", "write:photos"])
    assert security_of(document, "/transfers", "post") == oauth(["write:transfers"])


def test_security_dependencies_list_their_scopes(document: dict[str, Any]) -> None:
    """Security(scopes/require, scopes=[...]) adds its scopes, to the decorators' when both are there."""
    assert security_of(document, "/photos", "post") == oauth(["write:photos"])
    assert security_of(document, "/albums/{album_id}", "put") == oauth(["albums", "write:photos"])


def test_a_routers_security_dependency_reaches_its_routes(document: dict[str, Any]) -> None:
    """An included router's Security dependency and the route's own mark add up."""
    assert security_of(document, "/admin/users") == oauth(["admin", "read:users"])


def test_any_scope_becomes_one_alternative_per_choice(document: dict[str, Any]) -> None:
    """@require_any_scope(a, b) + @require_scopes(c): [a, c] or [b, c] (OpenAPI's "or" is the list)."""
    assert security_of(document, "/shared") == oauth(["admin", "share"], ["read:photos", "share"])


def test_routes_needing_only_a_token_list_no_scope(document: dict[str, Any]) -> None:
    """Undecorated routes (the default policy) and Depends(current_token) need a token, no scope."""
    assert security_of(document, "/plain") == oauth([])
    assert security_of(document, "/me") == oauth([])


def test_public_routes_carry_no_security(document: dict[str, Any]) -> None:
    """@public: no lock in Swagger UI, and no 401 documented."""
    operation = document["paths"]["/health"]["get"]
    assert "security" not in operation
    assert "401" not in operation["responses"]


def test_guarded_routes_document_the_guards_refusals(document: dict[str, Any]) -> None:
    """401 on every guarded route; 403 only where a scope is needed."""
    assert {"200", "401", "403"} <= set(document["paths"]["/photos"]["get"]["responses"])
    plain = document["paths"]["/plain"]["get"]["responses"]
    assert "401" in plain
    assert "403" not in plain


def test_routes_left_out_of_the_document_stay_out(document: dict[str, Any]) -> None:
    """include_in_schema=False routes are not added back."""
    assert "/hidden" not in document["paths"]


def test_fastapis_documentation_routes_stay_out_of_the_document(dev_idp: DevIdP, guarded_app: GuardedApp) -> None:
    """/openapi.json, /docs, its OAuth2 redirect page and /redoc are served without a token and are not
    operations of the document (FastAPI leaves them out; the policy resolution does not add them)."""
    app = guarded_app(build_app())
    install_openapi(app, client_id="photos-docs")
    with TestClient(app) as client:
        document = client.get("/openapi.json").json()
        for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
            assert client.get(path).status_code == 200, path
    # Exactly the app's own operations: no documentation route among them.
    assert set(document["paths"]) == {
        "/photos",
        "/photos/{photo_id}",
        "/albums/{album_id}",
        "/shared",
        "/transfers",
        "/me",
        "/plain",
        "/health",
        "/admin/users",
    }


def test_a_rule_limited_to_methods_decides_per_operation(dev_idp: DevIdP, guarded_app: GuardedApp) -> None:
    """The OpenAPI document asks the same question the guard asks, per method: a Rule for POST only
    gives its scopes to the POST operation, the GET one keeps the default."""
    app = FastAPI()

    @app.get("/notes")
    async def read_notes() -> list[str]:
        return []

    @app.post("/notes")
    async def write_notes() -> list[str]:
        return []

    app = guarded_app(app, rules=[Rule("/notes", methods="POST", scopes="write:notes")])
    install_openapi(app)
    document = document_of(app)
    assert security_of(document, "/notes") == oauth([])
    assert security_of(document, "/notes", "post") == oauth(["write:notes"])


def test_every_requirement_names_a_declared_scheme_and_scope(document: dict[str, Any]) -> None:
    """The document is consistent: each requirement's scheme exists, and its scopes are in the flow."""
    schemes = document["components"]["securitySchemes"]
    flow_scopes = set(schemes["OAuth2"]["flows"]["authorizationCode"]["scopes"])
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for requirement in operation.get("security", []):
                for name, needed in requirement.items():
                    assert name in schemes, (path, method, name)
                    assert set(needed) <= (flow_scopes if name == "OAuth2" else set()), (path, method)


def test_the_guards_default_and_rules_decide_for_undecorated_routes(dev_idp: DevIdP, guarded_app: GuardedApp) -> None:
    """default="public" opens undecorated routes; a Rule gives its scopes; marks still win."""
    app = guarded_app(build_app(), default="public", rules=[Rule("/me", scopes="profile")])
    install_openapi(app)
    document = document_of(app)
    assert security_of(document, "/plain") is None
    assert security_of(document, "/me") == oauth(["profile"])
    assert security_of(document, "/photos") == oauth(["read:photos"])
    assert "profile" in document["components"]["securitySchemes"]["OAuth2"]["flows"]["authorizationCode"]["scopes"]


def test_many_any_scope_groups_collapse_into_one_wide_requirement(dev_idp: DevIdP, guarded_app: GuardedApp) -> None:
    """Past 32 combinations, one requirement lists every scope involved (wider, never narrower)."""
    app = FastAPI()

    @app.get("/wide")
    @require_any_scope("a1", "a2", "a3", "a4")
    @require_any_scope("b1", "b2", "b3", "b4")
    @require_any_scope("c1", "c2", "c3")
    async def wide() -> str:
        return "wide"

    install_openapi(guarded_app(app))
    names = ["a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4", "c1", "c2", "c3"]
    assert security_of(document_of(app), "/wide") == oauth(names)


def test_redundant_alternatives_are_dropped(dev_idp: DevIdP, guarded_app: GuardedApp) -> None:
    """any(a, b) and any(b, c): [b] suffices, so [a, b] and [b, c] are not listed beside it."""
    app = FastAPI()

    @app.get("/overlap")
    @require_any_scope("a", "b")
    @require_any_scope("b", "c")
    async def overlap() -> str:
        return "overlap"

    install_openapi(guarded_app(app))
    assert security_of(document_of(app), "/overlap") == oauth(["b"], ["a", "c"])


def test_without_install_openapi_the_document_is_fastapis_own(dev_idp: DevIdP, guarded_app: GuardedApp) -> None:
    """Opt-in: an app that does not call install_openapi keeps FastAPI's bearer-only document."""
    document = document_of(guarded_app(build_app()))
    assert "OAuth2" not in document["components"]["securitySchemes"]
    assert security_of(document, "/photos") is None
    assert security_of(document, "/photos", "post") == [{"BearerToken": ["write:photos"]}]


# -- where the endpoints come from -------------------------------------------------------------------


def test_explicit_endpoints_need_no_issuer_and_no_network(respx_mock: respx.MockRouter) -> None:
    """authorization_url/token_url (and refresh_url) go in as given; app.openapi() works without a server."""
    app = build_app()
    install_openapi(
        app,
        authorization_url="https://login.example.org/oauth2/authorize",
        token_url="https://login.example.org/oauth2/token",
        refresh_url="https://login.example.org/oauth2/token",
    )
    flow = app.openapi()["components"]["securitySchemes"]["OAuth2"]["flows"]["authorizationCode"]
    assert flow["authorizationUrl"] == "https://login.example.org/oauth2/authorize"
    assert flow["tokenUrl"] == flow["refreshUrl"] == "https://login.example.org/oauth2/token"
    assert app.openapi()["paths"]["/photos"]["get"]["security"] == oauth(["read:photos"])
    assert not respx_mock.calls


def test_issuer_metadata_given_as_a_document(dev_idp: DevIdP) -> None:
    """issuer_metadata: an RFC 8414 document the app already has (checked against issuer= when given)."""
    app = build_app()
    install_openapi(app, issuer=dev_idp.issuer, issuer_metadata=dev_idp.metadata())
    flow = app.openapi()["components"]["securitySchemes"]["OAuth2"]["flows"]["authorizationCode"]
    assert flow["tokenUrl"] == f"{dev_idp.issuer}/token"
    with pytest.raises(ConfigurationError, match="names issuer"):
        install_openapi(build_app(), issuer="https://other.example", issuer_metadata=dev_idp.metadata())
    # The document is checked as discovery checks one (``_discovery.metadata_problem``).
    with pytest.raises(ConfigurationError, match="jwks_uri must use https"):
        install_openapi(
            build_app(), issuer=LOGIN, issuer_metadata=login_metadata(jwks_uri="http://login.example.org/jwks")
        )


def login_metadata(**overrides: Any) -> dict[str, Any]:
    document = {
        "issuer": LOGIN,
        "authorization_endpoint": f"{LOGIN}/oauth2/authorize",
        "token_endpoint": f"{LOGIN}/oauth2/token",
        "jwks_uri": f"{LOGIN}/jwks",
    }
    document.update(overrides)
    return {name: value for name, value in document.items() if value is not None}


def login_app(**options: Any) -> FastAPI:
    from tokenguard import TokenGuard

    app = build_app()
    app.add_middleware(TokenGuard, issuer=LOGIN, audience="https://photos.example")
    install_openapi(app, **options)
    return app


def test_metadata_is_fetched_once_from_the_guards_issuer(respx_mock: respx.MockRouter) -> None:
    """issuer comes from the TokenGuard; its RFC 8414 metadata is fetched on the first /openapi.json only."""
    route = respx_mock.get(LOGIN_METADATA).mock(return_value=httpx.Response(200, json=login_metadata()))
    app = login_app()
    with TestClient(app) as client:
        first = client.get("/openapi.json").json()
        second = client.get("/openapi.json").json()
    assert route.call_count == 1
    assert first == second
    flow = first["components"]["securitySchemes"]["OAuth2"]["flows"]["authorizationCode"]
    assert flow["authorizationUrl"] == f"{LOGIN}/oauth2/authorize"


def test_openid_discovery_is_the_fallback(respx_mock: respx.MockRouter) -> None:
    """An issuer without RFC 8414 metadata is read through OpenID Connect discovery."""
    respx_mock.get(LOGIN_METADATA).mock(return_value=httpx.Response(404))
    respx_mock.get(LOGIN_OPENID).mock(return_value=httpx.Response(200, json=login_metadata()))
    document = document_of(login_app())
    assert "OAuth2" in document["components"]["securitySchemes"]


@pytest.mark.parametrize(
    ("metadata", "cause"),
    [
        (login_metadata(issuer="https://evil.example"), "names issuer"),  # RFC 8414 §3.3
        (login_metadata(authorization_endpoint=None), "no authorization_endpoint"),
        (login_metadata(token_endpoint="http://login.example.org/token"), "must use https"),
    ],
    ids=["other-issuer", "no-authorization-endpoint", "plain-http"],
)
def test_unusable_metadata_leaves_the_bearer_scheme_only(
    respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture, metadata: dict[str, Any], cause: str
) -> None:
    """Metadata that names another issuer, lacks the endpoint or uses plain http is not used; the docs still load."""
    respx_mock.get(LOGIN_METADATA).mock(return_value=httpx.Response(200, json=metadata))
    respx_mock.get(LOGIN_OPENID).mock(return_value=httpx.Response(404))
    with caplog.at_level(logging.WARNING, logger="tokenguard"):
        document = document_of(login_app())
    assert list(document["components"]["securitySchemes"]) == ["BearerToken"]
    assert security_of(document, "/photos") == [{"BearerToken": []}]
    assert cause in caplog.text


def test_an_unreachable_issuer_is_retried_later_not_on_every_request(respx_mock: respx.MockRouter) -> None:
    """While the issuer is down the document offers the bearer scheme; the fetch is not repeated at once."""
    down = respx_mock.get(LOGIN_METADATA).mock(side_effect=httpx.ConnectError("connection refused"))
    respx_mock.get(LOGIN_OPENID).mock(side_effect=httpx.ConnectError("connection refused"))
    app = login_app()
    with TestClient(app) as client:
        for _ in range(3):
            document = client.get("/openapi.json").json()
            assert "OAuth2" not in document["components"]["securitySchemes"]
    assert down.call_count == 1


def test_an_explicit_http_client_is_used(dev_idp: DevIdP) -> None:
    """http_client= (a factory, as for TokenGuard) reaches the issuer; here the in-process DevIdP."""
    app = build_app()
    install_openapi(app, issuer=dev_idp.issuer, http_client=dev_idp.http_client)
    with TestClient(app) as client:
        document = client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["OAuth2"]["flows"]["authorizationCode"]["tokenUrl"] == (
        f"{dev_idp.issuer}/token"
    )


# -- Swagger UI --------------------------------------------------------------------------------------


def test_swagger_ui_uses_pkce_and_the_client_id(dev_idp: DevIdP, guarded_app: GuardedApp) -> None:
    """/docs calls initOAuth with the client id and PKCE; its OAuth2 redirect page is served without a token."""
    app = guarded_app(build_app())
    install_openapi(app, client_id="photos-docs")
    with TestClient(app) as client:
        page = client.get("/docs")
        redirect = client.get("/docs/oauth2-redirect")
    assert page.status_code == 200
    assert '"usePkceWithAuthorizationCodeGrant": true' in page.text
    assert '"clientId": "photos-docs"' in page.text
    assert "clientSecret" not in page.text
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in page.text
    assert redirect.status_code == 200
    assert "swaggerUIRedirectOauth2" in redirect.text


def test_the_apps_own_swagger_settings_win() -> None:
    """swagger_ui_init_oauth given to FastAPI() keeps its values; ours fill the gaps."""
    app = FastAPI(swagger_ui_init_oauth={"clientId": "mine", "scopes": "read:photos"})
    install_openapi(app, client_id="theirs", client_secret="dev-secret", issuer_metadata=login_metadata())
    assert app.swagger_ui_init_oauth == {
        "usePkceWithAuthorizationCodeGrant": True,
        "clientId": "mine",
        "clientSecret": "dev-secret",
        "scopes": "read:photos",
    }


# -- configuration errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"authorization_url": f"{LOGIN}/authorize"}, "both authorization_url and token_url"),
        ({"authorization_url": "http://login.example.org/a", "token_url": f"{LOGIN}/t"}, "authorization_url"),
        ({"authorization_url": f"{LOGIN}/a", "token_url": f"{LOGIN}/t", "issuer_metadata": {}}, "not both"),
        ({"refresh_url": f"{LOGIN}/t"}, "refresh_url needs"),
        ({"issuer_metadata": {"issuer": LOGIN}}, "no authorization_endpoint"),
        ({"scheme_name": "BearerToken"}, "scheme_name"),
        ({"scope_descriptions": {"read": 1}}, "scope_descriptions"),
    ],
)
def test_bad_options_are_refused_when_installed(options: dict[str, Any], message: str) -> None:
    """Mistakes fail at install time with a message naming the option, not on the first /docs visit."""
    with pytest.raises(ConfigurationError, match=message):
        install_openapi(FastAPI(), **options)


def test_swagger_ui_without_its_redirect_page_is_refused() -> None:
    """Swagger UI cannot finish the code flow without its oauth2-redirect page."""
    with pytest.raises(ConfigurationError, match="swagger_ui_oauth2_redirect_url"):
        install_openapi(FastAPI(swagger_ui_oauth2_redirect_url=None))


def test_only_fastapi_apps_are_accepted() -> None:
    """A Starlette app has no OpenAPI document to extend."""
    from starlette.applications import Starlette

    with pytest.raises(ConfigurationError, match="FastAPI"):
        install_openapi(Starlette())  # type: ignore[arg-type]
