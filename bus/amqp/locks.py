"""Locks on RabbitMQ: one single-active-consumer queue per key, holding = being its active
consumer with a token delivered and unacked (implements ``LockBackend``).

Safety comes from SAC: the broker delivers to one consumer of the queue at a time, so at
most one instance can have a token in hand; tokens themselves may be duplicated (extras are
acked by the holder) or lost (waiters publish a fresh one every ``HEAL_INTERVAL``).

Every claim (one wait, then one hold) has a channel of its own, so a broker operation that
times out, a channel the broker closes or a waiter cancelled mid-operation affects that
claim only. Giving a claim back (release, a timed-out or cancelled wait) is shielded from
the caller's cancellation and bounded: cancel the consumer (the next waiter becomes active),
publish a fresh token carrying our generation, ack what we received, close the channel; when
any step fails or times out the channel is closed, and the broker requeues what we held.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bus.amqp.liveness import BrokerLiveness
from bus.amqp.lock_channels import LockChannels
from bus.amqp.lock_claims import HEADER_TOKEN, Claim, now_us, token_of
from bus.amqp.transport import AmqpTransport, queue_missing, quietly, rejected
from managers.envelope import new_message_id
from managers.errors import BusError, BusUnavailable, LockAcquireError
from managers.logger import Logger
from managers.names import lock_queue
from managers.protocols import LostCallback
from managers.tasks import TaskKeeper

T = TypeVar("T")

HEAL_INTERVAL = 2.0  # a waiter publishes a fresh token this often (heals a lost token)
TRY_WAIT = 0.5  # try_acquire(timeout=0): how long a free key may take to hand its token over
RETRY_PAUSE = 0.2  # between attempts after the channel or the queue went away...
MAX_RETRY_PAUSE = 2.0  # ...doubling while the outage lasts (a dead node is not hammered)


class AmqpHold:
    """A key held through a :class:`Claim` (implements ``LockHold``)."""

    def __init__(self, backend: AmqpLocks, claim: Claim) -> None:
        self._backend = backend
        self._claim = claim
        self.token = claim.token

    async def release(self) -> None:
        """Give the key to the next waiter (shielded from the caller's cancellation)."""
        await self._backend.give_back(self._claim)


class AmqpLocks:
    """One instance's locks: a channel per claim, non-robust (a reconnect must never
    silently rejoin a wait list: a lost connection is a lost lease)."""

    def __init__(self, transport: AmqpTransport, log: Logger) -> None:
        self._transport = transport
        self._log = log
        self._claims: set[Claim] = set()
        self._keeper = TaskKeeper(log, "locks")
        self._channels = LockChannels(transport, self._keeper)
        self._stopping = False
        self._liveness = BrokerLiveness(
            transport, log, needed=self._holding, on_silent=self._lose_holders
        )

    def _holding(self) -> bool:
        return any(c.state == "holding" for c in self._claims)

    def _lose_holders(self, reason: str) -> None:
        for claim in [c for c in self._claims if c.state == "holding"]:
            claim.lose(reason)

    @property
    def cleanup_timeout(self) -> float:
        """Bound of one give-back (each of its broker operations is bounded too)."""
        return 2 * self._transport.settings.publish_timeout

    # channels ------------------------------------------------------------------------------

    def _watch(self, claim: Claim) -> None:
        """Tell ``claim`` when its channel closes or the broker cancels its consumer."""

        def closed(_channel: object, exc: BaseException | None) -> None:
            claim.lose(f"the lock channel closed ({type(exc).__name__ if exc else 'closed'})")

        claim.channel.close_callbacks.add(closed)
        claim.detach.append(lambda: claim.channel.close_callbacks.discard(closed))

    async def _on_broker_cancel(self, claim: Claim) -> None:
        underlay = await claim.channel.get_underlay_channel()

        def cancelled(frame: Any) -> None:
            if frame.consumer_tag == claim.tag:  # after a closing channel's own callback
                asyncio.get_running_loop().call_later(
                    0.01, claim.lose, "the broker cancelled the consumer (lock queue deleted?)"
                )

        underlay.on_consumer_cancel_callbacks.add(cancelled)
        claim.detach.append(lambda: underlay.on_consumer_cancel_callbacks.discard(cancelled))

    # acquiring ---------------------------------------------------------------------------

    async def acquire(self, key: str, timeout: float | None, on_lost: LostCallback) -> AmqpHold:
        """Wait in the key's queue until the token comes; attempts again on a fresh channel
        if the claim goes away before that, while the timeout allows."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = RETRY_PAUSE
        while True:
            if self._stopping:
                raise BusError(f"lock {key!r}: the bus is stopping")
            try:
                claim = await self._attempt(key, deadline, on_lost, trying=timeout == 0)
            except (BusUnavailable, _Gone) as exc:
                if self._stopping:
                    raise BusError(f"lock {key!r}: the bus is stopping") from exc
                if deadline is not None and loop.time() + RETRY_PAUSE >= deadline:
                    raise LockAcquireError(f"lock {key!r}: not acquired ({exc})") from exc
                self._log.warning("lock.wait_restarted", key=key, error=str(exc), pause=pause)
                if deadline is not None:
                    pause = min(pause, deadline - loop.time() - RETRY_PAUSE)
                await asyncio.sleep(pause)
                pause = min(2 * pause, MAX_RETRY_PAUSE)
                continue
            # no await from the last check of `gone` to here: a loss from now on reaches
            # on_lost, one before it made the attempt fail
            claim.handed_over = True
            self._liveness.watch()
            return AmqpHold(self, claim)

    async def _attempt(
        self, key: str, deadline: float | None, on_lost: LostCallback, *, trying: bool
    ) -> Claim:
        name = lock_queue(self._transport.app, key)
        claim = Claim(key, name, await self._channels.open())
        claim.on_lost = on_lost
        claim.on_late = self._on_late
        self._claims.add(claim)
        self._watch(claim)
        try:
            await self._wait_in_line(claim, deadline, trying=trying)
        except BaseException:
            await self.give_back(claim)
            raise
        return claim

    async def _wait_in_line(self, claim: Claim, deadline: float | None, *, trying: bool) -> None:
        """Consume the key's queue until the token comes; raises when the claim went away
        before that (:class:`_Gone`) or the key is held (``trying``) or the time is up."""
        channel, name = claim.channel, claim.queue_name
        arguments = self._transport.queue_arguments.lock()
        await self._on_broker_cancel(claim)
        if trying:  # asks the broker whether anyone holds or waits: one round trip
            queue = await self._rpc(
                claim,
                f"declaring lock queue {name!r}",
                lambda: channel.declare_queue(name, durable=True, arguments=arguments),
            )
            declared = queue.declaration_result
            if declared is not None and declared.consumer_count:
                raise LockAcquireError(f"lock {claim.key!r} is held")
        else:  # declared without waiting: the consume behind it on the channel is the answer
            underlay = await channel.get_underlay_channel()
            await self._rpc(
                claim,
                f"declaring lock queue {name!r}",
                lambda: underlay.queue_declare(
                    name, durable=True, arguments=arguments, nowait=True
                ),
            )
            queue = await channel.get_queue(name, ensure=False)

        async def consume() -> None:  # the tag is recorded even if the caller is gone
            claim.tag = await queue.consume(claim.on_message)

        quorum = self._transport.queue_arguments.quorum_locks
        # A consume on a quorum queue whose leader does not run yet (just declared by
        # another instance) crashes the broker's channel and closes the whole connection
        # (541 INTERNAL_ERROR on RabbitMQ 3.10; rabbitmq-server#13625). A confirm for a
        # quorum queue comes once its leader committed the message: consume only then.
        if quorum:
            claim.proposal = now_us()
            try:
                await self._rpc(
                    claim,
                    f"publishing a token of lock {claim.key!r}",
                    functools.partial(self._send_token, claim, claim.proposal),
                )
            except BusError as exc:  # nacked: the queue has no leader (yet): try again
                if not rejected(exc):
                    raise
                raise _Gone("the lock queue has no leader yet (token nacked)") from exc
        try:
            await self._rpc(claim, f"waiting on lock queue {name!r}", consume)
        except BusError as exc:  # a quorum queue's expiry is not reset by the declare
            if queue_missing(exc):
                raise _Gone("the lock queue expired between its declare and the consume") from exc
            raise
        if not quorum:
            claim.proposal = now_us()
            claim.spawn(functools.partial(self._publish_token, claim, claim.proposal))
        limit = deadline
        if trying:
            limit = asyncio.get_running_loop().time() + TRY_WAIT
        first = await self._first_token(claim, limit)
        redelivered, carry = await self._take(claim, first)
        if redelivered:
            await self._guard(claim)
        if carry:  # our generation's token: its confirm is the confirming round trip
            await self._rpc(
                claim,
                f"publishing a token of lock {claim.key!r}",
                functools.partial(self._send_token, claim, claim.token),
            )
        else:
            await self._confirm_alive(claim)
        if claim.gone.is_set():  # lost between the delivery and now: not ours
            raise _Gone(claim.gone_reason)

    async def _guard(self, claim: Claim) -> None:
        """A token that comes back ``redelivered`` was in the hand of a consumer whose
        channel died (a graceful give-back publishes a fresh one). Its holder may not know
        yet: a silent network tells it within the liveness budget. Enter only after that."""
        guard = self._liveness.guard
        self._log.info("lock.guarding", key=claim.key, seconds=guard)
        try:
            async with asyncio.timeout(guard):
                await claim.gone.wait()
        except TimeoutError:
            return
        raise _Gone(claim.gone_reason)

    async def _confirm_alive(self, claim: Claim) -> None:
        """One round trip on the claim's channel after the token came: the broker answers
        only while the channel lives, so at that moment the token was still ours (a
        delivery held up in the network may reach a connection the broker already closed
        and whose token it already handed on)."""
        underlay = await claim.channel.get_underlay_channel()
        await self._rpc(
            claim, f"confirming lock {claim.key!r}", lambda: underlay.basic_qos(prefetch_count=0)
        )

    async def _rpc(self, claim: Claim, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """A bounded broker round trip on ``claim``'s channel that the caller's cancellation
        does not interrupt (aiormq closes a channel whose round trip was cancelled, and the
        token it held would come back ``redelivered``); the give-back waits for it."""
        task = asyncio.get_running_loop().create_task(self._transport.bounded(what, operation))
        claim.inflight.add(task)
        task.add_done_callback(claim.settled)
        return await asyncio.shield(task)

    async def _publish_token(self, claim: Claim, token: int) -> None:
        await self._transport.bounded(
            f"publishing a token of lock {claim.key!r}",
            functools.partial(self._send_token, claim, token),
        )

    async def _send_token(self, claim: Claim, token: int) -> None:
        """Publish a token carrying ``token`` to the claim's queue; returns on its confirm."""
        message_id = new_message_id()
        claim.own.add(message_id)
        message = aio_pika.Message(
            b"",
            message_id=message_id,
            headers={HEADER_TOKEN: token},
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        )
        await claim.channel.default_exchange.publish(message, routing_key=claim.queue_name)

    async def _first_token(self, claim: Claim, deadline: float | None) -> AbstractIncomingMessage:
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
                claim.spawn(functools.partial(self._publish_token, claim, now_us()))

    async def _next(self, claim: Claim, wait: float) -> AbstractIncomingMessage | None:
        """The next delivery within ``wait`` seconds (None), or :class:`_Gone`. A delivery
        taken from the inbox is put back when we do not return it."""
        if claim.gone.is_set():
            raise _Gone(claim.gone_reason)
        getting = asyncio.ensure_future(claim.inbox.get())
        gone = asyncio.ensure_future(claim.gone.wait())
        try:
            await asyncio.wait((getting, gone), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            gone.cancel()
            _put_back(claim, getting)
            raise
        gone.cancel()
        if claim.gone.is_set():
            _put_back(claim, getting)
            raise _Gone(claim.gone_reason)
        if getting.done() and not getting.cancelled():
            return getting.result()
        getting.cancel()
        return None

    async def _take(self, claim: Claim, first: AbstractIncomingMessage) -> tuple[bool, bool]:
        """We are the active consumer: the lock is ours. Our generation is above every token
        seen; the token we keep must carry it (so that a crash hands it on), so when the one
        in hand does not, the caller publishes one that does (adopted in ``on_message``).
        Returns (whether any token seen came back ``redelivered``, whether a token carrying
        our generation must be published)."""
        seen = [first]
        while not claim.inbox.empty():
            seen.append(claim.inbox.get_nowait())
        foreign = max((token_of(m) for m in seen if m.message_id not in claim.own), default=-1)
        own = max((token_of(m) for m in seen if m.message_id in claim.own), default=0)
        # now_us(): above every earlier holder's generation even when the token carrying it
        # has not reached us yet (no generation is above its holder's clock at its take)
        token = max(foreign + 1, claim.proposal, own, now_us())
        keep = max(seen, key=token_of)
        claim.held, claim.token, claim.state = keep, token, "holding"
        for message in seen:
            if message is not keep:
                await quietly(message.ack)
        return any(m.redelivered for m in seen), token_of(keep) < token

    # giving back ---------------------------------------------------------------------------

    async def give_back(self, claim: Claim) -> None:
        """End ``claim`` (idempotent): shielded from the caller's cancellation, bounded by
        :attr:`cleanup_timeout`; the channel is closed in every case."""
        if claim.state == "closed":
            return
        claim.state = "closed"
        self._claims.discard(claim)
        await self._keeper.shielded(
            functools.partial(self._give_back, claim),
            timeout=self.cleanup_timeout,
            on_timeout=functools.partial(self._channels.close, claim.channel),
            what=f"giving back lock {claim.key!r}",
        )

    async def _give_back(self, claim: Claim) -> None:
        channel = claim.channel
        clean = False
        hand_on: int | None = None
        pending = claim.inflight | claim.background
        if pending:  # each is bounded; none is cut short (that would close the channel)
            await asyncio.wait(pending)
        try:
            if not channel.is_closed:
                tag, claim.tag = claim.tag, None
                if tag is not None:  # the next waiter becomes the active consumer
                    underlay = await channel.get_underlay_channel()
                    await self._transport.bounded(
                        f"leaving lock queue {claim.queue_name!r}",
                        lambda: underlay.basic_cancel(tag),
                    )
                await asyncio.sleep(0)  # deliveries that raced the cancel run their callbacks
                received = claim.received()
                claim.collected = True
                for message in received:  # acks have no answer: nothing to wait for
                    await self._transport.bounded(
                        f"acking a token of lock {claim.key!r}", message.ack
                    )
                if received:  # the next holder's token carries our generation
                    hand_on = max(claim.token, *(token_of(m) for m in received))
                clean = True
        except BusError as exc:  # the channel goes: the broker requeues what we held
            self._log.warning("lock.give_back_failed", key=claim.key, error=str(exc))
        finally:
            for detach in claim.detach:
                detach()
            if clean and hand_on is not None:  # the caller need not wait for its confirm
                self._keeper.spawn(
                    self._hand_on(claim, hand_on), name=f"handing on lock {claim.key!r}"
                )
            else:
                await self._retire(claim, clean=clean)

    async def _hand_on(self, claim: Claim, generation: int) -> None:
        """Publish the next holder's token, then retire the channel. If the channel dies
        first, the token is gone with it: a waiter publishes a fresh one within
        ``HEAL_INTERVAL``."""
        try:
            await self._publish_token(claim, generation)
        except BusError as exc:
            self._log.warning("lock.hand_on_failed", key=claim.key, error=str(exc))
            await self._retire(claim, clean=False)
            return
        await self._retire(claim, clean=True)

    async def _retire(self, claim: Claim, *, clean: bool) -> None:
        """Keep the channel of an ended claim for the next one (no consumer, nothing
        unacked, no failure seen on it) or close it."""
        if clean and not claim.broken:
            await self._channels.keep(claim.channel)
        else:
            await self._channels.close(claim.channel)

    def _on_late(self, claim: Claim, message: AbstractIncomingMessage) -> None:
        """A token delivered after the give-back began: the give-back settles it, or, once
        it has collected what it received, it is handed on here."""
        if not claim.collected:
            claim.late.append(message)
            return
        if claim.channel.is_closed:
            return  # the broker requeued it

        async def hand_on() -> None:
            await self._publish_token(claim, max(claim.token, token_of(message)))
            await quietly(message.ack)

        self._keeper.spawn(hand_on(), name=f"lock {claim.key!r} late token")

    async def stop(self) -> None:
        """Tell every holder its lease is lost, give back every claim, stop probing."""
        self._stopping = self._channels.closing = True
        claims = list(self._claims)
        for claim in claims:
            claim.lose("bus stopping")
        # concurrently: each is bounded, and a dead broker must not cost one bound per claim
        await asyncio.gather(*(self.give_back(claim) for claim in claims))
        await self._keeper.drain(self.cleanup_timeout)
        await self._liveness.stop()
        await self._channels.close_all()


def _put_back(claim: Claim, getting: asyncio.Future[AbstractIncomingMessage]) -> None:
    if getting.done() and not getting.cancelled():
        claim.inbox.put_nowait(getting.result())
    else:
        getting.cancel()


class _Gone(Exception):
    """The consumer went away before the lock was handed over (retried on a new channel)."""
