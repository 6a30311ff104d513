"""What the development identity provider keeps: clients, grants, tokens, codes, events.

Tokens are stored under their SHA-256 digest, never as themselves, and every ``repr`` leaves them
out: the records carry a short public ``id`` (the ``jti`` for an access token) for logs and events.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from tokenguard.errors import ConfigurationError, TokenGuardError

#: The development-only grant: a user's access + refresh pair for chosen scopes, no browser.
DEV_USER_GRANT = "urn:tokenguard:params:oauth:grant-type:dev-user"
#: RFC 8693 §2.1: the token-exchange grant (confidential clients only: never a public one).
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
#: RFC 8693 §3: the token type identifier of an access token, the only type exchanged here.
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
GRANT_TYPES: tuple[str, ...] = (
    "authorization_code",
    "client_credentials",
    "refresh_token",
    DEV_USER_GRANT,
    TOKEN_EXCHANGE_GRANT,
)
#: What a public client may use: it holds no secret, so only grants that a user's consent (with PKCE)
#: starts, and their refresh tokens (OAuth 2.1 §2.1, §4.3.1).
PUBLIC_GRANT_TYPES: tuple[str, ...] = ("authorization_code", "refresh_token")

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")

TokenFormat = Literal["jwt", "opaque"]
RefreshStatus = Literal["active", "used", "revoked"]
EventKind = Literal[
    "code_issued",
    "issued",
    "rotated",
    "replay_detected",
    "code_reuse_detected",
    "chain_revoked",
    "revoked",
    "introspected",
    "dpop_replay_detected",
    # A user's sessions ended (``DevIdP.logout``), and the Shared Signals transmitter's work, one per
    # stream and SET (``_ssf``): queued, then delivered (202/200, or acknowledged by a poll), rejected
    # (RFC 8935 §2.3 400, or an RFC 8936 setErrs entry), failed (retries exhausted) or dropped (the
    # stream's outbox was full); and streams created and removed.
    "logout",
    "ssf_stream_created",
    "ssf_stream_removed",
    "ssf_queued",
    "ssf_delivered",
    "ssf_rejected",
    "ssf_failed",
    "ssf_dropped",
]


def scope_set(scopes: str | Iterable[str] | None) -> frozenset[str]:
    """Scopes given as a space-separated string or a sequence, as a set (RFC 6749 §3.3)."""
    if scopes is None:
        return frozenset()
    items = scopes.split() if isinstance(scopes, str) else list(scopes)
    for item in items:
        if not isinstance(item, str) or SCOPE_TOKEN.fullmatch(item) is None:
            raise ConfigurationError(f"{item!r} is not a valid scope token (RFC 6749 §3.3)")
    return frozenset(items)


def scope_string(scopes: Iterable[str]) -> str:
    """The ``scope`` parameter value: space-separated, sorted for stable output."""
    return " ".join(sorted(scopes))


class OAuthError(TokenGuardError):
    """An OAuth error answer (RFC 6749 §5.2, §4.1.2.1): ``error`` code, description, HTTP status.

    ``headers``: response header fields the answer must carry (``DPoP-Nonce`` with ``use_dpop_nonce``).
    """

    def __init__(
        self, error: str, description: str, *, status_code: int = 400, headers: Mapping[str, str] | None = None
    ) -> None:
        self.error = error
        self.error_code = error
        self.description = description
        self.status_code = status_code
        self.headers: Mapping[str, str] = MappingProxyType(dict(headers or {}))
        super().__init__(f"{error}: {description}")

    def as_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}

    def __repr__(self) -> str:
        return f"OAuthError(error={self.error!r}, description={self.description!r})"


@dataclass
class Client:
    """A registered client. ``scopes=None`` allows every scope the DevIdP supports.

    ``client_secret=None`` makes a public client (RFC 6749 §2.1): a single-page or native app that
    cannot keep a secret, identified by ``client_id`` alone (``token_endpoint_auth_method`` "none").
    """

    client_id: str
    client_secret: str | None = field(repr=False)
    scopes: frozenset[str] | None = None
    redirect_uris: tuple[str, ...] = ()
    audience: str = ""
    grant_types: frozenset[str] = frozenset(GRANT_TYPES)
    introspection: bool = False

    @property
    def public(self) -> bool:
        """True for a client without a secret (RFC 6749 §2.1 "public")."""
        return self.client_secret is None

    @property
    def token_endpoint_auth_method(self) -> str:
        """How it authenticates at the token endpoint, as RFC 7591 §2 names it."""
        return "none" if self.public else "client_secret_basic"


@dataclass(frozen=True)
class Audience:
    """A resource server the DevIdP issues access tokens for, and in which format."""

    audience: str
    format: TokenFormat = "jwt"
    alg: str = "RS256"


@dataclass
class AccessState:
    """One issued access token (JWT or opaque), as introspection sees it."""

    id: str
    grant_id: str
    format: TokenFormat
    claims: dict[str, Any] = field(repr=False)
    issued_at: float
    expires_at: float
    from_refresh: str | None = None
    revoked: bool = False

    @property
    def jti(self) -> str:
        return self.id


@dataclass
class RefreshState:
    """One refresh token of a grant's chain: active, used (rotated away) or revoked."""

    id: str
    grant_id: str
    issued_at: float
    expires_at: float
    parent: str | None = None
    status: RefreshStatus = "active"
    successor: str | None = None
    used_at: float | None = None
    #: RFC 9449 §5: the thumbprint of the DPoP key a public client's refresh token is bound to.
    jkt: str | None = None


@dataclass
class CodeState:
    """An authorization code: short-lived, single-use, bound to client, redirect URI and PKCE challenge."""

    id: str
    client_id: str
    redirect_uri: str
    redirect_uri_given: bool
    subject: str
    scopes: frozenset[str]
    code_challenge: str = field(repr=False)
    expires_at: float
    used: bool = False
    grant_id: str | None = None
    #: RFC 8707 §2.1: the resources the authorization request named; the token request picks one.
    resources: tuple[str, ...] = ()
    #: What the user's authentication and consent add to the grant: acr, auth_time, authorization_details.
    claims: dict[str, Any] = field(default_factory=dict, repr=False)
    #: RFC 9449 §10: the thumbprint of the DPoP key the token request must prove (``dpop_jkt``).
    dpop_jkt: str | None = None


@dataclass
class Grant:
    """One authorization and everything issued from it: the unit that a replay revokes."""

    id: str
    kind: str
    client_id: str
    subject: str | None
    scopes: frozenset[str]
    audience: str
    created_at: float
    claims: dict[str, Any] = field(default_factory=dict, repr=False)
    #: RFC 8707 §2.2: the resources this grant covers, which a refresh request may narrow to one of
    #: (empty: only ``audience``, the audience of its first access token).
    resources: tuple[str, ...] = ()
    refresh_tokens: list[RefreshState] = field(default_factory=list, repr=False)
    access_tokens: list[AccessState] = field(default_factory=list, repr=False)
    expires_at: float = 0.0
    revoked_at: float | None = None
    revoked_reason: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def targets(self) -> tuple[str, ...]:
        """The audiences an access token of this grant may have: its resources, or its audience."""
        return self.resources or (self.audience,)

    @property
    def chain(self) -> list[str]:
        """The ids of the refresh tokens, oldest first: each one's successor is the next."""
        return [state.id for state in self.refresh_tokens]

    @property
    def current_refresh(self) -> RefreshState | None:
        """The refresh token that may be used next, if any."""
        return next((s for s in reversed(self.refresh_tokens) if s.status == "active"), None)


@dataclass(frozen=True)
class Event:
    """Something the DevIdP did, for tests and the demo; never holds a token, only its id."""

    kind: EventKind
    at: float
    grant_id: str | None = None
    client_id: str | None = None
    subject: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenSet:
    """A token response (RFC 6749 §5.1); the tokens are left out of ``repr``."""

    access_token: str = field(repr=False)
    expires_in: int
    scope: str
    grant_id: str
    refresh_token: str | None = field(default=None, repr=False)
    #: "Bearer", or "DPoP" for an access token bound to a DPoP key (RFC 9449 §5).
    token_type: str = "Bearer"
    #: RFC 9396 §7: the authorization details granted, echoed in the token response.
    authorization_details: list[Any] | None = field(default=None, repr=False)
    #: RFC 8693 §2.2.1: the type of the issued token, REQUIRED in a token-exchange response.
    issued_token_type: str | None = None

    def as_response(self) -> dict[str, Any]:
        """The JSON body the token endpoint answers with."""
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
        }
        if self.scope:
            body["scope"] = self.scope
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        if self.authorization_details is not None:
            body["authorization_details"] = self.authorization_details
        if self.issued_token_type is not None:
            body["issued_token_type"] = self.issued_token_type
        return body
