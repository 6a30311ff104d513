"""The one exception hierarchy of tokenguard.

Every refusal is an exception that carries, as class attributes, the HTTP status it maps to and
the RFC 6750 §3.1 error code; ``challenge.py`` turns them into responses in one place.
No message ever contains a token: descriptions are short fixed sentences.

    TokenGuardError                   base class of everything tokenguard raises
    ├── ConfigurationError            an option is wrong; raised when the option is built
    ├── AuthError                     the request is refused (status 400/401/403)
    │   ├── InvalidRequest            400 invalid_request: malformed Authorization header
    │   ├── MissingToken              401, bare challenge: no bearer token at all
    │   ├── InvalidToken              401 invalid_token: the token is not acceptable
    │   ├── InsufficientScope         403 insufficient_scope: valid token, missing scope
    │   ├── InsufficientUserAuthentication
    │   │                             401 insufficient_user_authentication (RFC 9470 step-up)
    │   ├── InvalidDPoPProof          401 invalid_dpop_proof (RFC 9449 §7.1)
    │   └── UseDPoPNonce              401 use_dpop_nonce: the server's nonce is needed (RFC 9449 §9)
    └── UnavailableError              503: the token could not be checked (fail closed)
        ├── KeysUnavailable           the issuer's metadata or JWKS cannot be had
        ├── IntrospectionUnavailable  the introspection endpoint failed or its breaker is open
        └── RevocationsStale          the fleet's revocation feed is stale (``revocation_fail_closed``)
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any

__all__ = [
    "REASONS",
    "AuthError",
    "ConfigurationError",
    "InsufficientScope",
    "InsufficientUserAuthentication",
    "IntrospectionUnavailable",
    "InvalidDPoPProof",
    "InvalidRequest",
    "InvalidToken",
    "KeysUnavailable",
    "MissingToken",
    "Reason",
    "RevocationsStale",
    "TokenGuardError",
    "UnavailableError",
    "UseDPoPNonce",
]


class Reason(str, Enum):
    """Why a request was decided as it was: the closed set of reason codes (decision events, logs, metrics).

    A ``str`` subclass, so it compares, hashes, serialises and formats as its code (``"expired"``).
    An ``AuthError`` built with a code outside this set is a bug and raises ``ValueError`` at once.
    """

    OK = "ok"
    PUBLIC = "public"
    MISSING_TOKEN = "missing_token"
    MALFORMED_HEADER = "malformed_header"
    TOKEN_TOO_LARGE = "token_too_large"
    INVALID_TOKEN = "invalid_token"
    MALFORMED_TOKEN = "malformed_token"
    UNSUPPORTED_TOKEN = "unsupported_token"
    DISALLOWED_ALG = "disallowed_alg"
    BAD_TYP = "bad_typ"
    BAD_HEADER = "bad_header"
    UNKNOWN_KID = "unknown_kid"
    KEY_MISMATCH = "key_mismatch"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_TENANT = "wrong_tenant"
    MISSING_CLAIM = "missing_claim"
    BAD_CLAIM = "bad_claim"
    NO_IDENTITY = "no_identity"
    INACTIVE = "inactive"
    OPAQUE_NOT_SUPPORTED = "opaque_not_supported"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    INSUFFICIENT_USER_AUTHENTICATION = "insufficient_user_authentication"
    INSUFFICIENT_AUTHORIZATION_DETAILS = "insufficient_authorization_details"
    AUTHORIZATION_DETAILS_CHECK_FAILED = "authorization_details_check_failed"
    BAD_REQUEST_BODY = "bad_request_body"
    ISSUER_UNAVAILABLE = "issuer_unavailable"
    INTROSPECTION_UNAVAILABLE = "introspection_unavailable"
    INTERNAL_ERROR = "internal_error"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # Sender-constrained tokens (RFC 9449 DPoP, RFC 8705 mTLS).
    BAD_DPOP_PROOF = "bad_dpop_proof"
    DPOP_REPLAY = "dpop_replay"
    DPOP_HTU_MISMATCH = "dpop_htu_mismatch"
    DPOP_HTM_MISMATCH = "dpop_htm_mismatch"
    DPOP_IAT_OUT_OF_WINDOW = "dpop_iat_out_of_window"
    DPOP_ATH_MISMATCH = "dpop_ath_mismatch"
    DPOP_NONCE_REQUIRED = "dpop_nonce_required"
    DPOP_BINDING_MISMATCH = "dpop_binding_mismatch"
    CERTIFICATE_MISMATCH = "certificate_mismatch"
    SENDER_CONSTRAINT_REQUIRED = "sender_constraint_required"
    REPLAY_STORE_UNAVAILABLE = "replay_store_unavailable"
    # Fleet mode: the revocation list (``guard.revoke``, Shared Signals events).
    REVOKED = "revoked"
    REVOCATIONS_STALE = "revocations_stale"
    # Delegation (RFC 8693 §4.1 act): a malformed claim (401), and a route's delegation policy (403).
    BAD_ACT = "bad_act"
    DELEGATION_REQUIRED = "delegation_required"
    DELEGATION_REFUSED = "delegation_refused"
    ACTOR_NOT_ALLOWED = "actor_not_allowed"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class TokenGuardError(Exception):
    """Base class of every exception tokenguard raises."""

    status_code: int = 500
    error_code: str | None = None
    #: A ``Reason`` on every refusal (``AuthError``, ``UnavailableError``); "error" on the base class only.
    reason: str = "error"


class ConfigurationError(TokenGuardError, ValueError):
    """An option is missing or wrong; the message names the field."""


class AuthError(TokenGuardError):
    """The request is refused; ``reason`` is a code from the closed set in ``REASONS``."""

    status_code = 401
    error_code: str | None = "invalid_token"
    reason = Reason.INVALID_TOKEN
    description = "The access token is invalid."
    #: Set when a valid token was refused by the route (403, step-up): for decision events, never rendered.
    token: Any = None
    #: The authorization scheme the request used ("bearer" or "dpop"), when known: the challenge
    #: carrying the error is that scheme's (RFC 9449 §7.1).
    scheme: str | None = None
    #: The scopes a 401 challenge names (RFC 6750 §3), when the guard knows what the request needs:
    #: an MCP call refused after its body was read (MCP 2025-11-25 scope selection).
    challenge_scopes: tuple[str, ...] = ()

    def __init__(self, reason: Reason | str | None = None, description: str | None = None) -> None:
        if reason is not None:
            self.reason = Reason(reason)  # a code outside the closed set is a bug: ValueError here
        if description is not None:
            self.description = description
        super().__init__(self.description)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={str(self.reason)!r}, description={self.description!r})"


class InvalidRequest(AuthError):
    """400 invalid_request: the Authorization header is malformed (RFC 6750 §3.1)."""

    status_code = 400
    error_code = "invalid_request"
    reason = Reason.MALFORMED_HEADER
    description = "The Authorization header is malformed."


class MissingToken(AuthError):
    """401 with a bare challenge: the request carries no bearer token (RFC 6750 §3.1)."""

    status_code = 401
    error_code = None
    reason = Reason.MISSING_TOKEN
    description = "A bearer access token is required."


class InvalidToken(AuthError):
    """401 invalid_token: expired, forged, revoked, or otherwise unacceptable (RFC 6750 §3.1)."""

    status_code = 401
    error_code = "invalid_token"
    reason = Reason.INVALID_TOKEN
    description = "The access token is invalid."


class InsufficientScope(AuthError):
    """403 insufficient_scope: the token lacks a scope the route needs (RFC 6750 §3.1)."""

    status_code = 403
    error_code = "insufficient_scope"
    reason = Reason.INSUFFICIENT_SCOPE
    description = "The access token does not grant the scope this resource requires."

    def __init__(
        self, required: Iterable[str], description: str | None = None, *, reason: Reason | str | None = None
    ) -> None:
        self.required: tuple[str, ...] = tuple(sorted(required))
        super().__init__(reason, description)


class InsufficientUserAuthentication(AuthError):
    """401 insufficient_user_authentication: step-up needed (RFC 9470 §3)."""

    status_code = 401
    error_code = "insufficient_user_authentication"
    reason = Reason.INSUFFICIENT_USER_AUTHENTICATION
    description = "A stronger or more recent authentication is required."

    def __init__(
        self,
        *,
        acr_values: Iterable[str] = (),
        max_age: int | None = None,
        description: str | None = None,
    ) -> None:
        self.acr_values: tuple[str, ...] = tuple(acr_values)
        self.max_age = max_age
        super().__init__(None, description)


class InvalidDPoPProof(AuthError):
    """401 invalid_dpop_proof: the DPoP proof is missing, malformed, replayed or does not fit (RFC 9449 §7.1)."""

    status_code = 401
    error_code = "invalid_dpop_proof"
    reason = Reason.BAD_DPOP_PROOF
    description = "The DPoP proof is invalid."


class UseDPoPNonce(AuthError):
    """401 use_dpop_nonce: the proof must carry the server's current nonce (RFC 9449 §9)."""

    status_code = 401
    error_code = "use_dpop_nonce"
    reason = Reason.DPOP_NONCE_REQUIRED
    description = "The DPoP proof must carry the nonce this server provides."

    def __init__(self, *, nonce: str | None = None, description: str | None = None) -> None:
        #: The nonce to send in the ``DPoP-Nonce`` response header.
        self.nonce = nonce
        super().__init__(None, description)


class UnavailableError(TokenGuardError):
    """503: the token could not be checked; it may be fine, so this is never a 401."""

    status_code = 503
    error_code = "temporarily_unavailable"
    reason = Reason.ISSUER_UNAVAILABLE
    description = "The access token could not be checked right now; retry later."

    def __init__(self, cause: str, retry_after: int = 5) -> None:
        # ``cause`` is for logs (it names what failed: a URL, a status); it never holds a token.
        self.cause = cause
        self.retry_after = retry_after
        super().__init__(cause)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cause={self.cause!r}, retry_after={self.retry_after})"


class RevocationsStale(UnavailableError):
    """503: the fleet's revocation feed is stale and the guard was told to fail closed (``revocation_fail_closed``)."""

    reason = Reason.REVOCATIONS_STALE


class KeysUnavailable(UnavailableError):
    """503: the issuer's metadata or JWKS could not be fetched and nothing usable is cached."""

    reason = Reason.ISSUER_UNAVAILABLE


class IntrospectionUnavailable(UnavailableError):
    """503: the introspection endpoint failed, timed out, or its circuit breaker is open."""

    reason = Reason.INTROSPECTION_UNAVAILABLE


#: The closed set of reason codes carried by refusals (and by decision events): the values of ``Reason``.
REASONS: frozenset[str] = frozenset(reason.value for reason in Reason)
