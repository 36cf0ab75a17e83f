"""Where ``clusterbus dlq`` finds a queue's dead letters: the file memory mode saved them to,
or the dead queue on the broker.

Either way a command first makes sure the dead queue exists (:class:`NotFound` otherwise,
naming what is missing), and reading never changes anything: in memory mode the saved file
is read as it is (no bus is started, so nothing is saved at stop, and the storage directory
is neither locked nor created); on the broker the dead queue is looked up with a passive
declare and its messages are read unacked and put back in their places.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from bus.codec import MsgpackCodec
from bus.facade import Bus
from bus.instance import new_instance_id
from bus.logs import get_logger
from bus.memory import queue_file
from bus.settings import Settings, redact_text
from managers.envelope import Envelope
from managers.errors import BusError
from managers.names import DEAD_SUFFIX, queue_name
from managers.queue import EventQueue
from managers.queue_messages import DeadLetter, dead_letter_of

if TYPE_CHECKING:
    from bus.amqp.transport import AmqpTransport

NOTHING_REPLAYED = ": nothing was replayed"


class NotFound(BusError):
    """What a command works on does not exist (app, channel, dead queue, saved file, id)."""


def with_url(settings: Settings, amqp_url: str | None) -> Settings:
    """``settings`` with ``amqp_url`` (the ``--amqp-url`` option) when given."""
    if amqp_url is None:
        return settings
    return Settings.model_validate({**settings.model_dump(), "amqp_url": SecretStr(amqp_url)})


def missing_ids(present: Collection[str], ids: list[str]) -> list[str]:
    """The ``ids`` not in ``present``, in the order given (each once)."""
    return [i for i in dict.fromkeys(ids) if i not in present]


class DeadQueue(ABC):
    """The dead queue of one channel of one app (``--shared``: of the shared queue)."""

    def __init__(self, settings: Settings, app: str, channel: str, *, shared: bool) -> None:
        self.settings = settings
        self.app = app
        self.channel = channel
        self.shared = shared
        self.queue = queue_name(app, channel, shared=shared)
        self.name = f"{self.queue}{DEAD_SUFFIX}"
        self.codec = MsgpackCodec(settings.max_message_bytes)

    @abstractmethod
    async def count(self) -> int:
        """How many dead letters it holds (:class:`NotFound` when it does not exist)."""

    @abstractmethod
    async def letters(self) -> list[DeadLetter]:
        """Its dead letters, oldest first, left in place."""

    @abstractmethod
    async def replay(self, ids: list[str] | None) -> int:
        """Move the letters with ``ids`` (None: all) back to the work queue; how many moved.
        An id that is not there raises :class:`NotFound` naming every missing one, and then
        nothing moves."""

    @abstractmethod
    async def purge(self) -> int:
        """Drop every letter; how many were dropped."""

    def unknown_ids(self, missing: list[str], then: str = "") -> NotFound:
        """The error naming the ids not found (``then``: what it means, appended)."""
        listed = ", ".join(repr(i) for i in missing)
        ids = "id" if len(missing) == 1 else "ids"
        return NotFound(
            f"no dead letter with {ids} {listed} in channel {self.channel!r} "
            f"(app {self.app!r}){then}"
        )


class SavedDeadQueue(DeadQueue):
    """The dead queue in the file memory mode saves an app's queues to when its last instance
    stops (``<storage_dir>/<app>.queues.msgpack``; the shared queues' file with ``--shared``).
    Replay and purge run a memory-mode bus, which loads the file and saves it back at stop."""

    def __init__(self, settings: Settings, app: str, channel: str, *, shared: bool) -> None:
        memory = Settings.model_validate({**settings.model_dump(), "mode": "memory"})
        super().__init__(memory, app, channel, shared=shared)
        storage = memory.storage_dir
        self.path = queue_file.shared_file(storage) if shared else queue_file.app_file(storage, app)

    def _envelopes(self) -> list[Envelope]:
        saved = read_saved(self.path)
        if saved is None:
            whose = "the shared queues" if self.shared else f"app {self.app!r}"
            raise NotFound(
                f"no saved queues of {whose}: {self.path} does not exist (unknown app, or "
                "nothing was queued or dead-lettered when its last instance stopped, or an "
                "instance running now holds them)"
            )
        if self.queue not in saved:
            raise NotFound(
                f"no queue of channel {self.channel!r} in {self.path} (app {self.app!r}): "
                "unknown channel (or nothing was queued or dead-lettered there)"
            )
        return saved[self.queue][1]

    async def count(self) -> int:
        return len(self._envelopes())

    async def letters(self) -> list[DeadLetter]:
        return [dead_letter_of(e, self.channel, self.codec.decode) for e in self._envelopes()]

    async def replay(self, ids: list[str] | None) -> int:
        envelopes = self._envelopes()
        missing = missing_ids({e.message_id for e in envelopes}, ids or [])
        if missing:
            raise self.unknown_ids(missing, NOTHING_REPLAYED)
        async with Bus(self.app, settings=self.settings) as bus:
            return await bus.queue.replay(self.channel, ids, shared=self.shared)

    async def purge(self) -> int:
        self._envelopes()
        async with Bus(self.app, settings=self.settings) as bus:
            return await bus.queue.purge_dead(self.channel, shared=self.shared)


def read_saved(path: Path) -> queue_file.Saved | None:
    """The queues saved in ``path``, read without changing anything (unlike
    :func:`bus.memory.queue_file.read`, an unreadable file is not renamed); None when the file
    does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return queue_file.decode(raw)
    except Exception as exc:
        raise BusError(
            f"saved queues in {path} are unreadable ({type(exc).__name__}: {exc}); the file is "
            "left as it is"
        ) from exc


class BrokerDeadQueue(DeadQueue):
    """The dead queue ``<queue>.dead`` on RabbitMQ. Each operation runs on a connection of
    its own, and first looks the dead queue up with a passive declare; only then is an event
    queue started on it (no bus: nothing else of the app is declared, not even its cache
    invalidation exchange)."""

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[tuple[EventQueue, int]]:
        """The app's event queues and the dead queue's depth (:class:`NotFound` before
        anything else when there is no dead queue)."""
        from bus.amqp.queues import AmqpQueues  # aio-pika only on the broker
        from bus.amqp.transport import AmqpTransport

        settings = self.settings
        instance_id = new_instance_id()
        log = get_logger("clusterbus.dlq", app=self.app, instance=instance_id)
        transport = AmqpTransport(
            settings, app=self.app, instance_id=instance_id, log=log.named("amqp")
        )
        await transport.connect()
        try:
            depth = await dead_queue_depth(transport, self.name)
            if depth is None:
                raise NotFound(
                    f"no dead queue {self.name!r} on the broker: unknown app or channel (or "
                    "nothing was ever dead-lettered there)"
                )
            queue = EventQueue(
                app=self.app,
                instance_id=instance_id,
                backend=AmqpQueues(transport, log.named("amqp")),
                codec=self.codec,
                log=log.named("queue"),
                retry_delay=settings.retry_delay,
                retry_delay_max=settings.retry_delay_max,
                stop_timeout=settings.stop_timeout,
                consumer_timeout=settings.consumer_timeout,
                context={"app": self.app, "instance": instance_id},
                redact=redact_text,
            )
            await queue.start()
            try:
                yield queue, depth
            finally:
                await queue.stop()
        finally:
            await transport.close()

    async def count(self) -> int:
        async with self._session() as (_, depth):
            return depth

    async def letters(self) -> list[DeadLetter]:
        async with self._session() as (queue, _):
            return await queue.dead_letters(self.channel, shared=self.shared)

    async def replay(self, ids: list[str] | None) -> int:
        async with self._session() as (queue, _):
            if ids is not None:
                letters = await queue.dead_letters(self.channel, shared=self.shared)
                missing = missing_ids({letter.id for letter in letters}, ids)
                if missing:
                    raise self.unknown_ids(missing, NOTHING_REPLAYED)
            return await queue.replay(self.channel, ids, shared=self.shared)

    async def purge(self) -> int:
        async with self._session() as (queue, _):
            return await queue.purge_dead(self.channel, shared=self.shared)


async def dead_queue_depth(transport: AmqpTransport, name: str) -> int | None:
    """How many messages queue ``name`` holds, from a passive declare on a channel of its own
    (a 404 closes the channel it happens on); None when the queue does not exist."""
    from bus.amqp.transport import queue_missing, quietly

    channel = await transport.bounded(
        "opening a channel", lambda: transport.connection.channel(publisher_confirms=False)
    )
    try:
        try:
            queue = await transport.bounded(
                f"looking up {name!r}", lambda: channel.declare_queue(name, passive=True)
            )
        except BusError as exc:
            if queue_missing(exc):
                return None
            raise
        result = queue.declaration_result
        return int(result.message_count or 0) if result is not None else 0
    finally:
        await quietly(channel.close, transport.settings.publish_timeout)


def dead_queue(settings: Settings, app: str, channel: str, *, shared: bool) -> DeadQueue:
    """The dead queue the settings point at: on the broker (amqp mode) or in the saved file
    (memory mode)."""
    kind = BrokerDeadQueue if settings.resolved_mode() == "amqp" else SavedDeadQueue
    return kind(settings, app, channel, shared=shared)
