"""How one instance runs the deliveries of its queue subscriptions: idle gating, the
timeout, and settling each message (ack, retry through a delay tier, or the dead queue)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import BaseModel

from managers.envelope import Envelope
from managers.errors import BusError, BusUnavailable, PayloadError
from managers.logger import Logger
from managers.protocols import Codec, QueueConsumer, QueueDelivery
from managers.queue_attempts import Failure, Process, describe, run_attempt
from managers.queue_dedupe import CompletedIds
from managers.queue_idle import IdleGate
from managers.queue_messages import (
    DUE_SLACK,
    HEADER_ATTEMPT,
    HEADER_NOT_BEFORE,
    MAX_HEADER_TIMEOUT,
    DelayTiers,
    QueueContext,
    QueueHeaders,
    error_text,
    forwarded,
    parked,
    to_ms,
)
from managers.tasks import TaskKeeper
from managers.telemetry import (
    DEAD_LETTERED,
    DELIVERED,
    DELIVERY_LAG,
    DESTINATION,
    FAILED,
    NO_TELEMETRY,
    PROCESS_DURATION,
    RETRIED,
    Telemetry,
)

Idle = Callable[[], bool]

# The timeout of a message that arrives without an x-timeout header (published by hand).
DEFAULT_TIMEOUT = 15.0

# A message that could not be sent on (its retry, delay hop or dead-lettering failed) is kept
# unacked at least this long (or retry_delay, if longer) before it is given back to the
# queue: a failing broker never turns into a redelivery loop.
MIN_REQUEUE_DELAY = 1.0


@dataclass(slots=True)
class QueueSubscription:
    """One channel's consumer on this instance."""

    channel: str
    queue: str
    process: Process
    concurrency: int
    idle: Idle | None
    model: type[BaseModel] | None
    consumer: QueueConsumer | None = None
    running: dict[asyncio.Task[Any], QueueContext] = field(default_factory=dict)
    paused: bool = False
    closing: bool = False
    poller: asyncio.Task[None] | None = None
    closes: int = 0
    """How often the consumer was closed: a delivery that began under an earlier count lost
    its consumer (its message went back to the queue) and is not settled any more."""
    completed: CompletedIds | None = None
    """Ids completed recently (``subscribe(dedupe=...)``): a later copy is acked unrun."""
    max_retries: int | None = None
    """Retries of a message published without ``max_retries`` (None: 0)."""
    timeout: float | None = None
    """Timeout of a message published without ``timeout`` (None: 15 s)."""
    retry_on: tuple[type[BaseException], ...] | None = None
    """Exceptions worth a retry (None: any); any other goes to the dead queue at once."""


class QueueWorker(IdleGate):
    """Runs deliveries for an :class:`~managers.queue.EventQueue`'s subscriptions."""

    def __init__(
        self,
        *,
        instance_id: str,
        codec: Codec,
        log: Logger,
        tiers: DelayTiers,
        context: dict[str, str],
        max_timeout: float = MAX_HEADER_TIMEOUT,
        telemetry: Telemetry = NO_TELEMETRY,
        redact: Callable[[str], str] = str,
    ) -> None:
        self._telemetry = telemetry
        self._redact = redact
        self._instance_id = instance_id
        self._max_timeout = max_timeout
        self._codec = codec
        self._log = log
        self._tiers = tiers
        self._context = context
        self._tasks = TaskKeeper(log, "queue")
        self._requeue_delay = max(MIN_REQUEUE_DELAY, tiers.first)
        self._halt = asyncio.Event()
        self._stopping = False

    @property
    def stopping(self) -> bool:
        """True while the instance stops: no new delivery runs, held messages go back."""
        return self._stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._stopping = value
        if value:
            self._halt.set()
        else:
            self._halt.clear()

    async def pause(self, sub: QueueSubscription, *, quietly: bool = False) -> None:
        """Stop the broker giving ``sub`` messages (``quietly``: a failure is only logged; the
        consumer's channel is closed next anyway)."""
        if sub.consumer is None or sub.paused:
            return
        sub.paused = True
        try:
            await sub.consumer.pause()
        except BusError as exc:
            if not quietly:
                raise
            self._log.warning("queue.pause_failed", channel=sub.channel, error=str(exc))

    async def receive(self, sub: QueueSubscription, delivery: QueueDelivery) -> None:
        """Backend entry point, in a task of its own for every delivery."""
        if sub.closing or self.stopping:
            return  # left unsettled: closing the consumer gives it back to the queue
        if sub.idle is not None and (sub.paused or not self._is_idle(sub)):
            await self._hand_back(sub, delivery)
            return
        envelope = delivery.envelope
        structlog.contextvars.bind_contextvars(
            **self._context,
            trace_id=envelope.trace_id,
            channel=sub.channel,
            message_id=envelope.message_id,
        )
        task = asyncio.current_task()
        assert task is not None
        closes = sub.closes
        try:
            head = await self._checked_headers(sub, delivery)
        except Exception:  # a bug of ours must not leave the message held unacked
            self._log.exception("queue.internal_error", attempt=0)
            await self._requeue_later(sub, delivery, "internal error", closes)
            return
        if head is None:
            return
        loop = asyncio.get_running_loop()
        ctx = QueueContext(
            id=envelope.message_id,
            channel=sub.channel,
            attempt=head.attempt,
            max_retries=head.max_retries,
            timeout=head.timeout,
            deadline=loop.time() + head.timeout,
            redelivered=delivery.redelivered,
            trace_id=envelope.trace_id,
        )
        sub.running[task] = ctx
        try:
            with self._telemetry.consumer(
                sub.queue, message_id=envelope.message_id, headers=envelope.headers,
                attempt=head.attempt,
            ):  # fmt: skip
                await self._handle(sub, delivery, head, ctx, closes)
        except asyncio.CancelledError:
            if not self.stopping and not sub.closing:
                raise
            # stop() cancelled a late handler: its message stays queued (never acked)
            self._log.warning("queue.interrupted", attempt=ctx.attempt, reason="stop")
        except Exception:  # a bug of ours must not leave the message held unacked
            self._log.exception("queue.internal_error", attempt=ctx.attempt)
            await self._requeue_later(sub, delivery, "internal error", closes)
        finally:
            del sub.running[task]

    async def _checked_headers(
        self, sub: QueueSubscription, delivery: QueueDelivery
    ) -> QueueHeaders | None:
        """The delivery's headers; None when some are present but malformed (forged or
        foreign: NaN, infinite, not a number, out of bounds), after parking the message with
        a reason naming them (logged once): it never runs with made-up values. Absent headers
        (a plain producer's message) take their defaults."""
        try:
            head = QueueHeaders.read(
                delivery.envelope.headers,
                DEFAULT_TIMEOUT if sub.timeout is None else sub.timeout,
                max_timeout=self._max_timeout,
                default_max_retries=sub.max_retries or 0,
            )
        except Exception as exc:  # (read never raises; if it did, still park, never spin)
            head = QueueHeaders(0, 0, DEFAULT_TIMEOUT, None, ("?",), describe(exc))
        if not head.malformed:
            return head
        reason = error_text(f"malformed headers: {head.reason}")
        self._log.error("queue.malformed", attempt=head.attempt, error=reason)
        drop = tuple(name for name in head.malformed if name in delivery.envelope.headers)
        await self._park(
            sub, delivery, reason, attempt=head.attempt, attempts=head.attempt, drop=drop
        )
        return None

    async def _handle(
        self,
        sub: QueueSubscription,
        delivery: QueueDelivery,
        head: QueueHeaders,
        ctx: QueueContext,
        closes: int,
    ) -> None:
        envelope = delivery.envelope
        if head.not_before is not None:
            remaining = head.not_before - time.time()
            if remaining > DUE_SLACK:  # a delayed message on its way: send it on
                hop = self._tiers.hop(remaining)
                await self._forward(
                    sub, delivery, envelope, hop, what="delay", error="", attempts=ctx.attempt
                )
                return
        if sub.completed is not None and envelope.message_id in sub.completed:
            self._log.info("queue.duplicate_dropped", attempt=ctx.attempt)
            await self._ack(delivery)
            return
        try:
            value = self._codec.decode(envelope.body)
            if sub.model is not None:
                value = self._codec.validate(value, sub.model)
        except PayloadError as exc:
            self._log.error("queue.malformed", attempt=ctx.attempt, error=str(exc))
            await self._park(
                sub, delivery, f"PayloadError: {exc}", attempt=ctx.attempt, attempts=ctx.attempt
            )
            return
        if self._log.is_enabled_for(logging.DEBUG):
            self._log.debug(
                "queue.start", attempt=ctx.attempt, redelivered=ctx.redelivered, timeout=ctx.timeout
            )
        started = time.perf_counter()
        failure = await run_attempt(
            sub.process, value, ctx, stopping=lambda: self.stopping, redact=self._redact
        )
        took = round(time.perf_counter() - started, 6)
        self._measure(sub, envelope, ctx.attempt, took, failed=failure is not None)
        if sub.closes != closes:
            # the consumer closed while the handler ran (e.g. the handler stopped the bus):
            # its message went back to the queue, and it runs again elsewhere or later
            self._log.warning("queue.left_queued", attempt=ctx.attempt, reason="consumer closed")
            return
        if failure is None:
            if self._log.is_enabled_for(logging.DEBUG):
                self._log.debug("queue.success", attempt=ctx.attempt, seconds=took)
            if await self._ack(delivery) and sub.completed is not None:
                sub.completed.add(envelope.message_id)
            return
        error = failure.text
        self._log.warning("queue.failure", attempt=ctx.attempt, error=error, seconds=took)
        if sub.retry_on is not None and not isinstance(failure.exception, sub.retry_on):
            error = f"{error} (not retried: {failure.error_type} is not in retry_on)"
            await self._park(sub, delivery, error, attempt=ctx.attempt, attempts=ctx.attempt + 1,
                             failure=failure)  # fmt: skip
            return
        if ctx.attempt < ctx.max_retries:
            backoff = self._tiers.backoff(ctx.attempt)
            retry = forwarded(
                envelope,
                **{
                    HEADER_ATTEMPT: ctx.attempt + 1,
                    HEADER_NOT_BEFORE: to_ms(time.time() + backoff),
                },
            )
            sent = await self._forward(
                sub, delivery, retry, backoff, what="retry", error=error, attempts=ctx.attempt + 1
            )
            if sent:
                self._log.warning(
                    "queue.retry", attempt=ctx.attempt + 1, delay=backoff, error=error
                )
                self._telemetry.add(RETRIED, attributes={DESTINATION: sub.queue})
            return
        await self._park(
            sub, delivery, error, attempt=ctx.attempt, attempts=ctx.attempt + 1, failure=failure
        )

    async def _ack(self, delivery: QueueDelivery) -> bool:
        """Ack ``delivery``; False (logged) when the channel is gone and the broker will
        deliver it again."""
        try:
            await delivery.ack()
        except BusError as exc:
            self._log.error("queue.settle_failed", operation="ack", error=str(exc))
            return False
        return True

    # settling when the broker fails -------------------------------------------------------
    #
    # No broker failure turns into a redelivery loop (SPEC, "Under faults"):
    # - a retry or delay hop the broker *refuses* (a permanent fault) parks the message in
    #   the dead queue with both errors;
    # - one that finds the broker *unavailable*, or a dead-lettering that fails either way,
    #   keeps the message unacked for a while (retry_delay, at least MIN_REQUEUE_DELAY) and
    #   then gives it back to the queue unchanged (same attempt), or leaves it to the broker
    #   when the channel died;
    # - a failed ack is only logged: the channel is gone and the broker delivers it again.

    async def _forward(
        self,
        sub: QueueSubscription,
        delivery: QueueDelivery,
        envelope: Envelope,
        delay: float,
        *,
        what: str,
        error: str,
        attempts: int,
    ) -> bool:
        """Send ``envelope`` through the delay tier ``delay`` (a retry, or a delayed message's
        next hop); True when it went."""
        try:
            await delivery.retry(envelope, delay)
            return True
        except BusUnavailable as exc:
            self._log.error("queue.settle_failed", operation=what, error=str(exc))
            await self._requeue_later(sub, delivery, what, sub.closes)
        except BusError as exc:
            self._log.error("queue.settle_failed", operation=what, error=str(exc))
            reason = f"the {what} could not be scheduled: {exc}"
            text = f"{error} ({reason})" if error else reason
            await self._park(sub, delivery, text, attempt=attempts, attempts=attempts)
        return False

    async def _park(
        self,
        sub: QueueSubscription,
        delivery: QueueDelivery,
        error: str,
        *,
        attempt: int,
        attempts: int,
        drop: tuple[str, ...] = (),
        failure: Failure | None = None,
    ) -> None:
        """Dead-letter the message after ``attempts`` attempts with ``error`` (without the
        headers named in ``drop``; with the exception's type and traceback when it failed)."""
        dead = parked(
            delivery.envelope,
            error=error,
            attempts=attempts,
            instance=self._instance_id,
            drop=drop,
            error_type="" if failure is None else failure.error_type,
            traceback="" if failure is None else failure.traceback,
        )
        try:
            await delivery.bury(dead)
        except BusError as exc:
            self._log.error("queue.settle_failed", operation="dead-letter", error=str(exc))
            await self._requeue_later(sub, delivery, "dead-letter", sub.closes)
            return
        self._log.error("queue.dead_letter", attempt=attempt, attempts=attempts, error=error)
        self._telemetry.add(DEAD_LETTERED, attributes={DESTINATION: sub.queue})

    def _measure(
        self, sub: QueueSubscription, envelope: Envelope, attempt: int, took: float, failed: bool
    ) -> None:
        """An attempt's metrics: delivered, its duration, failed; the lag of a first one."""
        attributes = {DESTINATION: sub.queue}
        self._telemetry.add(DELIVERED, attributes=attributes)
        self._telemetry.record(PROCESS_DURATION, took, attributes)
        if failed:
            self._telemetry.add(FAILED, attributes=attributes)
        if attempt == 0 and envelope.timestamp:
            lag = max(0.0, time.time() - envelope.timestamp - took)
            self._telemetry.record(DELIVERY_LAG, lag, attributes)

    async def _requeue_later(
        self, sub: QueueSubscription, delivery: QueueDelivery, what: str, closes: int
    ) -> None:
        """Keep the message unacked for a while, then give it back to the queue (at once
        when the instance stops; not at all when its consumer closed meanwhile, which gave it
        back already)."""
        self._log.warning("queue.requeue_later", operation=what, delay=self._requeue_delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._requeue_delay):
                await self._halt.wait()
        if sub.closes != closes:
            return
        try:
            await delivery.requeue()
        except BusError as exc:  # the channel is gone: the broker gives it back anyway
            self._log.warning("queue.settle_failed", operation="requeue", error=str(exc))
