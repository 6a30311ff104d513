"""The OAuth 2.0 security scheme in FastAPI's OpenAPI document: ``install_openapi``. [adapter]

**Swagger UI that signs in.** ``install_openapi(app, client_id="photos-docs")`` registers an OAuth 2.0
authorization-code scheme (``"OAuth2"``) in the document and configures Swagger UI for it::

    app = FastAPI()
    app.add_middleware(TokenGuard, issuer="https://idp.example.com", audience="https://photos.example")
    install_openapi(app, client_id="photos-docs")

- Endpoints: ``authorization_url`` and ``token_url`` when given; else the ``authorization_endpoint``
  and ``token_endpoint`` of ``issuer_metadata`` (an RFC 8414 document); else those of the issuer's
  metadata, found by ``tokenguard._discovery.discover`` (RFC 8414, then OpenID discovery; the
  document's ``issuer`` must match) when ``/openapi.json`` is first served. ``issuer`` defaults to the
  ``TokenGuard`` added to the app with ``add_middleware`` (its first issuer, when it has several), and
  so does ``http_client``. While the metadata cannot be had, the document offers the bearer scheme
  only (a pasted token), a warning is logged, and the fetch is tried again on a later request (at
  most every 30 s).
- Scopes: every scope a route declares (``@require_scopes``, ``@require_any_scope``, ``Security(scopes,
  scopes=[...])``) is listed in the flow, with its description from ``scope_descriptions``.
- Each operation's ``security`` lists what the guard will require of it (``_requirement``: its
  marks, else the guard's ``rules``, else its ``default``), plus the scopes of its ``Security``
  dependencies. All the scopes of one requirement object are needed; ``@require_any_scope`` gives one
  object per choice (the OpenAPI way to say "or"). ``{"BearerToken": []}`` follows as an alternative,
  for a token pasted by hand. Public routes carry no ``security``. A delegation mark (RFC 8693)
  is said in the 403 response's description and in ``x-tokenguard-delegation``.
- Swagger UI: authorization code with PKCE (RFC 7636, S256), ``client_id`` pre-filled. Its redirect
  page (FastAPI's ``swagger_ui_oauth2_redirect_url``, ``/docs/oauth2-redirect`` by default) must be a
  registered redirect URI of that client at the issuer, and the issuer's token endpoint must answer
  CORS requests from the API's origin, since the browser posts the code there. ``client_secret``
  is shown to every visitor of ``/docs``: give one only for a development issuer that has no public
  clients.

Without ``install_openapi`` the document is FastAPI's own (the bearer scheme on routes that use the
dependencies). ``import fastapi`` here is the third-party FastAPI (absolute imports).
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.security import HTTPBearer
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenguard._discovery import METADATA_MAX_BYTES, discover, metadata_problem
from tokenguard._flight import SingleFlight
from tokenguard._http import FetchError, HttpClientOption, HttpClientPool, safe_url
from tokenguard.config import check_url
from tokenguard.errors import ConfigurationError
from tokenguard.middleware import TokenGuard
from tokenguard.policy import AUTHENTICATED, PUBLIC, Requirement, Rule, first_rule
from tokenguard.routing import endpoint_requirement

logger = logging.getLogger("tokenguard")

#: The OpenAPI security scheme of routes using the dependencies (RFC 6750 bearer tokens). Defined
#: here, beside the document code that names it, and re-exported by ``tokenguard.fastapi``.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="BearerToken",
    bearerFormat="JWT",
    description="An OAuth 2.0 access token from the issuer, sent as `Authorization: Bearer <token>`.",
)

_FETCH_TIMEOUT = 5.0
_RETRY_SECONDS = 30.0
#: ``@require_any_scope`` groups multiply into alternatives; past this many, one over-wide object.
_MAX_ALTERNATIVES = 32


@dataclass(frozen=True)
class _Endpoints:
    authorization_url: str
    token_url: str
    refresh_url: str | None = None


def install_openapi(
    app: FastAPI,
    *,
    client_id: str | None = None,
    client_secret: str | None = None,
    issuer: str | None = None,
    issuer_metadata: Mapping[str, Any] | None = None,
    authorization_url: str | None = None,
    token_url: str | None = None,
    refresh_url: str | None = None,
    scope_descriptions: Mapping[str, str] | None = None,
    scheme_name: str = "OAuth2",
    use_pkce: bool = True,
    http_client: HttpClientOption = None,
) -> None:
    """Register the OAuth 2.0 authorization-code scheme in ``app``'s OpenAPI document (module docstring)."""
    if not isinstance(app, FastAPI):
        raise ConfigurationError(f"install_openapi needs a FastAPI app, got {type(app).__name__}")
    if not isinstance(scheme_name, str) or not scheme_name or scheme_name == bearer_scheme.scheme_name:
        raise ConfigurationError(f"scheme_name must be a non-empty name other than 'BearerToken', got {scheme_name!r}")
    if app.openapi_url and app.docs_url and not app.swagger_ui_oauth2_redirect_url:
        raise ConfigurationError(
            "Swagger UI needs its OAuth2 redirect page: keep FastAPI's swagger_ui_oauth2_redirect_url"
        )
    security = _OpenAPISecurity(
        app,
        endpoints=_given_endpoints(issuer, issuer_metadata, authorization_url, token_url, refresh_url),
        issuer=issuer,
        http_client=http_client,
        scheme_name=scheme_name,
        descriptions=_descriptions(scope_descriptions),
    )
    app.openapi = security.openapi  # type: ignore[method-assign]  # FastAPI's documented extension point
    security.hook_openapi_route()
    init_oauth: dict[str, Any] = {"usePkceWithAuthorizationCodeGrant": use_pkce}
    if client_id is not None:
        init_oauth["clientId"] = client_id
    if client_secret is not None:
        init_oauth["clientSecret"] = client_secret
    # The app's own settings win over these defaults.
    app.swagger_ui_init_oauth = {**init_oauth, **(app.swagger_ui_init_oauth or {})}


# -- the endpoints -----------------------------------------------------------------------------------


def _given_endpoints(
    issuer: str | None,
    metadata: Mapping[str, Any] | None,
    authorization_url: str | None,
    token_url: str | None,
    refresh_url: str | None,
) -> _Endpoints | None:
    if (authorization_url is None) != (token_url is None):
        raise ConfigurationError("give both authorization_url and token_url, or neither")
    if authorization_url is not None and token_url is not None:
        if metadata is not None:
            raise ConfigurationError("give issuer_metadata or authorization_url/token_url, not both")
        return _checked_endpoints(authorization_url, token_url, refresh_url)
    if metadata is not None:
        return _endpoints_of(metadata, issuer=issuer, refresh_url=refresh_url)
    if refresh_url is not None:
        raise ConfigurationError("refresh_url needs authorization_url and token_url")
    return None


def _checked_endpoints(authorization_url: str, token_url: str, refresh_url: str | None) -> _Endpoints:
    check_url("authorization_url", authorization_url)
    check_url("token_url", token_url)
    if refresh_url is not None:
        check_url("refresh_url", refresh_url)
    return _Endpoints(authorization_url, token_url, refresh_url)


def _endpoints_of(metadata: Mapping[str, Any], *, issuer: str | None, refresh_url: str | None = None) -> _Endpoints:
    """The browser-facing endpoints of an RFC 8414 §2 document; ``ConfigurationError`` names what is wrong.

    With ``issuer``, the document is first checked as discovery checks one (``metadata_problem``:
    RFC 8414 §3.3, the ``issuer`` it names must be identical). A discovered document has passed that
    check already and comes with ``issuer=None``.
    """
    if not isinstance(metadata, Mapping):
        raise ConfigurationError("issuer_metadata must be a mapping (an RFC 8414 document)")
    if issuer is not None and (problem := metadata_problem(metadata, issuer)) is not None:
        raise ConfigurationError(f"the metadata {problem}")
    authorization_url, token_url = metadata.get("authorization_endpoint"), metadata.get("token_endpoint")
    if not isinstance(authorization_url, str) or not isinstance(token_url, str):
        # RFC 8414 §2: authorization_endpoint is absent when no grant uses it; then no code flow.
        raise ConfigurationError("the metadata has no authorization_endpoint or no token_endpoint")
    return _checked_endpoints(authorization_url, token_url, refresh_url)


def _descriptions(given: Mapping[str, str] | None) -> dict[str, str]:
    if given is None:
        return {}
    if not isinstance(given, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
        raise ConfigurationError("scope_descriptions must map scope names to descriptions (strings)")
    return dict(given)


async def _discover_endpoints(issuer: str, http_client: HttpClientOption) -> _Endpoints:
    """The issuer's browser-facing endpoints, from the metadata the one discovery client finds.

    ``discover`` tries the well-known URLs and checks the document's ``issuer``; what the code flow
    needs on top (an authorization and a token endpoint, https) is checked here.
    """
    check_url("issuer", issuer)
    pool = HttpClientPool(http_client, timeout=_FETCH_TIMEOUT)
    try:
        found = await discover(pool, issuer, timeout=_FETCH_TIMEOUT, max_bytes=METADATA_MAX_BYTES)
    finally:
        await pool.aclose()
    try:
        return _endpoints_of(found.document, issuer=None)  # ``discover`` checked the issuer
    except ConfigurationError as exc:
        raise ConfigurationError(f"{safe_url(found.url)}: {exc}") from exc


# -- the guard's policy ------------------------------------------------------------------------------


def _guard_options(app: FastAPI) -> dict[str, Any]:
    """The options of the ``TokenGuard`` added with ``app.add_middleware`` (empty when there is none).

    The one place this package reads the guard's options: the document is built before (or without)
    any request, so the middleware instance may not exist yet.
    """
    for middleware in app.user_middleware:
        cls = getattr(middleware, "cls", None)
        if isinstance(cls, type) and issubclass(cls, TokenGuard):
            options = getattr(middleware, "kwargs", None)
            if options is None:  # Starlette before 0.35 called them "options"
                options = getattr(middleware, "options", {})
            return dict(options)
    return {}


@dataclass(frozen=True)
class _Policy:
    """The guard's fallback policy: its ``rules`` and its ``default``."""

    rules: tuple[Rule, ...] = ()
    default: Requirement = AUTHENTICATED

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> _Policy:
        default = PUBLIC if options.get("default") == "public" else AUTHENTICATED
        return cls(tuple(options.get("rules", ())), default)


def _requirement(policy: _Policy, endpoint: Any, method: str, path: str) -> Requirement:
    """What the guard requires of ``method`` on ``endpoint`` at ``path``, decided as the guard decides.

    The endpoint's merged marks (``routing.endpoint_requirement``: class endpoints merge the class's
    and the handler's), else the first matching rule (``policy.first_rule``), else the default.
    """
    marks = endpoint_requirement(endpoint, {"type": "http", "method": method})
    if marks is not None:
        return marks
    return first_rule(policy.rules, path, method) or policy.default


def _first_issuer(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return next((item for item in value if isinstance(item, str)), None)
    return None


# -- the document ------------------------------------------------------------------------------------


def _operations(app: FastAPI) -> Iterator[tuple[str, str, Any]]:
    """(path template, method, endpoint) of every operation FastAPI puts in the document.

    Only ``APIRoute``s included in the schema: FastAPI's own documentation routes (``/openapi.json``,
    ``/docs``, ``/redoc``) are plain Starlette routes outside the document, and stay out.
    """
    iterate: Callable[[Any], Iterable[Any]] | None = getattr(fastapi.routing, "iter_route_contexts", None)
    # Recent FastAPI keeps included routers as branches and walks them with iter_route_contexts;
    # older releases copied their routes into ``app.routes``.
    routes: Iterable[Any] = iterate(app.routes) if iterate is not None else app.routes
    for route in routes:
        original = getattr(route, "original_route", route)
        if not isinstance(original, fastapi.routing.APIRoute) or not getattr(route, "include_in_schema", True):
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            yield route.path_format, method, route.endpoint


def _alternatives(requirement: Requirement, extra: frozenset[str]) -> list[list[str]]:
    """The scope sets that satisfy ``requirement`` plus ``extra``, smallest first, none a superset of another."""
    base = requirement.all_scopes | extra
    groups = [sorted(group) for group in requirement.any_scopes]
    count = 1
    for group in groups:
        count *= len(group)
    if count > _MAX_ALTERNATIVES:
        return [sorted(base.union(*requirement.any_scopes))]
    sets = {base.union(choice) for choice in itertools.product(*groups)}
    minimal = [s for s in sets if not any(other < s for other in sets)]
    return sorted((sorted(s) for s in minimal), key=lambda names: (len(names), names))


def _document_refusals(operation: dict[str, Any], *, scoped: bool, delegation: str | None = None) -> None:
    """The guard's answers, so Swagger UI does not call them "Undocumented" (RFC 6750 §3.1 codes).

    ``delegation``: what the operation says about delegated tokens (RFC 8693 §4.1), added to the 403's
    description and as ``x-tokenguard-delegation``, since OpenAPI security requirements cannot say it.
    """
    responses = operation.setdefault("responses", {})
    responses.setdefault("401", {"description": "No acceptable access token (the WWW-Authenticate header says why)."})
    if scoped:
        text = "The access token does not grant what this operation needs."
        responses.setdefault("403", {"description": text if delegation is None else f"{text} {delegation}"})
    if delegation is not None:
        operation["x-tokenguard-delegation"] = delegation


def _delegation_text(requirement: Requirement) -> str | None:
    """A sentence for the document: the operation's delegation policy (RFC 8693 §4.1 ``act``), if any."""
    if requirement.delegation == "refused":
        return "Delegated tokens (RFC 8693 act) are refused: the user's own client must call."
    if requirement.delegation == "required":
        if requirement.actors is None:
            return "Only a delegated token (RFC 8693 act) is accepted."
        names = ", ".join(sorted(requirement.actors))
        return f"Only a delegated token (RFC 8693 act) whose current actor is one of: {names}."
    return None


class _OpenAPISecurity:
    """What ``install_openapi`` installs: the document builder and the metadata discovery."""

    def __init__(
        self,
        app: FastAPI,
        *,
        endpoints: _Endpoints | None,
        issuer: str | None,
        http_client: HttpClientOption,
        scheme_name: str,
        descriptions: dict[str, str],
    ) -> None:
        self._app = app
        self._endpoints = endpoints
        self._issuer = issuer
        self._http_client = http_client
        self._scheme = scheme_name
        self._descriptions = descriptions
        self._retry_at = 0.0
        self._flight: SingleFlight[str, None] = SingleFlight()
        self._cache: tuple[object, _Endpoints | None, dict[str, Any]] | None = None

    # -- discovery ---------------------------------------------------------------------------------

    def hook_openapi_route(self) -> None:
        """Before FastAPI serves ``/openapi.json``, fetch the issuer's endpoints if they are not known."""
        for route in self._app.router.routes:
            if isinstance(route, Route) and route.path == self._app.openapi_url:
                route.app = self._discovering(route.app)
                return

    def _discovering(self, serve: ASGIApp) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self.discover()
            await serve(scope, receive, send)

        return app

    async def discover(self) -> None:
        if self._endpoints is not None or time.monotonic() < self._retry_at:
            return
        guard = _guard_options(self._app)
        issuer = self._issuer or _first_issuer(guard.get("issuer"))
        if issuer is None:
            self._retry_at = float("inf")  # nothing to ask: the document keeps the bearer scheme only
            logger.warning("tokenguard: install_openapi found no issuer; pass issuer= or authorization_url=")
            return
        http_client = self._http_client if self._http_client is not None else guard.get("http_client")
        # One discovery at a time: concurrent /openapi.json requests share it (anonymous callers must
        # not multiply requests to the issuer).
        await self._flight.run("discover", lambda: self._discover(issuer, http_client))

    async def _discover(self, issuer: str, http_client: HttpClientOption) -> None:
        if self._endpoints is not None:
            return
        try:
            self._endpoints = await _discover_endpoints(issuer, http_client)
        except (FetchError, ConfigurationError) as exc:
            self._retry_at = time.monotonic() + _RETRY_SECONDS
            logger.warning("tokenguard: OpenAPI OAuth2 scheme left out, issuer metadata unavailable: %s", exc)

    # -- the document ------------------------------------------------------------------------------

    def openapi(self) -> dict[str, Any]:
        """``app.openapi``: FastAPI's document with the guard's security requirements."""
        base = type(self._app).openapi(self._app)
        cached = self._cache
        if cached is not None and cached[0] is base and cached[1] == self._endpoints:
            return cached[2]
        document = self._secured(copy.deepcopy(base))
        self._cache = (base, self._endpoints, document)
        return document

    def _secured(self, document: dict[str, Any]) -> dict[str, Any]:
        policy = _Policy.of(_guard_options(self._app))
        declared: set[str] = set()
        paths = document.get("paths", {})
        for path, method, endpoint in _operations(self._app):
            operation = paths.get(path, {}).get(method.lower())
            if not isinstance(operation, dict):
                continue
            requirement = _requirement(policy, endpoint, method, path)
            security, alternatives = self._operation_security(operation.get("security", []), requirement)
            declared.update(*alternatives)
            if security:
                operation["security"] = security
            else:
                operation.pop("security", None)
            if not requirement.public:
                # RFC 9396 guards (``details``) and delegation marks (RFC 8693) refuse with 403 as well,
                # whatever the scopes.
                scoped = any(alternatives) or bool(requirement.details) or requirement.delegation is not None
                _document_refusals(operation, scoped=scoped, delegation=_delegation_text(requirement))
        components = document.setdefault("components", {})
        schemes = dict(components.get("securitySchemes", {}))
        schemes.setdefault(bearer_scheme.scheme_name, jsonable_encoder(bearer_scheme.model, by_alias=True))
        if self._endpoints is not None:
            # First, so Swagger UI's Authorize dialog starts with the sign-in.
            ours = self._scheme_object(self._endpoints, declared | set(self._descriptions))
            schemes = {self._scheme: ours, **{k: v for k, v in schemes.items() if k != self._scheme}}
        components["securitySchemes"] = schemes
        return document

    def _operation_security(self, existing: list[Any], requirement: Requirement) -> tuple[list[Any], list[list[str]]]:
        """The operation's ``security`` list, and the scope sets that satisfy it (none when public)."""
        bearer = bearer_scheme.scheme_name
        from_dependencies: set[str] = set()
        others: list[Any] = []
        for entry in existing:
            if isinstance(entry, dict) and bearer in entry:
                # Every Security dependency runs, so their scopes add up (FastAPI lists them apart).
                from_dependencies.update(entry[bearer])
            elif not (isinstance(entry, dict) and self._scheme in entry):
                others.append(entry)
        if requirement.public:
            return others, []
        alternatives = _alternatives(requirement, frozenset(from_dependencies))
        ours = [{self._scheme: names} for names in alternatives] if self._endpoints is not None else []
        return [*ours, {bearer: []}, *others], alternatives

    def _scheme_object(self, endpoints: _Endpoints, names: set[str]) -> dict[str, Any]:
        flow: dict[str, Any] = {"authorizationUrl": endpoints.authorization_url, "tokenUrl": endpoints.token_url}
        if endpoints.refresh_url is not None:
            flow["refreshUrl"] = endpoints.refresh_url
        flow["scopes"] = {name: self._descriptions.get(name, "") for name in sorted(names)}
        return {
            "type": "oauth2",
            "description": "Sign in with the issuer (OAuth 2.0 authorization code with PKCE) to get an access token.",
            "flows": {"authorizationCode": flow},
        }
