"""The connection of one instance: robust, heartbeating, bounded in every wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiormq
from aio_pika.abc import AbstractRobustChannel
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from yarl import URL

from bus.amqp.deadlines import Deadlines
from bus.amqp.failover import FailoverConnection, quiet_repeated_attempts, url_order
from bus.amqp.queue_arguments import QueueArguments, Version, check_broker, parse_version
from bus.settings import Settings, redact_text
from managers.errors import BusError, BusUnavailable
from managers.logger import Logger

T = TypeVar("T")

# What the broker answers when it refuses an operation (unroutable message, missing entity,
# arguments that differ from the declared ones, access refused): not an outage.
REFUSED_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.DeliveryError,
    aiormq.exceptions.PublishError,
    aiormq.exceptions.ChannelNotFoundEntity,
    aiormq.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelAccessRefused,
)

# What a dead or unreachable broker looks like from aio-pika/aiormq.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    OSError,
    AMQPError,
    ChannelInvalidStateError,
    RuntimeError,
)


class AmqpTransport:
    """Owns an instance's robust connection and its publishing channel.

    The publishing channel has publisher confirms and raises on returned (unroutable)
    mandatory messages. Every operation that waits on the broker is bounded: a dead broker
    surfaces as :class:`BusUnavailable`, never as a hang.
    """

    def __init__(self, settings: Settings, *, app: str, instance_id: str, log: Logger) -> None:
        if settings.amqp_url is None:
            raise BusError("amqp_url is not set")
        self.settings = settings
        self.app = app
        self.instance_id = instance_id
        self._log = log
        self._connection: FailoverConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self.reconnects = 0
        self.reconnect_listeners: list[Callable[[], None]] = []
        self._probe_channel: AbstractRobustChannel | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._deadlines = Deadlines(settings.publish_timeout)
        self.broker_version: Version = (0, 0, 0)
        """The version of the first broker node connected to (the queue arguments follow it
        for the bus's life: they must not change between declares)."""
        self.queue_arguments = QueueArguments(settings, self.broker_version)

    @property
    def connection(self) -> FailoverConnection:
        """The robust connection (only after :meth:`connect`)."""
        if self._connection is None:
            raise BusError("the AMQP transport is not connected")
        return self._connection

    @property
    def publish_channel(self) -> AbstractRobustChannel:
        """The confirming channel used for every publish."""
        if self._publish_channel is None:
            raise BusError("the AMQP transport is not connected")
        return self._publish_channel

    def _urls(self) -> list[URL]:
        """The broker URLs in this instance's order, each with the connection parameters."""
        urls = [
            URL(url).update_query(
                heartbeat=max(1, round(self.settings.heartbeat)),
                reconnect_interval=self.settings.reconnect_interval,
            )
            for url in self.settings.amqp_urls()
        ]
        return url_order(urls, self.settings.amqp_failover)

    @property
    def connected(self) -> bool:
        """True while the connection is up: not lost, or back and restored (aio-pika calls
        the reconnect callbacks once channels, queues and consumers are restored)."""
        connection = self._connection
        return connection is not None and connection.lost_at is None and not connection.is_closed

    async def probe(self) -> bool:
        """A round trip to the broker (``basic.qos`` on a channel of its own) answered within
        ``heartbeat`` seconds: a silent broker is found long before the client library's own
        heartbeat check (three intervals) gives up on it."""
        if not self.connected:
            return False
        answered = False
        try:
            async with asyncio.timeout(max(0.5, self.settings.heartbeat)):
                channel = self._probe_channel
                if channel is None or channel.is_closed:
                    channel = await self.connection.channel(publisher_confirms=False)
                    self._probe_channel = channel
                await channel.set_qos(prefetch_count=0)
            answered = True
        except Exception:  # no answer, or a broken channel: down
            return False
        finally:
            if not answered:  # (cancelled too) its state is unknown: a fresh one next time
                channel, self._probe_channel = self._probe_channel, None
                if channel is not None:
                    self._close_later(channel)
        return True

    def _close_later(self, channel: AbstractRobustChannel) -> None:
        task = asyncio.get_running_loop().create_task(_close_quietly(channel))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @property
    def node_url(self) -> str | None:
        """The URL of the node connected to now, redacted (None before :meth:`connect`)."""
        connection = self._connection
        return None if connection is None else str(connection)

    async def connect(self) -> None:
        """Connect to the first URL that answers, within ``connect_timeout`` in all, or raise
        :class:`BusUnavailable`. Each URL gets an equal share of the time left, so a node
        that does not answer at all cannot use up the time of the others."""
        timeout = self.settings.connect_timeout
        quiet_repeated_attempts()
        urls = self._urls()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        failure: BaseException = TimeoutError("no time left")
        for index in range(len(urls)):
            share = (deadline - loop.time()) / (len(urls) - index)
            if share <= 0:
                break
            connection = FailoverConnection(
                urls,
                first=index,
                client_properties={"connection_name": f"clusterbus {self.app} {self.instance_id}"},
            )
            try:
                async with asyncio.timeout(share):
                    await connection.connect(timeout=share)
                    channel = await connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
            except UNAVAILABLE_ERRORS as exc:
                await _close_quietly(connection)
                failure = exc
                continue
            except BaseException:
                await _close_quietly(connection)
                raise
            assert isinstance(channel, AbstractRobustChannel)
            version = parse_version(_server_properties(connection).get("version"))
            try:
                check_broker(self.settings, version)
            except BusError:
                await _close_quietly(connection)
                raise
            self.broker_version = version
            self.queue_arguments = QueueArguments(self.settings, version)
            connection.attempt_timeout = timeout  # reconnects: each attempt gets all of it
            self._connection = connection
            self._publish_channel = channel
            connection.close_callbacks.add(self._on_close)
            connection.reconnect_callbacks.add(self._on_reconnect)
            self._log.info("amqp.connected", url=str(connection), nodes=len(urls))
            if len(urls) > 1:
                self._warn_classic_in_cluster()
            return
        raise BusUnavailable(
            f"cannot reach RabbitMQ at {self.settings.amqp_url_redacted()} within "
            f"{timeout}s (connect_timeout): {type(failure).__name__}: "
            f"{redact_text(str(failure))}"
        )

    def _warn_classic_in_cluster(self) -> None:
        """Several nodes but classic queues: they stay classic (RabbitMQ refuses to redeclare
        an existing queue with another type), and the log says how to make them survive."""
        classic = [
            name
            for name in ("queue_type", "lock_queue_type")
            if getattr(self.settings, name) == "classic"
        ]
        if classic:
            self._log.warning(
                "amqp.classic_queues_in_cluster",
                settings=classic,
                hint="a classic queue lives on one node: set them to 'quorum' so queues "
                "and locks survive the loss of a node (docs/deploy-rabbitmq-cluster.md)",
            )

    async def close(self) -> None:
        """Close the connection (and with it every channel)."""
        connection, self._connection = self._connection, None
        self._publish_channel = self._probe_channel = None
        self._deadlines.close()
        if connection is not None:
            connection.close_callbacks.discard(self._on_close)
            await _close_quietly(connection)
            self._log.info("amqp.closed")

    def _on_close(self, _sender: object, exc: BaseException | None) -> None:
        connection = self._connection
        if connection is not None and connection.lost_at is None:  # one warning per outage
            connection.lost_at = time.monotonic()
            self._log.warning("amqp.connection_lost", error=redact_text(repr(exc)))

    def _on_reconnect(self, _sender: object) -> None:
        self.reconnects += 1
        connection = self._connection
        failed, seconds = (0, 0.0) if connection is None else connection.outage_over()
        self._log.info(  # the outage's summary: aio-pika's repeated warnings were held back
            "amqp.reconnected",
            reconnects=self.reconnects,
            url=self.node_url,
            failed_attempts=failed,
            outage_seconds=round(seconds, 3),
        )
        for listener in self.reconnect_listeners:
            listener()

    async def bounded(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a broker operation within ``publish_timeout``; :class:`BusUnavailable` if not."""
        task = asyncio.current_task()
        assert task is not None
        token = self._deadlines.enter(task)
        late = False
        try:
            try:
                return await operation()
            finally:
                late = self._deadlines.leave(token)
                if late:
                    task.uncancel()
        except asyncio.CancelledError as exc:
            if late:
                raise self._unavailable(what, TimeoutError("no answer")) from None
            if not task.cancelling():  # aiormq re-raises a dead connection's CancelledError
                raise self._unavailable(what, ConnectionError("the connection closed")) from exc
            raise
        except REFUSED_ERRORS as exc:
            if node_down(exc):
                raise BusUnavailable(
                    f"{what}: the node holding the queue is down (an outage, not a refusal): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            raise BusError(f"{what}: RabbitMQ refused it: {type(exc).__name__}: {exc}") from exc
        except UNAVAILABLE_ERRORS as exc:
            raise self._unavailable(what, exc) from exc

    def _unavailable(self, what: str, exc: BaseException) -> BusUnavailable:
        return BusUnavailable(
            f"{what}: RabbitMQ did not answer within {self.settings.publish_timeout}s "
            f"(publish_timeout): {type(exc).__name__}: {exc}"
        )


def node_down(exc: BaseException) -> bool:
    """Whether the broker refused an operation because the node holding the queue is down
    (a classic queue's home node: ``NOT_FOUND - home node ... is down or inaccessible``)."""
    text = str(exc)
    return isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity) and (
        "is down or inaccessible" in text or "home node" in text
    )


def queue_missing(exc: BaseException) -> bool:
    """Whether ``exc`` (a :class:`BusError` from :meth:`AmqpTransport.bounded`) says the
    queue does not exist (``NOT_FOUND - no queue ...``)."""
    cause = exc.__cause__
    return isinstance(cause, aiormq.exceptions.ChannelNotFoundEntity) and "no queue" in str(cause)


def rejected(exc: BaseException) -> bool:
    """Whether ``exc`` (a :class:`BusError` from :meth:`AmqpTransport.bounded`) is a publish
    the broker nacked or returned."""
    return isinstance(exc.__cause__, aiormq.exceptions.DeliveryError)


async def quietly(operation: Callable[[], Awaitable[object]], timeout: float | None = None) -> None:
    """Run a clean-up operation (close, ack, nack) whose failure changes nothing (on a dead
    channel or connection the broker has cleaned up already), within ``timeout``.

    aiormq re-raises a dead connection's ``CancelledError`` to whoever waits on it: that is a
    failure like any other here, while a cancellation of the calling task propagates."""
    task = asyncio.current_task()
    try:
        async with asyncio.timeout(timeout):
            await operation()
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise
    except Exception:
        pass


def _server_properties(connection: FailoverConnection) -> dict[str, Any]:
    """What the broker said of itself at the handshake (``version``, ``product``...)."""
    transport = connection.transport
    properties = None if transport is None else transport.connection.server_properties
    return dict(properties or {})


async def _close_quietly(connection: Any) -> None:
    await quietly(connection.close, timeout=5)
