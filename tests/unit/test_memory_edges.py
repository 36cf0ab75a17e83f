"""Memory mode at its edges: saves that fail or meet odd text, one storage directory per
process, failed starts that must leave nothing behind, and a bounded, fair pub/sub."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, BusError, MemoryHub
from bus.memory import queue_file
from bus.memory.queue_file import app_file, shared_file
from managers.envelope import Envelope
from tests.conftest import Recorder, eventually, fast_settings, unique_app
from tests.shared.test_queue import Worker, settle

REPO = Path(__file__).resolve().parents[2]
SURROGATE = "bad \ud800 text"  # a lone surrogate: UTF-8 cannot encode it strictly


def memory_bus(app: str, hub: MemoryHub, store: Path, **settings: Any) -> Bus:
    return Bus(app, hub=hub, settings=fast_settings(storage_dir=store, **settings))


def envelope(message_id: str, **headers: Any) -> Envelope:
    return Envelope(body=b"\xa1x", message_id=message_id, sender="s", trace_id="t", headers=headers)


def on_hub(hub: MemoryHub, queue: str) -> tuple[list[str], list[str]]:
    """The ids of the ready and the dead messages of ``queue`` on ``hub``."""
    target = hub.work_queue(queue)
    return [e.message_id for e, _ in target.ready], [e.message_id for e in target.dead]


# saving at stop (issue 10, finding 4) ------------------------------------------------------


async def test_header_text_with_a_lone_surrogate_is_saved_and_loaded_back(
    tmp_path: Path,
) -> None:
    app = unique_app()
    hub = MemoryHub()
    bus = memory_bus(app, hub, tmp_path)
    await bus.start()
    queue = hub.work_queue(f"{app}.queue.jobs")
    queue.put(envelope("queued", **{"x-note": SURROGATE}))
    queue.dead.append(envelope("dead", **{"x-error": SURROGATE, "x-attempts": 1}))
    await bus.stop()  # raised UnicodeEncodeError, and both messages were gone
    assert app_file(tmp_path, app).exists()

    again = MemoryHub()  # as in a new process
    async with memory_bus(app, again, tmp_path) as bus:
        assert on_hub(again, f"{app}.queue.jobs") == (["queued"], ["dead"])
        [dead] = again.work_queue(f"{app}.queue.jobs").dead
        assert dead.headers["x-error"] == SURROGATE
        [(ready, _)] = again.work_queue(f"{app}.queue.jobs").ready
        assert ready.headers["x-note"] == SURROGATE
        assert [d.id for d in await bus.queue.dead_letters("jobs")] == ["dead"]


def _unpackable(app: str, hub: MemoryHub, store: Path) -> None:
    """A header msgpack cannot pack: the save fails while packing."""
    hub.work_queue(f"{app}.queue.jobs").put(envelope("odd", **{"x-odd": object()}))


def _unwritable(app: str, hub: MemoryHub, store: Path) -> None:
    """The file's place is taken by a directory: the save fails while writing."""
    (app_file(store, app) / "occupied").mkdir(parents=True)


@pytest.mark.parametrize("fault", [_unpackable, _unwritable], ids=["packing", "writing"])
async def test_a_failed_save_keeps_the_messages_and_stop_raises_naming_the_file(
    tmp_path: Path, fault: Any
) -> None:
    app = unique_app()
    hub = MemoryHub()
    bus = memory_bus(app, hub, tmp_path)
    news = Recorder()
    await bus.pubsub.subscribe("news", news)
    await bus.start()
    await bus.queue.publish("jobs", "kept")
    hub.work_queue(f"{app}.queue.jobs").dead.append(envelope("dead"))
    fault(app, hub, tmp_path)
    queued_before, dead_before = on_hub(hub, f"{app}.queue.jobs")

    with pytest.raises(BusError) as caught:
        await bus.stop()
    assert str(app_file(tmp_path, app)) in str(caught.value)
    # the messages stay on the hub, no temporary file is left behind
    assert on_hub(hub, f"{app}.queue.jobs") == (queued_before, dead_before)
    assert not list(tmp_path.glob("*.tmp"))
    # and the rest of stop() happened: nothing bound, the hub and the directory left
    assert hub.routes(app, "news") == ()
    assert not bus.started and not bus.pubsub.started
    assert os.path.realpath(tmp_path) not in queue_file._held
    async with memory_bus(app, hub, tmp_path / "elsewhere") as later:
        worker = Worker("later")
        await later.queue.subscribe("jobs", worker)
        await settle(later, "jobs", 1, worker)
        assert "kept" in worker.done


# one process per storage directory (finding 12) --------------------------------------------

OTHER_PROCESS = """
import asyncio, sys
from pathlib import Path
from bus import Bus, BusError, MemoryHub, Settings

async def main() -> int:
    app, store, extra = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    bus = Bus(app, hub=MemoryHub(), settings=Settings(storage_dir=store, log_level="ERROR"))
    try:
        await bus.start()
    except BusError as exc:
        print(f"BusError: {exc}")
        return 3
    for i in range(extra):
        await bus.queue.publish("jobs", f"other-{i}")
    await bus.stop()
    print("done")
    return 0

sys.exit(asyncio.run(main()))
"""


async def other_process(app: str, store: Path, extra: int) -> tuple[int, str]:
    """Run a memory-mode bus of ``app`` on ``store`` in a second process; (status, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERBUS_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OTHER_PROCESS,
        app,
        str(store),
        str(extra),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_a_second_process_cannot_use_the_storage_dir_while_one_does(
    tmp_path: Path,
) -> None:
    app = unique_app()
    store = tmp_path / "queues"
    bus = memory_bus(app, MemoryHub(), store)
    await bus.start()
    for i in range(5):
        await bus.queue.publish("jobs", f"first-{i}")
    # buses of this process share the directory, on any hub
    async with memory_bus(unique_app(), MemoryHub(), store):
        pass

    status, out = await other_process(app, store, extra=2)
    assert status == 3, out  # refused at start(), naming the directory
    assert str(store.resolve()) in out and "another process" in out

    await bus.stop()  # the last bus of this process gives the directory back
    status, out = await other_process(app, store, extra=2)
    assert status == 0, out  # loaded our 5, added 2, saved 7

    hub = MemoryHub()
    async with memory_bus(app, hub, store):
        ready, _ = on_hub(hub, f"{app}.queue.jobs")
        assert len(ready) == 7


async def test_storage_dir_that_is_a_file_fails_start_naming_it(tmp_path: Path) -> None:
    store = tmp_path / "not-a-directory"
    store.write_text("x")
    bus = memory_bus(unique_app(), MemoryHub(), store)
    with pytest.raises(BusError, match="not-a-directory"):
        await bus.start()


# a failed start leaves nothing running (finding 11, memory part) ----------------------------


async def test_a_failed_start_leaves_no_zombie_and_the_healthy_bus_loads_and_saves(
    tmp_path: Path,
) -> None:
    app = unique_app()
    store = tmp_path / "queues"
    async with memory_bus(app, MemoryHub(), store) as earlier:
        await earlier.queue.publish("jobs", "saved earlier")
    hub = MemoryHub()
    bad_path = tmp_path / "a-file"
    bad_path.write_text("x")
    zombie = memory_bus(app, hub, bad_path)  # the first bus of the app on the hub
    news, worker = Recorder("zombie news"), Worker("zombie")
    await zombie.pubsub.subscribe("news", news)
    await zombie.queue.subscribe("jobs", worker)
    with pytest.raises(Exception):  # noqa: B017 - which error: see the test above
        await zombie.start()
    assert hub.routes(app, "news") == ()  # its handler is bound nowhere

    healthy = memory_bus(app, hub, store)
    await healthy.start()  # now the first bus of the app on the hub: it loads the file
    assert on_hub(hub, f"{app}.queue.jobs")[0] != []
    listener = Recorder("listener")
    async with memory_bus(app, hub, store) as other:
        await other.pubsub.subscribe("news", listener)
        await healthy.pubsub.publish("news", "hello")
        await listener.wait_for(1)
    await healthy.queue.publish("jobs", "saved now")
    await healthy.stop()  # the last running bus of the app: it saves
    assert news.messages == [] and worker.calls == []
    assert app_file(store, app).exists()

    async with memory_bus(app, MemoryHub(), store) as fresh:  # as in a new process
        worker = Worker("fresh")
        await fresh.queue.subscribe("jobs", worker)
        await settle(fresh, "jobs", 2, worker)
        assert sorted(worker.done) == ["saved earlier", "saved now"]


async def test_a_start_that_fails_while_loading_deletes_no_file(tmp_path: Path) -> None:
    app = unique_app()
    async with memory_bus(app, MemoryHub(), tmp_path) as bus:
        await bus.queue.publish("jobs", "precious")
    saved = app_file(tmp_path, app).read_bytes()
    shared_file(tmp_path).mkdir()  # the second file to load cannot be read

    hub = MemoryHub()
    with pytest.raises(BusError, match=queue_file.SHARED_FILE):
        await memory_bus(app, hub, tmp_path).start()
    assert app_file(tmp_path, app).read_bytes() == saved  # not taken by the failed start
    assert on_hub(hub, f"{app}.queue.jobs") == ([], [])

    shared_file(tmp_path).rmdir()
    async with memory_bus(app, hub, tmp_path) as fresh:  # same hub: nothing is left joined
        worker = Worker("fresh")
        await fresh.queue.subscribe("jobs", worker)
        await settle(fresh, "jobs", 1, worker)
        assert worker.done == ["precious"]


async def test_a_start_that_fails_after_loading_saves_the_messages_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = unique_app()
    async with memory_bus(app, MemoryHub(), tmp_path) as bus:
        await bus.queue.publish("jobs", "precious")

    failing = memory_bus(app, MemoryHub(), tmp_path)

    async def refuse() -> None:
        raise RuntimeError("the lock manager refused to start")

    monkeypatch.setattr(failing.locks, "start", refuse)
    with pytest.raises(RuntimeError, match="refused"):
        await failing.start()
    assert app_file(tmp_path, app).exists()  # what the queue backend loaded went back

    async with memory_bus(app, MemoryHub(), tmp_path) as fresh:
        worker = Worker("fresh")
        await fresh.queue.subscribe("jobs", worker)
        await settle(fresh, "jobs", 1, worker)
        assert worker.done == ["precious"]


# pub/sub backlog and fairness (finding 23) --------------------------------------------------


async def test_an_inbox_holds_at_most_max_backlog_dropping_the_oldest(
    tmp_path: Path, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    hub = MemoryHub()
    app = unique_app()
    options = {"pubsub_prefetch": 1, "pubsub_max_backlog": 10}
    sender = memory_bus(app, hub, tmp_path, **options)
    receiver = memory_bus(app, hub, tmp_path, **options)
    await sender.start()
    await receiver.start()
    gate = asyncio.Event()
    got: list[int] = []

    async def slow(message: int) -> None:
        got.append(message)
        await gate.wait()

    await receiver.pubsub.subscribe("news", slow)
    await sender.pubsub.publish("news", 0)
    await eventually(lambda: got == [0], what="the receiver holds the first message")
    for i in range(1, 100):
        await sender.pubsub.publish("news", i)
    gate.set()
    await eventually(lambda: got[-1:] == [99], what="the last message arrived")
    assert got == [0, *range(90, 100)]  # the window's one, then the newest ten
    await receiver.stop()
    await sender.stop()
    warnings = [e for e in debug_logs if e["event"] == "pubsub.backlog_dropped"]
    assert warnings and all(e["log_level"] == "warning" for e in warnings)
    assert sum(e["dropped"] for e in warnings) == 89
    assert len(warnings) < 89  # a count, not a line per message


async def test_a_tight_publish_loop_lets_the_peers_handlers_run(tmp_path: Path) -> None:
    hub = MemoryHub()
    app = unique_app()
    sender, receiver = memory_bus(app, hub, tmp_path), memory_bus(app, hub, tmp_path)
    await sender.start()
    await receiver.start()
    news = Recorder()
    await receiver.pubsub.subscribe("news", news)
    done = Worker("jobs")
    await receiver.queue.subscribe("jobs", done)
    for i in range(1000):
        await sender.pubsub.publish("news", i)
        await sender.queue.publish("jobs", i)
    handled_during_the_loop = (len(news.messages), len(done.done))  # no await since the loop
    assert handled_during_the_loop[0] > 0 and handled_during_the_loop[1] > 0
    await news.wait_for(1000)
    assert news.messages == list(range(1000))
    await sender.stop()
    await receiver.stop()
