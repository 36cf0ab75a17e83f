"""The hub: what the broker is to AMQP-mode instances, for memory-mode instances."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bus.memory.locks import MemoryKeyState
from bus.memory.work_queue import MemoryWorkQueue

if TYPE_CHECKING:
    from bus.memory.broadcast import MemoryBroadcast


class MemoryHub:
    """Routes messages between the memory-mode buses that share it.

    Buses on one hub behave as instances of one cluster; buses on different hubs never see
    each other. Without ``hub=``, every memory-mode bus of a process uses :func:`default_hub`.
    """

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], set[MemoryBroadcast]] = {}
        self._queues: dict[str, MemoryWorkQueue] = {}
        self._queue_users: dict[str, set[object]] = {}
        self._locks: dict[str, dict[str, MemoryKeyState]] = {}

    def bind(self, app: str, channel: str, endpoint: MemoryBroadcast) -> None:
        """Route ``channel`` of ``app`` to ``endpoint`` from now on."""
        self._routes.setdefault((app, channel), set()).add(endpoint)

    def unbind(self, app: str, channel: str, endpoint: MemoryBroadcast) -> None:
        """Stop routing ``channel`` of ``app`` to ``endpoint``."""
        endpoints = self._routes.get((app, channel))
        if endpoints is not None:
            endpoints.discard(endpoint)
            if not endpoints:
                del self._routes[(app, channel)]

    def listeners(self, app: str, channel: str, besides: MemoryBroadcast) -> int:
        """How many endpoints other than ``besides`` receive ``channel`` of ``app``."""
        endpoints = self._routes.get((app, channel), ())
        return len(endpoints) - (besides in endpoints)

    def routes(self, app: str, channel: str) -> tuple[MemoryBroadcast, ...]:
        """The endpoints bound to ``channel`` of ``app`` right now."""
        return tuple(self._routes.get((app, channel), ()))

    def lock_table(self, app: str) -> dict[str, MemoryKeyState]:
        """The lock keys of ``app`` (shared by the app's instances on this hub)."""
        return self._locks.setdefault(app, {})

    def work_queue(self, name: str) -> MemoryWorkQueue:
        """The work queue ``name``, created on first use (queues are durable on the hub)."""
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = MemoryWorkQueue(name)
        return queue

    def work_queues(self, prefix: str) -> list[MemoryWorkQueue]:
        """The work queues whose name starts with ``prefix``."""
        return [q for name, q in self._queues.items() if name.startswith(prefix)]

    def join(self, app: str, user: object) -> tuple[bool, bool]:
        """Record a started user of ``app``'s queues; (first of the app, first on the hub)."""
        first_on_hub = not any(self._queue_users.values())
        users = self._queue_users.setdefault(app, set())
        first_of_app = not users
        users.add(user)
        return first_of_app, first_on_hub

    def leave(self, app: str, user: object) -> tuple[bool, bool]:
        """Forget a user of ``app``'s queues; (last of the app, last on the hub)."""
        users = self._queue_users.get(app, set())
        users.discard(user)
        return not users, not any(self._queue_users.values())


PUBLISHES_PER_YIELD = 16
"""A memory-mode instance yields to the event loop once every this many publishes."""


class Pacer:
    """Keeps a tight publishing loop from starving the other instances of the process.

    A publish to RabbitMQ always yields to the event loop (it waits for the network); a
    publish to the hub would never yield, so a loop of publishes would run to its end before
    any handler ran. Yielding on every publish cost a fifth to two fifths of pub/sub
    throughput (100k publishes to two peers); yielding once every
    :data:`PUBLISHES_PER_YIELD` publishes cost nothing measurable, and bounds the wait of
    every other task of the loop to that many publishes.
    """

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = 0

    async def tick(self) -> None:
        """Count one publish; yield to the event loop when it is time."""
        self._count += 1
        if self._count >= PUBLISHES_PER_YIELD:
            self._count = 0
            await asyncio.sleep(0)


_default: MemoryHub | None = None


def default_hub() -> MemoryHub:
    """The process-wide hub shared by memory-mode buses created without ``hub=``."""
    global _default  # noqa: PLW0603 - one hub per process is the documented behaviour
    if _default is None:
        _default = MemoryHub()
    return _default
