"""Decision events and counters: what the guard decided, why, and how long it took.

Each request the guard decides produces one frozen ``DecisionEvent`` handed to every ``on_decision``
hook (and logged on the ``tokenguard`` logger with structured ``extra`` fields, prefixed ``tg_``: DEBUG
for an allow, INFO for a refusal). ``Metrics`` keeps plain counters that ``TokenGuard.metrics_snapshot()``
returns as a dict; the Prometheus and OpenTelemetry adapters (``tokenguard.integrations``) are fed by the
same hook. No event ever holds a token: the subject appears only as a short hash (``subject_hash``), and
``kid``, ``iss``, ``client_id`` are filled in only from a token that passed validation.

``outcome`` is ``"allow"`` (the request goes on), ``"deny"`` (400/401/403) or ``"unavailable"`` (503: the
token could not be checked). ``reason`` is one code of the closed set ``REASON_CODES``:

    ==================================  ======  =====================================================
    reason                              status  meaning
    ==================================  ======  =====================================================
    ok                                  200     a valid token with the scopes the route needs
    public                              200     a ``@public`` route (or a CORS preflight): no token looked at
    missing_token                       401     no ``Authorization: Bearer`` header (bare challenge)
    malformed_header                    400     an empty or malformed bearer value, or several headers
    token_too_large                     401     the token is over ``max_token_bytes``
    malformed_token                     401     not a well-formed compact JWS
    unsupported_token                   401     a JWE or other JOSE shape; a refresh token at introspection
    disallowed_alg                      401     ``alg`` not on the allow-list (``none``, HS* without a secret)
    bad_typ                             401     ``typ`` of another JWT kind (RFC 8725 §3.11, RFC 9068 §4)
    bad_header                          401     unknown ``crit``, ``b64: false``, a ``kid`` that is not a string
    unknown_kid                         401     no key with this ``kid``, even after one refetch
    key_mismatch                        401     the named key cannot do the header's ``alg``
    bad_signature                       401     the signature does not verify
    expired                             401     ``exp`` has passed (with leeway)
    not_yet_valid                       401     ``nbf`` or ``iat`` in the future (with leeway)
    wrong_issuer                        401     ``iss`` is not the configured issuer
    wrong_audience                      401     ``aud`` does not contain the configured audience
    missing_claim                       401     a required claim (``exp``; strict RFC 9068 claims) is absent
    bad_claim                           401     a claim of the wrong type (``exp`` as a string, ...)
    no_identity                         401     neither ``sub`` nor ``client_id``
    inactive                            401     introspection answered ``active`` other than ``true``
    opaque_not_supported                401     an opaque token and no way to introspect it
    invalid_token                       401     any other unacceptable token (reserved)
    insufficient_scope                  403     a valid token without a scope the route needs
    insufficient_user_authentication    401     step-up authentication needed (RFC 9470)
    insufficient_authorization_details  403     the token's ``authorization_details`` do not cover the request
    authorization_details_check_failed  403     an ``authorization_details`` check raised; failed closed
    bad_request_body                    400     a body the checks need is too large, incomplete or not JSON
    issuer_unavailable                  503     the issuer's metadata or JWKS cannot be had
    introspection_unavailable           503     the introspection endpoint failed or its breaker is open
    internal_error                      503     a bug in tokenguard; failed closed
    method_not_allowed                  405     a method other than GET/HEAD on the RFC 9728 metadata document
    ==================================  ======  =====================================================
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from tokenguard.errors import REASONS

logger = logging.getLogger("tokenguard")

Outcome = Literal["allow", "deny", "unavailable"]

#: The closed set of reason codes an event may carry (see ``tokenguard.errors.REASONS``).
REASON_CODES: frozenset[str] = REASONS


@dataclass(frozen=True)
class DecisionEvent:
    """One decision: the outcome, a reason code from ``REASON_CODES``, and context without secrets."""

    outcome: Outcome
    reason: str
    status: int
    method: str
    route: str
    latency: float
    source: str | None = None
    issuer: str | None = None
    kid: str | None = None
    client_id: str | None = None
    subject_hash: str | None = None
    scopes: tuple[str, ...] = ()

    def log_fields(self) -> dict[str, Any]:
        """The event as ``extra`` fields for a structured log record (prefixed to avoid clashes)."""
        return {
            "tg_decision": self.outcome,
            "tg_reason": self.reason,
            "tg_status": self.status,
            "tg_route": self.route,
            "tg_method": self.method,
            "tg_source": self.source,
            "tg_iss": self.issuer,
            "tg_kid": self.kid,
            "tg_client_id": self.client_id,
            "tg_sub_hash": self.subject_hash,
            "tg_latency_ms": round(self.latency * 1000, 3),
        }


DecisionHook = Callable[[DecisionEvent], None]


def subject_hash(subject: str | None) -> str | None:
    """A short, non-reversible tag for a subject: enough to correlate, not to identify."""
    if subject is None:
        return None
    return hashlib.sha256(subject.encode("utf-8")).hexdigest()[:12]


class Metrics:
    """Plain decision counters; ``snapshot()`` returns a JSON-friendly dict.

    ``TokenGuard.metrics_snapshot()`` adds the JWKS, introspection, cache and breaker counters to it.
    """

    def __init__(self) -> None:
        self.decisions: Counter[tuple[str, str]] = Counter()
        self.hook_errors = 0

    def record(self, event: DecisionEvent) -> None:
        self.decisions[(event.outcome, event.reason)] += 1

    def count(self, outcome: str, reason: str) -> None:
        self.decisions[(outcome, reason)] += 1

    def snapshot(self) -> dict[str, Any]:
        by_reason: Counter[str] = Counter()
        by_outcome: Counter[str] = Counter()
        for (outcome, reason), count in self.decisions.items():
            by_reason[reason] += count
            by_outcome[outcome] += count
        return {
            "decisions": dict(by_outcome),
            "decisions_by_reason": dict(by_reason),
            "hook_errors": self.hook_errors,
        }


def emit(event: DecisionEvent, metrics: Metrics, hooks: tuple[DecisionHook, ...]) -> None:
    """Count, log and hand the event to every hook; a failing hook never breaks the request."""
    metrics.record(event)
    level = logging.DEBUG if event.outcome == "allow" else logging.INFO
    if logger.isEnabledFor(level):
        logger.log(
            level,
            "tokenguard: %s %s %s: %s (%d)",
            event.outcome,
            event.method,
            event.route,
            event.reason,
            event.status,
            extra=event.log_fields(),
        )
    for hook in hooks:
        try:
            hook(event)
        except Exception as exc:  # the hook is the user's code: contain it
            metrics.hook_errors += 1
            # The exception's type only: its message is the user's text and could repeat anything.
            logger.error("tokenguard: on_decision hook %s failed: %s", _name_of(hook), type(exc).__name__)


def _name_of(hook: DecisionHook) -> str:
    name = getattr(hook, "__qualname__", None) or type(hook).__qualname__
    return str(name)
