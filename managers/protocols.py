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
