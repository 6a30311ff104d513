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
    wrong_tenant                        401     a tenant template issuer's ``tid`` is not an allowed tenant
    missing_claim                       401     a required claim (``exp``; strict RFC 9068 claims) is absent
    bad_claim                           401     a claim of the wrong type (``exp`` as a string, ...)
    no_identity                         401     no ``sub``, ``username`` or client id
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
    bad_dpop_proof                      401     a DPoP proof missing, malformed, replayed or not fitting (RFC 9449)
    dpop_replay                         401     a DPoP proof ``jti`` seen before within the window
    dpop_htu_mismatch                   401     the proof's ``htu`` is not the URL the client used (a proxy?)
    dpop_htm_mismatch                   401     the proof's ``htm`` is not the request method
    dpop_iat_out_of_window              401     the proof's ``iat`` is outside the window (clock skew?)
    dpop_ath_mismatch                   401     the proof's ``ath`` is not the hash of this access token
    dpop_nonce_required                 401     the proof lacks the server's current ``DPoP-Nonce``
    dpop_binding_mismatch               401     the token's ``cnf.jkt`` is not the proof key's thumbprint
    certificate_mismatch                401     the token's ``cnf["x5t#S256"]`` is not the client certificate's
    sender_constraint_required          401     the route takes only DPoP- or mTLS-bound tokens
    replay_store_unavailable            503     the DPoP replay store cannot answer (or is full of live entries)
    revoked                             401     the token is on the revocation list (``guard.revoke``, Shared Signals)
    revocations_stale                   503     the fleet's revocation feed is stale (``revocation_fail_closed``)
    bad_act                             401     ``act`` (RFC 8693 §4.1) not an object, without ``sub``, or too deep
    delegation_required                 403     the route takes only delegated tokens (``@require_delegation``)
    delegation_refused                  403     the route refuses delegated tokens (``@refuse_delegation``)
    actor_not_allowed                   403     the current actor is not in the route's ``actors=`` allow-list
    ==================================  ======  =====================================================
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tokenguard.errors import REASONS
from tokenguard.models import AccessToken

__all__ = [
    "MAX_FIELD_CHARS",
    "REASON_CODES",
    "DecisionEvent",
    "DecisionHook",
    "Metrics",
    "Outcome",
    "decision_event",
    "emit",
    "safe_text",
    "subject_hash",
]

logger = logging.getLogger("tokenguard")

Outcome = Literal["allow", "deny", "unavailable"]

#: The closed set of reason codes an event may carry (see ``tokenguard.errors.REASONS``).
REASON_CODES: frozenset[str] = REASONS

#: The longest text an event field keeps (a ``client_id`` is a claim: its size is the token's choice).
MAX_FIELD_CHARS = 256
# Lone surrogates (legal in JSON, not encodable in UTF-8), C0/C1 controls and the Unicode line and
# paragraph separators: what could make a log handler raise or split a log line.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def safe_text(value: object) -> str | None:
    """``value`` as text any log handler, encoder or metrics exporter takes: never raises.

    ``None`` stays ``None``; a string is cut at ``MAX_FIELD_CHARS`` (marked with ``...``) and its
    lone surrogates and control characters escaped (``\\ud800``, ``\\x0a``); anything else (a
    claim of an unexpected JSON type) is named by its type only.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    if len(value) > MAX_FIELD_CHARS:
        value = value[:MAX_FIELD_CHARS] + "..."
    if value.isascii() and value.isprintable():
        return value  # the common case, decided without a regex
    return _UNSAFE.sub(_escape, value)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


@dataclass(frozen=True)
class DecisionEvent:
    """One decision: the outcome, a reason code from ``REASON_CODES``, and context without secrets.

    Text fields are made safe when the event is built (``safe_text``): a claim value such as a
    ``client_id`` holding a lone surrogate, a newline or 100 KB of text reaches hooks, logs and metrics
    escaped and cut short, so no consumer can fail on it.
    """

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

    def __post_init__(self) -> None:
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            safe = safe_text(value)
            if safe is not value:
                object.__setattr__(self, name, safe)
        scopes = self.scopes
        if not isinstance(scopes, tuple) or not all(
            isinstance(scope, str) and scope.isascii() and scope.isprintable() and len(scope) <= MAX_FIELD_CHARS
            for scope in scopes
        ):
            items = scopes if isinstance(scopes, (tuple, list, set, frozenset)) else ()
            object.__setattr__(self, "scopes", tuple(str(safe_text(scope)) for scope in items))

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


_TEXT_FIELDS = ("method", "route", "source", "issuer", "kid", "client_id", "subject_hash")


def decision_event(
    scope: Mapping[str, Any],
    route: str | None,
    outcome: Outcome,
    reason: str,
    status: int,
    token: AccessToken | None,
    latency: float,
) -> DecisionEvent:
    """The event of one decision about the request ``scope`` (an ASGI scope), on ``route`` (a template)."""
    return DecisionEvent(
        outcome=outcome,
        reason=reason,
        status=status,
        method=scope.get("method", "WEBSOCKET") if scope["type"] == "http" else "WEBSOCKET",
        route=route or "<unmatched>",
        latency=latency,
        source=token.source if token is not None else None,
        issuer=token.issuer if token is not None else None,
        kid=token.key_id if token is not None else None,
        client_id=token.client_id if token is not None else None,
        subject_hash=subject_hash(_user_of(token)),
        scopes=tuple(sorted(token.scopes)) if token is not None else (),
    )


def _user_of(token: AccessToken | None) -> str | None:
    """The user a token names: ``sub``, else ``username`` (RFC 7662 §2.2); ``None`` for a client's own token.

    Two users whose tokens carry no ``sub`` get two hashes, not one "no subject". A ``username`` hashes
    like a ``sub`` of the same text (no separate namespace, as ``sub`` values of different issuers share
    one): the tag correlates, it never decides.
    """
    if token is None:
        return None
    return token.subject if token.subject is not None else token.username


DecisionHook = Callable[[DecisionEvent], None]


def subject_hash(subject: object) -> str | None:
    """A short, non-reversible tag for a subject: enough to correlate, not to identify.

    Total: any ``sub`` a token can carry hashes, including lone surrogates (legal in JSON; encoded
    with ``surrogatepass``, which no valid string's UTF-8 can equal). A value that is not a string
    (never one a validator let through) is tagged by its type.
    """
    if subject is None:
        return None
    if isinstance(subject, str):
        data = subject.encode("utf-8", "surrogatepass")
    else:
        data = f"\x00{type(subject).__name__}".encode()
    return hashlib.sha256(data).hexdigest()[:12]


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
    """Count, log and hand the event to every hook; a failing hook (or logging setup) never breaks the request."""
    metrics.record(event)
    level = logging.DEBUG if event.outcome == "allow" else logging.INFO
    if logger.isEnabledFor(level):
        try:
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
        except Exception as exc:  # a logging filter or handler of the app's raised: contain it too
            metrics.hook_errors += 1
            _report("tokenguard: logging the decision failed: %s", type(exc).__name__)
    for hook in hooks:
        try:
            hook(event)
        except Exception as exc:  # the hook is the user's code: contain it
            metrics.hook_errors += 1
            # The exception's type only: its message is the user's text and could repeat anything.
            _report("tokenguard: on_decision hook %s failed: %s", _name_of(hook), type(exc).__name__)


def _report(message: str, *args: str) -> None:
    # If the logging setup itself fails there is nowhere left to say so.
    with contextlib.suppress(Exception):
        logger.error(message, *args)


def _name_of(hook: object) -> str:
    """The qualified name of a hook, made safe; never raises."""
    try:
        name = getattr(hook, "__qualname__", None) or type(hook).__qualname__
    except Exception:  # a callable whose __getattr__ raises
        name = type(hook).__qualname__
    return str(safe_text(name if isinstance(name, str) else type(hook).__qualname__))
