"""What only the broker shows: topology, envelope properties, returns, reconnects, outages,
malformed bodies from the wire."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import aio_pika
import pytest

from bus import Bus, BusError, BusUnavailable
from bus.amqp import AmqpBroadcast, AmqpTransport
from tests.amqp.broker import queue_info, rabbitmqctl
from tests.amqp.proxy import BrokerProxy
from tests.conftest import Recorder, eventually, fast_settings, unique_app
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.amqp


def transport_of(bus: Bus) -> AmqpTransport:
    transport = getattr(bus._backend, "transport", None)
    assert isinstance(transport, AmqpTransport)
    return transport


def broadcast_of(bus: Bus) -> AmqpBroadcast:
    backend = bus.pubsub._backend
    assert isinstance(backend, AmqpBroadcast)
    return backend


async def test_topology_fanout_exchange_and_exclusive_instance_queue(
    amqp_url: str, raw: aio_pika.abc.AbstractChannel
) -> None:
    app = unique_app()
    async with Bus(app, amqp_url=amqp_url, settings=fast_settings()) as bus:
        await bus.pubsub.subscribe("orders.created", Recorder())
        # same name, type and flags: redeclaring succeeds only if they match (else 406)
        await raw.declare_exchange(f"{app}.pubsub.orders.created", aio_pika.ExchangeType.FANOUT)
        info = await queue_info(f"{app}.instance.{bus.instance_id}")
        assert info is not None
        assert info["consumers"] == "1"
        assert info["exclusive"] == "true"
        assert info["auto_delete"] == "true"
        assert "x-max-length" in info["arguments"]
    assert await queue_info(f"{app}.instance.{bus.instance_id}") is None  # gone with the bus


async def test_envelope_properties_on_the_wire(
    amqp_url: str, raw: aio_pika.abc.AbstractChannel
) -> None:
    app = unique_app()
    async with Bus(app, amqp_url=amqp_url, settings=fast_settings()) as bus:
        exchange = await raw.declare_exchange(f"{app}.pubsub.wire", aio_pika.ExchangeType.FANOUT)
        tap = await raw.declare_queue(exclusive=True)
        await tap.bind(exchange)
        message_id = await bus.pubsub.publish("wire", {"a": [1, 2]})
        incoming = await tap.get(timeout=5)
        assert incoming is not None
        await incoming.ack()

    assert incoming.body == b"\x81\xa1a\x92\x01\x02"  # msgpack of {"a": [1, 2]}
    assert incoming.message_id == message_id and len(message_id) == 32
    assert incoming.content_type == "application/msgpack"
    assert incoming.app_id == app
    assert incoming.timestamp is not None
    assert incoming.headers["x-sender"] == bus.instance_id
    assert len(str(incoming.headers["x-trace-id"])) == 32


async def test_malformed_and_oversized_bodies_are_logged_and_dropped(
    amqp_url: str, raw: aio_pika.abc.AbstractChannel, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    app = unique_app()
    settings = fast_settings(max_message_bytes=1000)
    async with Bus(app, amqp_url=amqp_url, settings=settings) as bus:
        rec = Recorder()
        await bus.pubsub.subscribe("news", rec)
        exchange = await raw.declare_exchange(f"{app}.pubsub.news", aio_pika.ExchangeType.FANOUT)
        await exchange.publish(aio_pika.Message(b"\xc1\xc1", message_id="bad-1"), routing_key="")
        await exchange.publish(aio_pika.Message(b"\x00" * 2000, message_id="big-1"), routing_key="")
        await exchange.publish(aio_pika.Message(b"\xa2ok", message_id="good-1"), routing_key="")
        assert await rec.wait_for(1) == ["ok"]

    malformed = {e["message_id"]: e for e in debug_logs if e["event"] == "pubsub.malformed"}
    assert set(malformed) == {"bad-1", "big-1"}
    assert malformed["bad-1"]["channel"] == "news"
    assert "max_message_bytes" in malformed["big-1"]["error"]


async def test_returned_mandatory_publish_is_an_error(amqp_url: str) -> None:
    async with Bus(unique_app(), amqp_url=amqp_url, settings=fast_settings()) as bus:
        transport = transport_of(bus)
        message = aio_pika.Message(b"x", message_id="m1")
        with pytest.raises(BusError, match="refused") as info:
            await transport.bounded(
                "mandatory publish",
                lambda: transport.publish_channel.default_exchange.publish(
                    message, routing_key="no-such-queue-anywhere", mandatory=True
                ),
            )
        assert not isinstance(info.value, BusUnavailable)


async def test_consumers_come_back_after_every_connection_drops(
    amqp_url: str,
) -> None:
    app = unique_app()
    settings = fast_settings()
    async with (
        FaultProxy.in_front_of(amqp_url) as proxy,
        Bus(app, amqp_url=proxy.url(), settings=settings) as a,
        Bus(app, amqp_url=proxy.url(), settings=settings) as b,
    ):
        rec = Recorder()
        await b.pubsub.subscribe("news", rec)
        await a.pubsub.publish("news", "before")
        await rec.wait_for(1)

        await proxy.cut(refuse=False)  # every connection of both buses drops at once
        await eventually(lambda: transport_of(b).reconnects >= 1, timeout=30, what="reconnect")

        sent = 0

        async def publish_until_delivered() -> bool:
            nonlocal sent
            try:
                await a.pubsub.publish("news", f"after-{sent}")
                sent += 1
            except BusUnavailable:
                pass
            return any(str(m).startswith("after-") for m in rec.messages)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not await publish_until_delivered():
            assert loop.time() < deadline, "no delivery after the reconnect"
            await asyncio.sleep(0.1)

        info = await queue_info(broadcast_of(b).queue_name)
        assert info is not None and info["consumers"] == "1"


async def test_start_fails_fast_when_the_broker_is_unreachable() -> None:
    settings = fast_settings(connect_timeout=1.0)
    bus = Bus(unique_app(), amqp_url="amqp://guest:s3cret@127.0.0.1:1/", settings=settings)
    with pytest.raises(BusUnavailable) as info:
        await asyncio.wait_for(bus.start(), 10)
    text = str(info.value)
    assert "connect_timeout" in text and "127.0.0.1:1" in text
    assert "s3cret" not in text and "s3cret" not in repr(bus.settings)
    await bus.stop()  # a bus that never started stops as a no-op


async def test_publish_and_subscribe_fail_within_publish_timeout_during_an_outage(
    amqp_url: str,
) -> None:
    proxy = BrokerProxy()
    await proxy.start()
    app = unique_app()
    settings = fast_settings(publish_timeout=0.5)
    async with (
        Bus(app, amqp_url=proxy.url(), settings=settings) as cut_off,
        Bus(app, amqp_url=amqp_url, settings=settings) as other,
    ):
        rec = Recorder()
        await cut_off.pubsub.subscribe("news", rec)
        await proxy.cut()

        with pytest.raises(BusUnavailable, match="publish_timeout"):
            await asyncio.wait_for(cut_off.pubsub.publish("news", "lost"), 5)
        with pytest.raises(BusUnavailable):
            await asyncio.wait_for(cut_off.pubsub.subscribe("other", Recorder()), 5)

        await proxy.restore()
        await eventually(
            lambda: transport_of(cut_off).reconnects >= 1,
            timeout=30,
            what="reconnect through the proxy",
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not rec.messages:
            assert loop.time() < deadline, "the cut-off instance never received again"
            await other.pubsub.publish("news", "back")
            await asyncio.sleep(0.1)
        assert set(rec.messages) == {"back"}
    await proxy.cut()


async def test_the_configured_heartbeat_is_negotiated(amqp_url: str) -> None:
    async with Bus(unique_app(), amqp_url=amqp_url, settings=fast_settings(heartbeat=7)) as bus:
        out = await rabbitmqctl(
            "list_connections", "--no-table-headers", "timeout", "client_properties"
        )
        ours = [line for line in out.splitlines() if bus.instance_id in line]
        assert ours, out
        assert all(line.split("\t")[0] == "7" for line in ours)
