"""OpenTelemetry metrics for tokenguard (``pip install 'tokenguard-asgi[otel]'``, needs ``opentelemetry-api``).

``OpenTelemetryHook`` is an ``on_decision`` hook. It records every decision on two instruments:

- ``tokenguard.decisions`` (counter, unit ``{decision}``), attributes ``tokenguard.outcome``,
  ``tokenguard.reason`` and ``http.route`` (the route template, or ``<unmatched>``);
- ``tokenguard.decision.duration`` (histogram, unit ``s``), attributes ``tokenguard.outcome`` and
  ``http.route``.

``hook.observe(guard)`` adds observable instruments read from the guard at each collection:
``tokenguard.ready``, ``tokenguard.jwks.keys``, ``tokenguard.jwks.fresh``, ``tokenguard.jwks.stale``,
``tokenguard.jwks.last_fetch`` (unix seconds), ``tokenguard.verified_cache.entries``,
``tokenguard.introspection.cache.entries``, ``tokenguard.introspection.breaker.state`` (1 for the
current ``state`` attribute, 0 for the others) and the counters ``tokenguard.jwks.fetches``,
``tokenguard.jwks.fetch_failures``, ``tokenguard.introspection.calls``,
``tokenguard.introspection.cache.hits``, ``tokenguard.introspection.cache.misses``,
``tokenguard.hook_errors``. The instruments are created on the first call; later calls only rebind.

Only ``opentelemetry-api`` is needed: the meter comes from the global ``MeterProvider`` that the app's
OpenTelemetry SDK setup installs (without one, the API's no-op meter records nothing). Usage::

    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from starlette.responses import JSONResponse
    from tokenguard import TokenGuard, public
    from tokenguard.integrations.opentelemetry import OpenTelemetryHook

    metrics.set_meter_provider(MeterProvider(metric_readers=[PeriodicExportingMetricReader(ConsoleMetricExporter())]))
    hook = OpenTelemetryHook()                 # or OpenTelemetryHook(meter=provider.get_meter("tokenguard"))
    app.add_middleware(TokenGuard, issuer="https://idp.example.com", audience="https://api.example.com",
                       on_decision=hook)

    @public
    async def health(request):                # any request reaching the app can bind the guard
        guard = request.scope["tokenguard"]
        hook.observe(guard)
        return JSONResponse(guard.status(), status_code=200 if guard.ready() else 503)

The hook never sees a token; it gets only the ``DecisionEvent``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
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

#: Latency bucket boundaries in seconds (the API's default boundaries are meant for milliseconds).
DEFAULT_BOUNDARIES: tuple[float, ...] = LATENCY_BUCKETS

_COUNTERS = {
    "jwks_fetches": ("tokenguard.jwks.fetches", "{fetch}", "JWKS fetches attempted."),
    "jwks_fetch_failures": ("tokenguard.jwks.fetch_failures", "{fetch}", "JWKS fetches that failed."),
    "introspection_calls": ("tokenguard.introspection.calls", "{call}", "RFC 7662 calls made to the issuer."),
    "introspection_cache_hits": ("tokenguard.introspection.cache.hits", "{lookup}", "Answers from the cache."),
    "introspection_cache_misses": ("tokenguard.introspection.cache.misses", "{lookup}", "Cache misses."),
    "hook_errors": ("tokenguard.hook_errors", "{error}", "on_decision hooks that raised."),
}
_GAUGES = {
    "ready": ("tokenguard.ready", "1", "1 when the signing keys are usable now, else 0."),
    "jwks_keys": ("tokenguard.jwks.keys", "{key}", "Signing keys in the cached JWKS."),
    "jwks_fresh": ("tokenguard.jwks.fresh", "1", "1 when the cached JWKS is within its max-age."),
    "jwks_stale": ("tokenguard.jwks.stale", "1", "1 when the JWKS is past its max-age, within the stale period."),
    "jwks_last_fetch_timestamp_seconds": ("tokenguard.jwks.last_fetch", "s", "Unix time of the last good fetch."),
    "verified_cache_entries": ("tokenguard.verified_cache.entries", "{entry}", "Verified-token cache entries."),
    "introspection_cache_entries": ("tokenguard.introspection.cache.entries", "{entry}", "Introspection cache."),
    "revocation_entries": ("tokenguard.revocations.entries", "{entry}", "Revocation list entries (this process)."),
    "revocations_stale": ("tokenguard.revocations.stale", "1", "1 while the fleet's revocation feed is lost."),
}


def _version() -> str:
    # The distribution is "tokenguard-asgi": "tokenguard" on the package index is another project.
    try:
        return metadata.version("tokenguard-asgi")
    except metadata.PackageNotFoundError:
        return ""


class OpenTelemetryHook:
    """An ``on_decision`` hook recording decisions on an OpenTelemetry counter and histogram."""

    def __init__(self, meter: Any = None, *, boundaries: Sequence[float] = DEFAULT_BOUNDARIES) -> None:
        api = require("opentelemetry.metrics", "otel")
        self._api = api
        self.meter: Any = meter if meter is not None else api.get_meter("tokenguard", _version())
        self.decisions: Any = self.meter.create_counter(
            "tokenguard.decisions", unit="{decision}", description="Access decisions by outcome, reason and route."
        )
        self.duration: Any = self._histogram(tuple(boundaries))
        self._guard: GuardLike | None = None
        self._observing = False

    def _histogram(self, boundaries: tuple[float, ...]) -> Any:
        name, unit, description = "tokenguard.decision.duration", "s", "Time taken to decide on a bearer token."
        try:
            return self.meter.create_histogram(
                name, unit=unit, description=description, explicit_bucket_boundaries_advisory=boundaries
            )
        except TypeError:  # opentelemetry-api < 1.23 has no bucket advice
            return self.meter.create_histogram(name, unit=unit, description=description)

    def __call__(self, event: DecisionEvent) -> None:
        self.decisions.add(
            1, {"tokenguard.outcome": event.outcome, "tokenguard.reason": event.reason, "http.route": event.route}
        )
        self.duration.record(event.latency, {"tokenguard.outcome": event.outcome, "http.route": event.route})

    def observe(self, guard: GuardLike) -> OpenTelemetryHook:
        """Report ``guard``'s state through observable instruments (created once; later calls rebind)."""
        self._guard = guard
        if not self._observing:
            self._observing = True
            self._create_observers()
        return self

    def _create_observers(self) -> None:
        for key, (name, unit, description) in _COUNTERS.items():
            self.meter.create_observable_counter(
                name, callbacks=[self._reader(key, counters, use_status=False)], unit=unit, description=description
            )
        for key, (name, unit, description) in _GAUGES.items():
            self.meter.create_observable_gauge(
                name, callbacks=[self._reader(key, gauges, use_status=True)], unit=unit, description=description
            )
        self.meter.create_observable_gauge(
            "tokenguard.introspection.breaker.state",
            callbacks=[self._breaker],
            unit="1",
            description="1 for the introspection circuit breaker's current state, 0 for the others.",
        )

    def _reader(
        self, key: str, read: Callable[[Any], dict[str, float]], *, use_status: bool
    ) -> Callable[[Any], Iterable[Any]]:
        def callback(_options: Any) -> Iterable[Any]:
            guard = self._guard
            if guard is None:
                return []
            values = read(guard.status() if use_status else guard.metrics_snapshot())
            return [self._api.Observation(values[key])] if key in values else []

        return callback

    def _breaker(self, _options: Any) -> Iterable[Any]:
        current = breaker_state(self._guard.status()) if self._guard is not None else None
        if current is None:
            return []
        return [self._api.Observation(1 if state == current else 0, {"state": state}) for state in BREAKER_STATES]
