"""tokenguard: OAuth 2.0 bearer-token protection for Starlette and FastAPI APIs."""

from tokenguard._details import RequestContext
from tokenguard.credentials import TokenCredentials, TokenUser
from tokenguard.errors import (
    AuthError,
    ConfigurationError,
    InsufficientScope,
    InsufficientUserAuthentication,
    InvalidDPoPProof,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    TokenGuardError,
    UnavailableError,
    UseDPoPNonce,
)
from tokenguard.middleware import TokenGuard
from tokenguard.models import AccessToken, Actor
from tokenguard.policy import (
    Requirement,
    Rule,
    public,
    refuse_delegation,
    require_any_scope,
    require_auth_level,
    require_authorization_details,
    require_delegation,
    require_scopes,
    sender_constrained,
    sensitive,
)

__version__ = "0.1.0"

from tokenguard.ssf import SharedSignals

__all__ = [
    "AccessToken",
    "Actor",
    "AuthError",
    "ConfigurationError",
    "InsufficientScope",
    "InsufficientUserAuthentication",
    "InvalidDPoPProof",
    "InvalidRequest",
    "InvalidToken",
    "MissingToken",
    "RequestContext",
    "Requirement",
    "Rule",
    "SharedSignals",
    "TokenCredentials",
    "TokenGuard",
    "TokenGuardError",
    "TokenUser",
    "UnavailableError",
    "UseDPoPNonce",
    "public",
    "refuse_delegation",
    "require_any_scope",
    "require_auth_level",
    "require_authorization_details",
    "require_delegation",
    "require_scopes",
    "sender_constrained",
    "sensitive",
]
