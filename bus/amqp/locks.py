"""Locks on RabbitMQ: one single-active-consumer queue per key, holding = being its active
consumer with a token delivered and unacked (implements ``LockBackend``).

Safety comes from SAC: the broker delivers to one consumer of the queue at a time, so at
most one instance can have a token in hand; tokens themselves may be duplicated (extras are
acked by the holder) or lost (waiters publish a fresh one every ``HEAL_INTERVAL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from structlog.typing import FilteringBoundLogger

from bus.amqp.topology import lock_queue
from bus.amqp.transport import AmqpTransport
from managers.envelope import new_message_id
from managers.errors import BusError, BusUnavailable, LockAcquireError
from managers.protocols import LostCallback

HEADER_TOKEN = "x-lock-token"
LOCK_EXPIRES_MS = 60_000  # an idle key's queue (no consumer) is deleted after this
HEAL_INTERVAL = 2.0  # a waiter publishes a fresh token this often (heals a lost token)
TRY_WAIT = 0.5  # try_acquire(timeout=0): how long a free key may take to hand its token over
RETRY_PAUSE = 0.2  # between attempts after the channel or the queue went away
# Lock queues: single active consumer; deleted after LOCK_EXPIRES_MS without a consumer;
# classic (quorum queues would count requeues towards a delivery limit in RabbitMQ 4).
LOCK_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-single-active-consumer": True,
    "x-expires": LOCK_EXPIRES_MS,
    "x-queue-type": "classic",
}


def _now_us() -> int:
    return time.time_ns() // 1000


class _Claim:
    """One consumer on one lock queue, from the wait to the release."""

    def __init__(self, key: str, channel: aio_pika.abc.AbstractChannel, queue: AbstractQueue):
        self.key = key
        self.channel = channel
        self.queue = queue
        self.tag: str | None = None
        self.state = "waiting"  # -> "holding" -> "closed"
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.own: set[str] = set()
        self.held: AbstractIncomingMessage | None = None
        self.token = 0
        self.proposal = 0  # the generation of the token we published on arrival
        self.background: set[asyncio.Task[None]] = set()
        self.on_lost: LostCallback | None = None
        self.gone = asyncio.Event()  # the broker cancelled us or the channel closed
        self.carried = asyncio.Event()  # the held token carries our generation
        self.gone_reason = ""

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        if self.state == "waiting":
            self.inbox.put_nowait(message)
        elif self.state == "holding":
            held = self.held
            if (
                held is not None
                and _token(held) < self.token
                and message.message_id in self.own
                and _token(message) >= self.token
            ):  # our token carrying our generation: hold it instead
                self.held = message
                message = held
                self.carried.set()
            await _quietly(message.ack)  # a duplicate token: one is enough
        else:
            await _quietly(functools.partial(message.nack, requeue=True))  # not ours to keep

    def spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work()`` in the background for as long as the claim lives."""

        async def run() -> None:
            with contextlib.suppress(BusError):
                await work()

        task = asyncio.get_running_loop().create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def lose(self, reason: str) -> None:
        """The consumer is gone (queue deleted, channel closed)."""
        if self.gone.is_set():
            return
        self.gone_reason = reason
        self.gone.set()
        if self.state == "holding" and self.on_lost is not None:
            self.state = "closed"
            self.on_lost(reason)


class AmqpHold:
    """A key held through a :class:`_Claim` (implements ``LockHold``)."""

    def __init__(self, backend: AmqpLocks, claim: _Claim) -> None:
        self._backend = backend
        self._claim = claim
        self.token = claim.token

    async def release(self) -> None:
        """Cancel the consumer (the next waiter becomes active), then requeue the token."""
        await self._backend.close_claim(self._claim)


class AmqpLocks:
    """One instance's locks: a dedicated, non-robust channel (a reconnect must never
    silently rejoin a wait list: a lost connection is a lost lease)."""

    def __init__(self, transport: AmqpTransport, log: FilteringBoundLogger) -> None:
        self._transport = transport
        self._log = log
        self._channel: aio_pika.Channel | None = None
        self._opening = asyncio.Lock()
        self._claims: set[_Claim] = set()
        self._stopping = False

    # the channel -------------------------------------------------------------------------

    async def _open(self) -> aio_pika.Channel:
        async with self._opening:
            if self._stopping:
                raise BusError("the bus is stopping")
            channel = self._channel
            if channel is not None and not channel.is_closed:
                return channel
            channel = aio_pika.Channel(self._transport.connection, publisher_confirms=True)
            await self._transport.bounded("opening the lock channel", channel.initialize)
            underlay = await channel.get_underlay_channel()
            underlay.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
            channel.close_callbacks.add(self._on_channel_closed)
            self._channel = channel
            return channel

    def _on_channel_closed(self, channel: object, exc: BaseException | None) -> None:
        if channel is self._channel:
            self._channel = None
        for claim in [c for c in self._claims if c.channel is channel]:
            claim.lose(f"the lock channel closed ({exc!r})")

    def _on_broker_cancel(self, frame: Any) -> None:
        for claim in [c for c in self._claims if c.tag == frame.consumer_tag]:
            claim.lose("the broker cancelled the consumer (lock queue deleted?)")

    # acquiring ---------------------------------------------------------------------------

    async def acquire(self, key: str, timeout: float | None, on_lost: LostCallback) -> AmqpHold:
        """Wait in the key's queue until the token comes; attempts again on a fresh channel
        or queue if either goes away before that, while the timeout allows."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                claim = await self._attempt(key, deadline, trying=timeout == 0)
            except (BusUnavailable, _Gone) as exc:
                if self._stopping:
                    raise BusError(f"lock {key!r}: the bus is stopping") from exc
                if deadline is not None and loop.time() + RETRY_PAUSE >= deadline:
                    raise LockAcquireError(f"lock {key!r}: not acquired ({exc})") from exc
                self._log.warning("lock.wait_restarted", key=key, error=str(exc))
                await asyncio.sleep(RETRY_PAUSE)
                continue
            claim.on_lost = on_lost
            return AmqpHold(self, claim)

    async def _attempt(self, key: str, deadline: float | None, *, trying: bool) -> _Claim:
        bounded = self._transport.bounded
        channel = await self._open()
        name = lock_queue(self._transport.app, key)
        if trying:  # asks the broker whether anyone holds or waits: one round trip
            queue = await bounded(
                f"declaring lock queue {name!r}",
                lambda: channel.declare_queue(name, durable=True, arguments=LOCK_QUEUE_ARGUMENTS),
            )
            declared = queue.declaration_result
            if declared is not None and declared.consumer_count:
                raise LockAcquireError(f"lock {key!r} is held")
        else:  # declared without waiting: the consume behind it on the channel is the answer
            underlay = await channel.get_underlay_channel()
            await bounded(
                f"declaring lock queue {name!r}",
                lambda: underlay.queue_declare(
                    name, durable=True, arguments=LOCK_QUEUE_ARGUMENTS, nowait=True
                ),
            )
            queue = await channel.get_queue(name, ensure=False)
        claim = _Claim(key, channel, queue)
        self._claims.add(claim)
        try:
            claim.tag = await bounded(
                f"waiting on lock queue {name!r}", lambda: queue.consume(claim.on_message)
            )
            claim.proposal = _now_us()
            claim.spawn(functools.partial(self._publish_token, claim, claim.proposal))
            limit = deadline
            if trying:
                limit = asyncio.get_running_loop().time() + TRY_WAIT
            first = await self._first_token(claim, limit)
            await self._take(claim, first)
        except BaseException:
            await self.close_claim(claim)
            raise
        return claim

    async def _publish_token(self, claim: _Claim, token: int) -> None:
        message_id = new_message_id()
        claim.own.add(message_id)
        message = aio_pika.Message(
            b"",
            message_id=message_id,
            headers={HEADER_TOKEN: token},
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        )
        await self._transport.bounded(
            f"publishing a token of lock {claim.key!r}",
            lambda: claim.channel.default_exchange.publish(message, routing_key=claim.queue.name),
        )

    async def _first_token(self, claim: _Claim, deadline: float | None) -> AbstractIncomingMessage:
        """The first delivery (we are the active consumer), publishing a fresh token every
        ``HEAL_INTERVAL`` while waiting in case the queue has none."""
        loop = asyncio.get_running_loop()
        while True:
            wait = HEAL_INTERVAL if deadline is None else min(HEAL_INTERVAL, deadline - loop.time())
            if wait <= 0:
                raise LockAcquireError(f"lock {claim.key!r}: not acquired within the timeout")
            message = await self._next(claim, wait)
            if message is not None:
                return message
            if deadline is None or loop.time() < deadline:
                await self._publish_token(claim, _now_us())

    async def _next(self, claim: _Claim, wait: float) -> AbstractIncomingMessage | None:
        """The next delivery within ``wait`` seconds (None), or :class:`_Gone`."""
        getting = asyncio.ensure_future(claim.inbox.get())
        gone = asyncio.ensure_future(claim.gone.wait())
        try:
            await asyncio.wait((getting, gone), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not getting.done():
                getting.cancel()
        if getting.done() and not getting.cancelled():
            return getting.result()
        if claim.gone.is_set():
            raise _Gone(claim.gone_reason)
        return None

    async def _take(self, claim: _Claim, first: AbstractIncomingMessage) -> None:
        """We are the active consumer: the lock is ours. Our generation is above every token
        seen; the token we keep must carry it (so that a crash hands it on), so when the one
        in hand does not, our own token (or a fresh one) replaces it in the background."""
        seen = [first]
        while not claim.inbox.empty():
            seen.append(claim.inbox.get_nowait())
        foreign = max((_token(m) for m in seen if m.message_id not in claim.own), default=-1)
        own = max((_token(m) for m in seen if m.message_id in claim.own), default=0)
        token = max(foreign + 1, claim.proposal, own)
        keep = max(seen, key=_token)
        claim.held, claim.token, claim.state = keep, token, "holding"
        for message in seen:
            if message is not keep:
                await _quietly(message.ack)
        if _token(keep) < token:
            claim.spawn(functools.partial(self._carry, claim))
        else:
            claim.carried.set()

    async def _carry(self, claim: _Claim) -> None:
        """Make the held token carry the claim's generation: our arrival token does if it
        reaches us (the adoption happens in ``on_message``); else publish one that does."""
        for task in list(claim.background):
            if task is not asyncio.current_task():
                await asyncio.wait({task})
        held = claim.held
        if claim.state == "holding" and held is not None and _token(held) < claim.token:
            await self._publish_token(claim, claim.token)

    # releasing ---------------------------------------------------------------------------

    async def close_claim(self, claim: _Claim) -> None:
        """Cancel the consumer, then give back the held token and anything else received."""
        if claim.state == "closed" and claim.tag is None:
            return
        if claim.state == "holding" and not claim.carried.is_set() and not claim.channel.is_closed:
            # hand on our generation, not the one we were given (fencing stays increasing)
            try:
                await asyncio.wait_for(
                    claim.carried.wait(), self._transport.settings.publish_timeout
                )
            except TimeoutError:
                self._log.warning("lock.generation_not_carried", key=claim.key)
        claim.state = "closed"
        self._claims.discard(claim)
        for task in list(claim.background):
            task.cancel()
        tag, claim.tag = claim.tag, None
        if tag is not None and not claim.channel.is_closed:
            with contextlib.suppress(BusError):
                await self._transport.bounded(
                    f"leaving lock queue {claim.queue.name!r}", lambda: claim.queue.cancel(tag)
                )
        held, claim.held = claim.held, None
        waiting = []
        while not claim.inbox.empty():
            waiting.append(claim.inbox.get_nowait())
        for message in [m for m in (held, *waiting) if m is not None]:
            await _quietly(functools.partial(message.nack, requeue=True))

    async def stop(self) -> None:
        """Tell every holder its lease is lost, give back every token, close the channel."""
        self._stopping = True
        for claim in list(self._claims):
            claim.lose("bus stopping")
            await self.close_claim(claim)
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await self._transport.bounded("closing the lock channel", channel.close)


class _Gone(Exception):
    """The consumer went away before the token came (retried on a new channel or queue)."""


def _token(message: AbstractIncomingMessage) -> int:
    value = message.headers.get(HEADER_TOKEN)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def _quietly(operation: Callable[[], Awaitable[None]]) -> None:
    """Ack/nack; on a dead channel the broker has requeued the message already."""
    with contextlib.suppress(Exception):
        await operation()
