"""The RabbitMQ backend: one robust connection per instance and what rides on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from bus.amqp.broadcast import AmqpBroadcast
from bus.amqp.locks import AmqpLocks
from bus.amqp.queues import AmqpQueues
from bus.amqp.transport import AmqpTransport
from bus.settings import Settings
from managers.logger import Logger


class AmqpBackend:
    """:class:`bus.backend.Backend` on RabbitMQ (aio-pika)."""

    mode: Literal["amqp"] = "amqp"
    hub: None = None

    def __init__(self, settings: Settings, *, app: str, instance_id: str, log: Logger) -> None:
        self.transport = AmqpTransport(settings, app=app, instance_id=instance_id, log=log)
        self.broadcast = AmqpBroadcast(self.transport, log)
        self.queues = AmqpQueues(self.transport, log)
        self.locks = AmqpLocks(self.transport, log)

    @property
    def connected(self) -> bool:
        """True while the connection is up and restored."""
        return self.transport.connected

    @property
    def node(self) -> str | None:
        """The node connected to (redacted URL), or None."""
        return self.transport.node_url if self.transport.connected else None

    async def probe(self) -> bool:
        """A round trip within ``heartbeat`` seconds."""
        return await self.transport.probe()

    async def connect(self) -> None:
        """Connect to the first node that answers (``BusUnavailable`` if none does)."""
        await self.transport.connect()

    async def close(self) -> None:
        """Close the connection and every channel on it."""
        await self.transport.close()

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each reconnection."""
        self.transport.reconnect_listeners.append(callback)

    def listeners(self, channel: str) -> int | None:
        """Not known without a round trip: None."""
        return None
