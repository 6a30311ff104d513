"""FastAPI dependencies on top of ``TokenGuard``. [adapter]

The middleware has already validated the token; these dependencies hand it to path functions and
offer FastAPI's ``Security(...)`` style as an alternative to the decorators::

    @app.get("/me")
    async def me(token: AccessToken = Depends(current_token)): ...

    @app.post("/photos")
    async def upload(token: AccessToken = Security(scopes, scopes=["write:photos"])): ...
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.security import SecurityScopes

from tokenguard.challenge import challenge
from tokenguard.errors import AuthError, InsufficientScope, MissingToken
from tokenguard.middleware import TokenCredentials
from tokenguard.models import AccessToken

__all__ = ["current_token", "require", "scopes"]


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


def current_token(request: Request) -> AccessToken:
    """The validated access token of this request (401 on a route the guard left public)."""
    auth = request.scope.get("auth")
    if not isinstance(auth, TokenCredentials):
        raise _refuse(request, MissingToken())
    return auth.token


def scopes(security_scopes: SecurityScopes, request: Request) -> AccessToken:
    """``Security(scopes, scopes=[...])``: the token must grant every listed scope, else 403."""
    token = current_token(request)
    missing = [name for name in security_scopes.scopes if name not in token.scopes]
    if missing:
        raise _refuse(request, InsufficientScope(security_scopes.scopes))
    return token


#: Alias of ``scopes``: ``Security(require, scopes=["write:photos"])`` reads well too.
require = scopes
