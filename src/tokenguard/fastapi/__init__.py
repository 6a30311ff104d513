"""FastAPI dependencies, and the OAuth 2.0 security scheme in the OpenAPI document. [adapter]

The middleware has already validated the token; these dependencies hand it to path functions and
offer FastAPI's ``Security(...)`` style as an alternative to the decorators::

    @app.get("/me")
    async def me(token: AccessToken = Depends(current_token)): ...

    @app.post("/photos")
    async def upload(token: AccessToken = Security(scopes, scopes=["write:photos"])): ...

Delegation (RFC 8693 §4.1 ``act``), as the ``@require_delegation``/``@refuse_delegation`` marks do::

    @app.get("/orders")
    async def orders(token: AccessToken = Depends(delegated_token)): ...            # 403 unless delegated
    @app.post("/password")
    async def password(token: AccessToken = Depends(direct_token)): ...             # 403 when delegated
    @app.get("/invoices")
    async def invoices(token: AccessToken = Depends(require_actor("billing-svc"))): ...

All of them depend on ``bearer_scheme``, so routes that use them show the bearer security scheme (and the
scopes they need) in FastAPI's OpenAPI document. The scheme never reads the token itself: the
middleware has decided before any dependency runs.

A dependency refuses by raising the ``AuthError`` (``MissingToken``, ``InsufficientScope``); the
guard catches it before the route has answered and renders it with ``challenge.render``, so the
refusal has the same body, ``WWW-Authenticate`` and ``Cache-Control: no-store`` as the guard's own.
Without a ``TokenGuard`` in front of the app nothing was validated: the error becomes a 500 and an
ERROR line on the ``tokenguard`` logger says the middleware is missing.

``install_openapi(app, client_id=...)`` (``tokenguard.fastapi._openapi``) adds the OAuth 2.0
authorization-code scheme to the document, so Swagger UI signs in.

Inside this package ``import fastapi`` is the third-party FastAPI (absolute imports only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, SecurityScopes

from tokenguard.credentials import TokenCredentials
from tokenguard.errors import AuthError, ConfigurationError, InsufficientScope, MissingToken, TokenGuardError
from tokenguard.fastapi._openapi import bearer_scheme, install_openapi
from tokenguard.models import AccessToken
from tokenguard.policy import Requirement, _actor_set
from tokenguard.routing import SCOPES_DEPENDENCY_MARK

__all__ = [
    "bearer_scheme",
    "current_token",
    "delegated_token",
    "direct_token",
    "install_openapi",
    "require",
    "require_actor",
    "scopes",
]

logger = logging.getLogger("tokenguard")


def _refusal(request: Request, error: AuthError) -> TokenGuardError:
    """``error``, to be raised: the guard renders it. Without a guard, a ``ConfigurationError`` that
    says so (a 500, and in a test the exception itself names the missing middleware)."""
    if request.scope.get("tokenguard") is not None:
        return error
    # The route's template, never the request's path: a client's text stays out of the log.
    route = getattr(request.scope.get("route"), "path", None)
    message = (
        f"the TokenGuard middleware is missing: route {route if isinstance(route, str) else '<unknown>'} uses a "
        "tokenguard.fastapi dependency but no TokenGuard validated the request; add "
        "app.add_middleware(TokenGuard, issuer=..., audience=...) (the decorators and dependencies only "
        "read what the guard decided)"
    )
    logger.error("tokenguard: %s; answered 500", message)
    return ConfigurationError(message)


def _token_of(request: Request) -> AccessToken:
    auth = request.scope.get("auth")
    if not isinstance(auth, TokenCredentials):
        raise _refusal(request, MissingToken())
    return auth.token


def current_token(
    request: Request,
    _scheme: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
) -> AccessToken:
    """The validated access token of this request (401 on a route the guard left public)."""
    return _token_of(request)


def scopes(
    security_scopes: SecurityScopes,
    request: Request,
    _scheme: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
) -> AccessToken:
    """``Security(scopes, scopes=[...])``: the token must grant every listed scope, else 403."""
    token = _token_of(request)
    missing = [name for name in security_scopes.scopes if name not in token.scopes]
    if missing:
        raise _refusal(request, InsufficientScope(security_scopes.scopes))
    return token


setattr(scopes, SCOPES_DEPENDENCY_MARK, True)  # RFC 9728 ``scopes_supported`` lists its scopes (routing)

#: Alias of ``scopes``: ``Security(require, scopes=["write:photos"])`` reads well too.
require = scopes


_DELEGATED = Requirement(delegation="required")
_DIRECT = Requirement(delegation="refused")


def _delegation_checked(request: Request, requirement: Requirement) -> AccessToken:
    token = _token_of(request)
    try:
        requirement.check_delegation(token)  # the same check, and the same 403, as the route marks
    except AuthError as exc:
        exc.token = token
        raise _refusal(request, exc) from None
    return token


def delegated_token(
    request: Request,
    _scheme: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
) -> AccessToken:
    """The token, which must be delegated (RFC 8693 §4.1 ``act``), else 403 ``delegation_required``."""
    return _delegation_checked(request, _DELEGATED)


def direct_token(
    request: Request,
    _scheme: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
) -> AccessToken:
    """The token, which must not be delegated (no RFC 8693 ``act``), else 403 ``delegation_refused``."""
    return _delegation_checked(request, _DIRECT)


def require_actor(*actors: str) -> Callable[..., AccessToken]:
    """``Depends(require_actor("billing-svc"))``: a delegated token whose current actor (the outermost
    ``act``, RFC 8693 §4.1) has one of ``actors`` as its ``sub`` or ``client_id``; else 403
    (``delegation_required``, ``actor_not_allowed``). The names are checked now (``ConfigurationError``)."""
    requirement = Requirement(delegation="required", actors=_actor_set(actors, "require_actor"))

    def dependency(
        request: Request,
        _scheme: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
    ) -> AccessToken:
        return _delegation_checked(request, requirement)

    return dependency
