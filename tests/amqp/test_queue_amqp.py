"""Event queues on the real broker: topology, persistence, quorum queues, malformed bodies
from the wire, a consumer killed with SIGKILL, every connection dropped mid-run."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter

import aio_pika
import pytest

from bus import Bus, BusError, BusUnavailable
from bus.amqp.transport import AmqpTransport
from managers.queue import QueueContext
from managers.queue_messages import HEADER_ATTEMPT, HEADER_MAX_RETRIES, HEADER_TIMEOUT
from tests.amqp.broker import queue_info
from tests.amqp.proxy import BrokerProxy
from tests.conftest import eventually, fast_settings, unique_app
from tests.faults.proxy import FaultProxy
from tests.shared.test_queue import Worker, settle, wait_dead

pytestmark = pytest.mark.amqp


async def test_topology_durable_queues_persistent_messages_and_delay_tiers(
    amqp_url: str, raw: aio_pika.abc.AbstractChannel
) -> None:
    app = unique_app()
    async with Bus(app, amqp_url=amqp_url, settings=fast_settings(retry_delay=0.05)) as bus:
        message_id = await bus.queue.publish("jobs", {"n": 1}, timeout=2.5, max_retries=1)
        # confirmed means stored: it is in the durable queue before anyone consumes
        work = await raw.declare_queue(f"{app}.queue.jobs", passive=True)
        message = await work.get(no_ack=False)
        assert message.message_id == message_id
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/msgpack"
        assert message.app_id == app
        assert message.headers[HEADER_ATTEMPT] == 0
        assert message.headers[HEADER_MAX_RETRIES] == 1
        assert message.headers[HEADER_TIMEOUT] == 2500  # milliseconds
        assert message.headers["x-sender"] == bus.instance_id
        await message.nack(requeue=True)

        worker = Worker("w", fail=9)
        await bus.queue.subscribe("jobs", worker)
        await wait_dead(bus, "jobs", 1)

    info = await queue_info(f"{app}.queue.jobs")
    assert info is not None and info["durable"] == "true"
    assert "x-queue-type" in info["arguments"] and "classic" in info["arguments"]
    tier = await queue_info(f"{app}.queue.jobs.retry.50")
    assert tier is not None and tier["durable"] == "true"
    assert "x-message-ttl" in tier["arguments"] and "50" in tier["arguments"]
    assert f"{app}.queue.jobs" in tier["arguments"]  # dead-letters back to the work queue
    dead = await queue_info(f"{app}.queue.jobs.dead")
    assert dead is not None and dead["durable"] == "true"


async def test_quorum_queues_retry_and_park(amqp_url: str) -> None:
    app = unique_app()
    settings = fast_settings(queue_type="quorum", retry_delay=0.05)
    async with Bus(app, amqp_url=amqp_url, settings=settings) as bus:
        worker = Worker("w", fail=2)
        await bus.queue.subscribe("jobs", worker)
        await bus.queue.publish("jobs", "ok", max_retries=2)
        await bus.queue.publish("jobs", "doomed", max_retries=0)
        await settle(bus, "jobs", 1, worker)
        [dead] = await wait_dead(bus, "jobs", 1)
        assert worker.done == ["ok"] and dead.message == "doomed"
    for name in (f"{app}.queue.jobs", f"{app}.queue.jobs.retry.50", f"{app}.queue.jobs.dead"):
        info = await queue_info(name)
        assert info is not None and "quorum" in info["arguments"], (name, info)
    tier = await queue_info(f"{app}.queue.jobs.retry.50")
    assert tier is not None and "at-least-once" in tier["arguments"]


async def test_malformed_body_from_the_wire_is_parked_and_the_consumer_goes_on(
    amqp_url: str, raw: aio_pika.abc.AbstractChannel
) -> None:
    app = unique_app()
    async with Bus(app, amqp_url=amqp_url, settings=fast_settings()) as bus:
        worker = Worker("w")
        await bus.queue.subscribe("jobs", worker)
        await raw.default_exchange.publish(
            aio_pika.Message(b"\xc1\xc1", message_id="bad-1"), routing_key=f"{app}.queue.jobs"
        )
        await bus.queue.publish("jobs", "good")
        await settle(bus, "jobs", 1, worker)
        [dead] = await wait_dead(bus, "jobs", 1)
        assert dead.id == "bad-1"
        assert dead.message == b"\xc1\xc1"  # undecodable: kept as raw bytes
        assert dead.error.startswith("PayloadError") and "msgpack" in dead.error
        assert worker.done == ["good"]


async def test_publish_fails_within_publish_timeout_while_the_broker_is_unreachable() -> None:
    proxy = BrokerProxy()
    await proxy.start()
    try:
        settings = fast_settings(publish_timeout=1.0)
        async with Bus(unique_app(), amqp_url=proxy.url(), settings=settings) as bus:
            await bus.queue.publish("jobs", 1)
            await proxy.cut()
            with pytest.raises(BusUnavailable, match="publish_timeout"):
                await bus.queue.publish("jobs", 2)
    finally:
        await proxy.cut()


async def test_a_consumer_killed_mid_message_is_replaced_by_another_instance(
    amqp_url: str,
) -> None:
    app = unique_app()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.amqp.queue_worker",
        amqp_url,
        app,
        "jobs",
        stdout=asyncio.subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert child.stdout is not None
    try:
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
        async with Bus(app, amqp_url=amqp_url, settings=fast_settings()) as survivor:
            message_id = await survivor.queue.publish("jobs", "work")
            line = await asyncio.wait_for(child.stdout.readline(), 30)
            assert line.decode().split() == ["started", message_id]
            child.send_signal(signal.SIGKILL)
            await child.wait()
            worker = Worker("survivor")
            await survivor.queue.subscribe("jobs", worker)
            await settle(survivor, "jobs", 1, worker)
            [(message, ctx)] = worker.calls
            assert (message, ctx.id, ctx.attempt) == ("work", message_id, 0)
            assert ctx.redelivered
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_no_message_is_lost_when_the_broker_drops_every_connection(
    amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = unique_app()
    total = 10_000
    settings = fast_settings(publish_timeout=2.0)
    async with (
        FaultProxy.in_front_of(amqp_url) as proxy,
        Bus(app, amqp_url=proxy.url(), settings=settings) as publisher,
        Bus(app, amqp_url=proxy.url(), settings=settings) as a,
        Bus(app, amqp_url=proxy.url(), settings=settings) as b,
    ):
        seen: Counter[int] = Counter()

        async def process(message: int, ctx: QueueContext) -> None:
            seen[message] += 1

        await a.queue.subscribe("jobs", process, concurrency=50)
        await b.queue.subscribe("jobs", process, concurrency=50)
        publish_retries = 0

        async def send(n: int) -> None:
            nonlocal publish_retries
            while True:
                try:
                    await publisher.queue.publish("jobs", n)
                    return
                except BusError:  # unavailable or refused mid-outage: not confirmed, send again
                    publish_retries += 1
                    await asyncio.sleep(0.1)

        window = asyncio.Semaphore(100)

        async def bounded_send(n: int) -> None:
            async with window:
                await send(n)

        sending = asyncio.gather(*(bounded_send(n) for n in range(total)))
        await eventually(lambda: len(seen) >= total // 3, timeout=60, what="a third processed")
        # every connection of the three buses drops at once (our own proxy: the broker and
        # its other clients are not touched)
        await proxy.cut(refuse=False)
        await sending
        await eventually(lambda: len(seen) == total, timeout=120, what=f"all {total} ids processed")
        duplicates = sum(seen.values()) - len(seen)
        with capsys.disabled():
            print(
                f"\n[every connection cut] {total} messages: 0 lost, {duplicates} processed "
                f"more than once, {publish_retries} publishes sent again"
            )
        assert set(seen) == set(range(total))  # zero lost
        # duplicates come only from what was in flight when the connections dropped
        assert duplicates <= 2 * 50 + 100
        # the consumers came back by themselves
        for bus in (a, b):
            transport = getattr(bus._backend, "transport", None)
            assert isinstance(transport, AmqpTransport) and transport.reconnects >= 1
        info = await queue_info(f"{app}.queue.jobs")
        assert info is not None and info["consumers"] == "2"
