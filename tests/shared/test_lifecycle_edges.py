"""A failed ``start()`` leaves nothing running, and ``stop()`` finishes whatever fails on the
way; on both backends (issue 10, finding 11)."""

from __future__ import annotations

import pytest

from bus import Bus, MemoryHub
from tests.conftest import BusFactory, Recorder
from tests.shared.test_queue import Worker, settle


def refuse_to_start(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the last step of ``bus.start()`` fail (the lock manager's start)."""

    async def refuse() -> None:
        raise RuntimeError("the lock manager refused to start")

    monkeypatch.setattr(bus.locks, "start", refuse)


async def test_a_failed_start_leaves_no_subscription_and_no_consumer(
    make_bus: BusFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = await make_bus(start=False)
    news, worker = Recorder("failed news"), Worker("failed")
    await failed.pubsub.subscribe("news", news)
    await failed.queue.subscribe("jobs", worker)
    refuse_to_start(failed, monkeypatch)
    with pytest.raises(RuntimeError, match="refused"):
        await failed.start()
    assert not failed.started and not failed.pubsub.started

    healthy = await make_bus()
    listener, peer = Recorder("listener"), Worker("peer")
    await healthy.pubsub.subscribe("news", listener)
    await healthy.queue.subscribe("jobs", peer)
    sender = await make_bus()
    await sender.pubsub.publish("news", "hello")
    for i in range(6):
        await sender.queue.publish("jobs", i)
    await listener.wait_for(1)
    await settle(healthy, "jobs", 6, peer)
    assert sorted(peer.done) == list(range(6))  # the failed bus took none of them
    assert news.messages == [] and worker.calls == []


async def test_a_fresh_bus_starts_after_a_failed_start(
    make_bus: BusFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await make_bus()
    await first.queue.publish("jobs", "waiting")
    await first.stop()  # memory mode: saved to the storage dir

    failed = await make_bus(start=False)
    refuse_to_start(failed, monkeypatch)
    with pytest.raises(RuntimeError, match="refused"):
        await failed.start()

    if failed.mode == "memory":  # as in a new process: only the saved file can bring it
        fresh = Bus(failed.name, hub=MemoryHub(), settings=failed.settings)
    else:
        fresh = Bus(failed.name, settings=failed.settings)
    async with fresh:
        worker = Worker("fresh")
        await fresh.queue.subscribe("jobs", worker)
        await settle(fresh, "jobs", 1, worker)
        assert worker.done == ["waiting"]
