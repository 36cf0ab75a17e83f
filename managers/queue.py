"""The event queue: durable work queues with competing consumers, enforced timeouts,
broker-side retries with backoff and a dead queue."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection

from pydantic import BaseModel
from structlog.typing import FilteringBoundLogger

from managers.envelope import Envelope
from managers.errors import BusError, PayloadError
from managers.names import queue_name, validate_channel
from managers.protocols import Codec, QueueBackend
from managers.queue_messages import (
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_FAILED_AT,
    HEADER_FAILED_BY,
    DeadLetter,
    DelayTiers,
    QueueContext,
    for_replay,
    from_ms,
    initial_headers,
)
from managers.queue_worker import Idle, Process, QueueSubscription, QueueWorker


class EventQueue:
    """At-least-once work queues over a :class:`~managers.protocols.QueueBackend`."""

    def __init__(
        self,
        *,
        app: str,
        instance_id: str,
        backend: QueueBackend,
        codec: Codec,
        log: FilteringBoundLogger,
        retry_delay: float,
        retry_delay_max: float,
        stop_timeout: float,
        consumer_timeout: float,
        context: dict[str, str],
    ) -> None:
        self._app = app
        self._instance_id = instance_id
        self._backend = backend
        self._codec = codec
        self._log = log
        self._tiers = DelayTiers(retry_delay, retry_delay_max)
        self._stop_timeout = stop_timeout
        self._consumer_timeout = consumer_timeout
        self._context = context
        self._debug = log.is_enabled_for(logging.DEBUG)
        self._subs: dict[str, QueueSubscription] = {}
        self._worker = QueueWorker(
            instance_id=instance_id,
            codec=codec,
            log=log,
            tiers=self._tiers,
            context=context,
        )
        self._started = False
        self._stopping = False

    # lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend and the consumers subscribed so far."""
        if self._started:
            return
        await self._backend.start()
        self._started = True
        self._stopping = self._worker.stopping = False
        for sub in list(self._subs.values()):
            await self._open(sub)

    async def stop_consuming(self) -> None:
        """Take no more messages, wait up to ``stop_timeout`` for running handlers, cancel
        the rest (their messages stay queued, never acked), then close the consumers.
        Publishing still works until :meth:`stop`."""
        if not self._started or self._stopping:
            return
        self._stopping = self._worker.stopping = True
        subs = list(self._subs.values())
        for sub in subs:
            sub.closing = True
            await self._worker.pause(sub, quietly=True)
        await self._drain(subs)
        for sub in subs:
            await self._close(sub)

    async def stop(self) -> None:
        """Stop consuming (see :meth:`stop_consuming`), then release the backend."""
        if not self._started:
            return
        await self.stop_consuming()
        self._started = False
        await self._backend.stop()

    async def _drain(self, subs: list[QueueSubscription]) -> None:
        running = {t: ctx for sub in subs for t, ctx in sub.running.items()}
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=self._stop_timeout)
        for task in late:
            running[task].cancelled.set()
            task.cancel()
        if late:
            self._log.warning("queue.handlers_cancelled", count=len(late), reason="stop")
            await asyncio.wait(late)

    # subscriptions ---------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        process: Process,
        *,
        concurrency: int = 1,
        idle: Idle | None = None,
        shared: bool = False,
        model: type[BaseModel] | None = None,
    ) -> QueueSubscription:
        """Run ``process(message, ctx)`` for messages of ``channel``, at most ``concurrency``
        at once on this instance (``<= 0``: unlimited), taking none while ``idle()`` is False.

        A second subscribe on one channel (``shared`` counts) raises :class:`BusError`.
        """
        queue = queue_name(self._app, channel, shared=shared)
        if queue in self._subs:
            raise BusError(f"queue channel {channel!r} already has a consumer on this instance")
        sub = QueueSubscription(channel, queue, process, max(0, concurrency), idle, model)
        self._subs[queue] = sub
        if self._started and not self._stopping:
            try:
                await self._open(sub)
            except BaseException:
                del self._subs[queue]
                raise
        return sub

    async def unsubscribe(self, channel: str, *, shared: bool = False) -> None:
        """Stop consuming ``channel`` on this instance, after its running handlers finish."""
        sub = self._subs.pop(queue_name(self._app, channel, shared=shared), None)
        if sub is None:
            return
        sub.closing = True
        await self._worker.pause(sub, quietly=True)
        await self._drain([sub])
        await self._close(sub)

    async def _open(self, sub: QueueSubscription) -> None:
        sub.consumer = await self._backend.consume(
            sub.queue, sub.concurrency, lambda delivery: self._worker.receive(sub, delivery)
        )
        self._log.info(
            "queue.subscribed", channel=sub.channel, queue=sub.queue, concurrency=sub.concurrency
        )

    async def _close(self, sub: QueueSubscription) -> None:
        if sub.poller is not None:
            sub.poller.cancel()
        consumer, sub.consumer = sub.consumer, None
        if consumer is not None:
            await consumer.close()

    # publishing ------------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        message: object,
        *,
        timeout: float = 15.0,
        max_retries: int = 0,
        delay: float = 0.0,
        shared: bool = False,
    ) -> str:
        """Queue ``message`` on ``channel`` durably; returns its id once the broker confirmed.

        ``timeout`` bounds each attempt (it may not exceed ``consumer_timeout``),
        ``max_retries`` is how many more attempts follow a failure, ``delay`` holds the
        message back at least that many seconds.
        """
        queue = queue_name(self._app, channel, shared=shared)
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if timeout > self._consumer_timeout:
            raise BusError(
                f"channel {channel!r}: timeout {timeout}s exceeds consumer_timeout "
                f"{self._consumer_timeout}s (the broker would close the consumer first)"
            )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        body = self._codec.encode(message, channel=channel)
        if not self._started:
            raise BusError(f"cannot publish on queue {channel!r}: the bus is not started")
        not_before = time.time() + delay if delay > 0 else None
        headers = initial_headers(max_retries=max_retries, timeout=timeout, not_before=not_before)
        envelope = Envelope.new(body, sender=self._instance_id, headers=headers)
        await self._backend.publish(queue, envelope, self._tiers.hop(delay) if delay > 0 else 0)
        if self._debug:
            self._log.debug(
                "queue.publish",
                channel=channel,
                message_id=envelope.message_id,
                trace_id=envelope.trace_id,
                attempt=0,
                max_retries=max_retries,
                delay=delay,
            )
        return envelope.message_id

    # dead letters ----------------------------------------------------------------------

    async def dead_letters(self, channel: str, *, shared: bool = False) -> list[DeadLetter]:
        """The messages parked in ``channel``'s dead queue, oldest first (left in place)."""
        queue = queue_name(self._app, channel, shared=shared)
        self._require_started(channel)
        return [self._dead_letter(channel, e) for e in await self._backend.dead_letters(queue)]

    def _dead_letter(self, channel: str, envelope: Envelope) -> DeadLetter:
        headers = envelope.headers
        message: object
        try:
            message = self._codec.decode(envelope.body)
        except PayloadError:
            message = envelope.body
        attempts = headers.get(HEADER_ATTEMPTS, 0)
        return DeadLetter(
            id=envelope.message_id,
            message=message,
            error=str(headers.get(HEADER_ERROR, "")),
            attempts=attempts if isinstance(attempts, int) else 0,
            failed_by=str(headers.get(HEADER_FAILED_BY, "")),
            failed_at=from_ms(headers.get(HEADER_FAILED_AT)) or 0.0,
            trace_id=envelope.trace_id,
            channel=channel,
        )

    async def replay(
        self, channel: str, ids: Collection[str] | None = None, *, shared: bool = False
    ) -> int:
        """Move dead letters (all, or those whose id is in ``ids``) back to the work queue
        with their attempt count reset; returns how many moved."""
        queue = queue_name(self._app, channel, shared=shared)
        self._require_started(channel)
        wanted = None if ids is None else set(ids)

        def select(envelope: Envelope) -> Envelope | None:
            if wanted is not None and envelope.message_id not in wanted:
                return None
            self._log.info(
                "queue.replay",
                channel=channel,
                message_id=envelope.message_id,
                trace_id=envelope.trace_id,
                attempt=0,
            )
            return for_replay(envelope)

        return await self._backend.replay(queue, select)

    async def purge_dead(self, channel: str, *, shared: bool = False) -> int:
        """Empty ``channel``'s dead queue; returns how many messages were removed."""
        queue = queue_name(self._app, channel, shared=shared)
        self._require_started(channel)
        count = await self._backend.purge_dead(queue)
        self._log.info("queue.purge_dead", channel=channel, count=count)
        return count

    def _require_started(self, channel: str) -> None:
        validate_channel(channel)
        if not self._started:
            raise BusError(f"queue {channel!r}: the bus is not started")


__all__ = ["DeadLetter", "EventQueue", "QueueContext", "QueueSubscription"]
