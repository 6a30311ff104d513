"""FastAPI dependencies on top of ``TokenGuard``. [adapter]

The middleware has already validated the token; these dependencies hand it to path functions and
offer FastAPI's ``Security(...)`` style as an alternative to the decorators::

    @app.get("/me")
    async def me(token: AccessToken = Depends(current_token)): ...

    @app.post("/photos")
    async def upload(token: AccessToken = Security(scopes, scopes=["write:photos"])): ...

Both depend on ``bearer_scheme``, so routes that use them show the bearer security scheme (and the
scopes they need) in FastAPI's OpenAPI document, and Swagger UI offers an "Authorize" button. The
scheme never reads the token itself: the middleware has decided before any dependency runs.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from tokenguard.challenge import challenge
from tokenguard.errors import AuthError, InsufficientScope, MissingToken
from tokenguard.middleware import TokenCredentials
from tokenguard.models import AccessToken

__all__ = ["bearer_scheme", "current_token", "require", "scopes"]

#: The OpenAPI security scheme of routes using these dependencies (RFC 6750 bearer tokens).
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="BearerToken",
    bearerFormat="JWT",
    description="An OAuth 2.0 access token from the issuer, sent as `Authorization: Bearer <token>`.",
)


def _refuse(request: Request, error: AuthError) -> HTTPException:
    guard = request.scope.get("tokenguard")
    realm = guard.realm if guard is not None else "api"
    detail: dict[str, Any] = {"error": error.error_code, "error_description": error.description}
    if isinstance(error, InsufficientScope):
        detail["scope"] = " ".join(error.required)
    return HTTPException(
        status_code=error.status_code,
        detail=detail,
        headers={"WWW-Authenticate": challenge(error, realm=realm)},
    )


def _token_of(request: Request) -> AccessToken:
    auth = request.scope.get("auth")
    if not isinstance(auth, TokenCredentials):
        raise _refuse(request, MissingToken())
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
        raise _refuse(request, InsufficientScope(security_scopes.scopes))
    return token


#: Alias of ``scopes``: ``Security(require, scopes=["write:photos"])`` reads well too.
require = scopes
