"""What the managers report to tracing and metrics: a small protocol, its no-op default, and
the names of the metrics.

The managers never import OpenTelemetry: :class:`bus.otel.OtelTelemetry` implements
:class:`Telemetry` over its API when the ``otel`` extra is installed; otherwise the bus hands
the managers :data:`NO_TELEMETRY`, whose every call costs next to nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, Protocol

Attributes = Mapping[str, str | int | float | bool]
MetricKind = Literal["counter", "histogram", "gauge"]

# Names and units follow OpenTelemetry's messaging semantic conventions where they exist.
PUBLISHED = "messaging.client.sent.messages"
DELIVERED = "messaging.client.consumed.messages"
PROCESS_DURATION = "messaging.process.duration"
FAILED = "clusterbus.messages.failed"
RETRIED = "clusterbus.messages.retried"
DEAD_LETTERED = "clusterbus.messages.dead_lettered"
DELIVERY_LAG = "clusterbus.messages.delivery_lag"
LOCK_WAIT = "clusterbus.lock.wait.duration"
LOCK_HOLD = "clusterbus.lock.hold.duration"
LOCK_LOST = "clusterbus.lock.lost"
CACHE_HITS = "clusterbus.cache.hits"
CACHE_MISSES = "clusterbus.cache.misses"
INVALIDATIONS_SENT = "clusterbus.cache.invalidations.sent"
INVALIDATIONS_RECEIVED = "clusterbus.cache.invalidations.received"
RECONNECTS = "clusterbus.connection.reconnects"
DEAD_QUEUE_DEPTH = "clusterbus.queue.dead.depth"

DESTINATION = "messaging.destination.name"
"""The attribute naming a metric's exchange or queue (per channel: bounded by the app)."""

METRICS: Mapping[str, tuple[MetricKind, str, str]] = MappingProxyType(
    {
        PUBLISHED: ("counter", "{message}", "Messages published (pub/sub, sync, queue)."),
        DELIVERED: ("counter", "{message}", "Deliveries handled (pub/sub) and queue attempts."),
        PROCESS_DURATION: ("histogram", "s", "Time handlers took, per delivery or attempt."),
        FAILED: ("counter", "{message}", "Deliveries or attempts whose handler raised."),
        RETRIED: ("counter", "{message}", "Queue messages sent to a retry."),
        DEAD_LETTERED: ("counter", "{message}", "Queue messages parked in the dead queue."),
        DELIVERY_LAG: ("histogram", "s", "From publish to the start of its handling."),
        LOCK_WAIT: ("histogram", "s", "Time to acquire a lock (per key prefix)."),
        LOCK_HOLD: ("histogram", "s", "Time a lock was held (per key prefix)."),
        LOCK_LOST: ("counter", "{lock}", "Leases lost before release (per key prefix)."),
        CACHE_HITS: ("counter", "{lookup}", "Cache lookups that found a value."),
        CACHE_MISSES: ("counter", "{lookup}", "Cache lookups that found nothing."),
        INVALIDATIONS_SENT: ("counter", "{message}", "Cache invalidations announced."),
        INVALIDATIONS_RECEIVED: ("counter", "{message}", "Cache invalidations applied."),
        RECONNECTS: ("counter", "{reconnect}", "Broker connections re-established."),
        DEAD_QUEUE_DEPTH: ("gauge", "{message}", "Messages in a dead queue, when asked."),
    }
)
"""Every metric: its kind, unit and description."""

NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Span(Protocol):
    """A span that ends when its holder says (a lock's hold)."""

    def end(self, attributes: Attributes | None = None) -> None:
        """End the span, adding ``attributes``."""


class Telemetry(Protocol):
    """Tracing and metrics, as the managers use them."""

    @property
    def enabled(self) -> bool:
        """Whether anything is recorded now: hot paths skip telemetry (spans, attribute
        dicts, clocks) altogether while it is False."""

    def producer(
        self, destination: str, *, message_id: str, routing_key: str | None = None
    ) -> contextlib.AbstractContextManager[Mapping[str, str]]:
        """A PRODUCER span around one publish to ``destination`` (an exchange or queue);
        yields the headers that carry its context to the consumers."""

    def consumer(
        self,
        destination: str,
        *,
        message_id: str,
        headers: Mapping[str, Any],
        attempt: int | None = None,
    ) -> contextlib.AbstractContextManager[None]:
        """A CONSUMER span around one delivery or queue attempt, continuing the trace the
        ``headers`` carry."""

    def internal(
        self, name: str, attributes: Attributes
    ) -> contextlib.AbstractContextManager[None]:
        """An INTERNAL span (a lock's wait, a cache miss's computation)."""

    def start(self, name: str, attributes: Attributes) -> Span:
        """An INTERNAL span that lasts until :meth:`Span.end` (a lock's hold)."""

    def trace_id(self) -> str | None:
        """The trace id (hex) of the active span, or None."""

    def add(self, metric: str, amount: int = 1, attributes: Attributes = NO_HEADERS) -> None:
        """Add to counter ``metric``."""

    def record(self, metric: str, value: float, attributes: Attributes = NO_HEADERS) -> None:
        """Record ``value`` in histogram or gauge ``metric``."""


class _NoSpan:
    def end(self, attributes: Attributes | None = None) -> None:
        """Nothing to end."""


NO_SPAN: Span = _NoSpan()
"""A span that records nothing."""

# nullcontext objects are reusable and reentrant: one each serves every call
_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()
_NO_HEADERS_CONTEXT: contextlib.nullcontext[Mapping[str, str]] = contextlib.nullcontext(NO_HEADERS)


class NoTelemetry:
    """:class:`Telemetry` that records nothing (OpenTelemetry not installed, or switched
    off)."""

    enabled = False

    def producer(
        self, destination: str, *, message_id: str, routing_key: str | None = None
    ) -> contextlib.AbstractContextManager[Mapping[str, str]]:
        """No span; no headers."""
        return _NO_HEADERS_CONTEXT

    def consumer(
        self,
        destination: str,
        *,
        message_id: str,
        headers: Mapping[str, Any],
        attempt: int | None = None,
    ) -> contextlib.AbstractContextManager[None]:
        """No span."""
        return _NOTHING

    def internal(
        self, name: str, attributes: Attributes
    ) -> contextlib.AbstractContextManager[None]:
        """No span."""
        return _NOTHING

    def start(self, name: str, attributes: Attributes) -> Span:
        """No span."""
        return NO_SPAN

    def trace_id(self) -> str | None:
        """No span is ever active."""
        return None

    def add(self, metric: str, amount: int = 1, attributes: Attributes = NO_HEADERS) -> None:
        """Nothing recorded."""

    def record(self, metric: str, value: float, attributes: Attributes = NO_HEADERS) -> None:
        """Nothing recorded."""


NO_TELEMETRY: Telemetry = NoTelemetry()


def key_prefix(key: str) -> str:
    """The part of a lock key that metrics name it by (bounded cardinality, never the raw
    key): what comes before the first ``:``, ``/`` or ``.``, at most 40 characters; ``-``
    when the key has none of them."""
    for index, char in enumerate(key):
        if char in ":/.":
            return key[: min(index, 40)] or "-"
    return "-"
