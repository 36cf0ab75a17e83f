"""``clusterbus dlq`` at its edges: data is never read as rich markup (issue 10, finding 13),
with rich or without it, and a failure prints one redacted line, never a traceback."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, MemoryHub
from bus.dlq import print_table
from bus.logs import configure_logging
from bus.terminal import Terminal
from managers.queue import QueueContext
from managers.queue_messages import DeadLetter
from plugins.cli import main
from tests.conftest import fast_settings, unique_app

TRICKY_ERRORS = [
    "ValueError: closing tag [/] with nothing open",
    "ValueError: [bold]not bold[/bold] and [/]",
    "KeyError: '[red]x[/red]' [link=http://evil]click[/link]",
    "Boom: [/]\x1b[31mred\x1b[0m",
]


@pytest.fixture(autouse=True)
def _restore(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("CLUSTERBUS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "400")
    yield
    configure_logging(format="console", level="WARNING")


def _letter(letter_id: str, error: str) -> DeadLetter:
    return DeadLetter(
        id=letter_id,
        message=None,
        error=error,
        attempts=1,
        failed_by="here",
        failed_at=time.time(),
        trace_id="",
        channel="jobs",
    )


@pytest.mark.parametrize("use_rich", [True, False], ids=["rich", "plain"])
def test_the_table_shows_ids_and_errors_as_they_are(use_rich: bool) -> None:
    letters = [
        _letter("[bold]id-1[/bold]", TRICKY_ERRORS[0]),
        _letter("[/]", TRICKY_ERRORS[1]),
        _letter("id-[3]", TRICKY_ERRORS[2]),
        _letter("id-4", TRICKY_ERRORS[3]),
    ]
    out = io.StringIO()
    print_table(Terminal(out, use_rich=use_rich), "jobs", letters)
    text = out.getvalue()
    assert "dead letters of 'jobs' (4)" in text
    for shown in ("[bold]id-1[/bold]", "[/]", "id-[3]", *TRICKY_ERRORS[:3]):
        assert shown in text
    assert "\x1b" not in text and "\\x1b[31mred" in text  # a forged escape is shown, not run


@pytest.mark.parametrize("use_rich", [True, False], ids=["rich", "plain"])
def test_lines_are_printed_as_they_are(use_rich: bool) -> None:
    out = io.StringIO()
    Terminal(out, use_rich=use_rich).print("[red]x[/red] [/] :smile: 42", style="bold")
    assert out.getvalue() == "[red]x[/red] [/] :smile: 42\n"  # no markup, emoji nor colour


async def _park(app: str, store: Path, errors: list[str]) -> list[str]:
    """Park one message per error text in the dead queue of channel ``jobs``."""
    bus = Bus(app, hub=MemoryHub(), settings=fast_settings(storage_dir=store))
    async with bus:

        async def fail(message: Any, ctx: QueueContext) -> None:
            raise RuntimeError(errors[message])

        await bus.queue.subscribe("jobs", fail)
        ids = [await bus.queue.publish("jobs", n) for n in range(len(errors))]
        deadline = time.monotonic() + 20
        while len(await bus.queue.dead_letters("jobs")) < len(errors):
            assert time.monotonic() < deadline, "messages not parked"
            await asyncio.sleep(0.02)
        await bus.queue.unsubscribe("jobs")
    return ids


def test_dlq_list_with_markup_in_error_texts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app = unique_app()
    ids = asyncio.run(_park(app, tmp_path, TRICKY_ERRORS))
    monkeypatch.setenv("CLUSTERBUS_STORAGE_DIR", str(tmp_path))
    assert main(["dlq", "list", "jobs", "--app", app]) == 0
    out = capsys.readouterr().out
    for message_id in ids:
        assert message_id in out
    for error in TRICKY_ERRORS[:3]:
        assert error.split(": ", 1)[1] in out
    assert "\x1b[31m" not in out


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_dlq_on_an_unreachable_broker_prints_one_redacted_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLUSTERBUS_CONNECT_TIMEOUT", "1")
    url = f"amqp://guest:S3CRET@127.0.0.1:{_closed_port()}/"
    assert main(["dlq", "list", "jobs", "--app", "crm", "--amqp-url", url]) == 1
    captured = capsys.readouterr()
    assert "S3CRET" not in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlq failed:"), lines
    assert "guest:***@127.0.0.1" in lines[0]


def test_dlq_failing_for_another_reason_prints_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CLUSTERBUS_STORAGE_DIR", str(blocker / "store"))
    code = main(["dlq", "list", "jobs", "--app", "crm"])
    captured = capsys.readouterr()
    assert code == 1, captured
    assert "Traceback" not in captured.out + captured.err
    assert captured.out.strip().startswith("dlq failed:")
    assert len(captured.out.strip().splitlines()) == 1


def test_dlq_with_a_bad_url_argument_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "list", "jobs", "--app", "crm", "--amqp-url", "  "]) == 2
    out = capsys.readouterr().out
    assert "amqp_url" in out and "empty or blank" in out


def test_dlq_reports_an_unexpected_error_in_one_redacted_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> Bus:
        raise RuntimeError("no route to amqp://guest:S3CRET@10.0.0.1:5672/\nsecond line")

    monkeypatch.setattr("bus.dlq.Bus", broken)
    assert main(["dlq", "list", "jobs", "--app", "crm"]) == 1
    captured = capsys.readouterr()
    assert "S3CRET" not in captured.out + captured.err
    assert captured.out.strip() == (
        "dlq failed: RuntimeError: no route to amqp://guest:***@10.0.0.1:5672/ second line"
    )


def test_node_with_a_malformed_url_prints_one_line_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"
    argv = ["node", "--amqp-url", "amqp:/guest:S3CRET@host/", "--database-url", database]
    assert main([*argv, "--log-file", str(tmp_path / "node.log")]) == 2
    captured = capsys.readouterr()
    assert "S3CRET" not in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    assert captured.out.strip().startswith("node failed: invalid settings: amqp_url")
    assert "S3CRET" not in (tmp_path / "node.log").read_text()
