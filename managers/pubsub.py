"""Pub/sub: broadcast to every subscribed instance, with skip_self, only_self and debounce."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine
from typing import Any

import structlog
from pydantic import BaseModel

from managers.debounce import Debouncer
from managers.envelope import Envelope, bound_trace_id, new_message_id
from managers.errors import BusError, PayloadError
from managers.handler_checks import check_handler
from managers.logger import Logger
from managers.names import check_pubsub_channel, pubsub_name
from managers.protocols import BroadcastBackend, Codec
from managers.pubsub_subscription import Handler, Subscription
from managers.tasks import TaskKeeper, cancel_after
from managers.telemetry import (
    DELIVERED,
    DELIVERY_LAG,
    DESTINATION,
    FAILED,
    NO_TELEMETRY,
    PROCESS_DURATION,
    PUBLISHED,
    Telemetry,
)


class PubSubManager:
    """Cross-instance broadcast over a :class:`~managers.protocols.BroadcastBackend`.

    Delivery is at-most-once to every instance subscribed when the message is published.
    ``app`` (the app name; else ``context["app"]``) sizes the exchange names
    ``<app>.pubsub.<channel>``, checked against AMQP's 127-byte limit on exchange names at
    subscribe and publish in both modes; when neither gives it, the longest app name is
    assumed.
    """

    def __init__(
        self,
        *,
        instance_id: str,
        backend: BroadcastBackend,
        codec: Codec,
        log: Logger,
        stop_timeout: float,
        context: dict[str, str],
        app: str | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._app = app if app is not None else context.get("app")
        self._telemetry = telemetry
        self._instance_id = instance_id
        self._backend = backend
        self._codec = codec
        self._log = log
        self._stop_timeout = stop_timeout
        self._context = context
        self._subs: dict[str, dict[Handler, Subscription]] = {}
        self._bound: set[str] = set()
        self._bind_lock = asyncio.Lock()
        self._tasks = TaskKeeper(log, "pubsub")
        """Debounced calls and deliveries to self (``skip_self=False``)."""
        self._inflight: set[asyncio.Task[Any]] = set()
        """Tasks running a delivery's handlers (the backend's or ours)."""
        self._parents: dict[asyncio.Task[Any], asyncio.Task[Any]] = {}
        """Tasks running handlers on behalf of another (a delivery's concurrent handlers,
        a delivery to self awaited by ``only_self``): the one they run for."""
        self._debouncer = Debouncer(self._tasks.spawn)
        self._started = False
        self._stopping = False

    # lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start receiving and bind every channel subscribed so far."""
        if self._started:
            return
        self._stopping = False
        await self._backend.start(self._receive)
        self._started = True
        for channel in list(self._subs):
            await self._reconcile(channel)

    async def stop_receiving(self) -> None:
        """Stop deliveries, drop pending debounced calls, wait for running handlers.
        Publishing still works until :meth:`stop`."""
        if not self._started or self._stopping:
            self._debouncer.cancel_all()
            return
        self._stopping = True
        dropped = self._debouncer.cancel_all()
        if dropped:
            self._log.info("pubsub.debounce_cancelled", count=dropped)
        await self._backend.stop()
        self._bound.clear()
        # The caller's own task (a handler that stops the bus) and the tasks it runs for are
        # not waited for; a handler that ignores its cancellation is abandoned after
        # CANCEL_GRACE (logged), so this never takes longer than stop_timeout + CANCEL_GRACE.
        callers = self._callers()
        running = {t for t in self._inflight | self._tasks.tasks if t not in callers}
        late = await cancel_after(running, self._stop_timeout, self._log, "pubsub")
        if late:
            self._log.warning("pubsub.handlers_cancelled", count=late)

    def _callers(self) -> set[asyncio.Task[Any]]:
        """The current task and those it runs handlers for (its "parents"): a handler that
        stops the bus must not wait for itself through them."""
        found: set[asyncio.Task[Any]] = set()
        task = asyncio.current_task()
        while task is not None and task not in found:
            found.add(task)
            task = self._parents.get(task)
        return found

    def _run_for(self, task: asyncio.Task[Any], parent: asyncio.Task[Any] | None) -> None:
        """Note that ``task`` runs handlers on behalf of ``parent``."""
        if parent is not None:
            self._parents[task] = parent
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._parents.pop(task, None)

    async def stop(self) -> None:
        """Stop receiving (see :meth:`stop_receiving`) and publishing."""
        await self.stop_receiving()
        self._started = False

    @property
    def started(self) -> bool:
        """True while the manager is started and not stopping."""
        return self._started and not self._stopping

    # subscriptions ---------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        handler: Handler,
        *,
        debounce: float = 0.0,
        model: type[BaseModel] | None = None,
    ) -> Subscription:
        """Call ``handler(message)`` for every message published on ``channel``.

        Subscribing the same handler twice keeps one subscription (the first). With
        ``debounce`` > 0, equal payloads within that many seconds collapse into one call made
        ``debounce`` seconds after the last. With ``model``, payloads are validated into it.
        A channel name that is not valid, or whose exchange ``<app>.pubsub.<channel>`` would
        exceed 127 bytes (AMQP's limit on exchange names), raises
        :class:`~managers.errors.InvalidName`; a ``handler`` that is not an async function
        raises :class:`TypeError` naming the channel (nothing is subscribed).
        """
        self.check_channel(channel)
        check_handler(channel, handler, what="pub/sub handler")
        if debounce < 0:
            raise ValueError(f"debounce must be >= 0 seconds, got {debounce!r}")
        handlers = self._subs.setdefault(channel, {})
        existing = handlers.get(handler)
        if existing is not None:
            return existing
        sub = Subscription(self, channel, handler, float(debounce), model)
        handlers[handler] = sub
        try:
            await self._reconcile(channel)
        except BaseException:
            handlers.pop(handler, None)
            if not handlers:
                self._subs.pop(channel, None)
            raise
        self._log.debug("pubsub.subscribed", channel=channel, handler=_name(handler))
        return sub

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        """Remove ``handler`` from ``channel`` (no-op when it is not subscribed)."""
        handlers = self._subs.get(channel)
        if not handlers or handlers.pop(handler, None) is None:
            return
        if not handlers:
            del self._subs[channel]
        await self._reconcile(channel)
        self._log.debug("pubsub.unsubscribed", channel=channel, handler=_name(handler))

    def states(self) -> dict[str, str]:
        """Every subscribed channel: ``ok`` while deliveries can arrive, else ``down``."""
        state = "ok" if self._started and self._backend.receiving else "down"
        return {channel: state for channel, subs in self._subs.items() if subs}

    def subscriptions(self, channel: str) -> list[Subscription]:
        """The subscriptions of ``channel`` on this instance."""
        return list(self._subs.get(channel, {}).values())

    async def _reconcile(self, channel: str) -> None:
        """Make the backend binding of ``channel`` match whether it has handlers."""
        async with self._bind_lock:
            if not self._started or self._stopping:
                return
            wanted = bool(self._subs.get(channel))
            if wanted and channel not in self._bound:
                await self._backend.bind(channel)
                self._bound.add(channel)
            elif not wanted and channel in self._bound:
                self._bound.discard(channel)
                await self._backend.unbind(channel)

    # publishing ------------------------------------------------------------------------

    async def publish(
        self, channel: str, message: object, *, skip_self: bool = True, only_self: bool = False
    ) -> str:
        """Broadcast ``message`` on ``channel``; returns the message id.

        ``skip_self`` (default) keeps it from this instance's own handlers; ``only_self``
        delivers it to this instance only, without touching the broker, and returns once its
        handlers ran. The payload is always encoded, so a bad one raises
        :class:`PayloadError` naming the channel either way; a bad or over-long channel name
        raises :class:`~managers.errors.InvalidName` (see :meth:`subscribe`).
        """
        self.check_channel(channel)
        body = self._codec.encode(message, channel=channel)
        return await self.publish_encoded(channel, body, skip_self=skip_self, only_self=only_self)

    async def publish_encoded(
        self,
        channel: str,
        body: bytes,
        *,
        skip_self: bool = True,
        only_self: bool = False,
        trace_id: str | None = None,
    ) -> str:
        """:meth:`publish` of a payload already encoded by the bus codec (sync messages encode
        at the call and send after the commit), under ``trace_id`` when given."""
        self.check_channel(channel)
        if not only_self and not self._started:
            raise BusError(f"cannot publish on {channel!r}: the bus is not started")
        trace_id = trace_id or self._telemetry.trace_id() or bound_trace_id()
        if self._telemetry.enabled:
            envelope = await self._publish_traced(channel, body, trace_id, only_self)
        else:
            envelope = Envelope.new(body, sender=self._instance_id, trace_id=trace_id)
            if not only_self:
                await self._backend.publish(channel, envelope)
        if self._log.is_enabled_for(logging.DEBUG):
            self._log.debug(
                "pubsub.publish",
                channel=channel,
                message_id=envelope.message_id,
                trace_id=envelope.trace_id,
                skip_self=skip_self,
                only_self=only_self,
                bytes=len(body),
            )
        # An instance never takes its own messages from the backend; it delivers them to
        # itself directly when asked to (only_self: before returning; skip_self=False: in a
        # task of its own, as a delivery from the broker would run).
        if only_self:
            local = self._deliver(channel, envelope, self._codec.decode(body))
            task = asyncio.get_running_loop().create_task(local)
            self._run_for(task, asyncio.current_task())
            await task
        elif not skip_self:
            self._tasks.spawn(
                self._deliver(channel, envelope, self._codec.decode(body)), name="pubsub to self"
            )
        return envelope.message_id

    async def _publish_traced(
        self, channel: str, body: bytes, trace_id: str | None, only_self: bool
    ) -> Envelope:
        """Publish inside a PRODUCER span whose context the headers carry."""
        message_id = new_message_id()
        destination = self._destination(channel)
        with self._telemetry.producer(destination, message_id=message_id) as carried:
            envelope = Envelope.new(
                body,
                sender=self._instance_id,
                trace_id=trace_id or self._telemetry.trace_id(),  # else the producer span's
                message_id=message_id,
                headers=carried,
            )
            if not only_self:
                await self._backend.publish(channel, envelope)
        self._telemetry.add(PUBLISHED, attributes={DESTINATION: destination})
        return envelope

    def _destination(self, channel: str) -> str:
        return pubsub_name(self._app or "-", channel)

    def check_channel(self, channel: str) -> str:
        """Return ``channel`` if it can be a pub/sub channel of this app: a valid name whose
        exchange ``<app>.pubsub.<channel>`` fits 127 bytes; else raise
        :class:`~managers.errors.InvalidName` (the same in both modes)."""
        return check_pubsub_channel(self._app, channel)

    # receiving -------------------------------------------------------------------------

    async def _receive(self, channel: str, envelope: Envelope) -> None:
        """Backend entry point, called in a task of its own for every delivery."""
        if self._stopping or envelope.sender == self._instance_id:
            return
        if not self._subs.get(channel):
            return
        try:
            value = self._codec.decode(envelope.body)
        except PayloadError as exc:
            self._log.error(
                "pubsub.malformed",
                channel=channel,
                message_id=envelope.message_id,
                trace_id=envelope.trace_id,
                sender=envelope.sender,
                error=str(exc),
            )
            return
        await self._deliver(channel, envelope, value)

    async def _deliver(self, channel: str, envelope: Envelope, value: object) -> None:
        """Run one delivery's handlers. Always runs in a task of its own (the backend's, or
        one made for a delivery to self), so the log binding needs no reset."""
        subs = self._subs.get(channel)
        if not subs:
            return
        structlog.contextvars.bind_contextvars(
            **self._context,
            trace_id=envelope.trace_id,  # the message's (x-trace-id)
            channel=channel,
            message_id=envelope.message_id,
        )
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            if self._telemetry.enabled:
                await self._deliver_traced(channel, subs, envelope, value)
            else:
                await self._run_handlers(channel, subs, envelope, value)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _deliver_traced(
        self, channel: str, subs: dict[Handler, Subscription], envelope: Envelope, value: object
    ) -> None:
        """Run the handlers inside a CONSUMER span, and measure them."""
        attributes = {DESTINATION: self._destination(channel)}
        started = time.perf_counter()
        try:
            with self._telemetry.consumer(
                attributes[DESTINATION], message_id=envelope.message_id, headers=envelope.headers
            ):
                await self._run_handlers(channel, subs, envelope, value)
        finally:
            self._telemetry.add(DELIVERED, attributes=attributes)
            self._telemetry.record(PROCESS_DURATION, time.perf_counter() - started, attributes)
            if envelope.timestamp:
                lag = max(0.0, time.time() - envelope.timestamp)
                self._telemetry.record(DELIVERY_LAG, lag, attributes)

    async def _run_handlers(
        self,
        channel: str,
        subs: dict[Handler, Subscription],
        envelope: Envelope,
        value: object,
    ) -> None:
        """Call the immediate handlers now (concurrently) and schedule the debounced ones."""
        if self._log.is_enabled_for(logging.DEBUG):
            self._log.debug(
                "pubsub.deliver",
                channel=channel,
                message_id=envelope.message_id,
                trace_id=envelope.trace_id,
                sender=envelope.sender,
                handlers=len(subs),
            )
        immediate: list[Coroutine[Any, Any, None]] = []
        for sub in list(subs.values()):
            if sub.debounce > 0:
                key = (channel, sub.handler, envelope.body)
                self._debouncer.call(
                    key, sub.debounce, functools.partial(self._run_handler, sub, envelope, value)
                )
            else:
                immediate.append(self._run_handler(sub, envelope, value))
        if len(immediate) == 1:
            await immediate[0]
        elif immediate:
            parent = asyncio.current_task()
            loop = asyncio.get_running_loop()
            children = [loop.create_task(coro) for coro in immediate]
            for child in children:  # waited for at stop like their delivery
                self._run_for(child, parent)
                self._inflight.add(child)
                child.add_done_callback(self._inflight.discard)
            await asyncio.gather(*children)

    async def _run_handler(self, sub: Subscription, envelope: Envelope, value: object) -> None:
        """Run one handler; the caller's context carries the delivery's log bindings."""
        if self._stopping:
            return
        payload: object = value
        if sub.model is not None:
            try:
                payload = self._codec.validate(value, sub.model)
            except PayloadError as exc:
                self._log.error(
                    "pubsub.invalid_payload",
                    handler=_name(sub.handler),
                    model=sub.model.__name__,
                    error=str(exc),
                )
                return
        try:
            await sub.handler(payload)
        except Exception:
            self._log.exception("pubsub.handler_failed", handler=_name(sub.handler))
            if self._telemetry.enabled:
                destination = self._destination(sub.channel)
                self._telemetry.add(FAILED, attributes={DESTINATION: destination})

    @property
    def pending_debounced(self) -> int:
        """How many debounced handler calls are waiting to run."""
        return self._debouncer.pending


def _name(handler: object) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)


__all__ = ["Handler", "PubSubManager", "Subscription"]
