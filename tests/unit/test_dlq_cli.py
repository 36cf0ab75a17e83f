"""``clusterbus dlq list|replay|purge`` on both backends (memory mode reads the saved file)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, MemoryHub
from bus.logs import configure_logging
from managers.queue import QueueContext
from plugins.cli import main
from tests.conftest import fast_settings, unique_app


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI points structlog at the stream of the moment (pytest's, per test): undo it."""
    yield
    configure_logging(format="console", level="WARNING")


async def _park(app: str, backend: str, store: Path, count: int) -> list[str]:
    """Park ``count`` messages of channel ``jobs`` in the dead queue; their ids."""
    settings = fast_settings(storage_dir=store)
    if backend == "amqp":
        from tests.conftest import AMQP_URL

        bus = Bus(app, amqp_url=AMQP_URL, settings=settings)
    else:
        bus = Bus(app, hub=MemoryHub(), settings=settings)
    async with bus:

        async def fail(message: Any, ctx: QueueContext) -> None:
            raise ValueError(f"cannot do {message}")

        await bus.queue.subscribe("jobs", fail)
        ids = [await bus.queue.publish("jobs", n) for n in range(count)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while len(await bus.queue.dead_letters("jobs")) < count:
            assert loop.time() < deadline, "messages not parked"
            await asyncio.sleep(0.05)
        await bus.queue.unsubscribe("jobs")
    return ids


def test_dlq_list_replay_purge(
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = unique_app()
    ids = asyncio.run(_park(app, backend, tmp_path, 3))
    monkeypatch.setenv("CLUSTERBUS_STORAGE_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    target = ["--app", app]
    if backend == "amqp":
        from tests.conftest import AMQP_URL

        target += ["--amqp-url", AMQP_URL]

    assert main(["dlq", "list", "jobs", *target]) == 0
    out = capsys.readouterr().out
    assert "dead letters of 'jobs' (3)" in out
    for message_id in ids:
        assert message_id in out
    assert "ValueError: cannot do 1" in out

    assert main(["dlq", "replay", "jobs", *target, "--id", ids[0]]) == 0
    assert "replayed 1 message(s)" in capsys.readouterr().out
    assert main(["dlq", "purge", "jobs", *target]) == 0
    assert "purged 2 dead letter(s)" in capsys.readouterr().out
    assert main(["dlq", "list", "jobs", *target]) == 0
    assert "(0)" in capsys.readouterr().out


def test_dlq_rejects_a_bad_app_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "list", "jobs", "--app", "Bad Name"]) == 1
    assert "invalid app name 'Bad Name'" in capsys.readouterr().out
