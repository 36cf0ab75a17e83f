"""The :class:`Bus`: one object per instance that owns settings, logging, the connection and
the managers of the primitives."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from pydantic import SecretStr

from bus.backend import Backend, Mode, make_backend
from bus.codec import MsgpackCodec
from bus.health import Health, assess
from bus.instance import new_instance_id
from bus.logs import get_logger
from bus.memory.hub import MemoryHub
from bus.otel import make_telemetry
from bus.settings import Settings, redact_text
from bus.stores.memory import MemoryStore
from bus.stores.redis import RedisStore
from bus.stores.redis import connect as connect_redis
from bus.transactions import hooks_for
from managers.cache import Cache
from managers.cache_manager import CacheManager, StoreKind
from managers.errors import BusError
from managers.locks import LockManager
from managers.names import INVALIDATION_CHANNEL, validate_app_name
from managers.protocols import CacheStore
from managers.pubsub import PubSubManager
from managers.queue import EventQueue
from managers.sync import SyncMessageManager
from managers.tasks import TaskKeeper
from managers.telemetry import RECONNECTS, Telemetry

if TYPE_CHECKING:
    from redis.asyncio import Redis

Step = Callable[[], Awaitable[object]]


def _step_name(step: Step) -> str:
    return getattr(step, "__qualname__", repr(step))


class Bus:
    """One instance of an app in the cluster.

    ``Bus("crm")`` follows the ``mode`` setting (``auto``: amqp when ``CLUSTERBUS_AMQP_URL``
    is set, else memory, with a warning at start); ``Bus("crm", amqp_url=...)`` on RabbitMQ;
    ``Bus("crm", hub=MemoryHub())`` in memory mode on an isolated hub. ``backend=`` hands the
    bus a :class:`~bus.backend.Backend` of the caller's (tests use it to inject faults);
    otherwise :func:`~bus.backend.make_backend` builds one from the settings. Use
    ``async with Bus(...) as bus:`` or ``start()``/``stop()``.
    """

    def __init__(
        self,
        name: str,
        *,
        amqp_url: str | None = None,
        hub: MemoryHub | None = None,
        settings: Settings | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.name: str = validate_app_name(name)
        base = settings if settings is not None else Settings()
        if amqp_url is not None:
            if hub is not None:
                raise ValueError("pass either amqp_url= (amqp mode) or hub= (memory mode)")
            base = Settings.model_validate({**base.model_dump(), "amqp_url": SecretStr(amqp_url)})
        if hub is not None and base.mode == "amqp":
            raise ValueError("hub= runs a bus in memory mode, but the mode setting is 'amqp'")
        self.settings: Settings = base
        self.instance_id: str = new_instance_id()
        self.log = get_logger("clusterbus.bus", app=self.name, instance=self.instance_id)
        self.codec = MsgpackCodec(base.max_message_bytes)
        self._backend: Backend = (
            backend
            if backend is not None
            else make_backend(
                base, app=self.name, instance_id=self.instance_id, log=self.log, hub=hub
            )
        )
        self.mode: Mode = self._backend.mode
        self.hub: MemoryHub | None = self._backend.hub
        self.telemetry: Telemetry = make_telemetry(enabled=base.telemetry, mode=self.mode)
        # chosen by default rather than asked for: say so once, at start
        self._implicit_memory = (
            self.mode == "memory" and hub is None and backend is None and base.mode == "auto"
        )
        context = {"app": self.name, "instance": self.instance_id}  # bound for every handler
        self.pubsub = PubSubManager(
            app=self.name,
            instance_id=self.instance_id,
            backend=self._backend.broadcast,
            codec=self.codec,
            log=self.log.named("pubsub"),
            stop_timeout=base.stop_timeout,
            context=context,
            telemetry=self.telemetry,
        )
        self.queue = EventQueue(
            app=self.name,
            instance_id=self.instance_id,
            backend=self._backend.queues,
            codec=self.codec,
            log=self.log.named("queue"),
            retry_delay=base.retry_delay,
            retry_delay_max=base.retry_delay_max,
            stop_timeout=base.stop_timeout,
            consumer_timeout=base.consumer_timeout,
            context=context,
            telemetry=self.telemetry,
            redact=redact_text,
        )
        self.sync = SyncMessageManager(
            pubsub=self.pubsub,
            codec=self.codec,
            log=self.log.named("sync"),
            debounce=base.sync_debounce,
            hooks_for=hooks_for,
            publish_timeout=base.publish_timeout,
        )
        self.locks = LockManager(
            backend=self._backend.locks,
            log=self.log.named("locks"),
            stop_timeout=base.stop_timeout,
            telemetry=self.telemetry,
        )
        self._redis: Redis | None = None
        self.cache_manager = CacheManager(
            app=self.name,
            pubsub=self.pubsub,
            codec=self.codec,
            store_factory=self._make_store,
            default_store=base.cache_store,
            default_max_size=base.cache_max_size,
            log=self.log.named("cache"),
            peers=functools.partial(self._backend.listeners, INVALIDATION_CHANNEL),
            telemetry=self.telemetry,
        )
        self.cache: Cache = self.cache_manager.default
        self._background = TaskKeeper(self.log, "bus")
        self._backend.on_reconnect(self._after_reconnect)
        self._state: Literal["new", "started", "stopped"] = "new"

    def _make_store(self, kind: StoreKind, max_size: int) -> CacheStore:
        if kind == "memory":
            return MemoryStore(max_size)
        if self._redis is None:
            if self.settings.redis_url is None:
                raise BusError("a redis cache store needs the redis_url setting")
            self._redis = connect_redis(self.settings.redis_url.get_secret_value())
        return RedisStore(self._redis, log=self.log.named("cache"), owns_client=False)

    def _after_reconnect(self) -> None:
        """Memory caches may have missed invalidations while the connection was down."""
        self.telemetry.add(RECONNECTS)
        self._background.spawn(
            self.cache_manager.drop_memory_caches("amqp reconnect"), name="drop memory caches"
        )

    @property
    def started(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""
        return self._state == "started"

    @property
    def connected(self) -> bool:
        """True while started and connected to the broker (always once started, in memory
        mode). Falls to False as soon as the client sees the connection drop; a broker that
        goes silent is found by :meth:`health`."""
        return self._state == "started" and self._backend.connected

    async def health(self) -> Health:
        """How this instance is: ``down`` when not started or the broker does not answer a
        round trip within ``heartbeat`` seconds, ``degraded`` while a subscription or queue
        consumer is not receiving (after a reconnection, until all are back), else ``ok``;
        with the node connected to and each subscription's and consumer's state."""
        started = self._state == "started"
        return assess(
            started=started,
            mode=self.mode,
            answered=started and await self._backend.probe(),
            node=self._backend.node,
            subscriptions=self.pubsub.states(),
            consumers=self.queue.states(),
        )

    async def start(self) -> None:
        """Connect (amqp mode) and bind every subscription made so far.

        Raises :class:`~bus.errors.BusUnavailable` within ``connect_timeout`` when the broker
        cannot be reached. Starting a started bus is a no-op; a stopped bus cannot restart.
        """
        if self._state == "started":
            return
        if self._state == "stopped":
            raise BusError(f"bus {self.name!r} was stopped; create a new Bus to start again")
        # what undoes each step, run latest first when a later step fails; each manager's
        # stop is registered before its start, as a stop is a no-op on a manager that did
        # not start and undoes whatever a start did before it failed
        undo: list[Step] = [self._close, self.cache_manager.close]
        try:
            await self._backend.connect()
            await self.cache_manager.start()
            for manager in (self.pubsub, self.queue, self.locks):
                undo.append(manager.stop)
                await manager.start()
        except BaseException:
            await self._undo_start(undo)
            raise
        self._state = "started"
        self.log.info("bus.started", mode=self.mode, amqp_url=self.settings.amqp_url_redacted())
        if self._implicit_memory:
            self.log.warning(
                "bus.memory_mode",
                detail="no amqp_url is set, so this bus runs in memory mode: locks, caches "
                "and messages reach this process only; set CLUSTERBUS_AMQP_URL for a cluster, "
                "or CLUSTERBUS_MODE=memory to choose memory mode and silence this warning",
            )

    async def _undo_start(self, undo: list[Step]) -> None:
        """Leave nothing running after a failed start (no subscription, hub membership,
        consumer or connection), shielded from a further cancellation and bounded."""
        settings = self.settings
        bound = 3 * settings.stop_timeout + settings.publish_timeout + 5.0
        with contextlib.suppress(Exception):  # the caller gets the start's own error
            await self._background.shielded(
                lambda: self._run_steps(reversed(undo), "bus.start_cleanup_failed"),
                timeout=bound,
                on_timeout=self._close,
                what="failed start clean-up",
            )

    async def _run_steps(self, steps: Iterable[Step], event: str) -> BaseException | None:
        """Run every step even when some fail (each failure logged as ``event``); returns
        the first failure."""
        first: BaseException | None = None
        for step in steps:
            try:
                await step()
            except BaseException as exc:  # the next steps must run; the first is re-raised
                first = first or exc
                if isinstance(exc, Exception):
                    self.log.exception(event, step=_step_name(step))
        return first

    async def stop_deliveries(self) -> None:
        """Stop every delivery into this instance (queue consumers, pub/sub and sync
        handlers, pending debounces), waiting up to ``stop_timeout`` for running handlers;
        publishing keeps working until :meth:`stop`. ``App.stop()`` calls this before the
        plugins' ``before_stop`` hooks."""
        if self._state == "started":
            await self._stop_deliveries()

    async def _stop_deliveries(self) -> None:
        try:
            await self.queue.stop_consuming()
        finally:
            await self.pubsub.stop_receiving()

    async def stop(self) -> None:
        """Stop deliveries (waiting up to ``stop_timeout`` for running handlers), send what
        committed transactions left pending, release every lock, then close.

        Idempotent, and a no-op on a bus that never started.
        """
        if self._state != "started":
            return
        self._state = "stopped"
        failure = await self._run_steps(
            (
                self._stop_deliveries,
                self.sync.stop,
                self.locks.stop,  # cancelled sections unwind while publishing still works
                self.queue.stop,
                self.pubsub.stop,
                self._drain_background,
                self.cache_manager.close,
                self._close,
            ),
            "bus.stop_step_failed",
        )
        self.log.info("bus.stopped", failed=failure is not None)
        if failure is not None:
            raise failure

    async def _drain_background(self) -> None:
        await self._background.drain(self.settings.stop_timeout)

    async def _close(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose()
        await self._backend.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<Bus {self.name!r} {self.mode} instance={self.instance_id} {self._state}>"
