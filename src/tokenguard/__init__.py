"""tokenguard: OAuth 2.0 bearer-token protection for Starlette and FastAPI APIs."""

from tokenguard.errors import (
    AuthError,
    ConfigurationError,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    TokenGuardError,
    UnavailableError,
)
from tokenguard.middleware import TokenCredentials, TokenGuard, TokenUser
from tokenguard.models import AccessToken
from tokenguard.policy import Requirement, Rule, public, require_any_scope, require_scopes, sensitive

__version__ = "0.1.0"

__all__ = [
    "AccessToken",
    "AuthError",
    "ConfigurationError",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "MissingToken",
    "Requirement",
    "Rule",
    "TokenCredentials",
    "TokenGuard",
    "TokenGuardError",
    "TokenUser",
    "UnavailableError",
    "public",
    "require_any_scope",
    "require_scopes",
    "sensitive",
]
