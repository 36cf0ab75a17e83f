"""The fault proxy against the real broker: with a raw aio-pika connection (what each fault
does to each side) and with a clusterbus Bus (it survives every fault once it ends)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractConnection

from bus import Bus, BusUnavailable, Settings
from tests.conftest import Recorder, eventually, fast_settings, unique_app
from tests.faults.proxy import Direction, FaultProxy

pytestmark = pytest.mark.amqp

QueueState = Literal["absent", "locked", "present"]


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.in_front_of(amqp_url) as proxy:
        yield proxy


async def queue_state(connection: AbstractConnection, name: str) -> QueueState:
    """``absent``, ``locked`` (exclusive to another connection) or ``present``, as the
    broker answers a passive declare."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return "absent"
    except aiormq.exceptions.ChannelLockedResource:
        return "locked"
    await channel.close()
    return "present"


async def wait_for_queue_state(
    connection: AbstractConnection, name: str, state: QueueState, within: float = 30.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (now := await queue_state(connection, name)) != state:
        assert loop.time() < deadline, f"queue {name} is {now}, never {state} in {within}s"
        await asyncio.sleep(0.1)


async def round_trip(sender: Bus, receiver: Recorder, channel: str, within: float = 60.0) -> None:
    """Publish from ``sender`` until ``receiver`` got one of these messages (a bus that lost
    its connection is back once both its publishing and its consuming work)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    marker = f"ping-{len(receiver.messages)}"
    while marker not in receiver.messages:
        assert loop.time() < deadline, f"no round trip on {channel} within {within}s"
        with contextlib.suppress(BusUnavailable):
            await sender.pubsub.publish(channel, marker)
        await asyncio.sleep(0.1)


# raw connections: what each fault does to each side ------------------------------------------


async def test_bytes_are_forwarded_and_counted(proxy: FaultProxy) -> None:
    connection = await aio_pika.connect(proxy.url())
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"x" * 1000), queue.name)
        message = await queue.get(timeout=10)
        assert message.body == b"x" * 1000
        [proxied] = proxy.connections
        assert proxied.bytes_up > 1000 and proxied.bytes_down > 1000
        assert proxy.bytes == {"up": proxied.bytes_up, "down": proxied.bytes_down}
    await eventually(lambda: not proxy.connections, what="the closed connection is forgotten")
    assert proxy.accepted == 1


async def test_a_cut_resets_every_connection_and_refuses_until_restore(
    proxy: FaultProxy,
) -> None:
    first = await aio_pika.connect(proxy.url())
    second = await aio_pika.connect(proxy.url())
    assert await proxy.cut() == 2
    await eventually(lambda: not (first.connected.is_set() or second.connected.is_set()))
    with pytest.raises(ConnectionError):
        await aio_pika.connect(proxy.url(), timeout=5)
    await proxy.restore()
    again = await aio_pika.connect(proxy.url())
    await again.close()
    assert proxy.cuts == 2


async def test_cut_down_tells_the_client_and_not_the_broker(
    proxy: FaultProxy, amqp_url: str
) -> None:
    observer = await aio_pika.connect(amqp_url)
    client = await aio_pika.connect(f"{proxy.url()}?heartbeat=2")
    async with observer:
        queue = await (await client.channel()).declare_queue(exclusive=True)
        assert await queue_state(observer, queue.name) == "locked"
        await proxy.cut("down", refuse=False)
        await eventually(lambda: not client.connected.is_set())  # the client knows at once
        # the broker still has the connection (and its exclusive queue) ...
        assert await queue_state(observer, queue.name) == "locked"
        # ... until its heartbeat timeout
        await wait_for_queue_state(observer, queue.name, "absent")
        await eventually(lambda: not proxy.connections, what="the broker side closed")


async def test_cut_up_tells_the_broker_and_not_the_client(proxy: FaultProxy, amqp_url: str) -> None:
    observer = await aio_pika.connect(amqp_url)
    client = await aio_pika.connect(f"{proxy.url()}?heartbeat=2")
    async with observer:
        queue = await (await client.channel()).declare_queue(exclusive=True)
        await proxy.cut("up", refuse=False)
        await wait_for_queue_state(observer, queue.name, "absent")  # the broker knows
        # the client does not, yet: only its heartbeat tells it
        assert client.connected.is_set()
        await eventually(
            lambda: not client.connected.is_set(), timeout=30, what="the client's heartbeat"
        )
        await eventually(lambda: not proxy.connections, what="the client side closed")


async def test_a_stall_holds_bytes_of_one_connection_until_unstall(proxy: FaultProxy) -> None:
    stalled = await aio_pika.connect(proxy.url())
    other = await aio_pika.connect(proxy.url())
    async with stalled, other:
        stalled_channel = await stalled.channel()
        first, second = proxy.connections
        first.stall("up")
        assert "stalled=['up']" in repr(first)
        declaring = asyncio.ensure_future(stalled_channel.declare_queue(exclusive=True))
        # the other connection is not affected
        queue = await (await other.channel()).declare_queue(exclusive=True)
        assert queue.name
        done, _ = await asyncio.wait([declaring], timeout=0.5)
        assert not done, "a stalled connection forwarded a request"
        before = second.bytes_up
        first.unstall()
        await asyncio.wait_for(declaring, 10)  # the held request went through after all
        assert second.bytes_up == before


async def test_a_delay_slows_each_direction(proxy: FaultProxy) -> None:
    connection = await aio_pika.connect(proxy.url())
    async with connection:
        channel = await connection.channel()
        proxy.delay(0.15, "up")
        proxy.delay(0.1, "down")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await channel.declare_queue(exclusive=True)
        # a lower bound only: one request and its answer cannot beat the injected latency
        assert loop.time() - started >= 0.25
        proxy.delay(0.0)
        assert proxy.delays == {"up": 0.0, "down": 0.0}
    with pytest.raises(ValueError, match=">= 0"):
        proxy.delay(-1)
    with pytest.raises(ValueError, match="direction"):
        proxy.stall("sideways")  # type: ignore[arg-type]


# a clusterbus Bus through the proxy -------------------------------------------------------------


async def _bus_pair(
    amqp_url: str, proxy: FaultProxy, settings: Settings
) -> tuple[Bus, Bus, Recorder, Recorder]:
    app = unique_app()
    behind = Bus(app, amqp_url=proxy.url(), settings=settings)
    direct = Bus(app, amqp_url=amqp_url, settings=settings)
    await behind.start()
    await direct.start()
    got_behind, got_direct = Recorder("behind"), Recorder("direct")
    await behind.pubsub.subscribe("to-behind", got_behind)
    await direct.pubsub.subscribe("to-direct", got_direct)
    await round_trip(direct, got_behind, "to-behind")
    return behind, direct, got_behind, got_direct


async def test_a_bus_reconnects_after_a_cut_is_restored(proxy: FaultProxy, amqp_url: str) -> None:
    behind, direct, got_behind, got_direct = await _bus_pair(
        amqp_url, proxy, fast_settings(publish_timeout=1.0, reconnect_interval=0.2)
    )
    try:
        await proxy.cut()
        with pytest.raises(BusUnavailable):
            await behind.pubsub.publish("to-direct", "during the cut")
        await proxy.restore()
        await round_trip(behind, got_direct, "to-direct")  # it publishes again
        await round_trip(direct, got_behind, "to-behind")  # and consumes again
        await proxy.cut(refuse=False)  # a blip: it comes back with no restore
        await round_trip(direct, got_behind, "to-behind")
        assert proxy.accepted >= 3
    finally:
        await asyncio.gather(behind.stop(), direct.stop())


@pytest.mark.parametrize("direction", ["both", "up", "down"])
async def test_a_bus_notices_a_stall_by_heartbeat_and_recovers(
    proxy: FaultProxy, amqp_url: str, direction: Direction
) -> None:
    # "both"/"down": the client hears nothing and its heartbeat gives up; "up": the broker
    # hears nothing, closes, and the (flowing) close reaches the client
    heartbeat = 2.0 if direction == "both" else 1.0
    settings = fast_settings(heartbeat=heartbeat, publish_timeout=1.0, reconnect_interval=0.2)
    behind, direct, got_behind, got_direct = await _bus_pair(amqp_url, proxy, settings)
    try:
        proxy.stall(direction)
        with pytest.raises(BusUnavailable):
            await behind.pubsub.publish("to-direct", "during the stall")
        # the bus dialed again during the stall: it gave the silent connection up by itself
        await eventually(
            lambda: proxy.accepted >= 2, timeout=60, what="a reconnect attempt during the stall"
        )
        proxy.unstall()
        await round_trip(behind, got_direct, "to-direct")
        await round_trip(direct, got_behind, "to-behind")
    finally:
        await asyncio.gather(behind.stop(), direct.stop())


async def test_a_bus_works_slower_through_a_delay(proxy: FaultProxy, amqp_url: str) -> None:
    behind, direct, got_behind, got_direct = await _bus_pair(
        amqp_url, proxy, fast_settings(publish_timeout=5.0)
    )
    try:
        proxy.delay(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await behind.queue.publish("jobs", {"n": 1})  # confirmed: one round trip at least
        assert loop.time() - started >= 0.1  # a lower bound: the injected latency
        lease = await behind.locks.acquire("k", ttl=30)
        await lease.release()
        await round_trip(behind, got_direct, "to-direct")
        await round_trip(direct, got_behind, "to-behind")
    finally:
        await asyncio.gather(behind.stop(), direct.stop())
