"""``tokenguard.integrations``: the Prometheus and OpenTelemetry adapters, fed by real guarded apps.

Requests go through a real Starlette app guarded by ``TokenGuard`` (real signed tokens, JWKS and
introspection through respx, a ``ManualClock``). Prometheus metrics are read back from a private
``CollectorRegistry``; OpenTelemetry metrics from the SDK's ``InMemoryMetricReader`` (opentelemetry-sdk
is a test-only dependency: the adapter itself needs opentelemetry-api alone).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from conftest import AUDIENCE, ISSUER, T0, Issuer
from test_introspection import CLIENT_ID, CLIENT_SECRET, IntrospectionEndpoint
from tokenguard import TokenGuard, public, require_scopes, sensitive
from tokenguard.testing import ManualClock

pytestmark = pytest.mark.respx(assert_all_called=False)


@require_scopes("read:photos")
async def photos(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.user.identity})


@sensitive
@require_scopes("write:transfers")
async def transfer(request: Request) -> JSONResponse:
    return JSONResponse({"owner": request.user.identity})


@public
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


ROUTES = [
    Route("/photos/{album}", photos),
    Route("/transfers", transfer, methods=["POST"]),
    Route("/health", health),
]


def make_guard(clock: ManualClock, **options: Any) -> TokenGuard:
    return TokenGuard(
        Starlette(routes=ROUTES),
        issuer=ISSUER,
        audience=AUDIENCE,
        clock=clock,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        **options,
    )


@pytest.fixture
def endpoint(respx_mock: respx.MockRouter, clock: ManualClock, idp: Issuer) -> IntrospectionEndpoint:
    return IntrospectionEndpoint(respx_mock, clock)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def drive(client: TestClient, idp: Issuer) -> None:
    """Three decisions on /photos/{album} (ok, expired, missing_token) and one public."""
    assert client.get("/photos/summer", headers=bearer(idp.token())).status_code == 200
    assert client.get("/photos/winter", headers=bearer(idp.token(exp=int(T0) - 3600))).status_code == 401
    assert client.get("/photos/spring").status_code == 401
    assert client.get("/health").status_code == 200


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make a package look uninstalled (``None`` in ``sys.modules`` makes its import fail)."""

    def hide(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)

    return hide


# -- optional imports --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "build", "hidden", "extra"),
    [
        ("tokenguard.integrations.prometheus", "PrometheusHook", ("prometheus_client",), "prometheus"),
        ("tokenguard.integrations.prometheus", "TokenGuardCollector", ("prometheus_client.core",), "prometheus"),
        ("tokenguard.integrations.opentelemetry", "OpenTelemetryHook", ("opentelemetry.metrics",), "otel"),
    ],
)
def test_adapters_import_without_their_package_and_say_which_extra_to_install(
    module: str, build: str, hidden: tuple[str, ...], extra: str, without: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The modules import with the package missing; building an adapter names the extra to install."""
    without(*hidden)
    for name in [name for name in sys.modules if name.startswith("tokenguard.integrations")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, with the package missing
    adapter = getattr(importlib.import_module(module), build)
    with pytest.raises(ImportError, match=rf"pip install 'tokenguard-asgi\[{extra}\]'"):
        adapter()


# -- Prometheus --------------------------------------------------------------------------------------------


def test_prometheus_hook_counts_decisions_by_outcome_reason_and_route(clock: ManualClock, idp: Issuer) -> None:
    """``tokenguard_decisions_total`` by outcome/reason/route template, and the latency histogram."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from tokenguard.integrations.prometheus import PrometheusHook

    registry = prometheus_client.CollectorRegistry()
    with TestClient(make_guard(clock, on_decision=PrometheusHook(registry=registry))) as client:
        drive(client, idp)

    def decisions(outcome: str, reason: str, route: str) -> float | None:
        labels = {"outcome": outcome, "reason": reason, "route": route}
        return registry.get_sample_value("tokenguard_decisions_total", labels)

    assert decisions("allow", "ok", "/photos/{album}") == 1
    assert decisions("deny", "expired", "/photos/{album}") == 1
    assert decisions("deny", "missing_token", "/photos/{album}") == 1
    assert decisions("allow", "public", "/health") == 1
    deny = {"outcome": "deny", "route": "/photos/{album}"}
    assert registry.get_sample_value("tokenguard_decision_duration_seconds_count", deny) == 2
    assert registry.get_sample_value("tokenguard_decision_duration_seconds_sum", deny) > 0
    assert registry.get_sample_value("tokenguard_decision_duration_seconds_bucket", {**deny, "le": "+Inf"}) == 2
    # The raw paths never become labels: only the template does.
    assert "summer" not in prometheus_client.generate_latest(registry).decode()


def test_prometheus_hook_prefix_and_buckets(clock: ManualClock, idp: Issuer) -> None:
    """A prefix renames both metrics; custom buckets are used; one registry holds two prefixes."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from tokenguard.integrations.prometheus import PrometheusHook

    registry = prometheus_client.CollectorRegistry()
    hooks = [PrometheusHook(registry, "edge", buckets=(0.5, 1.0)), PrometheusHook(registry, "api")]
    with TestClient(make_guard(clock, on_decision=hooks)) as client:
        client.get("/health")
    labels = {"outcome": "allow", "reason": "public", "route": "/health"}
    assert registry.get_sample_value("edge_decisions_total", labels) == 1
    assert registry.get_sample_value("api_decisions_total", labels) == 1
    text = prometheus_client.generate_latest(registry).decode()
    assert 'edge_decision_duration_seconds_bucket{le="0.5",outcome="allow",route="/health"}' in text
    assert 'edge_decision_duration_seconds_bucket{le="0.25"' not in text
    assert 'api_decision_duration_seconds_bucket{le="0.25",outcome="allow",route="/health"}' in text
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusHook(registry, "api")  # the same names twice in one registry are refused


def test_prometheus_collector_exposes_a_guards_state(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint
) -> None:
    """Readiness, keys, freshness, last fetch, caches, breaker state and counters, read at scrape time."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from tokenguard.integrations.prometheus import TokenGuardCollector

    guard = make_guard(clock, prefetch=True, breaker_threshold=1)
    registry = prometheus_client.CollectorRegistry()
    registry.register(TokenGuardCollector(guard))
    value = registry.get_sample_value
    with TestClient(guard) as client:
        assert value("tokenguard_ready") == 1
        assert value("tokenguard_jwks_keys") == 3
        assert (value("tokenguard_jwks_fresh"), value("tokenguard_jwks_stale")) == (1, 0)
        assert value("tokenguard_jwks_last_fetch_timestamp_seconds") == T0
        assert (value("tokenguard_jwks_fetches_total"), value("tokenguard_jwks_fetch_failures_total")) == (1, 0)
        token = idp.token(scope="write:transfers")
        endpoint.activate(token)
        client.post("/transfers", headers=bearer(token))
        client.post("/transfers", headers=bearer(token))
        assert value("tokenguard_introspection_calls_total") == 1
        assert value("tokenguard_introspection_cache_hits_total") == 1
        assert value("tokenguard_introspection_cache_misses_total") == 1
        assert value("tokenguard_introspection_cache_entries") == 1
        assert value("tokenguard_verified_cache_entries") == 1
        assert value("tokenguard_introspection_breaker_state", {"state": "closed"}) == 1
        endpoint.failure = httpx.Response(500)
        other = idp.token(scope="write:transfers")
        assert client.post("/transfers", headers=bearer(other)).status_code == 503
        assert value("tokenguard_introspection_breaker_state", {"state": "open"}) == 1
        assert value("tokenguard_introspection_breaker_state", {"state": "closed"}) == 0
        idp.down = True
        clock.advance(3601)
        client.get("/photos/summer", headers=bearer(idp.token()))  # a failed refresh: stale keys still serve
        assert (value("tokenguard_jwks_fresh"), value("tokenguard_jwks_stale"), value("tokenguard_ready")) == (0, 1, 1)
        assert value("tokenguard_jwks_fetch_failures_total") == 1
    assert value("tokenguard_hook_errors_total") == 0


def test_prometheus_collector_binds_from_a_metrics_endpoint(clock: ManualClock, idp: Issuer) -> None:
    """The documented pattern: an unbound collector yields nothing, then a public /metrics binds it."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from tokenguard.integrations.prometheus import PrometheusHook, TokenGuardCollector

    registry = prometheus_client.CollectorRegistry()
    collector = TokenGuardCollector()
    registry.register(collector)
    assert registry.get_sample_value("tokenguard_ready") is None

    @public
    async def metrics(request: Request) -> Response:
        collector.bind(request.scope["tokenguard"])
        return Response(prometheus_client.generate_latest(registry), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    app = Starlette(routes=[*ROUTES, Route("/metrics", metrics)])
    app.add_middleware(
        TokenGuard,
        issuer=ISSUER,
        audience=AUDIENCE,
        clock=clock,
        prefetch=True,
        on_decision=PrometheusHook(registry=registry),
    )
    with TestClient(app) as client:
        client.get("/photos/summer", headers=bearer(idp.token()))
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "tokenguard_ready 1.0" in text
    assert "tokenguard_jwks_keys 3.0" in text
    assert 'tokenguard_decisions_total{outcome="allow",reason="ok",route="/photos/{album}"} 1.0' in text
    assert 'tokenguard_decisions_total{outcome="allow",reason="public",route="/metrics"} 1.0' in text


def test_prometheus_collector_names_clash_is_refused_at_registration(clock: ManualClock) -> None:
    """``describe()`` gives the names up front, so a second collector with the same prefix is refused."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from tokenguard.integrations.prometheus import TokenGuardCollector

    registry = prometheus_client.CollectorRegistry()
    registry.register(TokenGuardCollector(make_guard(clock)))
    registry.register(TokenGuardCollector(make_guard(clock), prefix="second"))
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(TokenGuardCollector(make_guard(clock)))


# -- OpenTelemetry -----------------------------------------------------------------------------------------


@pytest.fixture
def otel() -> Any:
    """A meter from the SDK with an in-memory reader: ``(meter, read)``, ``read()`` giving name -> points."""
    pytest.importorskip("opentelemetry.metrics")
    sdk = pytest.importorskip("opentelemetry.sdk.metrics")
    export = pytest.importorskip("opentelemetry.sdk.metrics.export")
    reader = export.InMemoryMetricReader()
    provider = sdk.MeterProvider(metric_readers=[reader])

    def read() -> dict[str, Any]:
        found: dict[str, Any] = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = metric
        return found

    yield provider.get_meter("tokenguard-test"), read
    provider.shutdown()


def test_otel_hook_records_decisions_and_latency(clock: ManualClock, idp: Issuer, otel: Any) -> None:
    """``tokenguard.decisions`` by outcome/reason/route and ``tokenguard.decision.duration`` in seconds."""
    from tokenguard.integrations.opentelemetry import DEFAULT_BOUNDARIES, OpenTelemetryHook

    meter, read = otel
    with TestClient(make_guard(clock, on_decision=OpenTelemetryHook(meter=meter))) as client:
        drive(client, idp)
    metrics = read()
    decisions = metrics["tokenguard.decisions"]
    assert decisions.unit == "{decision}"
    counted = {
        (p.attributes["tokenguard.outcome"], p.attributes["tokenguard.reason"], p.attributes["http.route"]): p.value
        for p in decisions.data.data_points
    }
    assert counted == {
        ("allow", "ok", "/photos/{album}"): 1,
        ("deny", "expired", "/photos/{album}"): 1,
        ("deny", "missing_token", "/photos/{album}"): 1,
        ("allow", "public", "/health"): 1,
    }
    duration = metrics["tokenguard.decision.duration"]
    assert duration.unit == "s"
    points = {(p.attributes["tokenguard.outcome"], p.attributes["http.route"]): p for p in duration.data.data_points}
    assert points["deny", "/photos/{album}"].count == 2
    assert points["deny", "/photos/{album}"].sum > 0
    assert tuple(points["deny", "/photos/{album}"].explicit_bounds) == DEFAULT_BOUNDARIES


def test_otel_hook_observes_a_guards_state(
    clock: ManualClock, idp: Issuer, endpoint: IntrospectionEndpoint, otel: Any
) -> None:
    """``observe(guard)`` reports readiness, keys, breaker state and counters at each collection."""
    from tokenguard.integrations.opentelemetry import OpenTelemetryHook

    meter, read = otel
    created: list[str] = []

    class CountingMeter:
        """The SDK meter, counting the observable instruments asked of it."""

        def __getattr__(self, name: str) -> Any:
            attribute = getattr(meter, name)
            if not name.startswith("create_observable"):
                return attribute

            def create(instrument: str, *args: Any, **kwargs: Any) -> Any:
                created.append(instrument)
                return attribute(instrument, *args, **kwargs)

            return create

    hook = OpenTelemetryHook(meter=CountingMeter())
    guard = make_guard(clock, prefetch=True, on_decision=hook)
    assert hook.observe(guard) is hook
    count = len(created)
    assert count == len(set(created)) > 10
    hook.observe(guard)  # a second call only rebinds: no duplicate instruments
    assert len(created) == count

    def value(name: str, **attributes: str) -> float:
        points = [p for p in read()[name].data.data_points if dict(p.attributes) == attributes]
        assert len(points) == 1, name
        return float(points[0].value)

    with TestClient(guard) as client:
        assert value("tokenguard.ready") == 1
        assert value("tokenguard.jwks.keys") == 3
        assert value("tokenguard.jwks.last_fetch") == T0
        assert value("tokenguard.jwks.fetches") == 1
        token = idp.token(scope="write:transfers")
        endpoint.activate(token)
        client.post("/transfers", headers=bearer(token))
        client.post("/transfers", headers=bearer(token))
        assert value("tokenguard.introspection.calls") == 1
        assert value("tokenguard.introspection.cache.hits") == 1
        assert value("tokenguard.introspection.breaker.state", state="closed") == 1
        assert value("tokenguard.introspection.breaker.state", state="open") == 0


def test_otel_hook_works_with_the_api_alone(clock: ManualClock, idp: Issuer) -> None:
    """Without an SDK the global meter is the API's no-op meter: decisions go through, nothing breaks."""
    pytest.importorskip("opentelemetry.metrics")
    from opentelemetry.metrics import NoOpMeter

    from tokenguard.integrations.opentelemetry import OpenTelemetryHook

    hook = OpenTelemetryHook(meter=NoOpMeter("tokenguard"))
    guard = make_guard(clock, on_decision=hook)
    hook.observe(guard)
    with TestClient(guard) as client:
        drive(client, idp)
    assert guard.metrics_snapshot()["hook_errors"] == 0
    default = OpenTelemetryHook()  # the global provider's meter (a proxy until an SDK is installed)
    assert default.meter is not None


def test_collector_exports_the_revocation_list_gauges() -> None:
    """``revocation_entries`` and ``revocations_stale`` come from ``status()["fleet"]["revocations"]``."""
    from tokenguard.integrations._common import gauges

    status = {"fleet": {"revocations": {"entries": 3, "stale": True}}}
    values = gauges(status)
    assert values["revocation_entries"] == 3.0
    assert values["revocations_stale"] == 1.0
    assert "revocation_entries" not in gauges({})
