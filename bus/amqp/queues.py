"""Event queues on RabbitMQ: durable work queues, fixed-TTL delay tiers that dead-letter back
into them, and a dead queue each (implements ``QueueBackend``)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
)

from bus.amqp.declarations import Declarations
from bus.amqp.envelopes import to_envelope, to_message
from bus.amqp.transport import AmqpTransport, quietly
from managers.envelope import Envelope
from managers.errors import BusError, BusUnavailable
from managers.logger import Logger
from managers.names import dead_queue, delay_queue
from managers.protocols import QueueReceiver
from managers.tasks import TaskKeeper


class AmqpQueues:
    """One instance's event queues on RabbitMQ.

    Work queue ``Q`` (durable; classic, or quorum per ``queue_type``) takes persistent
    messages published mandatory with confirms. Delay tier ``Q.retry.<ms>`` holds messages for
    a fixed TTL (one TTL per queue, so no head-of-line blocking) and dead-letters them back to
    ``Q``. Dead queue ``Q.dead`` keeps what ran out of attempts. Queue arguments are a
    contract: they never change for a name (RabbitMQ refuses a redeclare with others).
    """

    def __init__(self, transport: AmqpTransport, log: Logger) -> None:
        self._transport = transport
        self._log = log
        self._settings = transport.settings
        self._topology: AbstractRobustChannel | None = None
        self._consumers: set[AmqpQueueConsumer] = set()
        self.tasks = TaskKeeper(log, "amqp queues")
        """Owns the consumers' delivery tasks and their shielded, bounded channel closes."""
        self._declared: Declarations[None] = Declarations(
            self.tasks, transport.settings.publish_timeout
        )

    # topology --------------------------------------------------------------------------

    def arguments(self, *, tier_of: str | None = None, ttl: float = 0) -> dict[str, Any]:
        """Arguments of a work or dead queue, or of a delay tier (``tier_of``, ``ttl``)."""
        return self._transport.queue_arguments.event(tier_of=tier_of, ttl=ttl)

    async def _channel(self) -> AbstractRobustChannel:
        """The channel queues are declared on (reopened if the broker closed it)."""
        if self._topology is None or self._topology.is_closed:
            channel = await self._transport.connection.channel(publisher_confirms=False)
            assert isinstance(channel, AbstractRobustChannel)
            self._topology = channel
        return self._topology

    async def _ensure(self, name: str, *, tier_of: str | None = None, ttl: float = 0) -> None:
        """Declare ``name`` once per connection of this backend (durable, fixed arguments),
        shielded from the caller's cancellation (see :mod:`bus.amqp.declarations`)."""

        async def declare() -> None:
            channel = await self._channel()
            await channel.declare_queue(
                name, durable=True, arguments=self.arguments(tier_of=tier_of, ttl=ttl)
            )

        await self._declared.ensure(name, declare)

    # lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to load: the broker keeps the queues."""

    async def stop(self) -> None:
        """Close the consumers and the declaring channel."""
        for consumer in list(self._consumers):
            await consumer.close()
        channel, self._topology = self._topology, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await self._transport.bounded("closing the queue channel", channel.close)

    # publishing ------------------------------------------------------------------------

    async def publish(self, queue: str, envelope: Envelope, delay: float) -> None:
        """Publish to ``queue`` (or its delay tier ``delay``) and wait for the confirm."""
        if delay <= 0 and queue in self._declared:  # the common case, kept short
            exchange = self._transport.publish_channel.default_exchange
            message = to_message(envelope, self._transport.app)
            try:
                await self._transport.bounded(
                    f"publishing to queue {queue!r}",
                    functools.partial(exchange.publish, message, routing_key=queue, mandatory=True),
                )
                return
            except BusUnavailable:
                raise
            except BusError:  # unroutable: the queue was deleted behind our back
                self._declared.discard(queue)
        target = queue if delay <= 0 else delay_queue(queue, delay)
        await self._send(queue, target, envelope, delay)

    async def publish_dead(self, queue: str, envelope: Envelope) -> None:
        """Publish to ``queue``'s dead queue and wait for the confirm."""
        await self._send(queue, dead_queue(queue), envelope, 0)

    async def _send(self, queue: str, target: str, envelope: Envelope, delay: float) -> None:
        message = to_message(envelope, self._transport.app)

        async def send() -> None:
            await self._ensure(queue)
            if delay > 0:
                await self._ensure(target, tier_of=queue, ttl=delay)
            elif target != queue:
                await self._ensure(target)
            await self._transport.publish_channel.default_exchange.publish(
                message, routing_key=target, mandatory=True
            )

        what = f"publishing to queue {target!r}"
        try:
            await self._transport.bounded(what, send)
        except BusUnavailable:
            raise
        except BusError:  # unroutable: the queue was deleted behind our back; declare again
            self._declared.discard(queue)
            self._declared.discard(target)
            await self._transport.bounded(what, send)

    # consuming -------------------------------------------------------------------------

    async def consume(
        self, queue: str, prefetch: int, receiver: QueueReceiver
    ) -> AmqpQueueConsumer:
        """Consume ``queue`` on a channel of its own with ``prefetch`` (0: unlimited)."""
        consumer = AmqpQueueConsumer(self, queue, prefetch, receiver)
        await self._transport.bounded(f"consuming queue {queue!r}", consumer.open)
        self._consumers.add(consumer)
        return consumer

    def forget(self, consumer: AmqpQueueConsumer) -> None:
        """A consumer closed."""
        self._consumers.discard(consumer)

    @property
    def transport(self) -> AmqpTransport:
        """The connection this backend rides on."""
        return self._transport

    @property
    def log(self) -> Logger:
        """The instance's logger."""
        return self._log

    # dead letters ----------------------------------------------------------------------

    async def dead_letters(self, queue: str) -> list[Envelope]:
        """Read the dead queue without removing anything: get every message unacked, then
        close the channel, which puts them all back in their places."""
        found: list[Envelope] = []

        async def keep(message: AbstractIncomingMessage) -> None:
            found.append(to_envelope(message))

        await self._each_dead(queue, keep)
        return found

    async def replay(self, queue: str, select: Callable[[Envelope], Envelope | None]) -> int:
        """Publish each selected dead letter to the work queue (confirmed), then ack it."""
        moved = 0

        async def move(message: AbstractIncomingMessage) -> None:
            nonlocal moved
            again = select(to_envelope(message))
            if again is not None:
                await self.publish(queue, again, 0)
                await message.ack()
                moved += 1

        await self._each_dead(queue, move)
        return moved

    async def _with_dead_queue(
        self,
        queue: str,
        act: Callable[[AbstractQueue, int], Awaitable[None]],
    ) -> None:
        """Run ``act(dead_queue, message_count)`` on a channel of its own (closing it puts
        back whatever was read and not acked); nothing when the dead queue does not exist."""
        bounded = self._transport.bounded
        name = dead_queue(queue)
        channel = await bounded(
            "opening a dead-queue channel",
            lambda: self._transport.connection.channel(publisher_confirms=False),
        )

        async def find() -> AbstractQueue | None:
            try:
                return await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None

        try:
            dead = await bounded(f"looking up {name!r}", find)
            if dead is not None:
                assert dead.declaration_result is not None
                await act(dead, dead.declaration_result.message_count or 0)
        finally:
            with contextlib.suppress(Exception):
                await bounded("closing a dead-queue channel", channel.close)

    async def _each_dead(
        self, queue: str, act: Callable[[AbstractIncomingMessage], Awaitable[None]]
    ) -> None:
        """Get every message the dead queue holds now (unacked) and run ``act`` on it."""

        async def walk(dead: AbstractQueue, count: int) -> None:
            # Only what is there now: a replayed message that fails again comes back behind.
            for _ in range(count):
                message = await self._transport.bounded(
                    f"reading {dead.name!r}", lambda: dead.get(no_ack=False, fail=False)
                )
                if message is None:
                    break
                await act(message)

        await self._with_dead_queue(queue, walk)

    async def purge_dead(self, queue: str) -> int:
        """Purge the dead queue; returns how many messages it held."""
        purged = 0

        async def purge(dead: AbstractQueue, count: int) -> None:
            nonlocal purged
            result = await self._transport.bounded(f"purging {dead.name!r}", dead.purge)
            purged = int(result.message_count or 0) if result is not None else 0

        await self._with_dead_queue(queue, purge)
        return purged


class AmqpQueueConsumer:
    """A consumer of one work queue on a robust channel of its own (implements
    ``QueueConsumer``); aio-pika restores it after a reconnect.

    The consumer tag is kept until the broker confirmed the cancel: when a ``basic.cancel``
    (or a ``basic.consume``) gets no answer in time, the broker's view of the channel is
    unknown, so the channel is closed (the broker then drops its consumers and requeues what
    it held) and :meth:`resume` opens a fresh one. A consumer is thus never doubled by a
    resume after a timed-out pause.
    """

    def __init__(
        self, backend: AmqpQueues, queue: str, prefetch: int, receiver: QueueReceiver
    ) -> None:
        self._backend = backend
        self._transport = backend.transport
        self.queue_name = queue
        self._prefetch = prefetch
        self._receiver = receiver
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._closed = False

    @property
    def state(self) -> str:
        """``closed``, ``down`` (no open channel), ``paused`` (no consumer) or ``ok``."""
        if self._closed:
            return "closed"
        channel = self._channel
        if channel is None or channel.is_closed:
            return "down"
        return "paused" if self._tag is None else "ok"

    async def open(self) -> None:
        """Open the channel, set the prefetch, declare the queue and start consuming (a
        failure or cancellation on the way closes the channel again)."""
        channel = await self._transport.connection.channel(publisher_confirms=False)
        assert isinstance(channel, AbstractRobustChannel)
        self._channel = channel
        try:
            await channel.set_qos(prefetch_count=self._prefetch)
            self._queue = await channel.declare_queue(
                self.queue_name,
                durable=True,
                arguments=self._backend.arguments(),
            )
            self._tag = await self._queue.consume(self._on_message)
        except BaseException:
            await self._drop()
            raise

    async def pause(self) -> None:
        """``basic.cancel``: the broker gives this consumer nothing more. When the broker
        does not confirm in time, the channel is closed (and reopened by :meth:`resume`)."""
        queue, tag = self._queue, self._tag
        if queue is None or tag is None:
            return
        try:
            await self._transport.bounded(
                f"pausing the consumer of {self.queue_name!r}", lambda: queue.cancel(tag)
            )
        except BaseException:
            await self._drop()
            raise
        if self._tag == tag:
            self._tag = None

    async def resume(self) -> None:
        """``basic.consume`` again (on a fresh channel when the last one was dropped)."""
        if self._closed:
            return
        if self._channel is None:
            await self._transport.bounded(
                f"reopening the consumer of {self.queue_name!r}", self.open
            )
            return
        queue = self._queue
        if queue is None or self._tag is not None:
            return
        try:
            self._tag = await self._transport.bounded(
                f"resuming the consumer of {self.queue_name!r}",
                lambda: queue.consume(self._on_message),
            )
        except BaseException:
            await self._drop()
            raise

    async def close(self) -> None:
        """Cancel and close the channel: the broker requeues every unacked delivery."""
        self._closed = True
        self._backend.forget(self)
        with contextlib.suppress(BusError):
            await self.pause()
        await self._drop()

    async def _drop(self) -> None:
        """Close the channel, shielded from the caller's cancellation and bounded by
        ``publish_timeout``: the broker forgets its consumer and requeues its unacked
        messages; aio-pika does not restore a channel closed on purpose."""
        channel, self._channel, self._queue, self._tag = self._channel, None, None, None
        if channel is None:
            return

        async def close() -> None:
            await quietly(channel.close)

        await self._backend.tasks.shielded(
            close,
            timeout=self._transport.settings.publish_timeout,
            what=f"closing the consumer channel of {self.queue_name!r}",
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # The receiver runs in a task of ours, not in aiormq's consumer task: aiormq cancels
        # its tasks when the channel closes, and a handler's life (waited for, cancelled or
        # abandoned at stop; a handler that stops its own bus) is the event queue's call, as
        # in memory mode. Its ack then fails on the closed channel and the broker redelivers.
        delivery = AmqpDelivery(self._backend, self.queue_name, message)
        self._backend.tasks.spawn(self._receiver(delivery))


class AmqpDelivery:
    """A delivered work-queue message (implements ``QueueDelivery``)."""

    __slots__ = ("_backend", "_message", "_queue", "envelope")

    def __init__(self, backend: AmqpQueues, queue: str, message: AbstractIncomingMessage) -> None:
        self._backend = backend
        self._queue = queue
        self._message = message
        self.envelope = to_envelope(message)

    @property
    def redelivered(self) -> bool:
        """The broker's redelivered flag."""
        return bool(self._message.redelivered)

    async def ack(self) -> None:
        """``basic.ack``."""
        await self._backend.transport.bounded(f"acking on {self._queue!r}", self._message.ack)

    async def requeue(self) -> None:
        """``basic.nack`` with requeue."""
        await self._backend.transport.bounded(
            f"requeueing on {self._queue!r}", lambda: self._message.nack(requeue=True)
        )

    async def retry(self, envelope: Envelope, delay: float) -> None:
        """Publish to the delay tier (confirmed), then ack. Raises only when the publish
        failed (the message is still ours); a failed ack after it is logged: the channel is
        gone and the broker delivers the original again (at least once)."""
        await self._backend.publish(self._queue, envelope, delay)
        await self._ack_forwarded("retry")

    async def bury(self, envelope: Envelope) -> None:
        """Publish to the dead queue (confirmed), then ack; raises only when the publish
        failed (see :meth:`retry`)."""
        await self._backend.publish_dead(self._queue, envelope)
        await self._ack_forwarded("dead-letter")

    async def _ack_forwarded(self, what: str) -> None:
        try:
            await self.ack()
        except BusError as exc:
            self._backend.log.warning(
                "queue.ack_failed",
                operation=what,
                error=str(exc),
                reason="forwarded, but the original will be delivered again",
            )
