"""Whether the broker still answers, watched while this instance holds a lock.

A holder must learn that its lease is gone before the broker can give the token to someone
else. The broker frees a holder's token when it decides the connection is dead (a closed
socket at once; a silent one after its heartbeat timeout), while the client library notices
silence only after about three heartbeat intervals. So while any lock is held, a prober sends
a cheap round trip (``basic.qos`` on a channel of its own) every ``budget / 4`` seconds, and
when no answer arrived for ``budget`` seconds (half the heartbeat), every holder is told its
lease is lost: well before the broker, which has been hearing our probes, stops hearing us.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aio_pika

from bus.amqp.transport import AmqpTransport, quietly
from managers.logger import Logger


class BrokerLiveness:
    """Probes the broker while ``needed()`` is true; calls ``on_silent(reason)`` when no
    probe was answered for ``budget`` seconds."""

    def __init__(
        self,
        transport: AmqpTransport,
        log: Logger,
        *,
        needed: Callable[[], bool],
        on_silent: Callable[[str], None],
    ) -> None:
        self._transport = transport
        self._log = log
        self._needed = needed
        self._on_silent = on_silent
        self.budget = max(0.5, transport.settings.heartbeat / 2)
        self.guard = 1.25 * self.budget + 0.25
        """How long a new holder waits before entering with a token a dead channel gave
        back: covers the old holder's budget, the probe's round trip and loop lag."""
        self._task: asyncio.Task[None] | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None

    def watch(self) -> None:
        """Make sure the prober runs (called when a lock starts being held)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._probe())

    async def _ping(self) -> None:
        channel = self._channel
        if channel is None or channel.is_closed:
            channel = aio_pika.Channel(self._transport.connection, publisher_confirms=False)
            await channel.initialize()
            self._channel = channel
        await channel.set_qos(prefetch_count=0)

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.budget / 4

        def silent() -> None:
            self._log.warning("lock.broker_silent", seconds=self.budget)
            self._on_silent(f"the broker did not answer for {self.budget}s (half the heartbeat)")

        alarm = loop.call_later(self.budget, silent)
        try:
            while self._needed():
                try:
                    async with asyncio.timeout(self.budget):
                        await self._ping()
                except Exception:  # no answer or a broken channel: the alarm decides
                    await self._drop_channel()
                else:
                    alarm.cancel()
                    alarm = loop.call_later(self.budget, silent)
                await asyncio.sleep(interval)
        finally:
            alarm.cancel()

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await quietly(channel.close, self.budget)

    async def stop(self) -> None:
        """Stop probing and close the probe channel."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._drop_channel()
