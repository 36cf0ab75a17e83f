"""Pub/sub fanout through the hub, with the same at-most-once semantics as the AMQP backend."""

from __future__ import annotations

import asyncio
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
        self._inbox: asyncio.Queue[tuple[str, Envelope]] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._receiver: Receiver | None = None

    async def start(self, receiver: Receiver) -> None:
        """Begin delivering to ``receiver``."""
        self._receiver = receiver
        self._inbox = asyncio.Queue()
        self._consumer = asyncio.get_running_loop().create_task(self._consume(self._inbox))

    async def stop(self) -> None:
        """Unbind everything and stop delivering; undelivered messages are dropped."""
        for channel in self._channels:
            self._hub.unbind(self._app, channel, self)
        self._channels.clear()
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        self._consumer = None
        self._inbox = None

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
            endpoint.enqueue(channel, envelope)

    def enqueue(self, channel: str, envelope: Envelope) -> None:
        """Accept a delivery from the hub (dropped when this instance is not started)."""
        if self._inbox is not None:
            self._inbox.put_nowait((channel, envelope))

    async def _consume(self, inbox: asyncio.Queue[tuple[str, Envelope]]) -> None:
        receiver = self._receiver
        assert receiver is not None
        window = asyncio.Semaphore(self._window)
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()

        async def deliver(channel: str, envelope: Envelope) -> None:
            try:
                await receiver(channel, envelope)
            finally:
                window.release()

        while True:
            channel, envelope = await inbox.get()
            await window.acquire()
            task = loop.create_task(deliver(channel, envelope))
            running.add(task)
            task.add_done_callback(running.discard)
