"""The ``idle`` predicate of a queue subscription: a busy instance pauses its consumer, gives
the message back, and resumes once ``idle()`` holds again (part of
:class:`~managers.queue_worker.QueueWorker`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from managers.errors import BusError
from managers.logger import Logger
from managers.protocols import QueueDelivery
from managers.tasks import TaskKeeper

if TYPE_CHECKING:
    from managers.queue_worker import QueueSubscription

IDLE_POLL = 0.05
"""How often a paused (not idle) consumer asks its idle() predicate again (s)."""


class IdleGate:
    """What :class:`~managers.queue_worker.QueueWorker` does with ``idle``."""

    _log: Logger
    _tasks: TaskKeeper

    async def pause(self, sub: QueueSubscription, *, quietly: bool = False) -> None:
        """Stop the broker giving ``sub`` messages (the worker's)."""
        raise NotImplementedError

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
                sub.poller = self._tasks.spawn(self._await_idle(sub), name="queue idle poller")
            self._log.debug("queue.paused", channel=sub.channel, reason="not idle")
        try:
            await delivery.requeue()
        except BusError as exc:  # the channel is gone: the broker gives it back anyway
            self._log.warning("queue.settle_failed", operation="requeue", error=str(exc))

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
