"""Event-queue behaviour, written once and run on both backends (memory hub and RabbitMQ)."""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog
from pydantic import BaseModel

from bus import Bus, BusError, InvalidName, PayloadError
from managers.queue import QueueContext
from tests.conftest import BusFactory, eventually


class Worker:
    """A queue handler that records every call and can be held at a gate."""

    def __init__(self, name: str, *, fail: int = 0, gate: asyncio.Event | None = None) -> None:
        self.name = name
        self.calls: list[tuple[Any, QueueContext]] = []
        self.done: list[Any] = []
        self.fail = fail  # fail the first `fail` attempts of every message
        self.gate = gate
        self.running = 0
        self.max_running = 0

    async def __call__(self, message: Any, ctx: QueueContext) -> None:
        self.calls.append((message, ctx))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if ctx.attempt < self.fail:
                raise ValueError(f"boom {message} attempt {ctx.attempt}")
        finally:
            self.running -= 1
        self.done.append(message)


async def settle(bus: Bus, channel: str, count: int, *workers: Worker, within: float = 20) -> None:
    """Wait until ``workers`` finished ``count`` messages in all."""
    await eventually(
        lambda: sum(len(w.done) for w in workers) >= count,
        timeout=within,
        what=f"{count} messages done on {channel!r}",
    )


async def test_publish_is_processed_once_with_its_context(make_bus: BusFactory) -> None:
    bus = await make_bus()
    worker = Worker("w")
    await bus.queue.subscribe("jobs", worker)
    message_id = await bus.queue.publish("jobs", {"n": 1}, timeout=3.0, max_retries=2)
    await settle(bus, "jobs", 1, worker)
    [(message, ctx)] = worker.calls
    assert message == {"n": 1}
    assert ctx.id == message_id
    assert (ctx.attempt, ctx.max_retries, ctx.timeout, ctx.channel) == (0, 2, 3.0, "jobs")
    assert not ctx.cancelled.is_set()
    assert ctx.deadline > asyncio.get_running_loop().time()  # 3 s from the start of the attempt


async def test_competing_consumers_process_each_message_exactly_once(
    make_bus: BusFactory,
) -> None:
    buses = [await make_bus() for _ in range(3)]
    workers = [Worker(b.instance_id) for b in buses]

    async def slow(worker: Worker, message: Any, ctx: QueueContext) -> None:
        await asyncio.sleep(0.005)
        await worker(message, ctx)

    for bus, worker in zip(buses, workers, strict=True):
        await bus.queue.subscribe("jobs", functools.partial(slow, worker))
    for i in range(90):
        await buses[i % 3].queue.publish("jobs", i)
    await settle(buses[0], "jobs", 90, *workers)
    done = [m for w in workers for m in w.done]
    assert sorted(done) == list(range(90))  # every message once, none twice
    assert sum(1 for w in workers if w.done) >= 2  # the work was shared


async def test_concurrency_caps_handlers_in_flight(make_bus: BusFactory) -> None:
    bus = await make_bus()
    gate = asyncio.Event()
    worker = Worker("w", gate=gate)
    await bus.queue.subscribe("jobs", worker, concurrency=3)
    for i in range(10):
        await bus.queue.publish("jobs", i)
    await eventually(lambda: worker.running == 3, what="3 handlers running")
    await asyncio.sleep(0.2)  # room for a 4th delivery, if the cap were broken
    assert worker.running == 3
    gate.set()
    await settle(bus, "jobs", 10, worker)
    assert worker.max_running == 3


async def test_concurrency_zero_is_unlimited(make_bus: BusFactory) -> None:
    bus = await make_bus()
    gate = asyncio.Event()
    worker = Worker("w", gate=gate)
    await bus.queue.subscribe("jobs", worker, concurrency=0)
    for i in range(40):
        await bus.queue.publish("jobs", i)
    await eventually(lambda: worker.running == 40, what="all 40 handlers running at once")
    gate.set()
    await settle(bus, "jobs", 40, worker)


async def test_a_busy_instance_leaves_work_to_others(make_bus: BusFactory) -> None:
    busy, free = await make_bus(), await make_bus()
    idle = {"busy": False}
    busy_worker, free_worker = Worker("busy"), Worker("free")
    await busy.queue.subscribe("jobs", busy_worker, idle=lambda: idle["busy"])
    await free.queue.subscribe("jobs", free_worker)
    for i in range(12):
        await busy.queue.publish("jobs", i)
    await settle(free, "jobs", 12, free_worker)
    assert busy_worker.calls == []
    assert sorted(free_worker.done) == list(range(12))
    # once idle again, the instance takes work
    await free.queue.unsubscribe("jobs")
    idle["busy"] = True
    await free.queue.publish("jobs", "later")
    await settle(busy, "jobs", 1, busy_worker)
    assert busy_worker.done == ["later"]


async def test_timeout_cancels_a_handler_that_ignores_it(make_bus: BusFactory) -> None:
    bus = await make_bus()
    seen: list[tuple[str, bool]] = []

    async def stubborn(message: Any, ctx: QueueContext) -> None:
        try:
            await asyncio.sleep(60)  # never looks at ctx.cancelled
        except asyncio.CancelledError:
            seen.append(("cancelled", ctx.cancelled.is_set()))
            raise

    await bus.queue.subscribe("jobs", stubborn)
    message_id = await bus.queue.publish("jobs", "x", timeout=0.3)
    await eventually(lambda: len(seen) == 1, what="handler cancelled")
    assert seen == [("cancelled", True)]  # ctx.cancelled is set before the cancellation
    [dead] = await wait_dead(bus, "jobs", 1)
    assert dead.id == message_id
    assert "TimeoutError" in dead.error and "0.3" in dead.error
    assert dead.attempts == 1


async def wait_dead(bus: Bus, channel: str, count: int, *, shared: bool = False) -> list[Any]:
    """Poll the dead queue until it holds ``count`` messages."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        dead = await bus.queue.dead_letters(channel, shared=shared)
        if len(dead) >= count:
            return dead
        if loop.time() > deadline:
            pytest.fail(f"dead queue of {channel!r} holds {len(dead)}, expected {count}")
        await asyncio.sleep(0.05)


async def test_failures_are_retried_then_parked_then_replayed(make_bus: BusFactory) -> None:
    a, b = await make_bus(), await make_bus()
    worker = Worker("w", fail=99)
    await a.queue.subscribe("jobs", worker)
    message_id = await b.queue.publish("jobs", "task", max_retries=2)
    [dead] = await wait_dead(b, "jobs", 1)
    assert [ctx.attempt for _, ctx in worker.calls] == [0, 1, 2]  # max_retries + 1 attempts
    assert {ctx.id for _, ctx in worker.calls} == {message_id}
    assert (dead.id, dead.message, dead.attempts) == (message_id, "task", 3)
    assert dead.error == "ValueError: boom task attempt 2"
    assert dead.failed_by == a.instance_id
    assert worker.done == []
    # replay: back with the attempt count reset, and this time it works
    worker.fail = 0
    assert await b.queue.replay("jobs") == 1
    await settle(a, "jobs", 1, worker)
    assert worker.calls[-1][1].attempt == 0
    assert await b.queue.dead_letters("jobs") == []


async def test_retry_backoff_doubles_from_retry_delay(make_bus: BusFactory) -> None:
    bus = await make_bus(retry_delay=0.2, retry_delay_max=0.4)
    stamps: list[float] = []

    async def failing(message: Any, ctx: QueueContext) -> None:
        stamps.append(time.monotonic())
        raise RuntimeError("again")

    await bus.queue.subscribe("jobs", failing)
    await bus.queue.publish("jobs", 1, max_retries=3)
    await wait_dead(bus, "jobs", 1)
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    # at least the backoff each time: 0.2, 0.4, then capped at 0.4 (timer slack: 20 ms)
    assert len(gaps) == 3
    shortfalls = [want - gap for gap, want in zip(gaps, (0.2, 0.4, 0.4), strict=True)]
    assert max(shortfalls) < 0.02, gaps


async def test_replay_by_id_and_purge(make_bus: BusFactory) -> None:
    bus = await make_bus()
    worker = Worker("w", fail=99)
    await bus.queue.subscribe("jobs", worker)
    ids = [await bus.queue.publish("jobs", i) for i in range(4)]
    await wait_dead(bus, "jobs", 4)
    await bus.queue.unsubscribe("jobs")
    assert await bus.queue.replay("jobs", ids=[ids[1], "no-such-id"]) == 1
    remaining = await bus.queue.dead_letters("jobs")
    assert sorted(d.id for d in remaining) == sorted([ids[0], ids[2], ids[3]])
    assert await bus.queue.purge_dead("jobs") == 3
    assert await bus.queue.dead_letters("jobs") == []
    assert await bus.queue.purge_dead("jobs") == 0
    # the replayed one waits in the work queue for the next consumer
    worker.fail = 0
    await bus.queue.subscribe("jobs", worker)
    await settle(bus, "jobs", 1, worker)
    assert worker.done == [1]


async def test_publish_before_any_consumer_exists(make_bus: BusFactory) -> None:
    publisher = await make_bus()
    ids = [await publisher.queue.publish("jobs", i) for i in range(5)]
    consumer = await make_bus()
    worker = Worker("late")
    await consumer.queue.subscribe("jobs", worker)
    await settle(consumer, "jobs", 5, worker)
    assert sorted(worker.done) == list(range(5))
    assert {ctx.id for _, ctx in worker.calls} == set(ids)


class Job(BaseModel):
    name: str
    size: int


async def test_model_validation_failure_is_parked_and_the_consumer_goes_on(
    make_bus: BusFactory,
) -> None:
    bus = await make_bus()
    worker = Worker("w")
    await bus.queue.subscribe("jobs", worker, model=Job)
    bad = await bus.queue.publish("jobs", {"name": "x", "size": "huge"}, max_retries=3)
    await bus.queue.publish("jobs", Job(name="ok", size=1))
    await settle(bus, "jobs", 1, worker)
    assert worker.done == [Job(name="ok", size=1)]
    [dead] = await wait_dead(bus, "jobs", 1)
    assert dead.id == bad
    assert dead.error.startswith("PayloadError") and "Job" in dead.error
    assert dead.attempts == 0  # never reached the handler: no retries spent on it
    assert dead.message == {"name": "x", "size": "huge"}


async def test_delay_holds_a_message_back(make_bus: BusFactory) -> None:
    bus = await make_bus(retry_delay=0.1, retry_delay_max=0.4)
    arrived: dict[Any, float] = {}

    async def record(message: Any, ctx: QueueContext) -> None:
        arrived[message] = time.time()

    await bus.queue.subscribe("jobs", record)
    sent = time.time()
    await bus.queue.publish("jobs", "later", delay=1.0)  # more than the largest tier: hops
    await bus.queue.publish("jobs", "now")
    await eventually(lambda: len(arrived) == 2, timeout=10, what="both messages processed")
    assert arrived["now"] < arrived["later"]
    assert arrived["later"] >= sent + 1.0 - 0.02  # never before its time


async def test_bad_calls_fail_clearly(make_bus: BusFactory) -> None:
    bus = await make_bus(consumer_timeout=60)

    async def noop(message: Any, ctx: QueueContext) -> None:
        return None

    await bus.queue.subscribe("jobs", noop)
    with pytest.raises(BusError, match="already has a consumer"):
        await bus.queue.subscribe("jobs", noop)
    await bus.queue.subscribe(f"jobs-{bus.name}", noop, shared=True)  # another channel
    with pytest.raises(BusError, match=r"timeout 61s exceeds consumer_timeout 60.0s"):
        await bus.queue.publish("jobs", 1, timeout=61)
    await bus.queue.publish("jobs", 1, timeout=60)  # equal is allowed
    with pytest.raises(PayloadError, match="'jobs'"):
        await bus.queue.publish("jobs", object())
    with pytest.raises(InvalidName):
        await bus.queue.publish("bad:name", 1)
    with pytest.raises(ValueError, match="max_retries"):
        await bus.queue.publish("jobs", 1, max_retries=-1)


async def test_shared_queue_is_one_queue_for_every_app(make_bus: BusFactory) -> None:
    a = await make_bus()
    b = await make_bus(name=f"{a.name}-other")
    channel = f"shared-{uuid.uuid4().hex[:8]}"
    worker_a, worker_b = Worker("a"), Worker("b")
    await a.queue.subscribe(channel, worker_a, shared=True)
    await a.queue.subscribe(channel, worker_b)  # the app's own queue of that channel
    await b.queue.publish(channel, "from-b", shared=True)
    await settle(a, channel, 1, worker_a)
    assert worker_a.done == ["from-b"] and worker_b.done == []


async def test_graceful_stop_finishes_running_work_and_leaves_the_rest(
    make_bus: BusFactory,
) -> None:
    first = await make_bus(stop_timeout=5)
    gate = asyncio.Event()
    worker = Worker("first", gate=gate)
    await first.queue.subscribe("jobs", worker, concurrency=1)
    for i in range(4):
        await first.queue.publish("jobs", i)
    await eventually(lambda: worker.running == 1, what="one message running")
    other = await make_bus()  # keeps the app alive on the hub / broker
    stopping = asyncio.get_running_loop().create_task(first.stop())
    await asyncio.sleep(0.1)
    gate.set()  # the running handler finishes within stop_timeout
    await stopping
    assert worker.done == [0]
    later = Worker("other")
    await other.queue.subscribe("jobs", later)
    await settle(other, "jobs", 3, later)
    assert sorted(later.done) == [1, 2, 3]


async def test_stop_cancels_late_handlers_and_their_message_runs_elsewhere(
    make_bus: BusFactory,
) -> None:
    first = await make_bus(stop_timeout=0.2)
    seen: list[bool] = []
    started = asyncio.Event()

    async def endless(message: Any, ctx: QueueContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append(ctx.cancelled.is_set())
            raise

    await first.queue.subscribe("jobs", endless)
    other = await make_bus()
    await first.queue.publish("jobs", "long", max_retries=0)
    await asyncio.wait_for(started.wait(), 10)
    await first.stop()
    assert seen == [True]
    worker = Worker("other")
    await other.queue.subscribe("jobs", worker)
    await settle(other, "jobs", 1, worker)
    [(message, ctx)] = worker.calls
    assert message == "long"
    assert ctx.attempt == 0  # a stop is not a failed attempt
    assert ctx.redelivered


async def test_queue_events_are_logged_with_their_fields(
    make_bus: BusFactory, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    bus = await make_bus()
    worker = Worker("w", fail=1)
    await bus.queue.subscribe("jobs", worker)
    ok = await bus.queue.publish("jobs", "ok", max_retries=1)
    doomed = await bus.queue.publish("doomed", "x")
    await bus.queue.subscribe("doomed", Worker("d", fail=9))
    await settle(bus, "jobs", 1, worker)
    await wait_dead(bus, "doomed", 1)
    await bus.queue.replay("doomed")
    events = collections.defaultdict(list)
    for entry in debug_logs:
        events[entry["event"]].append(entry)
    for name, message_id in [
        ("queue.publish", ok),
        ("queue.start", ok),
        ("queue.failure", ok),
        ("queue.retry", ok),
        ("queue.success", ok),
        ("queue.dead_letter", doomed),
        ("queue.replay", doomed),
    ]:
        matching = [e for e in events[name] if e.get("message_id") == message_id]
        assert matching, f"no {name} event for {message_id}"
        entry = matching[0]
        for key in ("channel", "trace_id", "attempt", "app", "instance"):
            assert key in entry, f"{name} lacks {key}: {entry}"
    assert [e["delay"] for e in events["queue.retry"] if e["message_id"] == ok] == [0.05]


async def test_handler_runs_with_the_publishers_trace_id_bound(make_bus: BusFactory) -> None:
    a, b = await make_bus(), await make_bus()
    bound: list[dict[str, Any]] = []

    async def record(message: Any, ctx: QueueContext) -> None:
        bound.append(dict(structlog.contextvars.get_contextvars()))

    await b.queue.subscribe("jobs", record)
    with structlog.contextvars.bound_contextvars(trace_id="trace-from-a"):
        message_id = await a.queue.publish("jobs", 1)
    await eventually(lambda: len(bound) == 1, what="handler ran")
    assert bound[0]["trace_id"] == "trace-from-a"
    assert bound[0]["message_id"] == message_id
    assert bound[0]["channel"] == "jobs"
    assert bound[0]["instance"] == b.instance_id


async def test_an_idle_predicate_that_raises_does_not_stop_the_queue(
    make_bus: BusFactory,
) -> None:
    bus = await make_bus()
    worker = Worker("w")

    def broken() -> bool:
        raise RuntimeError("predicate bug")

    await bus.queue.subscribe("jobs", worker, idle=broken)
    await bus.queue.publish("jobs", 1)
    await settle(bus, "jobs", 1, worker)
    assert worker.done == [1]


async def test_a_handler_cancelled_from_elsewhere_is_a_failed_attempt(
    make_bus: BusFactory,
) -> None:
    bus = await make_bus()
    attempts: list[int] = []

    async def cancelled_by_the_app(message: Any, ctx: QueueContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 0:
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().call_soon(task.cancel)  # e.g. a user's "cancel"
            await asyncio.sleep(60)

    await bus.queue.subscribe("jobs", cancelled_by_the_app)
    await bus.queue.publish("jobs", 1, max_retries=1)
    await eventually(lambda: attempts == [0, 1], what="retried after the cancellation")
    assert await bus.queue.dead_letters("jobs") == []
