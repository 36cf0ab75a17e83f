"""The Bus facade: modes, identity, lifecycle, hubs."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

import pytest

from bus import Bus, BusError, MemoryHub, Settings
from bus.memory import default_hub
from tests.conftest import Recorder, fast_settings


def test_memory_mode_without_a_broker_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLUSTERBUS_AMQP_URL", raising=False)
    bus = Bus("crm")
    assert bus.mode == "memory"
    assert bus.hub is default_hub()
    assert Bus("crm").hub is bus.hub  # one hub per process without hub=


def test_amqp_mode_from_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Bus("crm", amqp_url="amqp://guest:guest@127.0.0.1/").mode == "amqp"
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1/")
    assert Bus("crm").mode == "amqp"
    assert Bus("crm", hub=MemoryHub()).mode == "memory"


def test_amqp_url_argument_wins_over_settings() -> None:
    settings = Settings(amqp_url="amqp://a:b@one/", heartbeat=3)
    bus = Bus("crm", amqp_url="amqp://a:b@two/", settings=settings)
    assert bus.settings.amqp_url_redacted() == "amqp://a:***@two/"
    assert bus.settings.heartbeat == 3


def test_amqp_url_and_hub_together_are_refused() -> None:
    with pytest.raises(ValueError, match="either"):
        Bus("crm", amqp_url="amqp://a:b@two/", hub=MemoryHub())


def test_instance_ids_are_host_pid_random_and_unique() -> None:
    ids = {Bus("crm", hub=MemoryHub()).instance_id for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9.-]+-\d+-[0-9a-f]{6}", i) for i in ids)


async def test_lifecycle_stop_is_idempotent_and_a_no_op_before_start() -> None:
    bus = Bus("crm", hub=MemoryHub(), settings=fast_settings())
    await bus.stop()
    async with bus:
        assert bus.started
        await bus.start()  # no-op
    assert not bus.started
    await bus.stop()
    with pytest.raises(BusError, match="create a new Bus"):
        await bus.start()


async def test_publishing_on_a_bus_that_is_not_started_is_an_error() -> None:
    bus = Bus("crm", hub=MemoryHub(), settings=fast_settings())
    with pytest.raises(BusError, match="not started"):
        await bus.pubsub.publish("news", 1)


async def test_separate_hubs_are_separate_clusters() -> None:
    one, two = MemoryHub(), MemoryHub()
    async with (
        Bus("crm", hub=one, settings=fast_settings()) as a,
        Bus("crm", hub=two, settings=fast_settings()) as b,
        Bus("crm", hub=one, settings=fast_settings()) as c,
        Bus("other", hub=one, settings=fast_settings()) as d,
    ):
        rb, rc, rd = Recorder("b"), Recorder("c"), Recorder("d")
        await b.pubsub.subscribe("news", rb)
        await c.pubsub.subscribe("news", rc)
        await d.pubsub.subscribe("news", rd)
        await a.pubsub.publish("news", "x")
        await a.pubsub.publish("news", "y")
        assert await rc.wait_for(2) == ["x", "y"]
        assert rb.messages == [] and rd.messages == []  # other hub, other app


async def test_malformed_body_from_the_hub_is_logged_and_dropped(
    debug_logs: list[MutableMapping[str, Any]],
) -> None:
    from managers.envelope import Envelope

    hub = MemoryHub()
    async with Bus("crm", hub=hub, settings=fast_settings()) as bus:
        rec = Recorder()
        await bus.pubsub.subscribe("news", rec)
        (endpoint,) = hub.routes("crm", "news")
        endpoint.enqueue("news", Envelope(b"\xc1", message_id="bad-1", sender="x", trace_id="t"))
        endpoint.enqueue("news", Envelope(b"\xa2ok", message_id="ok-1", sender="x", trace_id="t"))
        assert await rec.wait_for(1) == ["ok"]
    malformed = [e for e in debug_logs if e["event"] == "pubsub.malformed"]
    assert [e["message_id"] for e in malformed] == ["bad-1"]
