"""The variants of the pub/sub benchmark: one publisher and its subscribers, as rigs.

Each rig publishes benchmark payloads (a sequence number, the send time and some padding) and
its subscriber handlers report every delivery to the rig's :class:`Sink`, which hands it to
the :class:`Recorder` of the current run. The rigs are ``clusterbus_amqp`` and
``clusterbus_memory`` (:class:`ClusterbusRig`) and ``raw_aiopika`` (:class:`RawRig`); see
:mod:`benchmarks.pubsub` for the scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import aio_pika
import msgpack
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)

from benchmarks.amqp_cleanup import delete_exchanges
from bus import Bus, MemoryHub, Settings

SUBSCRIBERS = 3
PREFETCH = 256
MAX_BACKLOG = 100_000
CHANNEL = "bench"
PAD = "x" * 64

CLUSTERBUS_AMQP = "clusterbus_amqp"
RAW_AIOPIKA = "raw_aiopika"
CLUSTERBUS_MEMORY = "clusterbus_memory"


# what the subscribers report to ------------------------------------------------------------


class Recorder:
    """Collects the end-to-end latencies of one run and signals when all arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.latencies: list[float] = []
        self.started = self.last_delivery = time.perf_counter()
        self.done = asyncio.Event()

    def start(self) -> None:
        """Mark the first publish: the run's clock starts now."""
        self.started = self.last_delivery = time.perf_counter()

    def record(self, sent: float) -> None:
        """One delivery of a message sent at ``sent`` (``perf_counter`` time)."""
        now = time.perf_counter()
        self.latencies.append(now - sent)
        self.last_delivery = now
        if len(self.latencies) >= self.expected:
            self.done.set()


class Sink:
    """What every subscriber handler reports to; points at the recorder of the current run."""

    def __init__(self) -> None:
        self.recorder = Recorder(0)

    def deliver(self, payload: object) -> None:
        """Record the delivery of ``payload`` (a decoded benchmark payload)."""
        self.recorder.record(sent_time(payload))


def make_payload(seq: int) -> dict[str, object]:
    """The benchmark message: a sequence number, the send time and some padding."""
    return {"seq": seq, "sent": time.perf_counter(), "pad": PAD}


def sent_time(payload: object) -> float:
    """The send time carried by a decoded payload."""
    if not isinstance(payload, dict):
        raise TypeError(f"unexpected payload {payload!r}")
    sent = payload.get("sent")
    if not isinstance(sent, float):
        raise TypeError(f"payload without a float 'sent': {payload!r}")
    return sent


# the variants ------------------------------------------------------------------------------


class Rig(Protocol):
    """One publisher and its subscribers, ready to publish benchmark payloads."""

    sink: Sink

    async def setup(self) -> None:
        """Connect and subscribe."""

    async def publish(self, seq: int) -> None:
        """Publish message ``seq`` and wait until it is accepted (confirmed on AMQP)."""

    async def teardown(self) -> None:
        """Disconnect and delete what was declared."""


def bench_settings() -> Settings:
    """Settings of every benchmark bus: quiet logs, the prefetch the raw variant uses."""
    return Settings(log_level="WARNING", pubsub_prefetch=PREFETCH, pubsub_max_backlog=MAX_BACKLOG)


def new_app_name() -> str:
    """A fresh app name, so that runs never share exchanges or queues."""
    return f"bench-{uuid.uuid4().hex[:12]}"


class ClusterbusRig:
    """clusterbus: one publisher bus and three subscriber buses of one app."""

    def __init__(self, *, amqp_url: str | None, hub: MemoryHub | None) -> None:
        self.sink = Sink()
        self.app = new_app_name()
        self._amqp_url = amqp_url
        self._hub = hub
        self._buses: list[Bus] = []

    def _new_bus(self) -> Bus:
        if self._amqp_url is not None:
            return Bus(self.app, amqp_url=self._amqp_url, settings=bench_settings())
        return Bus(self.app, hub=self._hub, settings=bench_settings())

    async def _handle(self, message: Any) -> None:
        self.sink.deliver(message)

    async def setup(self) -> None:
        """Start the four buses and subscribe the three subscriber buses."""
        self._buses = [self._new_bus() for _ in range(SUBSCRIBERS + 1)]
        for bus in self._buses:
            await bus.start()
        for bus in self._buses[1:]:
            await bus.pubsub.subscribe(CHANNEL, self._handle)

    async def publish(self, seq: int) -> None:
        """Publish through the publisher bus."""
        await self._buses[0].pubsub.publish(CHANNEL, make_payload(seq))

    async def teardown(self) -> None:
        """Stop the buses and, on RabbitMQ, delete the channel's exchange."""
        connected = any(bus.started for bus in self._buses)
        for bus in self._buses:
            await bus.stop()
        if self._amqp_url is not None and connected:
            await delete_exchanges(self._amqp_url, [f"{self.app}.pubsub.{CHANNEL}"])


class RawRig:
    """The same fanout written directly with aio-pika."""

    def __init__(self, amqp_url: str) -> None:
        self.sink = Sink()
        self.exchange_name = f"{new_app_name()}.raw.{CHANNEL}"
        self._url = amqp_url
        self._connections: list[AbstractConnection] = []
        self._exchange: AbstractExchange | None = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            self.sink.deliver(msgpack.unpackb(message.body, raw=False))
        finally:
            await message.ack()

    async def _subscribe(self) -> None:
        connection = await aio_pika.connect(self._url)
        self._connections.append(connection)
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=PREFETCH)
        exchange = await self._declare(channel)
        queue = await channel.declare_queue(
            exclusive=True, auto_delete=True, arguments={"x-max-length": MAX_BACKLOG}
        )
        await queue.bind(exchange)
        await queue.consume(self._on_message)

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        return await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.FANOUT, durable=False
        )

    async def setup(self) -> None:
        """Open the confirming publisher and the three consuming connections."""
        connection = await aio_pika.connect(self._url)
        self._connections.append(connection)
        channel = await connection.channel(publisher_confirms=True)
        self._exchange = await self._declare(channel)
        for _ in range(SUBSCRIBERS):
            await self._subscribe()

    async def publish(self, seq: int) -> None:
        """Publish one confirmed, non-persistent msgpack message."""
        assert self._exchange is not None
        message = aio_pika.Message(
            msgpack.packb(make_payload(seq), use_bin_type=True),
            message_id=uuid.uuid4().hex,
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        )
        await self._exchange.publish(message, routing_key="", mandatory=False)

    async def teardown(self) -> None:
        """Close every connection (the queues go with them), then delete the exchange."""
        self._exchange = None
        connected, self._connections = self._connections, []
        for connection in reversed(connected):
            with contextlib.suppress(Exception):  # a connection the broker already closed
                await connection.close()
        if connected:
            await delete_exchanges(self._url, [self.exchange_name])


def rig_factories(args: argparse.Namespace) -> dict[str, Callable[[], Rig]]:
    """How to build a fresh rig of each variant that is to run."""
    url: str = args.amqp_url
    factories: dict[str, Callable[[], Rig]] = {}
    if not args.skip_amqp:
        factories[CLUSTERBUS_AMQP] = lambda: ClusterbusRig(amqp_url=url, hub=None)
        factories[RAW_AIOPIKA] = lambda: RawRig(url)
    factories[CLUSTERBUS_MEMORY] = lambda: ClusterbusRig(amqp_url=None, hub=MemoryHub())
    return factories
