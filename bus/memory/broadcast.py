"""Pub/sub fanout through the hub, with the same at-most-once semantics as the AMQP backend."""

from __future__ import annotations

import asyncio
import collections
import contextlib

from bus.memory.hub import MemoryHub
from managers.envelope import Envelope
from managers.protocols import Receiver


class MemoryBroadcast:
    """One instance's end of the hub's fanout (implements ``BroadcastBackend``).

    Each instance has an inbox (its "queue"); a consumer task takes from it and runs up to
    ``window`` deliveries at once, as the AMQP prefetch does. Publishing never waits for
    subscribers, so a handler that publishes cannot deadlock.
    """

    def __init__(self, hub: MemoryHub, app: str, window: int) -> None:
        self._hub = hub
        self._app = app
        self._window = window
        self._channels: set[str] = set()
        self._inbox: collections.deque[tuple[str, Envelope]] | None = None
        self._wakeup = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None
        self._receiver: Receiver | None = None

    async def start(self, receiver: Receiver) -> None:
        """Begin delivering to ``receiver``."""
        self._receiver = receiver
        self._inbox = collections.deque()
        self._wakeup = asyncio.Event()
        self._consumer = asyncio.get_running_loop().create_task(self._consume(self._inbox))

    async def stop(self) -> None:
        """Unbind everything and stop delivering; undelivered messages are dropped."""
        for channel in self._channels:
            self._hub.unbind(self._app, channel, self)
        self._channels.clear()
        self._inbox = None
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        self._consumer = None

    async def bind(self, channel: str) -> None:
        """Receive ``channel`` from now on."""
        self._channels.add(channel)
        self._hub.bind(self._app, channel, self)

    async def unbind(self, channel: str) -> None:
        """Stop receiving ``channel``."""
        self._channels.discard(channel)
        self._hub.unbind(self._app, channel, self)

    async def publish(self, channel: str, envelope: Envelope) -> None:
        """Put ``envelope`` in the inbox of every instance bound to ``channel``."""
        for endpoint in self._hub.routes(self._app, channel):
            if endpoint is not self:  # an instance never takes its own messages
                endpoint.enqueue(channel, envelope)

    def enqueue(self, channel: str, envelope: Envelope) -> None:
        """Accept a delivery from the hub (dropped when this instance is not started)."""
        if self._inbox is not None:
            self._inbox.append((channel, envelope))
            self._wakeup.set()

    async def _consume(self, inbox: collections.deque[tuple[str, Envelope]]) -> None:
        receiver = self._receiver
        assert receiver is not None
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()
        window = self._window
        room = asyncio.Event()
        room.set()

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            if len(running) < window:
                room.set()

        while True:
            while not inbox:
                self._wakeup.clear()
                await self._wakeup.wait()
            while inbox and len(running) < window:
                channel, envelope = inbox.popleft()
                task = loop.create_task(receiver(channel, envelope))
                running.add(task)
                task.add_done_callback(done)
            if len(running) >= window:
                room.clear()
                await room.wait()
