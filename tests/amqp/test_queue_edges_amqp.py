"""Event-queue promises at their edges that only a broker shows (issue 10): a retry or a
dead-lettering the broker refuses never spins, a timed-out pause never doubles a consumer,
and a completed broker operation is never reported as a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import aio_pika
import pytest

from bus import Bus, BusUnavailable, Settings
from bus.amqp.transport import AmqpTransport
from bus.logs import get_logger
from managers.queue import QueueContext
from managers.queue_worker import MIN_REQUEUE_DELAY
from tests.conftest import eventually, fast_settings, unique_app
from tests.faults.proxy import FaultProxy
from tests.shared.test_queue import wait_dead

pytestmark = pytest.mark.amqp


async def declare_conflicting(raw: aio_pika.abc.AbstractChannel, name: str) -> None:
    """Declare ``name`` with arguments the bus would never give it (as another program, or an
    older version, could have): the bus's own declaration is then refused (406)."""
    await raw.declare_queue(name, durable=True, arguments={"x-max-length": 1_000_000})


class Failing:
    """A handler that always fails, recording the loop time of every attempt."""

    def __init__(self) -> None:
        self.attempts: list[tuple[int, float]] = []

    async def __call__(self, message: Any, ctx: QueueContext) -> None:
        self.attempts.append((ctx.attempt, asyncio.get_running_loop().time()))
        raise ValueError(f"boom {message}")


async def test_a_retry_the_broker_refuses_parks_the_message_instead_of_spinning(
    amqp_url: str, raw: aio_pika.abc.AbstractChannel
) -> None:
    app = unique_app()
    await declare_conflicting(raw, f"{app}.queue.jobs.retry.50")  # the first delay tier
    async with Bus(app, amqp_url=amqp_url, settings=fast_settings(retry_delay=0.05)) as bus:
        failing = Failing()
        await bus.queue.subscribe("jobs", failing)
        message_id = await bus.queue.publish("jobs", "m", max_retries=3)
        [dead] = await wait_dead(bus, "jobs", 1)
        assert [attempt for attempt, _ in failing.attempts] == [0]  # ran once, never spun
        assert dead.id == message_id and dead.attempts == 1
        assert dead.error.startswith("ValueError: boom m (the retry could not be scheduled:")
        assert "refused" in dead.error


async def test_when_retry_and_dead_letter_both_fail_the_message_comes_back_after_a_delay(
    amqp_url: str, raw: aio_pika.abc.AbstractChannel
) -> None:
    app = unique_app()
    tier, dead_queue = f"{app}.queue.jobs.retry.50", f"{app}.queue.jobs.dead"
    await declare_conflicting(raw, tier)
    await declare_conflicting(raw, dead_queue)
    async with Bus(app, amqp_url=amqp_url, settings=fast_settings(retry_delay=0.05)) as bus:
        failing = Failing()
        await bus.queue.subscribe("jobs", failing)
        await bus.queue.publish("jobs", "m", max_retries=1)
        await eventually(lambda: len(failing.attempts) >= 2, what="the message came back")
        [(first, at_first), (again, at_again)] = failing.attempts[:2]
        assert first == again == 0  # given back unchanged: the attempt was not counted
        # held (unacked) before being given back: the code waits at least this long
        assert at_again - at_first >= MIN_REQUEUE_DELAY
        # once the broker accepts them again, the message goes its normal way (the consumer
        # is off while the two queues are fixed, so that it never sees one fixed and one not)
        await bus.queue.unsubscribe("jobs")
        await raw.queue_delete(tier)
        await raw.queue_delete(dead_queue)
        await bus.queue.subscribe("jobs", failing)
        [parked] = await wait_dead(bus, "jobs", 1)
        assert parked.attempts == 2 and parked.error == "ValueError: boom m"


async def test_a_pause_the_broker_does_not_confirm_never_doubles_the_consumer(
    amqp_url: str,
    raw: aio_pika.abc.AbstractChannel,
    debug_logs: list[MutableMapping[str, Any]],
) -> None:
    app = unique_app()
    settings = fast_settings(publish_timeout=0.5, reconnect_interval=0.2)
    async with (
        FaultProxy.in_front_of(amqp_url) as proxy,
        Bus(app, amqp_url=proxy.url(), settings=settings) as bus,
        Bus(app, amqp_url=amqp_url, settings=settings) as publisher,  # not through the proxy
    ):
        idle = {"now": True}
        seen: list[str] = []

        async def handler(message: str, ctx: QueueContext) -> None:
            seen.append(message)

        await bus.queue.subscribe("jobs", handler, idle=lambda: idle["now"])
        await publisher.queue.publish("jobs", "first")
        await eventually(lambda: seen == ["first"], what="the consumer works")
        idle["now"] = False  # the next delivery pauses the consumer (basic.cancel)
        proxy.delay(2.0, "down")  # the broker's answers arrive after publish_timeout
        await publisher.queue.publish("jobs", "handed back")
        await eventually(
            lambda: any(e["event"] == "queue.pause_failed" for e in debug_logs),
            what="the pause timed out",
        )
        proxy.delay(0.0, "down")
        idle["now"] = True  # resume
        await publisher.queue.publish("jobs", "last")
        await eventually(
            lambda: sorted(seen) == ["first", "handed back", "last"], what="all processed"
        )
        work = await raw.declare_queue(f"{app}.queue.jobs", passive=True)
        assert work.declaration_result.consumer_count == 1


# --- finding 24 (a): the deadline sweeper never turns a completed operation into a timeout ---


def transport(publish_timeout: float) -> AmqpTransport:
    """A transport that is never connected: only its ``bounded`` is used."""
    settings = Settings(
        amqp_url="amqp://guest:guest@127.0.0.1:5672/", publish_timeout=publish_timeout
    )
    return AmqpTransport(settings, app="t-deadlines", instance_id="i", log=get_logger())


async def test_an_operation_completed_when_the_sweeper_fires_returns_its_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timeout = 0.05
    bounded = transport(timeout)
    loop = asyncio.get_running_loop()
    confirm: asyncio.Future[str] = loop.create_future()
    started = loop.time()
    real_sleep = asyncio.sleep

    async def sleep_then_confirm(delay: float, result: Any = None) -> Any:
        # Wakes the deadline sweeper; once the operation is due, its confirm arrives in this
        # very loop iteration, just before the sweeper looks (the race of finding 24).
        await real_sleep(delay)
        if loop.time() >= started + timeout and not confirm.done():
            confirm.set_result("confirmed")
        return result

    async def publish() -> str:
        return await confirm

    monkeypatch.setattr(asyncio, "sleep", sleep_then_confirm)
    caller = loop.create_task(bounded.bounded("publishing", publish))
    assert await asyncio.wait_for(caller, 10) == "confirmed"  # not BusUnavailable


async def test_an_operation_still_waiting_at_its_deadline_is_cancelled() -> None:
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def publish() -> str:
        return await never

    with pytest.raises(BusUnavailable, match=r"did not answer within 0\.05s"):
        await transport(0.05).bounded("publishing", publish)
    assert never.cancelled()
