"""A Prometheus exposition of the bus's metrics (the ``prometheus`` extra).

The bus records its metrics through the OpenTelemetry metrics API (:mod:`bus.otel`); this
module turns them into Prometheus text with the OpenTelemetry Prometheus exporter
(``opentelemetry-exporter-prometheus``), whose :class:`PrometheusMetricReader` registers a
collector on ``prometheus_client``'s default registry, and serves that registry from any ASGI
app:

>>> from clusterbus.prometheus import enable_prometheus, metrics_app
>>> enable_prometheus()  # once, at start  # doctest: +SKIP
>>> app.routes.append(Route("/metrics", metrics_app()))  # Starlette's Route  # doctest: +SKIP

The SDK and ``prometheus_client`` are imported only inside these functions, so the bus
imports without the extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bus.asgi import ASGIApp, Receive, Scope, Send, _lifespan

READER_LINE = (
    "MeterProvider(metric_readers=[PrometheusMetricReader(), ...]) "
    "(from opentelemetry.exporter.prometheus import PrometheusMetricReader)"
)
"""The code that gives an application's own MeterProvider a Prometheus reader."""

_enabled: Any = None
"""The MeterProvider :func:`enable_prometheus` set (so a second call changes nothing)."""


class PrometheusSetupError(RuntimeError):
    """:func:`enable_prometheus` cannot set its MeterProvider: one is already set."""


def enable_prometheus() -> None:
    """Make the bus's metrics scrapeable: set an OpenTelemetry SDK ``MeterProvider`` whose
    one reader is a ``PrometheusMetricReader`` as the process's global provider.

    Call it once at start, before the metrics matter (instruments made earlier through the
    API's default provider follow it). A second call does nothing. When the application has
    already set an SDK ``MeterProvider`` (its own readers, an OTLP exporter ...), OpenTelemetry
    allows no second one: this raises :class:`PrometheusSetupError` saying to add a
    ``PrometheusMetricReader()`` to that provider's ``metric_readers`` instead (the
    exposition is then the same).

    Raises:
        PrometheusSetupError: a MeterProvider is already set.
        ModuleNotFoundError: the ``prometheus`` extra is not installed.
    """
    global _enabled  # noqa: PLW0603 - OpenTelemetry's provider is process-wide
    from opentelemetry import metrics
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    current = metrics.get_meter_provider()
    if _enabled is not None and current is _enabled:
        return
    if isinstance(current, MeterProvider):
        raise PrometheusSetupError(
            "an OpenTelemetry SDK MeterProvider is already set, and OpenTelemetry allows one "
            "per process: instead of enable_prometheus(), add a Prometheus reader to its "
            f"readers: {READER_LINE}"
        )
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    metrics.set_meter_provider(provider)  # only logs a warning when one is set already
    if metrics.get_meter_provider() is not provider:
        provider.shutdown()  # unregisters its collector
        kind = type(metrics.get_meter_provider()).__name__
        raise PrometheusSetupError(
            f"a MeterProvider ({kind}) is already set and OpenTelemetry allows one per "
            f"process: set an SDK one with a Prometheus reader instead: {READER_LINE}"
        )
    _enabled = provider


class _MetricsApp:
    """The ASGI app of :func:`metrics_app` (an object, not a function, so that a Starlette
    ``Route`` serves it as an ASGI app at an exact path)."""

    def __init__(self, exposition: Callable[[Scope, Receive, Send], Any]) -> None:
        self._exposition = exposition

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            scope.setdefault("headers", [])  # prometheus_client reads them
            await self._exposition(scope, receive, send)


def metrics_app() -> ASGIApp:
    """An ASGI app answering ``GET`` (at whatever path it is served) with the Prometheus text
    of ``prometheus_client``'s default registry: the bus's metrics once
    :func:`enable_prometheus` ran (or a ``PrometheusMetricReader`` is on the application's
    provider), and whatever else the process registered there.

    In FastAPI or Starlette, ``app.routes.append(Route("/metrics", metrics_app()))`` serves
    it at ``/metrics`` exactly (``app.mount("/metrics", ...)`` would redirect ``/metrics`` to
    ``/metrics/``); it can also be served alone (``uvicorn module:app`` with
    ``app = metrics_app()``). It answers lifespan messages and ignores websockets.

    Raises:
        ModuleNotFoundError: ``prometheus_client`` (the ``prometheus`` extra) is missing.
    """
    from prometheus_client import REGISTRY, make_asgi_app

    return _MetricsApp(make_asgi_app(REGISTRY))
