"""Prometheus metrics for tokenguard (``pip install 'tokenguard-asgi[prometheus]'``, needs ``prometheus-client``).

Two pieces, usable apart:

- ``PrometheusHook``: an ``on_decision`` hook. It counts every decision in ``tokenguard_decisions_total``
  (labels ``outcome``, ``reason``, ``route``) and times it in ``tokenguard_decision_duration_seconds``
  (a histogram, labels ``outcome``, ``route``). ``route`` is the route template (``/photos/{id}``) or
  ``<unmatched>``, so the label set stays bounded whatever paths clients send.
- ``TokenGuardCollector``: a custom collector that reads a guard's ``metrics_snapshot()`` and ``status()``
  at scrape time: ``tokenguard_ready``, ``tokenguard_jwks_keys``, ``tokenguard_jwks_fresh``,
  ``tokenguard_jwks_stale``, ``tokenguard_jwks_last_fetch_timestamp_seconds``,
  ``tokenguard_verified_cache_entries``, ``tokenguard_introspection_cache_entries``,
  ``tokenguard_introspection_breaker_state{state="closed|half_open|open"}`` (1 for the current state),
  ``tokenguard_revocation_entries``, ``tokenguard_revocations_stale`` (fleet mode) and the counters
  ``tokenguard_jwks_fetches_total``, ``tokenguard_jwks_fetch_failures_total``,
  ``tokenguard_introspection_calls_total``, ``tokenguard_introspection_cache_hits_total``,
  ``tokenguard_introspection_cache_misses_total``, ``tokenguard_hook_errors_total``.

Usage::

    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    from tokenguard import TokenGuard, public
    from tokenguard.integrations.prometheus import PrometheusHook, TokenGuardCollector

    collector = TokenGuardCollector()          # bound to the guard below, on the first scrape
    REGISTRY.register(collector)

    @public
    async def metrics(request):
        collector.bind(request.scope["tokenguard"])
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(routes=[Route("/metrics", metrics), ...])
    app.add_middleware(TokenGuard, issuer="https://idp.example.com", audience="https://api.example.com",
                       on_decision=PrometheusHook())

``PrometheusHook(registry=None, prefix="tokenguard", buckets=...)`` registers its two metrics on
``registry`` (prometheus_client's default ``REGISTRY`` when ``None``) when it is built: build one hook per
registry and prefix (a second one with the same names is refused by prometheus_client). A guard built
directly (``guard = TokenGuard(app, ...)``) can be given at once: ``TokenGuardCollector(guard)``. Neither
piece ever sees a token; the hook gets only the ``DecisionEvent``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tokenguard.events import DecisionEvent
from tokenguard.integrations._common import (
    BREAKER_STATES,
    LATENCY_BUCKETS,
    GuardLike,
    breaker_state,
    counters,
    gauges,
    require,
)

#: Latency buckets in seconds: local validation takes tens of microseconds, introspection milliseconds.
DEFAULT_BUCKETS: tuple[float, ...] = LATENCY_BUCKETS

_COUNTER_HELP = {
    "jwks_fetches": "JWKS fetches attempted.",
    "jwks_fetch_failures": "JWKS fetches that failed.",
    "introspection_calls": "RFC 7662 introspection calls made to the issuer.",
    "introspection_cache_hits": "Introspection answers served from the cache.",
    "introspection_cache_misses": "Introspection lookups that missed the cache.",
    "hook_errors": "on_decision hooks that raised.",
}
_GAUGE_HELP = {
    "ready": "1 when the signing keys are usable now, else 0.",
    "jwks_keys": "Signing keys in the cached JWKS.",
    "jwks_fresh": "1 when the cached JWKS is within its max-age.",
    "jwks_stale": "1 when the cached JWKS is past its max-age but still within the stale period.",
    "jwks_last_fetch_timestamp_seconds": "Unix time of the last successful JWKS fetch.",
    "verified_cache_entries": "Entries in the verified-token cache.",
    "introspection_cache_entries": "Entries in the introspection answer cache.",
    "revocation_entries": "Entries in this process's copy of the revocation list.",
    "revocations_stale": "1 while the fleet's revocation feed is lost (the list keeps its last state), else 0.",
}


class PrometheusHook:
    """An ``on_decision`` hook: a counter of decisions and a latency histogram, in Prometheus metrics."""

    def __init__(
        self, registry: Any = None, prefix: str = "tokenguard", *, buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        client = require("prometheus_client", "prometheus")
        registry = client.REGISTRY if registry is None else registry
        self.decisions: Any = client.Counter(
            f"{prefix}_decisions",
            "Access decisions by outcome, reason code and route template.",
            ("outcome", "reason", "route"),
            registry=registry,
        )
        self.duration: Any = client.Histogram(
            f"{prefix}_decision_duration_seconds",
            "Time taken to decide on a request's bearer token, in seconds.",
            ("outcome", "route"),
            registry=registry,
            buckets=tuple(buckets),
        )

    def __call__(self, event: DecisionEvent) -> None:
        self.decisions.labels(event.outcome, event.reason, event.route).inc()
        self.duration.labels(event.outcome, event.route).observe(event.latency)


class TokenGuardCollector:
    """A Prometheus collector of one guard's state, read from ``metrics_snapshot()`` and ``status()`` per scrape.

    Unbound (``guard=None``) it yields nothing; ``bind(guard)`` binds it, and may be called on every
    request (from a metrics endpoint, where ``request.scope["tokenguard"]`` is the guard).
    """

    def __init__(self, guard: GuardLike | None = None, *, prefix: str = "tokenguard") -> None:
        self._client = require("prometheus_client.core", "prometheus")
        self._guard = guard
        self._prefix = prefix

    def bind(self, guard: GuardLike) -> TokenGuardCollector:
        self._guard = guard
        return self

    def describe(self) -> Iterable[Any]:
        """The metric names, without values: lets a registry refuse a clash when the collector is registered."""
        return list(self._families({}, {}, describe=True))

    def collect(self) -> Iterable[Any]:
        if self._guard is None:
            return []
        return list(self._families(self._guard.metrics_snapshot(), self._guard.status(), describe=False))

    def _families(self, snapshot: Any, status: Any, *, describe: bool) -> Iterator[Any]:
        core, prefix = self._client, self._prefix
        counted = counters(snapshot)
        measured = gauges(status)
        for name, documentation in _COUNTER_HELP.items():
            family = core.CounterMetricFamily(f"{prefix}_{name}", documentation)
            if not describe:
                family.add_metric([], counted[name])
            yield family
        for name, documentation in _GAUGE_HELP.items():
            family = core.GaugeMetricFamily(f"{prefix}_{name}", documentation)
            if not describe and name in measured:
                family.add_metric([], measured[name])
            yield family
        breaker = core.GaugeMetricFamily(
            f"{prefix}_introspection_breaker_state",
            "1 for the introspection circuit breaker's current state, 0 for the others.",
            labels=["state"],
        )
        current = breaker_state(status)
        if not describe and current is not None:
            for state in BREAKER_STATES:
                breaker.add_metric([state], 1.0 if state == current else 0.0)
        yield breaker
