"""Pub/sub on RabbitMQ: a fanout exchange per channel, one exclusive queue per instance."""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustQueue,
)

from bus.amqp.declarations import Declarations
from bus.amqp.envelopes import to_envelope, to_message
from bus.amqp.transport import AmqpTransport, quietly
from managers.envelope import Envelope
from managers.logger import Logger
from managers.names import instance_queue, pubsub_exchange, pubsub_prefix
from managers.protocols import Receiver
from managers.tasks import TaskKeeper


class AmqpBroadcast:
    """One instance's pub/sub on RabbitMQ (implements ``BroadcastBackend``).

    Publishing: exchange ``<app>.pubsub.<channel>`` (fanout, declared once per channel on the
    confirming channel), non-persistent messages, not mandatory (no subscriber is not an
    error), confirmed by the broker before ``publish`` returns. Receiving: one exclusive
    auto-delete queue ``<app>.instance.<id>`` bound to every subscribed channel, consumed with
    prefetch ``pubsub_prefetch`` and acked after the handlers ran. aio-pika's robust channel
    re-declares the exchanges, the queue, its bindings and the consumer after a reconnect.

    Each delivery runs in a task of this backend (:attr:`tasks`), not in aiormq's consumer
    task: aiormq cancels its tasks when the channel closes, and a handler's life (waited for,
    cancelled or abandoned at stop; a handler that stops its own bus) is the pub/sub
    manager's call, as in memory mode and as for event queues (``bus.amqp.queues``).
    """

    def __init__(self, transport: AmqpTransport, log: Logger) -> None:
        self._transport = transport
        self._log = log
        self._app = transport.app
        self._prefix = pubsub_prefix(transport.app)
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractRobustQueue | None = None
        self._consumer_tag: str | None = None
        self._receiver: Receiver | None = None
        self._stopped = False
        self.tasks = TaskKeeper(log, "amqp pubsub deliveries")
        """Owns the delivery tasks (each runs the receiver, then acks)."""
        self._declared: Declarations[AbstractExchange] = Declarations(
            TaskKeeper(log, "amqp pubsub declarations"), transport.settings.publish_timeout
        )

    @property
    def queue_name(self) -> str:
        """The name of this instance's pub/sub queue."""
        return instance_queue(self._app, self._transport.instance_id)

    @property
    def receiving(self) -> bool:
        """True while the consuming channel is open (aio-pika reopens it, and consumes
        again, after a reconnection)."""
        channel = self._channel
        return channel is not None and not channel.is_closed and self._consumer_tag is not None

    async def start(self, receiver: Receiver) -> None:
        """Open the consuming channel, declare the instance queue and start consuming."""
        self._receiver = receiver
        self._stopped = False
        settings = self._transport.settings

        async def open_consumer() -> None:
            channel = await self._transport.connection.channel(publisher_confirms=False)
            assert isinstance(channel, AbstractRobustChannel)
            await channel.set_qos(prefetch_count=settings.pubsub_prefetch)
            queue = await channel.declare_queue(
                self.queue_name,
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": settings.pubsub_max_backlog},
            )
            assert isinstance(queue, AbstractRobustQueue)
            self._channel, self._queue = channel, queue
            self._consumer_tag = await queue.consume(self._on_message)

        await self._transport.bounded("starting pub/sub", open_consumer)
        self._declared.clear()

    async def stop(self) -> None:
        """Cancel the consumer and close the consuming channel (the queue goes with it).

        Deliveries already running go on (the pub/sub manager waits for them, or not when it
        is one of them that stops the bus); none starts after this returns."""
        self._stopped = True
        channel, self._channel = self._channel, None
        queue, self._queue = self._queue, None
        if queue is not None and self._consumer_tag is not None:
            try:
                await self._transport.bounded(
                    "cancelling pub/sub", lambda: queue.cancel(self._consumer_tag or "")
                )
            except Exception as exc:
                self._log.warning("pubsub.cancel_failed", error=str(exc))
        self._consumer_tag = None
        if channel is not None:
            await quietly(channel.close, self._transport.settings.publish_timeout)

    async def bind(self, channel: str) -> None:
        """Bind the instance queue to ``channel``'s exchange (declared on the consuming channel
        too, so that a reconnect re-declares it before re-binding)."""
        consumer, queue = self._channel, self._queue
        assert consumer is not None and queue is not None

        async def declare_and_bind() -> None:
            exchange = await consumer.declare_exchange(
                pubsub_exchange(self._app, channel), aio_pika.ExchangeType.FANOUT
            )
            await queue.bind(exchange)

        await self._transport.bounded(f"subscribing to {channel!r}", declare_and_bind)

    async def unbind(self, channel: str) -> None:
        """Unbind the instance queue from ``channel``'s exchange."""
        queue = self._queue
        if queue is None:
            return
        await self._transport.bounded(
            f"unsubscribing from {channel!r}",
            lambda: queue.unbind(pubsub_exchange(self._app, channel)),
        )

    async def publish(self, channel: str, envelope: Envelope) -> None:
        """Publish to ``channel``'s exchange and wait for the broker's confirm."""
        message = to_message(envelope, self._app, persistent=False)

        async def send() -> None:
            exchange = self._declared.get(channel)
            if exchange is None:  # once per channel, shielded: see bus.amqp.declarations
                exchange = await self._declared.ensure(
                    channel,
                    lambda: self._transport.publish_channel.declare_exchange(
                        pubsub_exchange(self._app, channel), aio_pika.ExchangeType.FANOUT
                    ),
                )
            await exchange.publish(message, routing_key="", mandatory=False)

        await self._transport.bounded(f"publishing on {channel!r}", send)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Runs in aiormq's consumer task, which the channel's close cancels: hand the
        # delivery to a task of ours at once (the broker's prefetch still bounds how many
        # run, as each is acked only after its handlers).
        self.tasks.spawn(self._deliver(message), name="pubsub delivery")

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        receiver = self._receiver
        exchange = message.exchange or ""
        try:
            if self._stopped:
                return  # stop() returned or is under way: no delivery starts
            if receiver is None or not exchange.startswith(self._prefix):
                self._log.warning(
                    "pubsub.unexpected_message", exchange=exchange, message_id=message.message_id
                )
                return
            envelope = to_envelope(message)
            await receiver(exchange[len(self._prefix) :], envelope)
        finally:
            await self._ack(message)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        """Ack, bounded by ``publish_timeout``; nothing to do once stopped (the channel is
        closed, and the broker drops what the exclusive queue held)."""
        if self._stopped:
            return
        try:
            await asyncio.wait_for(message.ack(), self._transport.settings.publish_timeout)
        except Exception as exc:  # a dead channel: the broker has requeued or dropped it
            self._log.warning("pubsub.ack_failed", message_id=message.message_id, error=str(exc))
