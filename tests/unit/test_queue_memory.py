"""Memory-mode event queues: saved under storage_dir when the last instance stops, loaded by
the first to start; and the delay-tier arithmetic."""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, MemoryHub
from bus.memory.queue_file import app_file, shared_file
from managers.envelope import Envelope
from managers.queue_messages import DelayTiers
from tests.conftest import fast_settings, unique_app
from tests.shared.test_queue import Worker, settle, wait_dead


def memory_bus(app: str, hub: MemoryHub, store: Path) -> Bus:
    return Bus(app, hub=hub, settings=fast_settings(storage_dir=store))


async def test_queued_and_dead_messages_survive_a_restart(tmp_path: Path) -> None:
    app = unique_app()
    first_hub = MemoryHub()
    a, b = memory_bus(app, first_hub, tmp_path), memory_bus(app, first_hub, tmp_path)
    await a.start()
    await b.start()
    worker = Worker("doomed", fail=9)
    await a.queue.subscribe("doomed", worker)
    doomed = await a.queue.publish("doomed", "x")
    await wait_dead(a, "doomed", 1)
    ids = [await a.queue.publish("jobs", i, max_retries=2) for i in range(3)]
    delayed = await a.queue.publish("jobs", "delayed", delay=30)
    await a.stop()
    assert not app_file(tmp_path, app).exists()  # b still runs: the hub keeps the queues
    await b.stop()
    assert app_file(tmp_path, app).exists()

    second_hub = MemoryHub()  # as in a new process
    async with memory_bus(app, second_hub, tmp_path) as c:
        assert not app_file(tmp_path, app).exists()  # loaded and deleted
        [dead] = await c.queue.dead_letters("doomed")
        assert (dead.id, dead.message, dead.attempts) == (doomed, "x", 1)
        later = Worker("later")
        await c.queue.subscribe("jobs", later)
        await settle(c, "jobs", 3, later)
        assert sorted(later.done) == [0, 1, 2]
        assert {ctx.id for _, ctx in later.calls} == set(ids)
        assert {ctx.max_retries for _, ctx in later.calls} == {2}
        assert delayed not in {ctx.id for _, ctx in later.calls}  # still not due
    # the delayed one was saved again on stop
    async with memory_bus(app, MemoryHub(), tmp_path) as d:
        assert d.hub is not None
        assert [e.message_id for e, _ in d.hub.work_queue(f"{app}.queue.jobs").ready] == [delayed]


async def test_shared_queues_are_saved_by_the_last_bus_on_the_hub(tmp_path: Path) -> None:
    hub = MemoryHub()
    channel = f"shared-{uuid.uuid4().hex[:8]}"
    a, b = memory_bus(unique_app(), hub, tmp_path), memory_bus(unique_app(), hub, tmp_path)
    await a.start()
    await b.start()
    await a.queue.publish(channel, "s", shared=True)
    await a.stop()
    assert not shared_file(tmp_path).exists()
    await b.stop()
    assert shared_file(tmp_path).exists()
    async with memory_bus(unique_app(), MemoryHub(), tmp_path) as c:
        worker = Worker("c")
        await c.queue.subscribe(channel, worker, shared=True)
        await settle(c, channel, 1, worker)
        assert worker.done == ["s"]


async def test_nothing_is_written_when_nothing_is_queued(tmp_path: Path) -> None:
    async with memory_bus(unique_app(), MemoryHub(), tmp_path) as bus:
        await bus.queue.subscribe("jobs", Worker("w"))
    assert list(tmp_path.iterdir()) == []


async def test_an_unreadable_file_is_kept_aside_and_the_bus_starts(
    tmp_path: Path, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    app = unique_app()
    app_file(tmp_path, app).write_bytes(b"not msgpack at all \xc1")
    async with memory_bus(app, MemoryHub(), tmp_path) as bus:
        assert await bus.queue.dead_letters("jobs") == []
    kept = list(tmp_path.glob(f"{app}.queues.msgpack.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"not msgpack at all \xc1"
    assert any(e["event"] == "queue.load_failed" for e in debug_logs)


async def test_malformed_body_on_the_hub_is_parked(tmp_path: Path) -> None:
    async with memory_bus(unique_app(), MemoryHub(), tmp_path) as bus:
        worker = Worker("w")
        await bus.queue.subscribe("jobs", worker)
        assert bus.hub is not None
        bus.hub.work_queue(f"{bus.name}.queue.jobs").put(
            Envelope(body=b"\xc1", message_id="bad", sender="someone", trace_id="t")
        )
        await bus.queue.publish("jobs", "good")
        await settle(bus, "jobs", 1, worker)
        [dead] = await wait_dead(bus, "jobs", 1)
        assert (dead.id, dead.message) == ("bad", b"\xc1")


def test_delay_tiers_double_up_to_the_cap() -> None:
    tiers = DelayTiers(0.5, 60)
    assert tiers.tiers == (0.5, 1, 2, 4, 8, 16, 32, 60)
    assert [tiers.backoff(n) for n in (0, 1, 2, 7, 8, 50)] == [0.5, 1, 2, 60, 60, 60]
    assert tiers.hop(0.01) == 0.5  # shorter than the first tier: late, never early
    assert tiers.hop(3) == 2
    assert tiers.hop(3600) == 60


@pytest.mark.parametrize("delay", [0.3, 1.0, 3.7, 75.0, 200.0])
def test_hops_never_deliver_early_and_are_late_by_less_than_the_first_tier(
    delay: float,
) -> None:
    tiers = DelayTiers(0.5, 60)
    remaining, held_for = delay, 0.0  # the sum of the tiers' fixed delays, no clock involved
    while remaining > 0.02:
        hop = tiers.hop(remaining)
        held_for += hop
        remaining -= hop
    assert delay <= held_for + 0.02
    assert held_for - delay < 0.5
