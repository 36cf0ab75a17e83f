"""Shared fixtures: buses on either backend, the broker check, log capture, polling."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import structlog

from bus import Bus, MemoryHub, Settings
from bus.logs import configure_logging

AMQP_URL = os.environ.get("CLUSTERBUS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("CLUSTERBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "CLUSTERBUS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TEST_APP_PREFIX = "t-"
# memory-mode buses save queues here unless a test names its own directory (a storage
# directory is used by one process at a time: two test runs must not share one)
SESSION_STORAGE = Path(tempfile.mkdtemp(prefix="clusterbus-tests-"))

BusFactory = Callable[..., Awaitable[Bus]]

configure_logging(format="console", level="WARNING")


def broker_reachable(url: str = AMQP_URL, timeout: float = 3.0) -> str | None:
    """None when the service's port answers, else why not."""
    parts = urlsplit(url)
    default_port = {"redis": 6379, "postgresql": 5432}.get(parts.scheme.split("+")[0], 5672)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout
        ):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The test broker's URL. Fails (never skips) when RabbitMQ does not answer."""
    problem = broker_reachable()
    if problem is not None:
        pytest.fail(
            f"RabbitMQ is not reachable at {AMQP_URL} ({problem}); broker tests fail rather "
            "than skip. Start it with `rabbitmq-server -detached`.",
            pytrace=False,
        )
    return AMQP_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis URL. Fails (never skips) when Redis does not answer."""
    problem = broker_reachable(REDIS_URL)
    if problem is not None:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({problem}); Redis tests fail rather than "
            "skip. Start it as .ci/services.sh does.",
            pytrace=False,
        )
    return REDIS_URL


def _test_entities(kind: str) -> list[str]:
    """Names of the test apps' exchanges or queues on the broker (``kind``: rabbitmqctl's
    ``list_exchanges`` or ``list_queues``)."""
    try:
        out = subprocess.run(
            ["rabbitmqctl", "-q", kind, "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    prefixes = (TEST_APP_PREFIX, f"queue.{TEST_APP_PREFIX}")
    # only this session's: another test session may be running on the same broker
    return [
        n for n in out.split() if n.startswith(prefixes) and any(app in n for app in _SESSION_APPS)
    ]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL URL. Fails (never skips) when PostgreSQL does not answer."""
    problem = broker_reachable(POSTGRES_URL)
    if problem is not None:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({problem}); database tests fail "
            "rather than skip. Start it as .ci/services.sh does.",
            pytrace=False,
        )
    return POSTGRES_URL


@pytest.fixture(scope="session", autouse=True)
def _drop_test_entities() -> Iterator[None]:
    """Delete the exchanges and durable queues the tests declared on the broker."""
    yield
    if broker_reachable() is not None:
        return
    exchanges = _test_entities("list_exchanges")
    queues = _test_entities("list_queues")
    if exchanges or queues:
        asyncio.run(_delete_entities(exchanges, queues))


async def _delete_entities(exchanges: list[str], queues: list[str]) -> None:
    import aio_pika
    from aiormq.exceptions import AMQPError

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for kind, name in [("exchange", n) for n in exchanges] + [("queue", n) for n in queues]:
            try:
                if kind == "exchange":
                    await channel.exchange_delete(name)
                else:
                    await channel.queue_delete(name)
            except AMQPError:  # another run's exclusive queue, or gone already
                if channel.is_closed:
                    channel = await connection.channel()


_SESSION_APPS: set[str] = set()


def unique_app() -> str:
    """An app name no other test uses, so tests never see each other on the broker."""
    app = f"{TEST_APP_PREFIX}{uuid.uuid4().hex[:10]}"
    _SESSION_APPS.add(app)
    return app


def fast_settings(**overrides: Any) -> Settings:
    """Settings for tests: short timeouts and debounces."""
    values: dict[str, Any] = {
        "storage_dir": SESSION_STORAGE,  # never the working directory's .clusterbus
        "publish_timeout": 3.0,
        "connect_timeout": 5.0,
        "stop_timeout": 2.0,
        "sync_debounce": 0.05,
        "retry_delay": 0.05,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(params=["memory", "amqp"])
def backend(request: pytest.FixtureRequest) -> str:
    """Runs a test once per backend; the amqp run needs the broker."""
    if request.param == "amqp":
        request.getfixturevalue("amqp_url")
    return str(request.param)


@pytest.fixture
async def make_bus(backend: str, tmp_path: Path) -> AsyncIterator[BusFactory]:
    """Factory of buses of one app on the chosen backend; all are stopped after the test.

    Memory-mode buses save their queues under the test's own ``tmp_path``.
    """
    app = unique_app()
    hub = MemoryHub()
    buses: list[Bus] = []

    async def make(*, start: bool = True, name: str | None = None, **settings: Any) -> Bus:
        options = fast_settings(**{"storage_dir": tmp_path / "queues", **settings})
        if backend == "amqp":
            bus = Bus(name or app, amqp_url=AMQP_URL, settings=options)
        else:
            bus = Bus(name or app, hub=hub, settings=options)
        buses.append(bus)
        if start:
            await bus.start()
        return bus

    yield make
    await asyncio.gather(*(b.stop() for b in buses), return_exceptions=True)


@pytest.fixture
def debug_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Capture every structlog event (DEBUG and up) emitted by buses created in the test."""
    configure_logging(format="console", level="DEBUG")
    try:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            yield logs
    finally:
        configure_logging(format="console", level="WARNING")


async def eventually(
    check: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {what or check}")
        await asyncio.sleep(interval)


class Recorder:
    """An async handler that records what it received and signals each arrival."""

    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self.messages: list[Any] = []
        self.changed = asyncio.Event()

    async def __call__(self, message: Any) -> None:
        self.messages.append(message)
        self.changed.set()

    async def wait_for(self, count: int, within: float = 10.0) -> list[Any]:
        """Wait until at least ``count`` messages arrived."""
        await eventually(
            lambda: len(self.messages) >= count,
            timeout=within,
            what=f"{self.name} got {count} message(s), has {self.messages!r}",
        )
        return self.messages
