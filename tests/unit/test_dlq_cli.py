"""``clusterbus dlq list|show|replay|purge`` in memory mode: the commands work on the file the
app's queues were saved to. Read-only commands leave it as it was (bytes and time); what is
not there (app, channel, id) exits 1 naming it; ``purge`` asks on a terminal and needs
``--yes`` elsewhere. The broker side is ``tests/amqp/test_dlq_cli_amqp.py``."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, MemoryHub
from bus.logs import configure_logging
from bus.memory import queue_file
from managers.queue import QueueContext
from plugins.cli import main
from tests.conftest import fast_settings, unique_app


class FakeTerminal(io.StringIO):
    """A stdin that is a terminal, holding the answer typed."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Memory mode on the test's own storage directory; logging restored afterwards (the CLI
    points structlog at the stream of the moment)."""
    for name in [n for n in os.environ if n.startswith("CLUSTERBUS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLUSTERBUS_STORAGE_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "300")
    yield
    configure_logging(format="console", level="WARNING")


async def _park(app: str, store: Path, count: int, *, shared: bool = False) -> list[str]:
    """Park ``count`` messages of channel ``jobs`` (payload ``{"n": i, "raw": b"..."}``) in
    the dead queue, then stop: the bus saves them to ``store``. Their ids, oldest first."""
    async with Bus(app, hub=MemoryHub(), settings=fast_settings(storage_dir=store)) as bus:

        async def fail(message: Any, ctx: QueueContext) -> None:
            raise ValueError(f"cannot do {message['n']}")

        await bus.queue.subscribe("jobs", fail, shared=shared)
        ids = [
            await bus.queue.publish(
                "jobs", {"n": n, "raw": b"\x00\xff"}, max_retries=0, shared=shared
            )
            for n in range(count)
        ]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while len(await bus.queue.dead_letters("jobs", shared=shared)) < count:
            assert loop.time() < deadline, "messages not parked"
            await asyncio.sleep(0.02)
        await bus.queue.unsubscribe("jobs", shared=shared)
    return ids


def _saved(tmp_path: Path, app: str) -> tuple[list[str], list[str]]:
    """The ids of the queued messages and dead letters of channel ``jobs`` in the file."""
    saved = queue_file.read(queue_file.app_file(tmp_path, app))
    queued, dead = saved.get(f"{app}.queue.jobs", ([], []))
    return [e.message_id for e in queued], [e.message_id for e in dead]


def _state(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of ``directory``: its bytes and modification time (ns)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


@pytest.fixture
def parked(tmp_path: Path) -> tuple[str, list[str]]:
    """An app with three dead letters on channel ``jobs``, saved under ``tmp_path``."""
    app = unique_app()
    return app, asyncio.run(_park(app, tmp_path, 3))


def test_list_shows_a_table(
    parked: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    assert main(["dlq", "list", "jobs", "--app", app]) == 0
    out = capsys.readouterr().out
    assert "dead letters of 'jobs' (3)" in out
    for header in ("id", "attempts", "error_type", "error", "failed_at", "age"):
        assert header in out
    for message_id in ids:
        assert message_id in out
    assert "ValueError: cannot do 1" in out and "not shown" not in out


def test_list_json_with_a_limit(
    parked: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    assert main(["dlq", "list", "jobs", "--app", app, "--json", "--limit", "2"]) == 0
    captured = capsys.readouterr()
    letters = json.loads(captured.out)  # nothing but the JSON on stdout
    assert [letter["id"] for letter in letters] == ids[:2]  # the oldest first
    first = letters[0]
    assert set(first) == {
        "id",
        "attempts",
        "error",
        "error_type",
        "failed_by",
        "failed_at",
        "trace_id",
        "message",
        "traceback",
    }
    assert first["message"] == {"n": 0, "raw": {"base64": "AP8="}}
    assert first["error"] == "ValueError: cannot do 0" and first["error_type"] == "ValueError"
    assert first["attempts"] == 1 and first["failed_at"].endswith("+00:00")
    assert "Traceback (most recent call last)" in first["traceback"]
    assert "1 more dead letter(s) not shown" in captured.err

    assert main(["dlq", "list", "jobs", "--app", app, "--json", "--limit", "0"]) == 0
    captured = capsys.readouterr()
    assert [letter["id"] for letter in json.loads(captured.out)] == ids
    assert captured.err == ""


def test_list_limit_says_how_many_were_not_shown(
    parked: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    assert main(["dlq", "list", "jobs", "--app", app, "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "dead letters of 'jobs' (3)" in out
    assert ids[0] in out and ids[1] not in out and ids[2] not in out
    assert "2 more dead letter(s) not shown (--limit 1; --limit 0 shows all)" in out


def test_a_negative_limit_is_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "list", "jobs", "--app", "crm", "--limit", "-1"])
    assert exited.value.code == 2
    assert "expected a whole number >= 0" in capsys.readouterr().err


def test_show_prints_payload_headers_and_traceback(
    parked: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    assert main(["dlq", "show", "jobs", ids[1], "--app", app]) == 0
    out = capsys.readouterr().out
    payload = out.index("payload:")
    headers = out.index("headers:")
    traceback = out.index("traceback:")
    assert payload < headers < traceback
    assert '"n": 1,' in out[payload:headers]  # pretty-printed
    assert '"base64": "AP8="' in out[payload:headers]
    for line in (f"id:          {ids[1]}", "attempts:    1", "error_type:  ValueError"):
        assert line in out[headers:traceback]
    assert "error:       ValueError: cannot do 1" in out
    assert "Traceback (most recent call last)" in out[traceback:]
    assert "ValueError: cannot do 1" in out[traceback:]

    assert main(["dlq", "show", "jobs", ids[2], "--app", app, "--json"]) == 0
    letter = json.loads(capsys.readouterr().out)
    assert letter["id"] == ids[2] and letter["message"]["n"] == 2


def test_show_an_unknown_id_exits_1(
    parked: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    app, _ = parked
    assert main(["dlq", "show", "jobs", "nonexistent", "--app", app]) == 1
    out = capsys.readouterr().out
    assert out.strip() == f"no dead letter with id 'nonexistent' in channel 'jobs' (app '{app}')"


def test_read_only_commands_change_nothing(
    parked: tuple[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    before = _state(tmp_path)
    assert list(before) == [f"{app}.queues.msgpack"]
    for argv in (
        ["list", "jobs"],
        ["list", "jobs", "--json", "--limit", "1"],
        ["show", "jobs", ids[0]],
        ["show", "jobs", ids[0], "--json"],
        ["show", "jobs", "nonexistent"],
        ["list", "other"],
    ):
        main(["dlq", *argv, "--app", app])
        assert _state(tmp_path) == before, argv  # same files, same bytes, same times
    capsys.readouterr()


def test_list_does_not_create_the_storage_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "nowhere"
    monkeypatch.setenv("CLUSTERBUS_STORAGE_DIR", str(store))
    assert main(["dlq", "list", "jobs", "--app", "crm"]) == 1
    assert not store.exists()
    assert f"{store / 'crm.queues.msgpack'} does not exist" in capsys.readouterr().out


def test_an_unknown_app_or_channel_exits_1(
    parked: tuple[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app, _ = parked
    for action in (["list", "jobs"], ["show", "jobs", "x"], ["replay", "jobs", "--all"]):
        assert main(["dlq", *action, "--app", "t-unknown"]) == 1
        out = capsys.readouterr().out
        assert out.startswith("no saved queues of app 't-unknown': ")
        assert str(tmp_path / "t-unknown.queues.msgpack") in out
    assert main(["dlq", "purge", "jobs", "--app", "t-unknown", "--yes"]) == 1
    assert "no saved queues of app 't-unknown'" in capsys.readouterr().out
    assert main(["dlq", "list", "other", "--app", app]) == 1
    out = capsys.readouterr().out
    assert out.startswith("no queue of channel 'other' in ")
    assert f"(app '{app}')" in out
    assert not (tmp_path / "t-unknown.queues.msgpack").exists()


def test_replay_an_unknown_id_replays_nothing(
    parked: tuple[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    before = _state(tmp_path)
    assert main(["dlq", "replay", "jobs", "--app", app, "--id", "nonexistent"]) == 1
    assert "no dead letter with id 'nonexistent'" in capsys.readouterr().out
    argv = ["dlq", "replay", "jobs", "--app", app, "--id", ids[0], "--id", "x1", "--id", "x2"]
    assert main(argv) == 1
    out = capsys.readouterr().out.strip()
    assert out == (
        f"no dead letter with ids 'x1', 'x2' in channel 'jobs' (app '{app}'): nothing was replayed"
    )
    assert _state(tmp_path) == before
    assert _saved(tmp_path, app) == ([], ids)


def test_replay_needs_ids_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "replay", "jobs", "--app", "crm"])
    assert exited.value.code == 2
    assert "one of the arguments --id --all is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "replay", "jobs", "--app", "crm", "--all", "--id", "x"])
    assert exited.value.code == 2


def test_replay_some_then_all(
    parked: tuple[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app, ids = parked
    assert main(["dlq", "replay", "jobs", "--app", app, "--id", ids[1]]) == 0
    assert "replayed 1 message(s) to 'jobs'" in capsys.readouterr().out
    assert _saved(tmp_path, app) == ([ids[1]], [ids[0], ids[2]])
    assert main(["dlq", "replay", "jobs", "--app", app, "--all"]) == 0
    assert "replayed 2 message(s) to 'jobs'" in capsys.readouterr().out
    queued, dead = _saved(tmp_path, app)
    assert sorted(queued) == sorted(ids) and dead == []
    assert main(["dlq", "list", "jobs", "--app", app]) == 0  # the queue is still there
    assert "dead letters of 'jobs' (0)" in capsys.readouterr().out


def test_purge_off_a_terminal_needs_yes(
    parked: tuple[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app, _ = parked
    before = _state(tmp_path)
    assert not sys.stdin.isatty()
    assert main(["dlq", "purge", "jobs", "--app", app]) == 2
    assert capsys.readouterr().out.strip() == "refusing to purge without --yes (not a terminal)"
    assert _state(tmp_path) == before
    assert main(["dlq", "purge", "jobs", "--app", app, "--yes"]) == 0
    assert "purged 3 dead letter(s) of 'jobs'" in capsys.readouterr().out
    assert not (tmp_path / f"{app}.queues.msgpack").exists()  # nothing left to save
    assert main(["dlq", "list", "jobs", "--app", app]) == 1


@pytest.mark.parametrize("answer", ["y\n", "YES\n"])
def test_purge_on_a_terminal_asks(
    answer: str,
    parked: tuple[str, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, _ = parked
    monkeypatch.setattr(sys, "stdin", FakeTerminal(answer))
    assert main(["dlq", "purge", "jobs", "--app", app]) == 0
    out = capsys.readouterr().out
    assert f"purge 3 dead letter(s) of 'jobs' (app '{app}')? [y/N] " in out
    assert "purged 3 dead letter(s)" in out
    assert not (tmp_path / f"{app}.queues.msgpack").exists()


@pytest.mark.parametrize("answer", ["\n", "n\n", "yep\n", ""])
def test_purge_on_a_terminal_stops_unless_yes(
    answer: str,
    parked: tuple[str, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, _ = parked
    before = _state(tmp_path)
    monkeypatch.setattr(sys, "stdin", FakeTerminal(answer))
    assert main(["dlq", "purge", "jobs", "--app", app]) == 1
    assert capsys.readouterr().out.endswith("[y/N] not purged\n")
    assert _state(tmp_path) == before


class PipeTerminal(io.TextIOWrapper):
    """A stdin with a real descriptor (a pipe) that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_purge_waits_for_the_answer_without_blocking_the_loop(
    parked: tuple[str, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, _ = parked
    read_end, write_end = os.pipe()
    os.write(write_end, b"yes\n")
    os.close(write_end)
    with PipeTerminal(io.FileIO(read_end, "r")) as stdin:  # watched by the event loop
        monkeypatch.setattr(sys, "stdin", stdin)
        assert main(["dlq", "purge", "jobs", "--app", app]) == 0
    assert "? [y/N] purged 3 dead letter(s)" in capsys.readouterr().out


def test_shared_queues_are_in_the_shared_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = unique_app()
    ids = asyncio.run(_park(app, tmp_path, 2, shared=True))
    assert (tmp_path / "_shared.queues.msgpack").exists()
    assert main(["dlq", "list", "jobs", "--app", app, "--shared", "--json"]) == 0
    assert [letter["id"] for letter in json.loads(capsys.readouterr().out)] == ids
    assert main(["dlq", "list", "jobs", "--app", app]) == 1  # not the app's own queue
    assert main(["dlq", "replay", "jobs", "--app", app, "--shared", "--all"]) == 0
    assert "replayed 2 message(s)" in capsys.readouterr().out


def test_dlq_rejects_a_bad_app_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "list", "jobs", "--app", "Bad Name"]) == 1
    assert "invalid app name 'Bad Name'" in capsys.readouterr().out
