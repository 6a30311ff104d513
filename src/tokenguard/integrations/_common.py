"""What the adapters share: the optional import, and the part of a guard they read."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol

#: Latency buckets in seconds: local validation takes tens of microseconds, introspection milliseconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class GuardLike(Protocol):
    """The part of ``TokenGuard`` the adapters read (kept structural: the core never imports the adapter)."""

    def metrics_snapshot(self) -> Mapping[str, Any]: ...

    def status(self) -> Mapping[str, Any]: ...


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency when an adapter is built; say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f"pip install 'tokenguard-asgi[{extra}]'"
        raise ImportError(f"{module} is not installed; install it with: {hint}") from exc


def counters(snapshot: Mapping[str, Any]) -> dict[str, float]:
    """The monotonic counters of ``metrics_snapshot()``, by the adapters' metric names."""
    return {
        "jwks_fetches": float(snapshot.get("jwks_fetches", 0)),
        "jwks_fetch_failures": float(snapshot.get("jwks_fetch_failures", 0)),
        "introspection_calls": float(snapshot.get("introspection_calls", 0)),
        "introspection_cache_hits": float(snapshot.get("introspection_cache_hits", 0)),
        "introspection_cache_misses": float(snapshot.get("introspection_cache_misses", 0)),
        "hook_errors": float(snapshot.get("hook_errors", 0)),
    }


def gauges(status: Mapping[str, Any]) -> dict[str, float]:
    """The point-in-time values of ``status()``: readiness, keys, cache sizes."""
    jwks: Mapping[str, Any] = status.get("jwks", {})
    introspection: Mapping[str, Any] = status.get("introspection", {})
    values = {
        "ready": float(bool(status.get("ready", jwks.get("usable", False)))),
        "jwks_keys": float(jwks.get("keys", 0)),
        "jwks_fresh": float(bool(jwks.get("fresh", False))),
        "jwks_stale": float(bool(jwks.get("stale", False))),
        "verified_cache_entries": float(status.get("verified_cache_entries", 0)),
        "introspection_cache_entries": float(introspection.get("cache_entries", 0)),
    }
    revocations: Mapping[str, Any] = status.get("fleet", {}).get("revocations", {})
    if revocations:
        values["revocation_entries"] = float(revocations.get("entries", 0))
        values["revocations_stale"] = float(bool(revocations.get("stale", False)))
    if isinstance(jwks.get("last_fetch"), (int, float)):
        values["jwks_last_fetch_timestamp_seconds"] = float(jwks["last_fetch"])
    return values


#: Every state the introspection circuit breaker can be in (``tokenguard.introspection.CircuitBreaker``).
BREAKER_STATES = ("closed", "half_open", "open")


def breaker_state(status: Mapping[str, Any]) -> str | None:
    state = status.get("introspection", {}).get("breaker")
    return state if isinstance(state, str) else None
