"""Decision events and counters: what the guard decided, why, and how long it took.

Each request the guard decides produces one frozen ``DecisionEvent`` handed to the ``on_decision``
hook (and logged on the ``tokenguard`` logger with structured ``extra`` fields). ``Metrics`` keeps
plain counters that ``TokenGuard.metrics()`` returns as a snapshot; Prometheus and OpenTelemetry
adapters (``tokenguard.integrations``) are fed by the same hook. No event ever holds a token; the
subject appears only as a short hash.
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
    """Plain counters; ``snapshot()`` returns a JSON-friendly dict."""

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
            logger.error("tokenguard: on_decision hook failed: %s", type(exc).__name__)
