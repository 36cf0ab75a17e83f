"""How one instance runs the deliveries of its queue subscriptions: idle gating, the
timeout, and settling each message (ack, retry through a delay tier, or the dead queue)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import BaseModel
from structlog.typing import FilteringBoundLogger

from managers.errors import BusError, PayloadError
from managers.protocols import Codec, QueueConsumer, QueueDelivery
from managers.queue_messages import (
    DUE_SLACK,
    HEADER_ATTEMPT,
    HEADER_NOT_BEFORE,
    DelayTiers,
    QueueContext,
    QueueHeaders,
    forwarded,
    parked,
    to_ms,
)

Process = Callable[[Any, QueueContext], Awaitable[None]]
Idle = Callable[[], bool]

# The timeout of a message that arrives without an x-timeout header (published by hand).
DEFAULT_TIMEOUT = 15.0

# How often a paused (not idle) consumer asks its idle() predicate again.
IDLE_POLL = 0.05


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


class QueueWorker:
    """Runs deliveries for an :class:`~managers.queue.EventQueue`'s subscriptions."""

    def __init__(
        self,
        *,
        instance_id: str,
        codec: Codec,
        log: FilteringBoundLogger,
        tiers: DelayTiers,
        context: dict[str, str],
    ) -> None:
        self._instance_id = instance_id
        self._codec = codec
        self._log = log
        self._tiers = tiers
        self._context = context
        self._debug = log.is_enabled_for(logging.DEBUG)
        self.stopping = False

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
        head = QueueHeaders.read(envelope.headers, DEFAULT_TIMEOUT)
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
            await self._handle(sub, delivery, head, ctx)
        except asyncio.CancelledError:
            if not self.stopping and not sub.closing:
                raise
            # stop() cancelled a late handler: its message stays queued (never acked)
            self._log.warning("queue.interrupted", attempt=ctx.attempt, reason="stop")
        except Exception:  # a bug of ours must not leave the message held unacked
            self._log.exception("queue.internal_error", attempt=ctx.attempt)
            with contextlib.suppress(BusError):
                await delivery.requeue()
        finally:
            del sub.running[task]

    def _is_idle(self, sub: QueueSubscription) -> bool:
        """``sub.idle()``; a predicate that raises is logged and counts as idle (a broken
        predicate must not stop the queue)."""
        assert sub.idle is not None
        try:
            return bool(sub.idle())
        except Exception:
            self._log.exception("queue.idle_failed", channel=sub.channel)
            return True

    async def _hand_back(self, sub: QueueSubscription, delivery: QueueDelivery) -> None:
        """This instance is busy: pause the consumer, give the message back, and resume
        once ``idle()`` holds again."""
        if not sub.paused:
            try:
                await self.pause(sub, quietly=True)
            finally:
                sub.poller = asyncio.get_running_loop().create_task(self._await_idle(sub))
            self._log.debug("queue.paused", channel=sub.channel, reason="not idle")
        await self._settle(delivery.requeue(), delivery, "requeue")

    async def _await_idle(self, sub: QueueSubscription) -> None:
        # idle() is a plain predicate: there is nothing to wait on but time
        while not sub.closing:
            if not self._is_idle(sub):
                await asyncio.sleep(IDLE_POLL)
                continue
            consumer = sub.consumer
            if consumer is None:
                return
            try:
                await consumer.resume()
            except BusError as exc:  # broker trouble: the robust connection comes back
                self._log.warning("queue.resume_failed", channel=sub.channel, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            sub.paused = False
            self._log.debug("queue.resumed", channel=sub.channel)
            return

    async def _handle(
        self,
        sub: QueueSubscription,
        delivery: QueueDelivery,
        head: QueueHeaders,
        ctx: QueueContext,
    ) -> None:
        envelope = delivery.envelope
        if head.not_before is not None:
            remaining = head.not_before - time.time()
            if remaining > DUE_SLACK:  # a delayed message on its way: send it on
                hop = self._tiers.hop(remaining)
                await self._settle(delivery.retry(envelope, hop), delivery, "delay")
                return
        try:
            value = self._codec.decode(envelope.body)
            if sub.model is not None:
                value = self._codec.validate(value, sub.model)
        except PayloadError as exc:
            self._log.error("queue.malformed", attempt=ctx.attempt, error=str(exc))
            await self._park(delivery, ctx, f"PayloadError: {exc}", attempts=ctx.attempt)
            return
        if self._debug:
            self._log.debug(
                "queue.start", attempt=ctx.attempt, redelivered=ctx.redelivered, timeout=ctx.timeout
            )
        started = time.perf_counter()
        error = await self._run(sub.process, value, ctx)
        took = round(time.perf_counter() - started, 6)
        if error is None:
            if self._debug:
                self._log.debug("queue.success", attempt=ctx.attempt, seconds=took)
            await self._settle(delivery.ack(), delivery, "ack")
            return
        self._log.warning("queue.failure", attempt=ctx.attempt, error=error, seconds=took)
        if ctx.attempt < ctx.max_retries:
            backoff = self._tiers.backoff(ctx.attempt)
            retry = forwarded(
                envelope,
                **{
                    HEADER_ATTEMPT: ctx.attempt + 1,
                    HEADER_NOT_BEFORE: to_ms(time.time() + backoff),
                },
            )
            if await self._settle(delivery.retry(retry, backoff), delivery, "retry"):
                self._log.warning(
                    "queue.retry", attempt=ctx.attempt + 1, delay=backoff, error=error
                )
            return
        await self._park(delivery, ctx, error, attempts=ctx.attempt + 1)

    async def _run(self, process: Process, value: object, ctx: QueueContext) -> str | None:
        """Run one attempt under its deadline; the error text, or None on success."""
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            ctx.cancelled.set()
            task.cancel()

        handle = asyncio.get_running_loop().call_at(ctx.deadline, expire)
        try:
            await process(value, ctx)
        except asyncio.CancelledError:
            if not fired:
                if ctx.cancelled.is_set() or self.stopping:
                    raise  # the instance stops: the message stays queued
                # cancelled from elsewhere in the app: a failed attempt, so that the message
                # is settled (retried or parked) instead of held unacked
                task.uncancel()
                return "CancelledError: the handler's task was cancelled"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            handle.cancel()
        if fired:  # cancelled by the deadline (or the handler swallowed the cancellation)
            task.uncancel()
            return f"TimeoutError: the attempt took longer than its timeout ({ctx.timeout}s)"
        return None

    async def _park(
        self, delivery: QueueDelivery, ctx: QueueContext, error: str, *, attempts: int
    ) -> None:
        dead = parked(delivery.envelope, error=error, attempts=attempts, instance=self._instance_id)
        if await self._settle(delivery.bury(dead), delivery, "dead-letter"):
            self._log.error(
                "queue.dead_letter", attempt=ctx.attempt, attempts=attempts, error=error
            )

    async def _settle(self, operation: Awaitable[None], delivery: QueueDelivery, what: str) -> bool:
        """Run a settle operation; on a broker failure give the message back (or, when the
        channel died, leave it to the broker's redelivery) and say so in the logs."""
        try:
            await operation
            return True
        except BusError as exc:
            self._log.error("queue.settle_failed", operation=what, error=str(exc))
        with contextlib.suppress(BusError):
            await delivery.requeue()
        return False
