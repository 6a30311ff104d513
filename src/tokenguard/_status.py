"""The shapes of ``guard.status()`` and ``guard.metrics_snapshot()``: typed, one name per figure. [core]

Plain dicts at run time (a health endpoint returns them as JSON), checked by mypy where they are
built. The flat metrics view names each figure the way the Prometheus and OpenTelemetry adapters
export it (``jwks_fetch_failures`` is ``status()["jwks"]["failures"]``): no renaming on the way.
"""

from __future__ import annotations

from typing import Any, TypedDict


class JWKSStatus(TypedDict):
    keys: int
    kids: list[str]
    last_fetch: float | None
    fresh: bool
    stale: bool
    usable: bool
    fetches: int
    failures: int


class IntrospectionStatus(TypedDict):
    calls: int
    cache_hits: int
    cache_misses: int
    cache_entries: int
    known_tokens: int
    first_sight_refused: int
    first_sight_suspects: int
    breaker: str
    first_sight_breaker: str


class _IssuerStatus(TypedDict):
    #: The issuer (one issuer), or every configured issuer (several: each one's status is in ``issuers``).
    issuer: str | list[str]
    jwks: JWKSStatus
    verified_cache_entries: int
    introspection: IntrospectionStatus


class IssuerStatus(_IssuerStatus, total=False):
    issuers: dict[str, IssuerStatus]


class GuardStatus(IssuerStatus, total=False):
    route_cache_entries: int
    route_mismatches: int
    ready: bool
    #: ``revocations`` (entries, stale, …), and in fleet mode ``shared_introspection``; ``shared_signals``.
    fleet: dict[str, Any]


class MetricsSnapshot(TypedDict):
    """``guard.metrics_snapshot()``: decision counters and the issuer-facing counters, flat, each named
    as the Prometheus and OpenTelemetry adapters export it."""

    decisions: dict[str, int]
    decisions_by_reason: dict[str, int]
    hook_errors: int
    jwks_fetches: int
    jwks_fetch_failures: int
    introspection_calls: int
    introspection_cache_hits: int
    introspection_cache_misses: int
    introspection_first_sight_refused: int
    breaker_state: str
    first_sight_breaker_state: str
    verified_cache_entries: int
