"""Event-queue promises at their edges (issue 10), on both backends: any error text a handler
raises is stored sanitised, internal queue names are out of reach, out-of-range arguments and
over-long names fail at the call, and stop() stays bounded (also from inside a handler)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from bus import BusError, InvalidName
from managers.names import MAX_NAME_BYTES, tier_suffix
from managers.queue import MAX_DELAY, MAX_RETRIES, QueueContext
from managers.queue_messages import MAX_ERROR_BYTES, MAX_ERROR_CHARS
from tests.conftest import BusFactory, eventually
from tests.shared.test_queue import Worker, settle, wait_dead

# --- finding 4: whatever a handler raises is a failed attempt with a storable error text ---


class Unprintable(Exception):
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Fatal(BaseException):
    """Not an ``Exception``: a handler may still raise it."""


def raise_surrogate(message: Any) -> None:
    raise ValueError(f"{message} \ud800 {'x' * 100_000}")  # a lone surrogate, and long


def raise_unprintable(message: Any) -> None:
    raise Unprintable


def raise_base_exception(message: Any) -> None:
    raise Fatal(f"{message} fatal \udfff")


@pytest.mark.parametrize(
    ("raiser", "expected"),
    [
        (raise_surrogate, "ValueError: m \\ud800 xxx"),
        (raise_unprintable, "Unprintable: "),
        (raise_base_exception, "Fatal: m fatal \\udfff"),
    ],
)
async def test_any_handler_error_is_one_failed_attempt_and_stored_sanitised(
    make_bus: BusFactory, raiser: Any, expected: str
) -> None:
    bus = await make_bus()
    attempts: list[int] = []

    async def broken(message: Any, ctx: QueueContext) -> None:
        attempts.append(ctx.attempt)
        raiser(message)

    await bus.queue.subscribe("jobs", broken)
    message_id = await bus.queue.publish("jobs", "m", max_retries=0)
    [dead] = await wait_dead(bus, "jobs", 1)
    assert attempts == [0]  # run once, never spun
    assert dead.id == message_id and dead.attempts == 1
    assert dead.error.startswith(expected), dead.error
    assert len(dead.error) <= MAX_ERROR_CHARS
    assert len(dead.error.encode("utf-8")) <= MAX_ERROR_BYTES  # strict UTF-8: encodable
    await bus.stop()  # memory mode saves every queued message and dead letter here
    again = await make_bus()  # memory mode: loads them back
    [kept] = await wait_dead(again, "jobs", 1)
    assert (kept.id, kept.error) == (dead.id, dead.error)


# --- finding 5: internal queue names are out of reach of queue channels ---


async def noop(message: Any, ctx: QueueContext) -> None:
    return None


@pytest.mark.parametrize("channel", ["jobs.dead", "jobs.retry.500", "a.b.retry.0", "x.dead"])
@pytest.mark.parametrize("shared", [False, True])
async def test_queue_channels_that_would_name_internal_queues_are_refused(
    make_bus: BusFactory, channel: str, shared: bool
) -> None:
    bus = await make_bus()
    with pytest.raises(InvalidName, match="may not end with"):
        await bus.queue.subscribe(channel, noop, shared=shared)
    with pytest.raises(InvalidName, match="may not end with"):
        await bus.queue.publish(channel, 1, shared=shared)
    for tool in (bus.queue.dead_letters, bus.queue.replay, bus.queue.purge_dead):
        with pytest.raises(InvalidName, match="may not end with"):
            await tool(channel, shared=shared)


async def test_channels_that_only_resemble_internal_names_work(make_bus: BusFactory) -> None:
    bus = await make_bus()
    channels = ["dead", "retry.5", "jobs.deadline", "jobs.retry", "jobs.retry.5x", "jobs-dead"]
    worker = Worker("w")
    for channel in channels:
        await bus.queue.subscribe(channel, worker)
        await bus.queue.publish(channel, channel)
    await settle(bus, "several", len(channels), worker)
    assert sorted(worker.done) == sorted(channels)


# --- finding 20: out-of-range arguments and over-long names fail at the call, alike ---


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"delay": math.inf}, ValueError, "delay"),
        ({"delay": math.nan}, ValueError, "delay"),
        ({"delay": 1e300}, ValueError, "delay"),
        ({"delay": MAX_DELAY + 1}, ValueError, "delay"),
        ({"delay": -1}, ValueError, "delay"),
        ({"max_retries": 10**30}, ValueError, "max_retries"),
        ({"max_retries": MAX_RETRIES + 1}, ValueError, "max_retries"),
        ({"max_retries": 1.0}, ValueError, "max_retries"),
        ({"max_retries": True}, ValueError, "max_retries"),
        ({"timeout": math.inf}, ValueError, "timeout"),
        ({"timeout": 10**6}, BusError, "consumer_timeout"),
        ({"timeout": math.nan}, ValueError, "timeout"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": 1e-9}, ValueError, "timeout"),  # 0 whole milliseconds in the header
    ],
)
async def test_out_of_range_publish_arguments_fail_at_the_call(
    make_bus: BusFactory, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    bus = await make_bus()
    with pytest.raises(error, match=match):
        await bus.queue.publish("jobs", 1, **options)


async def test_the_largest_arguments_allowed_are_accepted(make_bus: BusFactory) -> None:
    bus = await make_bus()
    await bus.queue.publish("jobs", 1, max_retries=MAX_RETRIES, delay=MAX_DELAY)


async def test_queue_names_over_the_broker_limit_fail_at_the_call(make_bus: BusFactory) -> None:
    app = "t-" + "a" * 62  # the longest app name
    bus = await make_bus(name=app)
    # the queue name plus its longest internal suffix (a delay tier) must fit in 255 bytes
    room = len(tier_suffix(bus.settings.retry_delay_max))
    longest = MAX_NAME_BYTES - len(f"{app}.queue.") - room
    too_long = "c" * (longest + 1)
    with pytest.raises(InvalidName, match="255"):
        await bus.queue.subscribe(too_long, noop)
    with pytest.raises(InvalidName, match="255"):
        await bus.queue.publish(too_long, 1)
    for tool in (bus.queue.dead_letters, bus.queue.replay, bus.queue.purge_dead):
        with pytest.raises(InvalidName, match="255"):
            await tool(too_long)
    fits = "c" * longest
    worker = Worker("w", fail=1)
    await bus.queue.subscribe(fits, worker)
    await bus.queue.publish(fits, "fits", max_retries=1)  # through a delay tier, then done
    await settle(bus, fits, 1, worker)
    assert worker.done == ["fits"]


# --- finding 21: stop() is bounded, also when a handler stops its own bus ---


class Stubborn:
    """A handler that swallows every cancellation until ``release`` is set."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancellations = 0

    async def run(self) -> None:
        self.started.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancellations += 1  # swallowed


async def test_stop_is_bounded_when_a_queue_handler_swallows_cancellation(
    make_bus: BusFactory,
) -> None:
    bus = await make_bus(stop_timeout=0.1)
    stubborn = Stubborn()

    async def handler(message: Any, ctx: QueueContext) -> None:
        await stubborn.run()

    await bus.queue.subscribe("jobs", handler)
    await bus.queue.publish("jobs", 1)
    await asyncio.wait_for(stubborn.started.wait(), 10)
    try:
        # returns while the handler still runs (it is abandoned): stop_timeout + grace
        await asyncio.wait_for(bus.stop(), 15)
        assert not stubborn.release.is_set() and stubborn.cancellations >= 1
    finally:
        stubborn.release.set()
    other = await make_bus()  # the abandoned handler's message was not acked: it runs again
    worker = Worker("other")
    await other.queue.subscribe("jobs", worker)
    await settle(other, "jobs", 1, worker)
    assert worker.done == [1]


async def test_stop_is_bounded_when_a_pubsub_handler_swallows_cancellation(
    make_bus: BusFactory,
) -> None:
    bus, publisher = await make_bus(stop_timeout=0.1), await make_bus()
    stubborn = Stubborn()

    async def handler(message: Any) -> None:
        await stubborn.run()

    await bus.pubsub.subscribe("news", handler)
    await publisher.pubsub.publish("news", 1)
    await asyncio.wait_for(stubborn.started.wait(), 10)
    try:
        await asyncio.wait_for(bus.stop(), 15)
        assert not stubborn.release.is_set() and stubborn.cancellations >= 1
    finally:
        stubborn.release.set()


async def test_a_queue_handler_that_stops_its_own_bus_leaves_its_message_queued(
    make_bus: BusFactory,
) -> None:
    first = await make_bus()
    returned: list[Any] = []

    async def stopper(message: Any, ctx: QueueContext) -> None:
        await first.stop()  # waits for every other handler, not for this one
        returned.append(message)

    await first.queue.subscribe("jobs", stopper)
    await first.queue.publish("jobs", "halt")
    await eventually(lambda: returned == ["halt"], what="stop() returned inside the handler")
    assert not first.started
    second = await make_bus()  # the unfinished handler's message was given back
    worker = Worker("second")
    await second.queue.subscribe("jobs", worker)
    await settle(second, "jobs", 1, worker)
    assert worker.done == ["halt"]


async def test_a_stop_started_from_a_handler_in_a_task_acks_the_message(
    make_bus: BusFactory,
) -> None:
    first = await make_bus()
    stopping: list[asyncio.Task[None]] = []

    async def stopper(message: Any, ctx: QueueContext) -> None:
        # stop() in a task of its own waits for this handler to return, then acks
        stopping.append(asyncio.get_running_loop().create_task(first.stop()))

    await first.queue.subscribe("jobs", stopper)
    await first.queue.publish("jobs", "halt")
    await eventually(lambda: bool(stopping), what="the handler ran")
    await asyncio.wait_for(stopping[0], 15)
    second = await make_bus()
    await second.queue.publish("jobs", "after")
    worker = Worker("second")
    await second.queue.subscribe("jobs", worker)  # FIFO: "halt" would come first
    await settle(second, "jobs", 1, worker)
    assert [message for message, _ in worker.calls] == ["after"]
