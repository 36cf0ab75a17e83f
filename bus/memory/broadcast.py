"""Pub/sub fanout through the hub, with the same at-most-once semantics as the AMQP backend."""

from __future__ import annotations

import asyncio
import collections
import contextlib

from bus.memory.hub import MemoryHub, Pacer
from managers.envelope import Envelope
from managers.logger import Logger
from managers.protocols import Receiver
from managers.tasks import TaskKeeper

# At most one "dropped" warning per instance in this many seconds (the count is summed).
DROP_WARNING_INTERVAL = 5.0


class MemoryBroadcast:
    """One instance's end of the hub's fanout (implements ``BroadcastBackend``).

    Each instance has an inbox (its "queue"); a consumer task takes from it and runs up to
    ``window`` deliveries at once, as the AMQP prefetch does. The inbox holds at most
    ``max_backlog`` messages: beyond, the oldest is dropped (as RabbitMQ's ``x-max-length``
    drops the head), and a WARNING says how many, at most every
    :data:`DROP_WARNING_INTERVAL` seconds. Publishing never waits for subscribers, so a
    handler that publishes cannot deadlock, but it yields to the event loop now and then
    (:class:`~bus.memory.hub.Pacer`), so a tight publishing loop lets the other instances'
    handlers run.
    """

    def __init__(
        self, hub: MemoryHub, app: str, window: int, max_backlog: int, log: Logger
    ) -> None:
        self._hub = hub
        self._app = app
        self._window = window
        self._max_backlog = max_backlog
        self._log = log
        self._channels: set[str] = set()
        self._inbox: collections.deque[tuple[str, Envelope]] | None = None
        self._wakeup = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None
        self._receiver: Receiver | None = None
        self._deliveries = TaskKeeper(log, "memory pubsub deliveries")
        self._dropped = 0  # since the last warning
        self._warned_at = float("-inf")
        self._warning: asyncio.TimerHandle | None = None
        self._pacer = Pacer()

    @property
    def receiving(self) -> bool:
        """True between start and stop."""
        return self._consumer is not None and not self._consumer.done()

    async def start(self, receiver: Receiver) -> None:
        """Begin delivering to ``receiver``."""
        self._receiver = receiver
        self._deliveries = TaskKeeper(self._log, "memory pubsub deliveries")
        self._inbox = collections.deque()
        self._wakeup = asyncio.Event()
        self._consumer = asyncio.get_running_loop().create_task(self._consume(self._inbox))

    async def stop(self) -> None:
        """Unbind everything and stop delivering; undelivered messages are dropped.

        Deliveries already running go on (the pub/sub manager waits for them)."""
        for channel in self._channels:
            self._hub.unbind(self._app, channel, self)
        self._channels.clear()
        self._inbox = None
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        self._consumer = None
        if self._warning is not None:
            self._warning.cancel()
        self._warn_dropped()

    async def bind(self, channel: str) -> None:
        """Receive ``channel`` from now on."""
        self._channels.add(channel)
        self._hub.bind(self._app, channel, self)

    async def unbind(self, channel: str) -> None:
        """Stop receiving ``channel``."""
        self._channels.discard(channel)
        self._hub.unbind(self._app, channel, self)

    async def publish(self, channel: str, envelope: Envelope) -> None:
        """Put ``envelope`` in the inbox of every instance bound to ``channel`` (yielding to
        the event loop now and then, as a publish to a broker always does)."""
        for endpoint in self._hub.routes(self._app, channel):
            if endpoint is not self:  # an instance never takes its own messages
                endpoint.enqueue(channel, envelope)
        await self._pacer.tick()

    def enqueue(self, channel: str, envelope: Envelope) -> None:
        """Accept a delivery from the hub (dropped when this instance is not started); a
        full inbox drops its oldest message."""
        inbox = self._inbox
        if inbox is None:
            return
        if len(inbox) >= self._max_backlog:
            inbox.popleft()
            self._count_drop()
        inbox.append((channel, envelope))
        self._wakeup.set()

    def _count_drop(self) -> None:
        self._dropped += 1
        if self._warning is not None:
            return  # a warning is due already
        loop = asyncio.get_running_loop()
        wait = self._warned_at + DROP_WARNING_INTERVAL - loop.time()
        if wait <= 0:
            self._warn_dropped()
        else:
            self._warning = loop.call_later(wait, self._warn_dropped)

    def _warn_dropped(self) -> None:
        self._warning = None
        if not self._dropped:
            return
        dropped, self._dropped = self._dropped, 0
        with contextlib.suppress(RuntimeError):  # (no running loop: at stop, outside one)
            self._warned_at = asyncio.get_running_loop().time()
        self._log.warning(
            "pubsub.backlog_dropped",
            dropped=dropped,
            max_backlog=self._max_backlog,
            reason="the instance's inbox was full: the oldest messages were dropped",
        )

    async def _consume(self, inbox: collections.deque[tuple[str, Envelope]]) -> None:
        receiver = self._receiver
        assert receiver is not None
        deliveries = self._deliveries
        window = self._window
        room = asyncio.Event()
        room.set()

        def done(_: asyncio.Task[None]) -> None:
            if len(deliveries) < window:
                room.set()

        while True:
            while not inbox:
                self._wakeup.clear()
                await self._wakeup.wait()
            while inbox and len(deliveries) < window:
                channel, envelope = inbox.popleft()
                deliveries.spawn(receiver(channel, envelope)).add_done_callback(done)
            if len(deliveries) >= window:
                room.clear()
                await room.wait()
