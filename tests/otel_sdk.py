"""The OpenTelemetry SDK for tests: real providers, set once per process as the global ones,
an in-memory span exporter that records only while a test asks (``recording()``), an
in-memory metric reader, and a Prometheus reader (its collector is on ``prometheus_client``'s
default registry, so tests can scrape :func:`bus.prometheus.metrics_app`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class _Switched(SpanExporter):
    """Forwards spans to the in-memory exporter only while recording."""

    def __init__(self, inner: InMemorySpanExporter) -> None:
        self.inner = inner
        self.on = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.on:
            return self.inner.export(spans)
        return SpanExportResult.SUCCESS


class Sdk:
    """The process's SDK: ``spans()`` finished while recording, ``metric_points(name)``, and
    ``prometheus``, the reader behind the default registry's Prometheus text."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self._switch = _Switched(self.exporter)
        self.reader = InMemoryMetricReader()
        self.prometheus = PrometheusMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self._switch))
        trace.set_tracer_provider(tracer_provider)
        self.meter_provider = MeterProvider(metric_readers=[self.reader, self.prometheus])
        metrics.set_meter_provider(self.meter_provider)

    @contextmanager
    def recording(self) -> Iterator[Sdk]:
        """Record spans for the block (the exporter starts empty)."""
        self.exporter.clear()
        self._switch.on = True
        try:
            yield self
        finally:
            self._switch.on = False

    def spans(self) -> list[ReadableSpan]:
        """Spans finished while recording."""
        return list(self.exporter.get_finished_spans())

    def metric_points(self, name: str) -> list[Any]:
        """The data points of metric ``name`` now (cumulative since the process began)."""
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        if data is None:
            return points
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


_SDK: Sdk | None = None


def sdk() -> Sdk:
    """The process's test SDK, installed on first use."""
    global _SDK  # noqa: PLW0603 - OpenTelemetry's providers are process-wide
    if _SDK is None:
        _SDK = Sdk()
    return _SDK
