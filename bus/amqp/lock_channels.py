"""The channels lock claims run on: opened shielded from the caller's cancellation, and kept
for the next claim when a claim ended cleanly (no consumer, nothing unacked)."""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractChannel

from bus.amqp.transport import AmqpTransport, quietly
from managers.errors import BusError, BusUnavailable
from managers.tasks import TaskKeeper

IDLE_CHANNELS = 4  # channels of cleanly ended claims kept for the next claims


class LockChannels:
    """A small pool of confirming, non-robust channels on the transport's connection."""

    def __init__(self, transport: AmqpTransport, keeper: TaskKeeper) -> None:
        self._transport = transport
        self._keeper = keeper
        self._idle: list[AbstractChannel] = []
        self.closing = False  # once set, nothing is kept

    async def open(self) -> AbstractChannel:
        """A kept channel, or a new one. Opening runs shielded from the caller's
        cancellation (a ``channel.open`` cut short leaves the broker expecting it, and the
        broker then closes the whole connection); a channel opened for a caller that was
        cancelled meanwhile is kept for the next claim."""
        while self._idle:
            channel = self._idle.pop()
            if not channel.is_closed:
                return channel
        opening = self._keeper.spawn(self._new(), name="opening a lock channel", awaited=True)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(self._keep_opened)
            raise

    async def _new(self) -> AbstractChannel:
        channel = aio_pika.Channel(self._transport.connection, publisher_confirms=True)
        try:
            await self._transport.bounded("opening a lock channel", channel.initialize)
        except BusError:
            await self.close(channel)
            raise
        except Exception as exc:  # aiormq can raise a bare Exception on a closing connection
            await self.close(channel)
            raise BusUnavailable(f"opening a lock channel failed: {exc!r}") from exc
        return channel

    def _keep_opened(self, opening: asyncio.Task[AbstractChannel]) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self._keeper.spawn(self.keep(opening.result()), name="keeping a lock channel")

    async def keep(self, channel: AbstractChannel) -> None:
        """Keep ``channel`` (clean: no consumer, nothing unacked) for the next claim, or
        close it when enough are kept or the pool is closing."""
        if not channel.is_closed and not self.closing and len(self._idle) < IDLE_CHANNELS:
            self._idle.append(channel)
        else:
            await self.close(channel)

    async def close(self, channel: AbstractChannel) -> None:
        """Close ``channel`` (bounded; a failure changes nothing: the broker cleans up)."""
        if not channel.is_closed:
            await quietly(channel.close, self._transport.settings.publish_timeout)

    async def close_all(self) -> None:
        """Keep nothing from now on and close every kept channel."""
        self.closing = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self.close(channel) for channel in idle))
