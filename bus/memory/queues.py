"""Event queues on the hub, for memory-mode instances (implements ``QueueBackend``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bus.memory import queue_file
from bus.memory.hub import MemoryHub, Pacer
from bus.memory.work_queue import MemoryQueueConsumer, MemoryWorkQueue
from managers.envelope import Envelope
from managers.errors import BusError
from managers.logger import Logger
from managers.names import app_queue_prefix
from managers.protocols import QueueReceiver

SHARED_PREFIX = "queue."


class MemoryQueues:
    """One instance's access to the hub's work queues.

    The hub keeps the queues while any instance runs. When the last instance of an app stops,
    that app's queued and dead messages are saved under ``storage_dir`` and the first instance
    of the app to start (in this or a later process) loads them back; shared queues are saved
    by the last instance on the hub and loaded by the first.

    ``storage_dir`` belongs to one process at a time: every memory-mode bus takes it at
    ``start()`` (creating it) and the last one of the process to stop gives it back; a bus of
    another process meanwhile fails to start with a :class:`BusError` naming the directory.
    A failed save keeps the messages on the hub and makes ``stop()`` raise a ``BusError``
    naming the file.
    """

    def __init__(self, hub: MemoryHub, app: str, storage_dir: Path, log: Logger) -> None:
        self._hub = hub
        self._app = app
        self._storage_dir = storage_dir
        self._log = log
        self._consumers: set[MemoryQueueConsumer] = set()
        self._joined = False
        self._storage: queue_file.StorageLease | None = None
        self._prefix = app_queue_prefix(app)  # the app's own queues on the hub
        self._pacer = Pacer()

    async def start(self) -> None:
        """Take the storage directory and join the hub; the first instance of the app (and on
        the hub) loads the saved queues. On failure nothing is left: not the hub membership,
        not the directory, and a file is deleted only once its messages are on the hub."""
        storage = queue_file.lock_storage(self._storage_dir)
        try:
            first_of_app, first_on_hub = self._hub.join(self._app, self)
            try:
                self._load(first_of_app, first_on_hub)
            except BaseException:
                self._hub.leave(self._app, self)
                raise
        except BaseException:
            storage.release()
            raise
        self._storage = storage
        self._joined = True

    def _load(self, app_file: bool, shared: bool) -> None:
        """Read every file this instance must load, then move each onto the hub (deleting
        it first). What a failed start took from a file is saved back to it."""
        files: list[tuple[Path, str]] = []  # (file, prefix of its queues)
        if app_file:
            files.append((queue_file.app_file(self._storage_dir, self._app), self._prefix))
        if shared:
            files.append((queue_file.shared_file(self._storage_dir), SHARED_PREFIX))
        loaded = [(path, prefix, self._read(path)) for path, prefix in files]
        committed: list[tuple[Path, str]] = []
        try:
            for path, prefix, saved in loaded:
                try:
                    queue_file.discard(path)
                except OSError as exc:
                    raise BusError(f"cannot take saved queues from {path}: {exc}") from exc
                count = self._put_back(saved)
                committed.append((path, prefix))
                if count:
                    self._log.info("queue.loaded", path=str(path), messages=count)
        except BaseException:
            for path, prefix in committed:
                self._save(path, self._hub.work_queues(prefix))
            raise

    def _read(self, path: Path) -> queue_file.Saved:
        try:
            return queue_file.read(path)
        except ValueError as exc:  # undecodable: kept aside for a human, the bus starts
            self._log.error("queue.load_failed", path=str(path), error=str(exc))
            return {}
        except OSError as exc:
            raise BusError(f"cannot read saved queues from {path}: {exc}") from exc

    def _put_back(self, saved: queue_file.Saved) -> int:
        count = 0
        for name, (queued, dead) in saved.items():
            queue = self._hub.work_queue(name)
            for envelope in queued:
                queue.put(envelope)
            queue.dead.extend(dead)
            count += len(queued) + len(dead)
        return count

    async def stop(self) -> None:
        """Leave the hub; the last instance of the app (and on the hub) saves the queues.

        Raises :class:`BusError` naming the file when a save failed (its messages stay on
        the hub, where a later bus of this process finds them), after everything else was
        done.
        """
        for consumer in list(self._consumers):
            await consumer.close()
        self._consumers.clear()
        if not self._joined:
            return
        self._joined = False
        failures: list[str] = []
        try:
            last_of_app, last_on_hub = self._hub.leave(self._app, self)
            if last_of_app:
                failures += self._save(
                    queue_file.app_file(self._storage_dir, self._app),
                    self._hub.work_queues(self._prefix),
                )
            if last_on_hub:
                failures += self._save(
                    queue_file.shared_file(self._storage_dir),
                    self._hub.work_queues(SHARED_PREFIX),
                )
        finally:
            if self._storage is not None:
                self._storage.release()
                self._storage = None
        if failures:
            raise BusError("; ".join(failures))

    def _save(self, path: Path, queues: list[MemoryWorkQueue]) -> list[str]:
        """Save ``queues`` to ``path``; what failed, as error texts (none when saved)."""
        taken = {q.name: q.take_all() for q in queues if not q.consumers}
        try:
            count = queue_file.save(path, taken)
        except Exception as exc:  # keep them on the hub rather than lose them
            kept = self._put_back(taken)
            error = f"{type(exc).__name__}: {exc}"
            self._log.error("queue.save_failed", path=str(path), messages=kept, error=error)
            return [
                f"could not save {kept} queued message(s) to {path} ({error}); they are kept "
                "on the hub of this process"
            ]
        if count:
            self._log.info("queue.saved", path=str(path), messages=count)
        return []

    async def publish(self, queue: str, envelope: Envelope, delay: float) -> None:
        """Queue on the hub now, or after the delay tier ``delay`` (yielding to the event loop
        now and then, as a confirmed publish to a broker always does, so that a tight
        publishing loop lets the consumers run)."""
        target = self._hub.work_queue(queue)
        if delay > 0:
            target.put_later(envelope, delay)
        else:
            target.put(envelope)
        await self._pacer.tick()

    async def consume(
        self, queue: str, prefetch: int, receiver: QueueReceiver
    ) -> MemoryQueueConsumer:
        """Compete for ``queue``'s messages with the hub's other consumers."""
        target = self._hub.work_queue(queue)
        consumer = MemoryQueueConsumer(target, prefetch, receiver, self.publish, self._log)
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
