"""What the managers need from the layer below, as small protocols.

The :mod:`bus` package implements them twice: over RabbitMQ (``bus.amqp``) and over the
in-process hub (``bus.memory``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from managers.envelope import Envelope

ModelT = TypeVar("ModelT", bound=BaseModel)

Receiver = Callable[[str, Envelope], Coroutine[Any, Any, None]]
"""Called by a broadcast backend for every delivery: ``(channel, envelope)``, each call in an
asyncio task of its own (the receiver binds log context for the delivery in it)."""


class Codec(Protocol):
    """Turns payloads into bytes and back (msgpack in :mod:`bus.codec`)."""

    @property
    def max_message_bytes(self) -> int:
        """The largest body accepted on either side."""
        ...

    def encode(self, payload: object, *, channel: str) -> bytes:
        """Encode ``payload``; raise ``PayloadError`` naming ``channel`` when it cannot be."""
        ...

    def decode(self, body: bytes) -> object:
        """Decode a body; raise ``PayloadError`` when it is malformed or too large."""
        ...

    def validate(self, value: object, model: type[ModelT]) -> ModelT:
        """Validate a decoded value into ``model``; raise ``PayloadError`` when it does not fit."""
        ...


class BroadcastBackend(Protocol):
    """Fanout delivery of envelopes to every instance bound to a channel (pub/sub)."""

    @property
    def receiving(self) -> bool:
        """True while deliveries can arrive (the consumer is up)."""
        ...

    async def start(self, receiver: Receiver) -> None:
        """Begin delivering to ``receiver``; called once before any bind."""
        ...

    async def stop(self) -> None:
        """Stop delivering; no call to the receiver starts after this returns."""
        ...

    async def bind(self, channel: str) -> None:
        """Receive ``channel`` from now on; once this returns, later publishes arrive."""
        ...

    async def unbind(self, channel: str) -> None:
        """Stop receiving ``channel``."""
        ...

    async def publish(self, channel: str, envelope: Envelope) -> None:
        """Send ``envelope`` to every instance bound to ``channel``.

        Whether the sending instance gets its own message back does not matter: the pub/sub
        manager drops its own messages on receipt and delivers to itself directly.
        """
        ...


class CacheStore(Protocol):
    """Where a cache keeps its encoded values; keys arrive fully prefixed (``A:<prefix>:<k>``).

    ``memory`` stores live in the instance (kept coherent by invalidation messages); shared
    stores (Redis) are seen by every instance and need no invalidation.
    """

    @property
    def shared(self) -> bool:
        """True when every instance sees the same entries (no invalidation needed)."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when missing or expired."""
        ...

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys`` in order (None for missing ones)."""
        ...

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds (None: never)."""
        ...

    async def mset(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        """Store every pair, each with ``ttl``."""
        ...

    async def delete(self, keys: list[str]) -> None:
        """Remove ``keys`` (missing ones are ignored)."""
        ...

    async def keys(self, prefix: str, pattern: str) -> list[str]:
        """Live keys that start with ``prefix`` and whose rest matches the glob ``pattern``."""
        ...

    async def clear(self, prefix: str) -> None:
        """Remove every key that starts with ``prefix`` (and only those)."""
        ...

    async def ttl(self, key: str) -> float | None:
        """Remaining seconds of ``key``; None when missing or without expiry."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class QueueDelivery(Protocol):
    """One delivery of an event-queue message to one consumer, settled exactly once."""

    @property
    def envelope(self) -> Envelope:
        """The message as delivered (its headers carry the attempt count)."""
        ...

    @property
    def redelivered(self) -> bool:
        """True when the broker delivers it again (a consumer died or gave it back)."""
        ...

    async def ack(self) -> None:
        """Done: remove it from the queue."""
        ...

    async def requeue(self) -> None:
        """Give it back to the queue unchanged, for this or another consumer."""
        ...

    async def retry(self, envelope: Envelope, delay: float) -> None:
        """Send ``envelope`` to the delay tier ``delay`` (back in the work queue after it),
        confirmed, then ack this delivery."""
        ...

    async def bury(self, envelope: Envelope) -> None:
        """Send ``envelope`` to the dead queue, confirmed, then ack this delivery."""
        ...


QueueReceiver = Callable[[QueueDelivery], Coroutine[Any, Any, None]]
"""Called by a queue consumer for every delivery, each call in an asyncio task of its own."""


class QueueConsumer(Protocol):
    """A consumer on one work queue, with at most ``prefetch`` unsettled deliveries."""

    @property
    def state(self) -> str:
        """``ok`` (consuming), ``paused``, ``down`` (its channel is gone until the
        connection comes back or it is resumed) or ``closed``."""
        ...

    async def pause(self) -> None:
        """Take no more deliveries until :meth:`resume` (unsettled ones stay with us)."""
        ...

    async def resume(self) -> None:
        """Take deliveries again."""
        ...

    async def close(self) -> None:
        """Stop for good; every unsettled delivery goes back to the queue."""
        ...


class QueueBackend(Protocol):
    """Durable work queues with delay tiers and a dead queue each (event queue)."""

    async def start(self) -> None:
        """Get ready (memory mode: load queues saved by an earlier run)."""
        ...

    async def stop(self) -> None:
        """Release resources (memory mode: save queued messages if this was the last user)."""
        ...

    async def publish(self, queue: str, envelope: Envelope, delay: float) -> None:
        """Store ``envelope`` durably in ``queue`` (``delay`` 0) or its delay tier ``delay``;
        returns once the broker confirmed it."""
        ...

    async def consume(self, queue: str, prefetch: int, receiver: QueueReceiver) -> QueueConsumer:
        """Start consuming ``queue`` with ``prefetch`` unsettled deliveries (0: unlimited)."""
        ...

    async def dead_letters(self, queue: str) -> list[Envelope]:
        """The messages in ``queue``'s dead queue, oldest first, left in place."""
        ...

    async def replay(self, queue: str, select: Callable[[Envelope], Envelope | None]) -> int:
        """Move dead letters for which ``select`` returns an envelope back to ``queue`` (as
        that envelope); returns how many moved."""
        ...

    async def purge_dead(self, queue: str) -> int:
        """Empty ``queue``'s dead queue; returns how many were removed."""
        ...


LostCallback = Callable[[str], None]
"""Told why a hold was lost behind the holder's back (connection gone, queue deleted)."""


class LockHold(Protocol):
    """A key held on the backend by this instance."""

    @property
    def token(self) -> int:
        """The fencing generation of this hold (strictly increasing per key)."""
        ...

    async def release(self) -> None:
        """Hand the key to the next waiter (idempotent; a no-op once lost)."""
        ...


class LockBackend(Protocol):
    """Mutual exclusion per key across the instances of an app, waiters served in order."""

    async def acquire(self, key: str, timeout: float | None, on_lost: LostCallback) -> LockHold:
        """Hold ``key``; wait at most ``timeout`` seconds (None: no limit, 0: answer at once)
        and raise ``LockAcquireError`` when it passes. ``on_lost`` is called if the hold is
        lost before it is released."""
        ...

    async def stop(self) -> None:
        """Release every hold and end every wait of this instance."""
        ...
