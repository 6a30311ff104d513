"""Optional adapters that feed tokenguard's decision events and counters to monitoring systems.

Each module imports its third-party package only when an adapter is built, so ``tokenguard`` (and this
package) imports without them:

- ``tokenguard.integrations.prometheus``: ``PrometheusHook`` and ``TokenGuardCollector``
  (``pip install 'tokenguard-asgi[prometheus]'``).
- ``tokenguard.integrations.opentelemetry``: ``OpenTelemetryHook`` (``pip install 'tokenguard-asgi[otel]'``).
"""
