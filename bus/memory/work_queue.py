"""A work queue held by the hub: ready messages, delayed ones, a dead queue and competing
consumers with a prefetch window, as RabbitMQ holds them for AMQP-mode instances."""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Awaitable, Callable

from managers.envelope import Envelope
from managers.logger import Logger
from managers.protocols import QueueReceiver
from managers.tasks import TaskKeeper

Ready = tuple[Envelope, bool]  # (message, redelivered)


class MemoryWorkQueue:
    """One named queue on the hub. Messages go to consumers round-robin, each taking up to
    its prefetch; unsettled messages of a closed consumer go back to the head of the queue."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready: collections.deque[Ready] = collections.deque()
        self.dead: list[Envelope] = []
        self.delayed: dict[asyncio.TimerHandle, Envelope] = {}
        self.consumers: list[MemoryQueueConsumer] = []
        self._turn = itertools.count()

    def put(self, envelope: Envelope, *, front: bool = False, redelivered: bool = False) -> None:
        """Queue ``envelope`` (at the head when ``front``) and hand out what can be."""
        if front:
            self.ready.appendleft((envelope, redelivered))
        else:
            self.ready.append((envelope, redelivered))
        self.dispatch()

    def put_later(self, envelope: Envelope, delay: float) -> None:
        """Queue ``envelope`` after ``delay`` seconds (a delay tier)."""
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def due() -> None:
            self.delayed.pop(handle, None)
            self.put(envelope)

        handle = loop.call_later(delay, due)
        self.delayed[handle] = envelope

    def take_all(self) -> tuple[list[Envelope], list[Envelope]]:
        """Remove and return every queued (ready and delayed) and every dead message."""
        for handle in self.delayed:
            handle.cancel()
        queued = [e for e, _ in self.ready] + list(self.delayed.values())
        dead = self.dead
        self.ready.clear()
        self.delayed.clear()
        self.dead = []
        return queued, dead

    @property
    def empty(self) -> bool:
        """True when nothing is queued, delayed, dead or consumed."""
        return not (self.ready or self.delayed or self.dead or self.consumers)

    def dispatch(self) -> None:
        """Give ready messages to consumers with room, in turn."""
        while self.ready:
            consumer = self._next_consumer()
            if consumer is None:
                return
            envelope, redelivered = self.ready.popleft()
            consumer.take(envelope, redelivered)

    def _next_consumer(self) -> MemoryQueueConsumer | None:
        count = len(self.consumers)
        if not count:
            return None
        start = next(self._turn)
        for i in range(count):
            consumer = self.consumers[(start + i) % count]
            if consumer.has_room:
                return consumer
        return None


class MemoryQueueConsumer:
    """One instance's consumer on a hub queue (implements ``QueueConsumer``)."""

    def __init__(
        self,
        queue: MemoryWorkQueue,
        prefetch: int,
        receiver: QueueReceiver,
        forward: Callable[[str, Envelope, float], Awaitable[None]],
        log: Logger,
    ) -> None:
        self.queue = queue
        self._prefetch = prefetch
        self._receiver = receiver
        self._forward = forward
        self._unsettled: dict[int, Envelope] = {}
        self._ids = itertools.count()
        self._active = True
        self._tasks = TaskKeeper(log, f"memory queue consumer {queue.name}")

    @property
    def state(self) -> str:
        """``ok`` or ``paused`` (``closed`` once closed)."""
        if self not in self.queue.consumers:
            return "closed"
        return "ok" if self._active else "paused"

    @property
    def has_room(self) -> bool:
        """True when this consumer is active and under its prefetch."""
        return self._active and (self._prefetch <= 0 or len(self._unsettled) < self._prefetch)

    def take(self, envelope: Envelope, redelivered: bool) -> None:
        """Accept a message from the queue and run the receiver on it in a task."""
        tag = next(self._ids)
        self._unsettled[tag] = envelope
        self._tasks.spawn(self._receiver(MemoryDelivery(self, tag, envelope, redelivered)))

    def settle(self, tag: int) -> bool:
        """Forget delivery ``tag``; False when it was already settled or given back."""
        if self._unsettled.pop(tag, None) is None:
            return False
        self.queue.dispatch()
        return True

    async def forward(self, queue: str, envelope: Envelope, delay: float) -> None:
        """Publish on the hub (retries, dead letters)."""
        await self._forward(queue, envelope, delay)

    async def pause(self) -> None:
        """Take no more messages until :meth:`resume`."""
        self._active = False

    async def resume(self) -> None:
        """Take messages again."""
        self._active = True
        self.queue.dispatch()

    async def close(self) -> None:
        """Leave the queue; unsettled messages go back to its head, in order."""
        self._active = False
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
        unsettled = list(self._unsettled.values())
        self._unsettled.clear()
        for envelope in reversed(unsettled):
            self.queue.ready.appendleft((envelope, True))
        self.queue.dispatch()


class MemoryDelivery:
    """A message handed to a memory consumer (implements ``QueueDelivery``)."""

    __slots__ = ("_consumer", "_tag", "envelope", "redelivered")

    def __init__(
        self, consumer: MemoryQueueConsumer, tag: int, envelope: Envelope, redelivered: bool
    ) -> None:
        self._consumer = consumer
        self._tag = tag
        self.envelope = envelope
        self.redelivered = redelivered

    async def ack(self) -> None:
        """Done with it."""
        self._consumer.settle(self._tag)

    async def requeue(self) -> None:
        """Back to the head of the queue."""
        if self._consumer.settle(self._tag):
            self._consumer.queue.put(self.envelope, front=True, redelivered=True)

    async def retry(self, envelope: Envelope, delay: float) -> None:
        """To the delay tier, then settled."""
        if self._consumer.settle(self._tag):
            await self._consumer.forward(self._consumer.queue.name, envelope, delay)

    async def bury(self, envelope: Envelope) -> None:
        """To the dead queue, then settled."""
        if self._consumer.settle(self._tag):
            self._consumer.queue.dead.append(envelope)
