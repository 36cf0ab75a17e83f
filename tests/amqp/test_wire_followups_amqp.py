"""Follow-ups of issue 10 that only the broker shows: pub/sub deliveries run in tasks of the
backend, not in aiormq's consumer task, so closing the consuming channel at stop does not
cut a running handler (the pub/sub manager waits for it, up to ``stop_timeout``), and a
handler that stops its own bus finishes cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from bus import Bus
from tests.conftest import eventually, fast_settings, unique_app

pytestmark = pytest.mark.amqp

Logs = list[MutableMapping[str, Any]]


async def test_closing_the_pubsub_channel_at_stop_does_not_cut_a_running_handler(
    amqp_url: str,
) -> None:
    app = unique_app()
    events: list[str] = []
    release = asyncio.Event()

    async def handler(message: object) -> None:
        events.append("in")
        try:
            await release.wait()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        events.append("done")

    settings = fast_settings(stop_timeout=30.0)
    async with Bus(app, amqp_url=amqp_url, settings=settings) as peer:
        bus = Bus(app, amqp_url=amqp_url, settings=settings)
        await bus.start()
        await bus.pubsub.subscribe("news", handler)
        channel = bus.pubsub._backend._channel  # type: ignore[attr-defined]
        assert channel is not None
        await peer.pubsub.publish("news", "work")
        await eventually(lambda: events == ["in"], what="the handler is running")
        stopping = asyncio.create_task(bus.stop())
        await eventually(lambda: channel.is_closed, what="the consuming channel closed")
        for _ in range(10):  # let whatever the close set off run
            await asyncio.sleep(0)
        release.set()
        await stopping
    assert events == ["in", "done"]


async def test_a_handler_that_stops_its_bus_finishes_without_errors(
    amqp_url: str, debug_logs: Logs
) -> None:
    app = unique_app()
    events: list[str] = []
    async with Bus(app, amqp_url=amqp_url, settings=fast_settings()) as peer:
        bus = Bus(app, amqp_url=amqp_url, settings=fast_settings())
        await bus.start()

        async def stopper(message: object) -> None:
            await bus.stop()
            events.append("stopped")

        await bus.pubsub.subscribe("news", stopper)
        await peer.pubsub.publish("news", "stop")
        await eventually(lambda: events == ["stopped"], what="the handler's stop returned")
        await eventually(
            lambda: any(e.get("event") == "bus.stopped" for e in debug_logs),
            what="the bus stopped",
        )
        for _ in range(10):  # the delivery task ends after the handler
            await asyncio.sleep(0)
    failures = [
        e
        for e in debug_logs
        if e.get("event") in {"bus.stop_step_failed", "background.failed", "pubsub.ack_failed"}
        or e.get("log_level") == "error"
    ]
    assert failures == []
    stopped = [e["failed"] for e in debug_logs if e.get("event") == "bus.stopped"]
    assert stopped == [False, False]  # the bus, then its peer
