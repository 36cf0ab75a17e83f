"""Health on the broker, with the suite's TCP proxy: ``down`` within ``2 * heartbeat`` of an
outage (a silent broker or a cut connection), ``ok`` again once every subscription and
consumer is back, by state."""

from __future__ import annotations

import asyncio

import pytest

from bus import Bus, QueueContext
from tests.conftest import Recorder, eventually, fast_settings, unique_app
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.amqp

HEARTBEAT = 2.0


async def _until(bus: Bus, status: str, within: float) -> float:
    """Poll ``bus.health()`` until it says ``status``; the seconds it took."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while (await bus.health()).status != status:
        assert loop.time() - began < within, f"health not {status} within {within}s"
        await asyncio.sleep(0.05)
    return loop.time() - began


async def test_health_follows_a_silent_broker_and_a_cut_connection(amqp_url: str) -> None:
    settings = fast_settings(heartbeat=HEARTBEAT, reconnect_interval=0.2)
    done: list[object] = []

    async def process(message: object, ctx: QueueContext) -> None:
        done.append(message)

    async with (
        FaultProxy.in_front_of(amqp_url) as proxy,
        Bus(unique_app(), amqp_url=proxy.url(), settings=settings) as bus,
    ):
        news = Recorder()
        await bus.pubsub.subscribe("news", news)
        await bus.queue.subscribe("jobs", process)
        health = await bus.health()
        assert health.status == "ok", health
        assert bus.connected and health.connected
        assert health.node is not None and str(proxy.port) in health.node
        assert "guest:guest" not in health.node  # never the password
        assert health.subscriptions == {"news": "ok"} or health.subscriptions["news"] == "ok"
        assert health.consumers == {"jobs": "ok"}

        proxy.stall()  # a silent broker: nothing arrives, nothing is closed
        took = await _until(bus, "down", within=2 * HEARTBEAT + 1.0)
        assert took <= 2 * HEARTBEAT + 1.0
        assert (await bus.health()).reason == "the broker did not answer"
        proxy.unstall()
        await _until(bus, "ok", within=30)

        await proxy.cut(refuse=True)  # a cut connection, and no way back for now
        await eventually(lambda: not bus.connected, timeout=2 * HEARTBEAT, what="disconnected")
        assert (await bus.health()).status == "down"
        await proxy.restore()
        await _until(bus, "ok", within=30)
        health = await bus.health()
        assert health.consumers == {"jobs": "ok"} and health.subscriptions["news"] == "ok"
        # "ok" means receiving: both consumers are really back
        await bus.pubsub.publish("news", "after", skip_self=False)
        await bus.queue.publish("jobs", "after")
        await news.wait_for(1)
        await eventually(lambda: done == ["after"], what="the queue consumer is back")


async def test_health_is_down_before_start_and_after_stop(amqp_url: str) -> None:
    bus = Bus(unique_app(), amqp_url=amqp_url, settings=fast_settings())
    assert (await bus.health()).status == "down" and not bus.connected
    async with bus:
        assert (await bus.health()).ok
    health = await bus.health()
    assert health.status == "down" and health.reason == "not started"
