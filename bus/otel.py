"""OpenTelemetry: spans, context propagation and metrics through its API (the ``otel``
extra). The SDK, exporters and sampling are the application's: without an SDK configured,
the API's no-op providers make every call cheap.

* Every publish is a PRODUCER span ``publish <destination>`` and injects the W3C
  ``traceparent``/``tracestate`` (and ``baggage``) into the message headers; every delivery
  and queue attempt is a CONSUMER span ``process <destination>`` that continues that trace
  (its parent) and links to the producer's span. Queue headers travel with retries, delay
  tiers, the dead queue and replays, so all their attempts are in the publisher's trace.
* Attributes follow the messaging semantic conventions: ``messaging.system`` (``rabbitmq``,
  in memory mode too, with ``clusterbus.mode``), ``messaging.destination.name``,
  ``messaging.message.id``, ``messaging.operation.type``/``.name``,
  ``messaging.rabbitmq.destination.routing_key`` for queue publishes.
* Metrics are the instruments of :data:`managers.telemetry.METRICS`, made on first use.

:func:`make_telemetry` returns :data:`~managers.telemetry.NO_TELEMETRY` when the
``opentelemetry-api`` package is missing or the ``telemetry`` setting is off.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

from managers.telemetry import (
    METRICS,
    NO_HEADERS,
    NO_SPAN,
    NO_TELEMETRY,
    Attributes,
    Span,
    Telemetry,
)

_CARRIED = ("traceparent", "tracestate", "baggage")
_RECHECK = 1.0
"""How often (s) :attr:`OtelTelemetry.enabled` looks at the global providers again."""
_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Histogram bucket boundaries (s) recommended for durations by the semantic conventions,
widened at both ends."""


def available() -> bool:
    """True when the OpenTelemetry API can be imported (the ``otel`` extra)."""
    return importlib.util.find_spec("opentelemetry") is not None


def make_telemetry(*, enabled: bool, mode: str) -> Telemetry:
    """:class:`OtelTelemetry` when ``enabled`` and the API is installed, else no-op."""
    if enabled and available():
        return OtelTelemetry(mode)
    return NO_TELEMETRY


class _OtelSpan:
    def __init__(self, span: Any) -> None:
        self._span = span

    def end(self, attributes: Attributes | None = None) -> None:
        if attributes:
            self._span.set_attributes(dict(attributes))
        self._span.end()


class OtelTelemetry:
    """:class:`~managers.telemetry.Telemetry` over the OpenTelemetry API's global providers
    (looked up at first use, so providers the application sets after creating the bus
    count)."""

    def __init__(self, mode: str) -> None:
        from opentelemetry import context, metrics, propagate, trace

        from bus import __version__

        self._trace = trace
        self._metrics = metrics
        self._context = context
        self._propagate = propagate
        self._tracer = trace.get_tracer("clusterbus", __version__)
        self._meter = metrics.get_meter("clusterbus", __version__)
        self._instruments: dict[str, Any] = {}
        self._span_base: dict[str, str] = {"messaging.system": "rabbitmq", "clusterbus.mode": mode}
        self._metric_base: dict[str, str] = dict(self._span_base)
        self._span_attributes: dict[tuple[str, str | None], dict[str, str]] = {}
        self._metric_attributes: dict[frozenset[tuple[str, Any]], dict[str, Any]] = {}
        self._unset_meter_provider = _unset_meter_provider_type()
        self._checked_at = -math.inf
        self._tracing_on = self._measuring_on = False

    @property
    def enabled(self) -> bool:
        """True while the application has set a tracer or a meter provider (looked at
        once a second: the API's default providers make only no-op spans and measurements,
        and skipping them altogether costs far less)."""
        now = time.monotonic()
        if now >= self._checked_at + _RECHECK:
            self._checked_at = now
            self._tracing_on = self._tracer_provider_set()
            self._measuring_on = self._meter_provider_set()
        return self._tracing_on or self._measuring_on

    def _tracing(self) -> bool:
        return self.enabled and self._tracing_on

    def _measuring(self) -> bool:
        return self.enabled and self._measuring_on

    def _tracer_provider_set(self) -> bool:
        unset = (self._trace.ProxyTracerProvider, self._trace.NoOpTracerProvider)
        return not isinstance(self._trace.get_tracer_provider(), unset)

    def _meter_provider_set(self) -> bool:
        provider = self._metrics.get_meter_provider()
        unset = self._unset_meter_provider
        return not (
            isinstance(provider, self._metrics.NoOpMeterProvider)
            or (unset is not None and isinstance(provider, unset))
        )

    def _attributes(self, destination: str, operation: str) -> dict[str, str]:
        """A span's attributes but its message id (made once per destination)."""
        key = (destination, operation)
        attributes = self._span_attributes.get(key)
        if attributes is None:
            attributes = self._span_attributes[key] = {
                **self._span_base,
                "messaging.destination.name": destination,
                "messaging.operation.type": "send" if operation == "publish" else "process",
                "messaging.operation.name": operation,
            }
        return attributes

    @contextlib.contextmanager
    def producer(
        self, destination: str, *, message_id: str, routing_key: str | None = None
    ) -> Iterator[Mapping[str, str]]:
        """A PRODUCER span; yields the headers carrying its context."""
        if not self._tracing():  # no tracer provider: no span, no context carried
            yield NO_HEADERS
            return
        attributes: dict[str, str] = {
            **self._attributes(destination, "publish"),
            "messaging.message.id": message_id,
        }
        if routing_key is not None:
            attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
        with self._tracer.start_as_current_span(
            f"publish {destination}",
            kind=self._trace.SpanKind.PRODUCER,
            attributes=attributes,
        ):
            carrier: dict[str, str] = {}
            self._propagate.inject(carrier)
            yield carrier

    @contextlib.contextmanager
    def consumer(
        self,
        destination: str,
        *,
        message_id: str,
        headers: Mapping[str, Any],
        attempt: int | None = None,
    ) -> Iterator[None]:
        """A CONSUMER span continuing the headers' trace (a new trace without them)."""
        if not self._tracing():
            yield
            return
        carrier = {name: _text(headers[name]) for name in _CARRIED if name in headers}
        parent = self._propagate.extract(carrier) if carrier else self._context.Context()
        producer = self._trace.get_current_span(parent).get_span_context()
        links = [self._trace.Link(producer)] if producer.is_valid else []
        attributes: dict[str, str | int] = {
            **self._attributes(destination, "process"),
            "messaging.message.id": message_id,
        }
        if attempt is not None:
            attributes["clusterbus.attempt"] = attempt
        with self._tracer.start_as_current_span(
            f"process {destination}",
            context=parent,
            kind=self._trace.SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        ):
            yield

    def internal(
        self, name: str, attributes: Attributes
    ) -> contextlib.AbstractContextManager[None]:
        """An INTERNAL span around a block."""
        if not self._tracing():
            return contextlib.nullcontext()
        return self._tracer.start_as_current_span(name, attributes=dict(attributes))  # type: ignore[return-value]

    def start(self, name: str, attributes: Attributes) -> Span:
        """An INTERNAL span ended by the caller (not made current)."""
        if not self._tracing():
            return NO_SPAN
        return _OtelSpan(self._tracer.start_span(name, attributes=dict(attributes)))

    def trace_id(self) -> str | None:
        """The active span's trace id, or None (always None without a tracer provider)."""
        if not self._tracing():
            return None
        ids = self._trace.get_current_span().get_span_context()
        return self._trace.format_trace_id(ids.trace_id) if ids.is_valid else None

    def add(self, metric: str, amount: int = 1, attributes: Attributes = NO_HEADERS) -> None:
        """Add to a counter."""
        if self._measuring():
            self._instrument(metric).add(amount, self._with_base(attributes))

    def record(self, metric: str, value: float, attributes: Attributes = NO_HEADERS) -> None:
        """Record in a histogram or set a gauge."""
        if not self._measuring():
            return
        instrument = self._instrument(metric)
        if METRICS[metric][0] == "gauge":
            instrument.set(value, self._with_base(attributes))
        else:
            instrument.record(value, self._with_base(attributes))

    def _with_base(self, attributes: Attributes) -> dict[str, Any]:
        """``attributes`` and the base ones, one dict per distinct set (reused)."""
        key = frozenset(attributes.items())
        merged = self._metric_attributes.get(key)
        if merged is None:
            if len(self._metric_attributes) > 10_000:  # bounded, whatever the callers pass
                self._metric_attributes.clear()
            merged = self._metric_attributes[key] = {**self._metric_base, **attributes}
        return merged

    def _instrument(self, metric: str) -> Any:
        instrument = self._instruments.get(metric)
        if instrument is None:
            kind, unit, description = METRICS[metric]
            meter = self._meter
            if kind == "counter":
                instrument = meter.create_counter(metric, unit=unit, description=description)
            elif kind == "gauge":
                instrument = meter.create_gauge(metric, unit=unit, description=description)
            else:
                instrument = meter.create_histogram(
                    metric,
                    unit=unit,
                    description=description,
                    explicit_bucket_boundaries_advisory=list(_SECONDS_BUCKETS),
                )
            self._instruments[metric] = instrument
        return instrument


def _text(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _unset_meter_provider_type() -> type | None:
    """The class of the API's default meter provider (a proxy until the application sets
    one); None when this version of the API does not have it where expected."""
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # pragma: no cover - another API version: measure always
        return None
    return _ProxyMeterProvider
