"""Pub/sub behaviour, written once and run on both backends (memory hub and RabbitMQ)."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog
from pydantic import BaseModel

from bus import Bus, InvalidName, PayloadError
from tests.conftest import BusFactory, Recorder, eventually


async def barrier(publisher: Bus, receivers: list[Bus], channel: str = "barrier") -> None:
    """Publish a marker through ``publisher`` and wait until every receiver got it.

    Deliveries from one publisher on one channel are ordered, so once the marker arrived,
    anything published earlier on that channel has been delivered (or dropped) too.
    """
    recorders = []
    for bus in receivers:
        rec = Recorder(f"barrier@{bus.instance_id}")
        await bus.pubsub.subscribe(channel, rec)
        recorders.append(rec)
    await publisher.pubsub.publish(channel, "marker", skip_self=False)
    for rec in recorders:
        await rec.wait_for(1)


async def cluster(make_bus: BusFactory, n: int = 3) -> list[Bus]:
    return [await make_bus() for _ in range(n)]


async def test_publish_reaches_other_instances_but_not_self(make_bus: BusFactory) -> None:
    a, b, c = await cluster(make_bus)
    recs = {bus.instance_id: Recorder(bus.instance_id) for bus in (a, b, c)}
    for bus in (a, b, c):
        await bus.pubsub.subscribe("news", recs[bus.instance_id])

    await a.pubsub.publish("news", {"n": 1})

    assert await recs[b.instance_id].wait_for(1) == [{"n": 1}]
    assert await recs[c.instance_id].wait_for(1) == [{"n": 1}]
    # same channel, so the barrier orders after the first message
    await a.pubsub.publish("news", "after", skip_self=False)
    await recs[a.instance_id].wait_for(1)
    assert recs[a.instance_id].messages == ["after"]


async def test_skip_self_false_reaches_self_too_exactly_once(make_bus: BusFactory) -> None:
    a, b, c = await cluster(make_bus)
    ra, rb = Recorder("a"), Recorder("b")
    await a.pubsub.subscribe("news", ra)
    await b.pubsub.subscribe("news", rb)

    await a.pubsub.publish("news", [1, 2, 3], skip_self=False)

    assert await ra.wait_for(1) == [[1, 2, 3]]
    assert await rb.wait_for(1) == [[1, 2, 3]]
    # a's own copy from the broker, queued before c's marker, has been dropped by now
    await barrier(c, [a, b])
    assert ra.messages == [[1, 2, 3]]
    assert rb.messages == [[1, 2, 3]]


async def test_only_self_stays_on_this_instance(make_bus: BusFactory) -> None:
    a, b = await cluster(make_bus, 2)
    ra, rb = Recorder("a"), Recorder("b")
    await a.pubsub.subscribe("news", ra)
    await b.pubsub.subscribe("news", rb)

    await a.pubsub.publish("news", "local", only_self=True)

    assert ra.messages == ["local"]  # delivered before publish returned
    await a.pubsub.publish("news", "broadcast")
    await rb.wait_for(1)
    assert rb.messages == ["broadcast"]


async def test_only_self_never_touches_the_broker(make_bus: BusFactory) -> None:
    bus = await make_bus(start=False)  # not connected: the broker is out of reach
    rec = Recorder()
    await bus.pubsub.subscribe("local", rec)
    await bus.pubsub.publish("local", {"x": 1}, only_self=True)
    assert rec.messages == [{"x": 1}]


async def test_subscribing_a_handler_twice_keeps_one(make_bus: BusFactory) -> None:
    a, b = await cluster(make_bus, 2)
    rec = Recorder()
    first = await b.pubsub.subscribe("news", rec)
    second = await b.pubsub.subscribe("news", rec)
    assert first is second
    assert len(b.pubsub.subscriptions("news")) == 1

    await a.pubsub.publish("news", 1)
    await a.pubsub.publish("news", 2)
    await rec.wait_for(2)
    await barrier(a, [b])
    assert rec.messages == [1, 2]


async def test_subscriptions_made_before_start_are_bound_on_start(make_bus: BusFactory) -> None:
    a = await make_bus()
    b = await make_bus(start=False)
    rec = Recorder()
    await b.pubsub.subscribe("early", rec)
    await b.start()

    await a.pubsub.publish("early", "hello")
    assert await rec.wait_for(1) == ["hello"]


async def test_unsubscribe_and_cancel_stop_deliveries(make_bus: BusFactory) -> None:
    a, b = await cluster(make_bus, 2)
    kept, dropped, cancelled = Recorder("kept"), Recorder("dropped"), Recorder("cancelled")
    await b.pubsub.subscribe("news", kept)
    await b.pubsub.subscribe("news", dropped)
    sub = await b.pubsub.subscribe("news", cancelled)

    await b.pubsub.unsubscribe("news", dropped)
    await sub.cancel()
    await a.pubsub.publish("news", "x")
    await kept.wait_for(1)
    await barrier(a, [b])
    assert dropped.messages == []
    assert cancelled.messages == []


async def test_unsubscribing_the_last_handler_unbinds_the_channel(make_bus: BusFactory) -> None:
    a, b = await cluster(make_bus, 2)
    rec = Recorder()
    sub = await b.pubsub.subscribe("news", rec)
    await sub.cancel()
    await a.pubsub.publish("news", "lost")
    again = Recorder("again")
    await b.pubsub.subscribe("news", again)
    await a.pubsub.publish("news", "seen")
    assert await again.wait_for(1) == ["seen"]
    assert rec.messages == []


async def test_debounce_collapses_equal_payloads_into_one_trailing_call(
    make_bus: BusFactory,
) -> None:
    a, b = await cluster(make_bus, 2)
    rec = Recorder()
    await b.pubsub.subscribe("schema", rec, debounce=0.3)

    for _ in range(5):
        await a.pubsub.publish("schema", {"collection": "users"})
    await a.pubsub.publish("schema", {"collection": "posts"})

    await rec.wait_for(2)
    assert sorted(m["collection"] for m in rec.messages) == ["posts", "users"]
    await eventually(lambda: b.pubsub.pending_debounced == 0, what="debounce drained")
    assert len(rec.messages) == 2


async def test_debounce_is_keyed_by_handler_too(make_bus: BusFactory) -> None:
    a, b = await cluster(make_bus, 2)
    first, second = Recorder("first"), Recorder("second")
    await b.pubsub.subscribe("schema", first, debounce=0.1)
    await b.pubsub.subscribe("schema", second, debounce=0.1)

    await a.pubsub.publish("schema", "same")

    assert await first.wait_for(1) == ["same"]
    assert await second.wait_for(1) == ["same"]


async def test_debounce_waits_for_the_last_message(make_bus: BusFactory) -> None:
    a, b = await cluster(make_bus, 2)
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def handler(_: Any) -> None:
        calls.append(loop.time())

    await b.pubsub.subscribe("tick", handler, debounce=0.4)
    probe = Recorder("probe")
    await b.pubsub.subscribe("tick", probe)
    started = loop.time()
    for i in range(3):
        await a.pubsub.publish("tick", "same")
        await probe.wait_for(i + 1)
        await asyncio.sleep(0.15)
    last_arrival = loop.time() - 0.15
    await eventually(lambda: len(calls) == 1, what="one debounced call")
    assert calls[0] >= last_arrival + 0.35  # trailing edge: after the last message, not the first
    assert calls[0] - started >= 0.4 + 2 * 0.15


async def test_stop_cancels_pending_debounced_calls(make_bus: BusFactory) -> None:
    a, b = await cluster(make_bus, 2)
    debounced, probe = Recorder("debounced"), Recorder("probe")
    await b.pubsub.subscribe("schema", debounced, debounce=0.3)
    await b.pubsub.subscribe("schema", probe)

    await a.pubsub.publish("schema", "change")
    await probe.wait_for(1)
    assert b.pubsub.pending_debounced == 1
    await b.stop()

    assert b.pubsub.pending_debounced == 0
    await asyncio.sleep(0.5)  # longer than the debounce: it would have fired by now
    assert debounced.messages == []


async def test_a_failing_handler_does_not_hurt_others(make_bus: BusFactory) -> None:
    a, b, c = await cluster(make_bus)
    failed = asyncio.Event()

    async def broken(_: Any) -> None:
        failed.set()
        raise RuntimeError("boom")

    rb, rc = Recorder("b"), Recorder("c")
    await b.pubsub.subscribe("news", broken)
    await b.pubsub.subscribe("news", rb)
    await c.pubsub.subscribe("news", rc)

    await a.pubsub.publish("news", 1)
    await a.pubsub.publish("news", 2)

    assert await rb.wait_for(2) == [1, 2]
    assert await rc.wait_for(2) == [1, 2]
    assert failed.is_set()


class Order(BaseModel):
    id: int
    item: str


async def test_pydantic_models_as_payload_and_receive_model(
    make_bus: BusFactory, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    a, b = await cluster(make_bus, 2)
    typed, raw = Recorder("typed"), Recorder("raw")
    await b.pubsub.subscribe("orders", typed, model=Order)
    await b.pubsub.subscribe("orders", raw)

    await a.pubsub.publish("orders", Order(id=1, item="book"))
    await a.pubsub.publish("orders", {"id": "not a number"})
    await a.pubsub.publish("orders", {"id": 2, "item": "pen"})

    await raw.wait_for(3)
    await typed.wait_for(2)
    assert typed.messages == [Order(id=1, item="book"), Order(id=2, item="pen")]
    assert raw.messages[0] == {"id": 1, "item": "book"}
    invalid = [e for e in debug_logs if e["event"] == "pubsub.invalid_payload"]
    assert len(invalid) == 1
    assert invalid[0]["model"] == "Order" and invalid[0]["channel"] == "orders"


async def test_handler_runs_with_the_publishers_trace_id(make_bus: BusFactory) -> None:
    a, b = await cluster(make_bus, 2)
    seen: list[dict[str, Any]] = []
    got = asyncio.Event()

    async def handler(_: Any) -> None:
        seen.append(structlog.contextvars.get_contextvars())
        got.set()

    await b.pubsub.subscribe("traced", handler)
    with structlog.contextvars.bound_contextvars(trace_id="trace-123"):
        message_id = await a.pubsub.publish("traced", {})
    await asyncio.wait_for(got.wait(), 10)

    assert seen[0]["trace_id"] == "trace-123"
    assert seen[0]["message_id"] == message_id
    assert seen[0]["channel"] == "traced"
    assert seen[0]["instance"] == b.instance_id
    assert seen[0]["app"] == b.name


async def test_unserialisable_payload_raises_naming_the_channel(make_bus: BusFactory) -> None:
    a, b = await cluster(make_bus, 2)
    rec = Recorder()
    await b.pubsub.subscribe("news", rec)

    for kwargs in ({}, {"only_self": True}, {"skip_self": False}):
        with pytest.raises(PayloadError, match="'news'"):
            await a.pubsub.publish("news", {"when": object()}, **kwargs)
    with pytest.raises(PayloadError, match="max_message_bytes"):
        await a.pubsub.publish("news", b"x" * (a.settings.max_message_bytes + 1))

    await a.pubsub.publish("news", "still fine")
    assert await rec.wait_for(1) == ["still fine"]


@pytest.mark.parametrize("bad", ["has space", "user@host", "a:b", "", "é", "x" * 201])
async def test_invalid_channel_names_are_refused(make_bus: BusFactory, bad: str) -> None:
    bus = await make_bus()
    with pytest.raises(InvalidName, match="invalid channel name"):
        await bus.pubsub.subscribe(bad, Recorder())
    with pytest.raises(InvalidName, match="invalid channel name"):
        await bus.pubsub.publish(bad, 1)


async def test_publish_and_delivery_are_logged(
    make_bus: BusFactory, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    a, b = await cluster(make_bus, 2)
    rec = Recorder()
    await b.pubsub.subscribe("audit", rec)
    message_id = await a.pubsub.publish("audit", "hi")
    await rec.wait_for(1)

    published = [e for e in debug_logs if e["event"] == "pubsub.publish"]
    delivered = [e for e in debug_logs if e["event"] == "pubsub.deliver"]
    assert published and published[0]["channel"] == "audit"
    assert published[0]["message_id"] == message_id
    assert published[0]["instance"] == a.instance_id
    assert delivered and delivered[0]["message_id"] == message_id
    assert delivered[0]["instance"] == b.instance_id
    assert delivered[0]["trace_id"] == published[0]["trace_id"]
