"""Idempotent publishing: a caller-supplied message id, and dropping a completed id's copy."""

from __future__ import annotations

import pytest

from bus import InvalidName
from tests.conftest import BusFactory, eventually
from tests.shared.test_queue import Worker, settle


async def test_a_caller_supplied_id_is_the_message_id(make_bus: BusFactory) -> None:
    bus = await make_bus()
    worker = Worker("w")
    await bus.queue.subscribe("jobs", worker, dedupe=0)
    returned = await bus.queue.publish("jobs", {"n": 1}, message_id="order-42_v1")
    assert returned == "order-42_v1"
    await settle(bus, "jobs", 1, worker)
    assert [ctx.id for _, ctx in worker.calls] == ["order-42_v1"]


async def test_the_same_id_twice_runs_twice_without_dedupe(make_bus: BusFactory) -> None:
    bus = await make_bus()
    worker = Worker("w")
    await bus.queue.subscribe("jobs", worker)
    for _ in range(2):  # an application retrying a publish that raised
        await bus.queue.publish("jobs", "pay", message_id="pay-1")
    await settle(bus, "jobs", 2, worker)
    assert [ctx.id for _, ctx in worker.calls] == ["pay-1", "pay-1"]


async def test_dedupe_drops_a_copy_of_a_completed_id(make_bus: BusFactory) -> None:
    bus = await make_bus()
    worker = Worker("w")
    await bus.queue.subscribe("jobs", worker, dedupe=60)
    await bus.queue.publish("jobs", "pay", message_id="pay-1")
    await settle(bus, "jobs", 1, worker)
    await bus.queue.publish("jobs", "pay", message_id="pay-1")  # the retried publish
    await bus.queue.publish("jobs", "next", message_id="pay-2")
    await settle(bus, "jobs", 2, worker)
    assert [m for m, _ in worker.calls] == ["pay", "next"]
    # the copy was acked, not parked or left queued
    assert await bus.queue.dead_letters("jobs") == []
    await bus.queue.unsubscribe("jobs")
    again = Worker("again")
    await bus.queue.subscribe("jobs", again)
    await bus.queue.publish("jobs", "probe")
    await settle(bus, "jobs", 1, again)
    assert [m for m, _ in again.calls] == ["probe"]


async def test_dedupe_keeps_retries_of_a_failing_message(make_bus: BusFactory) -> None:
    """A failed attempt is not a completion: its retries run."""
    bus = await make_bus()
    worker = Worker("w", fail=1)
    await bus.queue.subscribe("jobs", worker, dedupe=60)
    await bus.queue.publish("jobs", "flaky", max_retries=1, message_id="flaky-1")
    await settle(bus, "jobs", 1, worker)
    assert [ctx.attempt for _, ctx in worker.calls] == [0, 1]


async def test_the_window_is_per_instance(make_bus: BusFactory) -> None:
    """Another instance never saw the id complete: its copy runs (documented limit)."""
    first, second = await make_bus(), await make_bus()
    one, two = Worker("one"), Worker("two")
    await first.queue.subscribe("jobs", one, dedupe=60)
    await first.queue.publish("jobs", "x", message_id="x-1")
    await settle(first, "jobs", 1, one)
    await first.queue.unsubscribe("jobs")
    await second.queue.subscribe("jobs", two, dedupe=60)
    await second.queue.publish("jobs", "x", message_id="x-1")
    await eventually(lambda: len(two.done) == 1, what="the copy ran on the other instance")


@pytest.mark.parametrize(
    "bad", ["", "a b", "a:b", "ü", "x" * 129, "a/b", 42, None.__class__.__name__ + "!"]
)
async def test_a_bad_message_id_is_refused_before_anything_is_sent(
    make_bus: BusFactory, bad: object
) -> None:
    bus = await make_bus()
    worker = Worker("w")
    await bus.queue.subscribe("jobs", worker)
    with pytest.raises(InvalidName, match="message_id"):
        await bus.queue.publish("jobs", "x", message_id=bad)  # type: ignore[arg-type]
    await bus.queue.publish("jobs", "probe", message_id="x" * 128)
    await settle(bus, "jobs", 1, worker)
    assert [m for m, _ in worker.calls] == ["probe"]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "5"])
async def test_a_bad_dedupe_window_is_refused(make_bus: BusFactory, bad: object) -> None:
    bus = await make_bus()
    with pytest.raises(ValueError, match="dedupe"):
        await bus.queue.subscribe("jobs", Worker("w"), dedupe=bad)  # type: ignore[arg-type]
