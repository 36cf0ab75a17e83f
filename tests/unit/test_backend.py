"""The composition root takes a backend: ``make_backend`` picks it from the settings (the one
place that knows the modes), and a test can hand ``Bus(backend=...)`` one of its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from bus import Bus, BusUnavailable, MemoryHub, Settings
from bus.amqp.backend import AmqpBackend
from bus.backend import Backend, make_backend
from bus.logs import get_logger
from bus.memory.backend import MemoryBackend
from managers.envelope import Envelope
from managers.protocols import BroadcastBackend, LockBackend, QueueBackend
from tests.conftest import Recorder, unique_app

AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def _backend(settings: Settings, hub: MemoryHub | None = None) -> Backend:
    return make_backend(settings, app="crm", instance_id="i-1", log=get_logger(), hub=hub)


def test_the_factory_follows_the_mode(tmp_path: Path) -> None:
    assert isinstance(_backend(Settings(storage_dir=tmp_path)), MemoryBackend)
    assert isinstance(_backend(Settings(amqp_url=AMQP)), AmqpBackend)  # nothing connects yet
    memory = Settings(mode="memory", amqp_url=AMQP, storage_dir=tmp_path)
    assert isinstance(_backend(memory), MemoryBackend)
    hub = MemoryHub()
    backend = _backend(Settings(amqp_url=AMQP), hub=hub)  # hub= means memory
    assert isinstance(backend, MemoryBackend) and backend.hub is hub


def test_amqp_mode_without_a_url_fails_at_construction_naming_the_setting() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(mode="amqp")
    assert "mode is 'amqp' but amqp_url is not set" in str(info.value)


@pytest.mark.parametrize("url", ["", "   "])
def test_an_explicitly_empty_url_fails_in_every_mode(url: str) -> None:
    for mode in ("auto", "amqp", "memory"):
        with pytest.raises(ValidationError, match="amqp_url is set but empty or blank"):
            Settings(mode=mode, amqp_url=url)


def test_a_hub_with_amqp_mode_is_refused(tmp_path: Path) -> None:
    settings = Settings(mode="amqp", amqp_url=AMQP, storage_dir=tmp_path)
    with pytest.raises(ValueError, match="hub= runs a bus in memory mode"):
        Bus("crm", hub=MemoryHub(), settings=settings)


def test_memory_mode_wins_over_a_url(tmp_path: Path) -> None:
    bus = Bus("crm", settings=Settings(mode="memory", amqp_url=AMQP, storage_dir=tmp_path))
    assert bus.mode == "memory"
    assert Bus("crm", settings=Settings(amqp_url=AMQP)).mode == "amqp"


class _Injecting:
    """A memory backend whose connect can fail and whose broadcast drops what a test says."""

    def __init__(self, inner: MemoryBackend, *, refuse_connect: bool = False) -> None:
        self._inner = inner
        self.refuse_connect = refuse_connect
        self.mode = inner.mode
        self.hub = inner.hub
        self.queues: QueueBackend = inner.queues
        self.locks: LockBackend = inner.locks
        self.broadcast: BroadcastBackend = _Dropping(inner.broadcast)
        self.closed = 0
        self.connected = True
        self.node: str | None = "memory"

    async def probe(self) -> bool:
        return self.connected

    async def connect(self) -> None:
        if self.refuse_connect:
            raise BusUnavailable("injected: the broker is gone")
        await self._inner.connect()

    async def close(self) -> None:
        self.closed += 1
        await self._inner.close()

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._inner.on_reconnect(callback)

    def listeners(self, channel: str) -> int | None:
        return self._inner.listeners(channel)


class _Dropping:
    def __init__(self, inner: BroadcastBackend) -> None:
        self._inner = inner
        self.drop: set[str] = set()
        self.start = inner.start
        self.stop = inner.stop
        self.bind = inner.bind
        self.unbind = inner.unbind

    @property
    def receiving(self) -> bool:
        return self._inner.receiving

    async def publish(self, channel: str, envelope: Envelope) -> None:
        if channel not in self.drop:
            await self._inner.publish(channel, envelope)


def _injecting(app: str, hub: MemoryHub, tmp_path: Path, **kw: bool) -> _Injecting:
    settings = Settings(mode="memory", storage_dir=tmp_path)
    inner = MemoryBackend(settings, app=app, log=get_logger(), hub=hub)
    return _Injecting(inner, **kw)


async def test_an_injected_backend_failing_to_connect_fails_start(tmp_path: Path) -> None:
    app, hub = unique_app(), MemoryHub()
    backend = _injecting(app, hub, tmp_path, refuse_connect=True)
    bus = Bus(app, settings=Settings(mode="memory", storage_dir=tmp_path), backend=backend)
    with pytest.raises(BusUnavailable, match="injected"):
        await bus.start()
    assert not bus.started and backend.closed == 1  # the failed start cleaned up


async def test_an_injected_backend_carries_the_bus(tmp_path: Path) -> None:
    app, hub = unique_app(), MemoryHub()
    settings = Settings(mode="memory", storage_dir=tmp_path)
    sender = _injecting(app, hub, tmp_path / "a")
    async with (
        Bus(app, settings=settings, backend=sender) as a,
        Bus(app, hub=hub, settings=Settings(storage_dir=tmp_path / "b")) as b,
    ):
        rec = Recorder()
        await b.pubsub.subscribe("news", rec)
        assert isinstance(sender.broadcast, _Dropping)
        sender.broadcast.drop.add("news")
        await a.pubsub.publish("news", "dropped")
        sender.broadcast.drop.clear()
        await a.pubsub.publish("news", "delivered")
        await rec.wait_for(1)
        assert rec.messages == ["delivered"]
