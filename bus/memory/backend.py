"""The in-memory backend: a :class:`MemoryHub` stands for the broker inside one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from bus.memory.broadcast import MemoryBroadcast
from bus.memory.hub import MemoryHub, default_hub
from bus.memory.locks import MemoryLocks
from bus.memory.queues import MemoryQueues
from bus.settings import Settings
from managers.logger import Logger


class MemoryBackend:
    """:class:`bus.backend.Backend` on an in-process hub (the process's default hub unless
    one is given): nothing to connect, nothing to lose."""

    mode: Literal["memory"] = "memory"

    def __init__(
        self, settings: Settings, *, app: str, log: Logger, hub: MemoryHub | None = None
    ) -> None:
        self.hub: MemoryHub | None = hub if hub is not None else default_hub()
        self._hub = self.hub
        self._app = app
        self.broadcast = MemoryBroadcast(
            self._hub, app, settings.pubsub_prefetch, settings.pubsub_max_backlog, log
        )
        self.queues = MemoryQueues(self._hub, app, settings.storage_dir, log)
        self.locks = MemoryLocks(self._hub.lock_table(app))

    connected = True
    node = "memory"

    async def probe(self) -> bool:
        """The hub always answers."""
        return True

    async def connect(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to close."""

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """A hub never disconnects: ``callback`` is never called."""

    def listeners(self, channel: str) -> int | None:
        """How many other endpoints of the app receive ``channel`` on the hub."""
        return self._hub.listeners(self._app, channel, self.broadcast)
