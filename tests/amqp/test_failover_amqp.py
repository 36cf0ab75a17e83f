"""Several broker URLs: start on the first that answers, fail over to another after a loss.

Two proxies in front of the one test broker stand for two nodes: cutting a proxy (and
refusing new connections through it) is that node dying. The same behaviour on a real
3-node cluster is in ``tests/cluster``."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import MutableMapping
from typing import Any

import pytest

from bus import Bus, BusUnavailable
from bus.amqp import AmqpTransport
from tests.conftest import Recorder, eventually, fast_settings, unique_app
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.amqp


def transport_of(bus: Bus) -> AmqpTransport:
    transport = getattr(bus._backend, "transport", None)
    assert isinstance(transport, AmqpTransport)
    return transport


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_start_skips_a_node_that_refuses(amqp_url: str) -> None:
    port = closed_port()
    dead = f"amqp://guest:guest@127.0.0.1:{port}/"
    settings = fast_settings(amqp_failover="in_order")
    async with Bus(unique_app(), amqp_url=f"{dead};{amqp_url}", settings=settings) as bus:
        assert f":{port}/" not in (transport_of(bus).node_url or f":{port}/")
        await bus.queue.publish("jobs", {"n": 1})  # it works through the live node


async def test_all_nodes_down_is_unavailable_within_connect_timeout() -> None:
    urls = ";".join(f"amqp://guest:s3cret@127.0.0.1:{closed_port()}/" for _ in range(3))
    bus = Bus(unique_app(), amqp_url=urls, settings=fast_settings(connect_timeout=2.0))
    started = time.monotonic()
    with pytest.raises(BusUnavailable) as caught:
        await bus.start()
    assert time.monotonic() - started < 2.0 + 1.0
    assert "s3cret" not in str(caught.value) and "connect_timeout" in str(caught.value)
    await bus.stop()


async def test_a_silent_node_does_not_use_up_the_others_time(amqp_url: str) -> None:
    """A node that accepts TCP and never answers gets its share of connect_timeout only."""
    async with FaultProxy.in_front_of(amqp_url) as silent:
        silent.stall()
        settings = fast_settings(amqp_failover="in_order", connect_timeout=4.0)
        async with Bus(
            unique_app(), amqp_url=f"{silent.url()};{amqp_url}", settings=settings
        ) as bus:
            assert "5672" in (transport_of(bus).node_url or "")


async def test_the_order_is_shuffled_per_instance_by_default(amqp_url: str) -> None:
    """With a shuffled order, instances spread over the nodes: among 8 buses, both proxies
    get connections (the chance that all 8 pick the same one is 2 / 2**8)."""
    async with FaultProxy.in_front_of(amqp_url) as one, FaultProxy.in_front_of(amqp_url) as two:
        urls = f"{one.url()};{two.url()}"
        buses = [Bus(unique_app(), amqp_url=urls, settings=fast_settings()) for _ in range(8)]
        try:
            await asyncio.gather(*(bus.start() for bus in buses))
            assert one.accepted > 0 and two.accepted > 0
        finally:
            await asyncio.gather(*(bus.stop() for bus in buses))


async def test_in_order_always_starts_on_the_first(amqp_url: str) -> None:
    async with FaultProxy.in_front_of(amqp_url) as one, FaultProxy.in_front_of(amqp_url) as two:
        urls = f"{one.url()};{two.url()}"
        settings = fast_settings(amqp_failover="in_order")
        buses = [Bus(unique_app(), amqp_url=urls, settings=settings) for _ in range(4)]
        try:
            await asyncio.gather(*(bus.start() for bus in buses))
            assert two.accepted == 0 and one.accepted >= 4
        finally:
            await asyncio.gather(*(bus.stop() for bus in buses))


async def test_a_lost_node_fails_over_and_every_consumer_resumes(amqp_url: str) -> None:
    """The node an instance is connected to dies for good: the instance reconnects through
    the other URL within about reconnect_interval and its pub/sub subscription, queue
    consumer and cache invalidation listener all work again there."""
    app = unique_app()
    settings = fast_settings(amqp_failover="in_order", reconnect_interval=0.3, heartbeat=2.0)
    async with (
        FaultProxy.in_front_of(amqp_url) as first,
        FaultProxy.in_front_of(amqp_url) as second,
    ):
        urls = f"{first.url()};{second.url()}"
        async with (
            Bus(app, amqp_url=urls, settings=settings) as moving,
            Bus(app, amqp_url=amqp_url, settings=settings) as other,
        ):
            news = Recorder("news")
            await moving.pubsub.subscribe("news", news)
            done: list[Any] = []

            async def process(message: Any, _ctx: Any) -> None:
                done.append(message)

            await moving.queue.subscribe("jobs", process)
            await moving.cache.set("k", "old")
            await other.pubsub.publish("news", "before")
            await news.wait_for(1)
            assert first.accepted >= 1 and second.accepted == 0

            lost_at = time.monotonic()
            await first.cut()  # the node is gone: its connections reset, new ones refused
            await eventually(
                lambda: transport_of(moving).reconnects >= 1, timeout=10, what="failover"
            )
            took = time.monotonic() - lost_at
            assert second.accepted >= 1
            assert "127.0.0.1:" + str(second.port) in (transport_of(moving).node_url or "")
            assert took < 2 * settings.heartbeat + settings.reconnect_interval + 1.0

            # pub/sub: every message published from now on reaches the moved instance
            await other.pubsub.publish("news", "after")
            await news.wait_for(2)
            assert news.messages[-1] == "after"
            # event queue: its consumer takes messages again
            await other.queue.publish("jobs", {"n": 2})
            await eventually(lambda: done == [{"n": 2}], timeout=10, what="queue consumer")
            # cache: what it held was dropped at the reconnect (invalidations may have been
            # missed meanwhile), and a write elsewhere invalidates its copy again
            assert await moving.cache.get("k") is None
            await moving.cache.set("k", "old")
            assert await moving.cache.get("k") == "old"
            await other.cache.set("k", "new")
            await eventually_async(lambda: moving.cache.get("k"), None)
            # and it publishes through the new node
            await moving.pubsub.publish("news", "from the moved one", skip_self=False)
            await news.wait_for(3)


async def eventually_async(get: Any, expected: Any, timeout: float = 10.0) -> None:
    """Poll an async getter until it returns ``expected``."""
    deadline = time.monotonic() + timeout
    while (value := await get()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r}, expected {expected!r}")
        await asyncio.sleep(0.02)


async def test_classic_queues_with_several_urls_get_a_warning(
    amqp_url: str, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    """Several URLs (a cluster) with classic queues: they stay classic (changing an existing
    queue's type breaks it), and the instance says once at start how to make them survive."""
    async with FaultProxy.in_front_of(amqp_url) as other:
        urls = f"{amqp_url};{other.url()}"
        async with Bus(
            unique_app(), amqp_url=urls, settings=fast_settings(lock_queue_type="quorum")
        ):
            pass
        async with Bus(unique_app(), amqp_url=urls, settings=fast_settings(queue_type="quorum")):
            pass
        async with Bus(unique_app(), amqp_url=amqp_url, settings=fast_settings()):
            pass
    warnings = [e for e in debug_logs if e["event"] == "amqp.classic_queues_in_cluster"]
    assert [w["settings"] for w in warnings] == [["queue_type"]]
