"""Event queues on the hub, for memory-mode instances (implements ``QueueBackend``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from bus.memory import queue_file
from bus.memory.hub import MemoryHub
from bus.memory.work_queue import MemoryQueueConsumer, MemoryWorkQueue
from managers.envelope import Envelope
from managers.protocols import QueueReceiver

SHARED_PREFIX = "queue."


class MemoryQueues:
    """One instance's access to the hub's work queues.

    The hub keeps the queues while any instance runs. When the last instance of an app stops,
    that app's queued and dead messages are saved under ``storage_dir`` and the first instance
    of the app to start (in this or a later process) loads them back; shared queues are saved
    by the last instance on the hub and loaded by the first.
    """

    def __init__(
        self, hub: MemoryHub, app: str, storage_dir: Path, log: FilteringBoundLogger
    ) -> None:
        self._hub = hub
        self._app = app
        self._storage_dir = storage_dir
        self._log = log
        self._consumers: set[MemoryQueueConsumer] = set()
        self._joined = False

    async def start(self) -> None:
        """Join the hub; the first instance of the app (and on the hub) loads saved queues."""
        first_of_app, first_on_hub = self._hub.join(self._app, self)
        self._joined = True
        if first_of_app:
            self._load(queue_file.app_file(self._storage_dir, self._app))
        if first_on_hub:
            self._load(queue_file.shared_file(self._storage_dir))

    async def stop(self) -> None:
        """Leave the hub; the last instance of the app (and on the hub) saves the queues."""
        for consumer in list(self._consumers):
            await consumer.close()
        self._consumers.clear()
        if not self._joined:
            return
        self._joined = False
        last_of_app, last_on_hub = self._hub.leave(self._app, self)
        if last_of_app:
            self._save(
                queue_file.app_file(self._storage_dir, self._app),
                self._hub.work_queues(f"{self._app}.queue."),
            )
        if last_on_hub:
            self._save(
                queue_file.shared_file(self._storage_dir), self._hub.work_queues(SHARED_PREFIX)
            )

    def _load(self, path: Path) -> None:
        try:
            saved = queue_file.load(path)
        except ValueError as exc:
            self._log.error("queue.load_failed", path=str(path), error=str(exc))
            return
        count = 0
        for name, (queued, dead) in saved.items():
            queue = self._hub.work_queue(name)
            for envelope in queued:
                queue.put(envelope)
            queue.dead.extend(dead)
            count += len(queued) + len(dead)
        if count:
            self._log.info("queue.loaded", path=str(path), messages=count)

    def _save(self, path: Path, queues: list[MemoryWorkQueue]) -> None:
        taken = {q.name: q.take_all() for q in queues if not q.consumers}
        try:
            count = queue_file.save(path, taken)
        except OSError as exc:  # keep them on the hub rather than lose them
            for name, (queued, dead) in taken.items():
                queue = self._hub.work_queue(name)
                for envelope in queued:
                    queue.put(envelope)
                queue.dead.extend(dead)
            self._log.error("queue.save_failed", path=str(path), error=str(exc))
            return
        if count:
            self._log.info("queue.saved", path=str(path), messages=count)

    async def publish(self, queue: str, envelope: Envelope, delay: float) -> None:
        """Queue on the hub now, or after the delay tier ``delay``."""
        target = self._hub.work_queue(queue)
        if delay > 0:
            target.put_later(envelope, delay)
        else:
            target.put(envelope)

    async def consume(
        self, queue: str, prefetch: int, receiver: QueueReceiver
    ) -> MemoryQueueConsumer:
        """Compete for ``queue``'s messages with the hub's other consumers."""
        target = self._hub.work_queue(queue)
        consumer = MemoryQueueConsumer(target, prefetch, receiver, self.publish)
        self._consumers.add(consumer)
        target.consumers.append(consumer)
        target.dispatch()
        return consumer

    async def dead_letters(self, queue: str) -> list[Envelope]:
        """The dead queue's messages, oldest first."""
        return list(self._hub.work_queue(queue).dead)

    async def replay(self, queue: str, select: Callable[[Envelope], Envelope | None]) -> int:
        """Move the selected dead letters back to the work queue."""
        target = self._hub.work_queue(queue)
        kept: list[Envelope] = []
        moved: list[Envelope] = []
        for envelope in target.dead:
            again = select(envelope)
            if again is None:
                kept.append(envelope)
            else:
                moved.append(again)
        target.dead = kept
        for envelope in moved:
            target.put(envelope)
        return len(moved)

    async def purge_dead(self, queue: str) -> int:
        """Drop the dead queue's messages."""
        target = self._hub.work_queue(queue)
        count = len(target.dead)
        target.dead = []
        return count
