"""The event queue: durable work queues with competing consumers, enforced timeouts,
broker-side retries with backoff and a dead queue."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection

from pydantic import BaseModel

from managers.envelope import Envelope, bound_trace_id, new_message_id
from managers.errors import BusError
from managers.handler_checks import check_process
from managers.logger import Logger
from managers.names import DEAD_SUFFIX, MAX_DELAY, check_message_id, queue_name, tier_suffix
from managers.protocols import Codec, QueueBackend
from managers.queue_attempts import Process
from managers.queue_dedupe import CompletedIds
from managers.queue_messages import (
    DeadLetter,
    DelayTiers,
    QueueContext,
    dead_letter_of,
    for_replay,
    initial_headers,
)
from managers.queue_worker import Idle, QueueSubscription, QueueWorker
from managers.tasks import cancel_after
from managers.telemetry import (
    DEAD_QUEUE_DEPTH,
    DESTINATION,
    NO_TELEMETRY,
    PUBLISHED,
    Telemetry,
)

MAX_RETRIES = 10_000
"""The largest ``max_retries`` a message may have."""
# MAX_DELAY (from managers.names, 30 days) is the longest ``delay``: a delay is made of hops
# through the delay tiers (each at most ``retry_delay_max``), so longer schedules belong in a
# scheduler, not in a queue.
MIN_TIMEOUT = 0.001
"""The shortest ``timeout``: headers carry it in whole milliseconds."""


class EventQueue:
    """At-least-once work queues over a :class:`~managers.protocols.QueueBackend`."""

    def __init__(
        self,
        *,
        app: str,
        instance_id: str,
        backend: QueueBackend,
        codec: Codec,
        log: Logger,
        retry_delay: float,
        retry_delay_max: float,
        stop_timeout: float,
        consumer_timeout: float,
        context: dict[str, str],
        telemetry: Telemetry = NO_TELEMETRY,
        redact: Callable[[str], str] = str,
    ) -> None:
        self._app = app
        self._telemetry = telemetry
        self._instance_id = instance_id
        self._backend = backend
        self._codec = codec
        self._log = log
        self._tiers = DelayTiers(retry_delay, retry_delay_max)
        # room kept after every queue name for its dead queue and its longest delay tier
        self._room = max(len(DEAD_SUFFIX), *(len(tier_suffix(t)) for t in self._tiers.tiers))
        self._stop_timeout = stop_timeout
        self._consumer_timeout = consumer_timeout
        self._context = context
        self._subs: dict[str, QueueSubscription] = {}
        self._worker = QueueWorker(
            instance_id=instance_id,
            codec=codec,
            log=log,
            tiers=self._tiers,
            context=context,
            max_timeout=consumer_timeout,
            telemetry=telemetry,
            redact=redact,
        )
        self._started = False
        self._stopping = False

    def states(self) -> dict[str, str]:
        """Every subscribed queue channel: its consumer's state (``ok``, ``paused``, ``down``
        while its channel is gone), or ``down`` when it has none yet."""
        return {
            sub.channel: "down" if sub.consumer is None else sub.consumer.state
            for sub in self._subs.values()
        }

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
        Publishing still works until :meth:`stop`.

        Bounded by ``stop_timeout`` plus a short grace (``managers.tasks.CANCEL_GRACE``): a
        handler that swallows its cancellation is abandoned (logged), and its message goes
        back to the queue when the consumer closes. A handler that awaits ``bus.stop()``
        itself is not waited for: stop completes, and the handler's own message goes back to
        the queue unacked (it runs again elsewhere, or after a restart). To have it acked,
        start the stop in a task (``asyncio.create_task(bus.stop())``): that stop waits for
        the handler to return, like any other."""
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
        """Wait up to ``stop_timeout`` for the handlers of ``subs``, then cancel the late ones
        (``ctx.cancelled`` set first) and give them ``CANCEL_GRACE`` to unwind; a handler
        that ignores its cancellation is abandoned (logged), so this never takes longer than
        ``stop_timeout + CANCEL_GRACE``. The caller's own task (a handler that stops the bus
        or unsubscribes its own channel) is not waited for: its message goes back to the
        queue when the consumer closes."""
        current = asyncio.current_task()
        running = {t: ctx for sub in subs for t, ctx in sub.running.items() if t is not current}
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=self._stop_timeout)
        if not late:
            return
        for task in late:
            running[task].cancelled.set()
        self._log.warning("queue.handlers_cancelled", count=len(late), reason="stop")
        await cancel_after(late, 0, self._log, "queue")

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
        dedupe: float = 0.0,
        max_retries: int | None = None,
        timeout: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    ) -> QueueSubscription:
        """Run ``process(message, ctx)`` for messages of ``channel``, at most ``concurrency``
        at once on this instance (``<= 0``: unlimited), taking none while ``idle()`` is False.

        ``max_retries`` and ``timeout`` are this consumer's defaults for messages published
        without their own (else 0 retries and 15.0 s). With ``retry_on`` (exception types),
        an attempt that raises anything else goes to the dead queue at once, its reason
        saying so (a timed-out attempt is a ``TimeoutError``).

        ``dedupe`` (seconds, 0: off): this instance remembers the ids of the messages it
        completed for that long and acks a later copy of one without running ``process``
        (a publish retried with the same ``message_id``, a redelivery after a lost ack).
        Only this instance's completions count (see :mod:`managers.queue_dedupe`).

        A second subscribe on one channel (``shared`` counts) raises :class:`BusError`; a
        ``process`` that is not an async function taking ``(message, ctx)`` raises
        :class:`TypeError` naming the channel (nothing is subscribed).
        """
        queue = self._queue(channel, shared)
        check_process(channel, process)
        if not _seconds(dedupe) or dedupe < 0:
            raise ValueError(f"dedupe must be a number of seconds >= 0, got {dedupe!r}")
        self._check_limits(channel, timeout, max_retries)
        retry_types = _exception_types(channel, retry_on)
        if queue in self._subs:
            raise BusError(f"queue channel {channel!r} already has a consumer on this instance")
        sub = QueueSubscription(channel, queue, process, max(0, concurrency), idle, model)
        sub.max_retries, sub.timeout, sub.retry_on = max_retries, timeout, retry_types
        if dedupe > 0:
            sub.completed = CompletedIds(dedupe)
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
        sub = self._subs.pop(self._queue(channel, shared), None)
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
        sub.closes += 1  # deliveries still running are not settled any more
        if consumer is not None:
            await consumer.close()

    # publishing ------------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        message: object,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        delay: float = 0.0,
        shared: bool = False,
        message_id: str | None = None,
    ) -> str:
        """Queue ``message`` on ``channel`` durably; returns its id once the broker confirmed.

        ``timeout`` bounds each attempt (at least :data:`MIN_TIMEOUT`, at most
        ``consumer_timeout``), ``max_retries`` is how many more attempts follow a failure (an
        int, at most :data:`MAX_RETRIES`); left None, the consuming subscription's defaults
        apply when the message is handled (else 15.0 s and 0 retries). ``delay`` holds the
        message back at least that many seconds (finite, at most :data:`MAX_DELAY`). A value
        out of bounds raises ``ValueError`` (a timeout above ``consumer_timeout``:
        :class:`BusError`) at the call, in both modes; a name that cannot be a queue raises
        :class:`InvalidName`.

        ``message_id`` replaces the generated id (letters, digits, ``-``, ``_``, at most 128
        characters; else :class:`InvalidName`), so a publish that raised can be retried
        idempotently: consumers see one id, and ``subscribe(dedupe=...)`` drops the copy.
        """
        queue = self._queue(channel, shared)
        self._check_publish(channel, timeout, max_retries, delay)
        if message_id is not None:
            check_message_id(message_id)
        body = self._codec.encode(message, channel=channel)
        if not self._started:
            raise BusError(f"cannot publish on queue {channel!r}: the bus is not started")
        not_before = time.time() + delay if delay > 0 else None
        headers = initial_headers(max_retries=max_retries, timeout=timeout, not_before=not_before)
        message_id = message_id or new_message_id()
        trace_id = self._telemetry.trace_id() or bound_trace_id()  # the caller's, if any
        with self._telemetry.producer(queue, message_id=message_id, routing_key=queue) as carried:
            envelope = Envelope.new(
                body,
                sender=self._instance_id,
                headers={**headers, **carried},
                message_id=message_id,
                trace_id=trace_id or self._telemetry.trace_id(),  # else the producer span's
            )
            hop = self._tiers.hop(delay) if delay > 0 else 0
            await self._backend.publish(queue, envelope, hop)
        self._telemetry.add(PUBLISHED, attributes={DESTINATION: queue})
        if self._log.is_enabled_for(logging.DEBUG):
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

    def _check_publish(
        self, channel: str, timeout: float | None, max_retries: int | None, delay: float
    ) -> None:
        """Refuse, at the call, values the headers cannot carry or the broker would refuse."""
        self._check_limits(channel, timeout, max_retries)
        if not _seconds(delay) or not 0 <= delay <= MAX_DELAY:
            raise ValueError(
                f"delay must be a number of seconds from 0 to {MAX_DELAY:g} (30 days), "
                f"got {delay!r}"
            )

    def _check_limits(self, channel: str, timeout: float | None, max_retries: int | None) -> None:
        """``timeout`` and ``max_retries`` (when given) within what headers and the broker
        allow."""
        if timeout is not None and (not _seconds(timeout) or not timeout >= MIN_TIMEOUT):
            raise ValueError(
                f"timeout must be a number of seconds >= {MIN_TIMEOUT}, got {timeout!r}"
            )
        if timeout is not None and timeout > self._consumer_timeout:
            raise BusError(
                f"channel {channel!r}: timeout {timeout}s exceeds consumer_timeout "
                f"{self._consumer_timeout}s (the broker would close the consumer first)"
            )
        if max_retries is not None and (
            isinstance(max_retries, bool)
            or not isinstance(max_retries, int)
            or not 0 <= max_retries <= MAX_RETRIES
        ):
            raise ValueError(
                f"max_retries must be an int from 0 to {MAX_RETRIES}, got {max_retries!r}"
            )

    # dead letters ----------------------------------------------------------------------

    async def dead_letters(self, channel: str, *, shared: bool = False) -> list[DeadLetter]:
        """The messages parked in ``channel``'s dead queue, oldest first (left in place).
        Their number is the dead queue's depth metric (when telemetry is on)."""
        queue = self._queue(channel, shared)
        self._require_started(channel)
        dead = await self._backend.dead_letters(queue)
        letters = [dead_letter_of(e, channel, self._codec.decode) for e in dead]
        self._telemetry.record(DEAD_QUEUE_DEPTH, len(letters), {DESTINATION: queue})
        return letters

    async def replay(
        self, channel: str, ids: Collection[str] | None = None, *, shared: bool = False
    ) -> int:
        """Move dead letters (all, or those whose id is in ``ids``) back to the work queue
        with their attempt count reset; returns how many moved."""
        queue = self._queue(channel, shared)
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
            return for_replay(envelope, max_timeout=self._consumer_timeout)

        return await self._backend.replay(queue, select)

    async def purge_dead(self, channel: str, *, shared: bool = False) -> int:
        """Empty ``channel``'s dead queue; returns how many messages were removed."""
        queue = self._queue(channel, shared)
        self._require_started(channel)
        count = await self._backend.purge_dead(queue)
        self._telemetry.record(DEAD_QUEUE_DEPTH, 0, {DESTINATION: queue})
        self._log.info("queue.purge_dead", channel=channel, count=count)
        return count

    def _queue(self, channel: str, shared: bool) -> str:
        """The queue of ``channel`` (:class:`~managers.errors.InvalidName` when the channel
        is not a valid queue channel, or its queue's names would exceed 255 bytes)."""
        return queue_name(self._app, channel, shared=shared, room=self._room)

    def _require_started(self, channel: str) -> None:
        if not self._started:
            raise BusError(f"queue {channel!r}: the bus is not started")


def _seconds(value: object) -> bool:
    """True for a finite int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


__all__ = [
    "MAX_DELAY",
    "MAX_RETRIES",
    "MIN_TIMEOUT",
    "DeadLetter",
    "EventQueue",
    "QueueContext",
    "QueueSubscription",
]


def _exception_types(
    channel: str, retry_on: type[BaseException] | tuple[type[BaseException], ...] | None
) -> tuple[type[BaseException], ...] | None:
    """``retry_on`` as a tuple of exception classes, or a ``TypeError`` naming the channel."""
    if retry_on is None:
        return None
    types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not types or not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise TypeError(
            f"retry_on for channel {channel!r} must be an exception class or a non-empty "
            f"tuple of them, got {retry_on!r}"
        )
    return types
