"""OpenTelemetry with the real SDK (in-memory exporter and metric reader), on both backends:
a trace started on instance A continues in handlers on instance C, through retries, the dead
queue and a replay; locks and cache misses are spans; metrics count what happened."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from bus import QueueContext
from managers.telemetry import (
    CACHE_HITS,
    CACHE_MISSES,
    DEAD_LETTERED,
    DEAD_QUEUE_DEPTH,
    DELIVERED,
    DESTINATION,
    FAILED,
    INVALIDATIONS_RECEIVED,
    INVALIDATIONS_SENT,
    LOCK_HOLD,
    LOCK_WAIT,
    PROCESS_DURATION,
    PUBLISHED,
    RETRIED,
)
from tests.conftest import BusFactory, Recorder, eventually
from tests.otel_sdk import Sdk, sdk


@pytest.fixture
def otel() -> Iterator[Sdk]:
    with sdk().recording() as recorded:
        yield recorded


def _tracer() -> trace.Tracer:
    return trace.get_tracer("tests")


def _trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def _spans(otel: Sdk, name: str) -> list[ReadableSpan]:
    return [s for s in otel.spans() if s.name == name]


def _total(otel: Sdk, metric: str, **attributes: Any) -> float:
    """The sum (counters) or count (histograms) of ``metric``'s points with ``attributes``."""
    total = 0.0
    for point in otel.metric_points(metric):
        if all(point.attributes.get(k) == v for k, v in attributes.items()):
            value = getattr(point, "value", None)
            total += float(point.count if value is None else value)
    return total


async def test_a_pubsub_trace_continues_on_another_instance(
    make_bus: BusFactory, otel: Sdk, backend: str
) -> None:
    a, _b, c = await make_bus(), await make_bus(), await make_bus()
    seen: list[int] = []

    async def handler(message: object) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    await c.pubsub.subscribe("news", handler)
    with _tracer().start_as_current_span("request on A") as request:
        await a.pubsub.publish("news", {"n": 1})
    await eventually(lambda: len(seen) == 1, what="C handled the message")
    assert seen == [request.get_span_context().trace_id]

    exchange = f"{a.name}.pubsub.news"
    (producer,) = _spans(otel, f"publish {exchange}")
    assert producer.kind is SpanKind.PRODUCER
    assert producer.attributes is not None
    assert producer.attributes["messaging.system"] == "rabbitmq"
    assert producer.attributes["messaging.destination.name"] == exchange
    assert producer.attributes["clusterbus.mode"] == backend
    await eventually(lambda: bool(_spans(otel, f"process {exchange}")), what="consumer span")
    (consumer,) = _spans(otel, f"process {exchange}")
    assert consumer.kind is SpanKind.CONSUMER
    assert _trace_id(consumer) == request.get_span_context().trace_id
    assert consumer.parent is not None and producer.context is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    assert consumer.attributes is not None
    assert (
        consumer.attributes["messaging.message.id"] == producer.attributes["messaging.message.id"]
    )


async def test_a_queue_trace_goes_through_retries_the_dead_queue_and_a_replay(
    make_bus: BusFactory, otel: Sdk
) -> None:
    a, c = await make_bus(), await make_bus()
    attempts: list[tuple[int, int]] = []
    heal = asyncio.Event()

    async def process(message: object, ctx: QueueContext) -> None:
        attempts.append((ctx.attempt, trace.get_current_span().get_span_context().trace_id))
        if not heal.is_set():
            raise RuntimeError("not yet")

    await c.queue.subscribe("jobs", process)
    with _tracer().start_as_current_span("request on A") as request:
        message_id = await a.queue.publish("jobs", {"job": 1}, max_retries=1)
    origin = request.get_span_context().trace_id
    queue = f"{a.name}.queue.jobs"

    async def dead() -> bool:
        return bool(await a.queue.dead_letters("jobs"))

    deadline = asyncio.get_running_loop().time() + 20
    while not await dead():
        assert asyncio.get_running_loop().time() < deadline, "no dead letter"
        await asyncio.sleep(0.05)
    (depth,) = [
        p for p in otel.metric_points(DEAD_QUEUE_DEPTH) if p.attributes.get(DESTINATION) == queue
    ]
    assert depth.value == 1  # the dead queue's depth, as of the last dead_letters() call
    heal.set()
    assert await a.queue.replay("jobs") == 1
    await eventually(lambda: len(attempts) == 3, what="two attempts, then the replay's")
    assert [attempt for attempt, _ in attempts] == [0, 1, 0]
    assert {trace_id for _, trace_id in attempts} == {origin}

    await eventually(lambda: len(_spans(otel, f"process {queue}")) >= 3, what="3 spans")
    consumers = _spans(otel, f"process {queue}")
    assert {_trace_id(s) for s in consumers} == {origin}
    assert sorted(
        int(str(s.attributes["clusterbus.attempt"])) for s in consumers if s.attributes
    ) == [0, 0, 1]
    (producer,) = _spans(otel, f"publish {queue}")
    assert producer.attributes is not None
    assert producer.attributes["messaging.rabbitmq.destination.routing_key"] == queue
    assert producer.attributes["messaging.message.id"] == message_id
    assert _total(otel, RETRIED, **{"messaging.destination.name": queue}) == 1
    assert _total(otel, DEAD_LETTERED, **{"messaging.destination.name": queue}) == 1
    assert _total(otel, FAILED, **{"messaging.destination.name": queue}) == 2
    assert _total(otel, DELIVERED, **{"messaging.destination.name": queue}) == 3
    assert _total(otel, PROCESS_DURATION, **{"messaging.destination.name": queue}) == 3
    assert _total(otel, PUBLISHED, **{"messaging.destination.name": queue}) == 1


async def test_log_lines_carry_the_opentelemetry_ids(
    make_bus: BusFactory, otel: Sdk, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    a, c = await make_bus(), await make_bus()
    done = Recorder()
    await c.pubsub.subscribe("news", done)
    with _tracer().start_as_current_span("request on A") as request:
        await a.pubsub.publish("news", "hello")
    await done.wait_for(1)
    wanted = trace.format_trace_id(request.get_span_context().trace_id)
    delivered = [e for e in debug_logs if e.get("event") == "pubsub.deliver"]
    assert delivered and all(e["trace_id"] == wanted for e in delivered)
    assert all(len(e["span_id"]) == 16 for e in delivered)
    published = [e for e in debug_logs if e.get("event") == "pubsub.publish"]
    assert published and published[0]["trace_id"] == wanted


async def test_locks_and_cache_misses_are_spans_and_metrics(
    make_bus: BusFactory, otel: Sdk
) -> None:
    a, b = await make_bus(), await make_bus()
    long_key = "report:" + "x" * 200
    async with a.locks.lock("invoice:42") as lease:
        pass
    async with a.locks.lock(long_key):
        pass
    (acquire, _) = _spans(otel, "lock acquire")
    holds = _spans(otel, "lock hold")
    assert acquire.attributes is not None
    assert acquire.attributes["clusterbus.lock.key"] == "invoice:42"
    assert acquire.attributes["clusterbus.lock.token"] == lease.token
    assert holds[0].attributes is not None
    assert holds[0].attributes["clusterbus.lock.token"] == lease.token
    assert holds[1].attributes is not None
    shown = holds[1].attributes["clusterbus.lock.key"]
    assert isinstance(shown, str) and shown.startswith("sha256:") and len(shown) < 64
    assert _total(otel, LOCK_WAIT, **{"clusterbus.lock.key_prefix": "invoice"}) >= 1
    assert _total(otel, LOCK_HOLD, **{"clusterbus.lock.key_prefix": "report"}) >= 1

    cache_name = f"c{a.instance_id[-6:]}"
    ca = await a.cache_manager.create_cache(cache_name)
    cb = await b.cache_manager.create_cache(cache_name)

    async def compute() -> str:
        return "value"

    assert await cb.wrap("k", compute) == "value"  # a miss: a span
    assert await cb.wrap("k", compute) == "value"  # a hit
    (miss,) = _spans(otel, "cache wrap miss")
    assert miss.attributes is not None and miss.attributes["clusterbus.cache.name"] == cache_name
    assert _total(otel, CACHE_MISSES, **{"clusterbus.cache.name": cache_name}) == 1
    assert _total(otel, CACHE_HITS, **{"clusterbus.cache.name": cache_name}) == 1
    await ca.set("k", "new")  # invalidates b's copy
    await eventually(
        lambda: _total(otel, INVALIDATIONS_RECEIVED, **{"clusterbus.cache.name": cache_name}) >= 1,
        what="b applied the invalidation",
    )
    assert _total(otel, INVALIDATIONS_SENT, **{"clusterbus.cache.name": cache_name}) >= 1


async def test_switched_off_no_span_is_made(make_bus: BusFactory, otel: Sdk) -> None:
    a = await make_bus(telemetry=False)
    got = Recorder()
    await a.pubsub.subscribe("quiet", got)
    await a.pubsub.publish("quiet", 1, skip_self=False)
    await got.wait_for(1)
    assert not [s for s in otel.spans() if a.name in s.name]
    logging.getLogger(__name__).debug("no spans: %s", otel.spans())
