"""Sync messages: pub/sub on ``sync.<channel>``, debounced, sent only after the database
transaction they belong to commits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel

from managers.envelope import current_trace_id
from managers.errors import BusError
from managers.handler_checks import check_handler
from managers.logger import Logger
from managers.names import validate_channel
from managers.protocols import Codec
from managers.pubsub import Handler, PubSubManager, Subscription
from managers.tasks import TaskKeeper

SYNC_PREFIX = "sync."


class TransactionHooks(Protocol):
    """Commit and rollback callbacks of one transaction (see :mod:`bus.transactions`)."""

    def after_commit(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once the transaction committed."""
        ...

    def after_rollback(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` if the transaction rolls back instead."""
        ...


HooksFor = Callable[[object], TransactionHooks]
"""Turns a transaction object (a SQLAlchemy session, ...) into its hooks, or raises
``TypeError`` naming what is supported."""


class SyncMessageManager:
    """``bus.sync``: publish after commit, subscribe with the ``sync_debounce`` debounce."""

    def __init__(
        self,
        *,
        pubsub: PubSubManager,
        codec: Codec,
        log: Logger,
        debounce: float,
        hooks_for: HooksFor,
        publish_timeout: float,
    ) -> None:
        self._pubsub = pubsub
        self._codec = codec
        self._log = log
        self._debounce = debounce
        self._hooks_for = hooks_for
        self._publish_timeout = publish_timeout
        self._sending = TaskKeeper(log, "sync")

    async def subscribe(
        self, channel: str, handler: Handler, *, model: type[BaseModel] | None = None
    ) -> Subscription:
        """Call ``handler(message)`` for sync messages of ``channel`` from other instances,
        debounced by ``sync_debounce`` seconds. A ``handler`` that is not an async function
        raises :class:`TypeError` naming the channel (after the name's own checks)."""
        wire = self._pubsub.check_channel(_wire(channel))
        check_handler(channel, handler, what="sync handler")
        return await self._pubsub.subscribe(wire, handler, debounce=self._debounce, model=model)

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        """Remove ``handler`` from ``channel``."""
        await self._pubsub.unsubscribe(_wire(channel), handler)

    async def publish(
        self,
        channel: str,
        message: object,
        *,
        transaction: object = None,
        skip_self: bool = True,
        only_self: bool = False,
    ) -> bool:
        """Send ``message`` on ``channel``; True once sent, or (with ``transaction``) once
        registered to be sent when it commits (discarded if it rolls back). Never waits for
        the commit, so awaiting this inside the transaction cannot deadlock. The payload is
        encoded at once: a bad one raises :class:`PayloadError` here."""
        wire = self._pubsub.check_channel(_wire(channel))
        body = self._codec.encode(message, channel=wire)
        if transaction is None:
            await self._pubsub.publish_encoded(wire, body, skip_self=skip_self, only_self=only_self)
            return True
        hooks = self._hooks_for(transaction)
        loop = asyncio.get_running_loop()
        trace_id = current_trace_id()
        settled = False

        def on_commit() -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            send = (wire, body, skip_self, only_self, trace_id)
            if _in_loop_thread(loop):
                self._spawn(*send)
                return
            try:  # a sync session or connection committed in a worker thread
                loop.call_soon_threadsafe(self._spawn, *send)
            except RuntimeError as exc:  # the loop is closed: the commit must not fail
                self._log.error("sync.send_failed", channel=wire, trace_id=trace_id, error=str(exc))

        def on_rollback() -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            self._log.info("sync.discarded", channel=wire, trace_id=trace_id, reason="rollback")

        hooks.after_commit(on_commit)
        hooks.after_rollback(on_rollback)
        self._log.debug("sync.pending", channel=wire, trace_id=trace_id)
        return True

    def _spawn(self, *send: Any) -> None:
        self._sending.spawn(self._send(*send), name=f"sync send {send[0]}")

    async def _send(
        self, wire: str, body: bytes, skip_self: bool, only_self: bool, trace_id: str
    ) -> None:
        try:
            await self._pubsub.publish_encoded(
                wire, body, skip_self=skip_self, only_self=only_self, trace_id=trace_id
            )
        except BusError as exc:
            self._log.error("sync.send_failed", channel=wire, trace_id=trace_id, error=str(exc))

    async def stop(self) -> None:
        """Wait (up to ``publish_timeout``) for the sends of committed transactions, then
        cancel the late ones (logged)."""
        late = await self._sending.drain(self._publish_timeout)
        if late:
            self._log.warning("sync.sends_cancelled", count=late)


def _wire(channel: str) -> str:
    return validate_channel(f"{SYNC_PREFIX}{validate_channel(channel)}")


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:  # no loop runs in this thread: a worker thread
        return False


__all__ = ["SYNC_PREFIX", "SyncMessageManager", "TransactionHooks"]
