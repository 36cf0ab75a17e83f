"""The backend a :class:`~bus.facade.Bus` runs on, and the one place that picks it.

A backend bundles what the managers need from the layer below (the protocols of
:mod:`managers.protocols`) with the life cycle of the connection under them.
:class:`~bus.amqp.backend.AmqpBackend` runs on RabbitMQ, :class:`~bus.memory.backend.MemoryBackend`
on an in-process :class:`~bus.memory.MemoryHub`. :func:`make_backend` builds one from the
settings; nothing else in the library branches on the mode. Tests may hand ``Bus(backend=...)``
a backend of their own (for instance one that injects faults).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from bus.logs import BusLogger
from bus.memory.hub import MemoryHub
from bus.settings import Settings
from managers.protocols import BroadcastBackend, LockBackend, QueueBackend

Mode = Literal["memory", "amqp"]


class Backend(Protocol):
    """What a bus runs on: the three primitives' backends and their connection."""

    @property
    def mode(self) -> Mode:
        """``"amqp"`` or ``"memory"`` (``bus.mode``)."""
        ...

    @property
    def broadcast(self) -> BroadcastBackend:
        """Pub/sub (and so sync messages and cache invalidations)."""
        ...

    @property
    def queues(self) -> QueueBackend:
        """Event queues, their delay tiers and dead queues."""
        ...

    @property
    def locks(self) -> LockBackend:
        """Locks."""
        ...

    @property
    def hub(self) -> MemoryHub | None:
        """The in-process hub (memory mode), else None."""
        ...

    @property
    def connected(self) -> bool:
        """True while connected (always, in memory)."""
        ...

    @property
    def node(self) -> str | None:
        """Where this instance is connected: the broker node's URL without its password,
        ``memory``, or None while not connected."""
        ...

    async def probe(self) -> bool:
        """A round trip to the broker within ``heartbeat`` seconds (True in memory)."""
        ...

    async def connect(self) -> None:
        """Connect (raise ``BusUnavailable`` within ``connect_timeout`` when it cannot)."""
        ...

    async def close(self) -> None:
        """Close the connection; idempotent."""
        ...

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the connection came back after a loss."""
        ...

    def listeners(self, channel: str) -> int | None:
        """How many other instances of the app receive pub/sub ``channel`` right now, or
        None when that cannot be known cheaply (on a broker)."""
        ...


def make_backend(
    settings: Settings,
    *,
    app: str,
    instance_id: str,
    log: BusLogger,
    hub: MemoryHub | None = None,
) -> Backend:
    """The backend the settings ask for: memory when ``hub`` is given or the mode resolves
    to memory, else RabbitMQ. It logs as ``clusterbus.amqp`` or ``clusterbus.memory``."""
    mode = "memory" if hub is not None else settings.resolved_mode()
    if mode == "amqp":
        from bus.amqp.backend import AmqpBackend  # aio-pika only when it is used

        return AmqpBackend(settings, app=app, instance_id=instance_id, log=log.named("amqp"))
    from bus.memory.backend import MemoryBackend

    return MemoryBackend(settings, app=app, log=log.named("memory"), hub=hub)
