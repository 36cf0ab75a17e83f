"""``clusterbus dlq`` at its edges (memory mode): data is never read as rich markup and its
control characters (ANSI escapes a peer could forge) are shown escaped, with rich or without
it, in the table, the page of ``show`` and the JSON; raw payloads are dumped; an unreadable
saved file is reported and left alone; a failure prints one redacted line, never a traceback.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, MemoryHub
from bus.dlq_output import dumps, hex_dump, jsonable, letter_json, print_letter, print_table
from bus.logs import configure_logging
from bus.memory import queue_file
from bus.terminal import Terminal
from managers.envelope import Envelope
from managers.queue import QueueContext
from managers.queue_messages import DeadLetter, parked
from plugins.cli import main
from tests.conftest import fast_settings, unique_app

TRICKY_ERRORS = [
    "ValueError: closing tag [/] with nothing open",
    "ValueError: [bold]not bold[/bold] and [/]",
    "KeyError: '[red]x[/red]' [link=http://evil]click[/link]",
    "Boom: [/]\x1b[31mred\x1b[0m",
]
TRICKY_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "[bold]x.py[/bold]", line 1, in <module>\n'
    "\x1b]0;owned\x07\x1b[2J\x9b31m [/] :smile:\n"
    "RuntimeError: [red]boom[/red]\n"
)


@pytest.fixture(autouse=True)
def _restore(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("CLUSTERBUS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "400")
    yield
    configure_logging(format="console", level="WARNING")


def _letter(letter_id: str, error: str, **fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "id": letter_id,
        "message": None,
        "error": error,
        "attempts": 1,
        "failed_by": "here",
        "failed_at": time.time(),
        "trace_id": "",
        "channel": "jobs",
        "error_type": "ValueError",
        "traceback": "",
    }
    values.update(fields)
    return DeadLetter(**values)


@pytest.mark.parametrize("use_rich", [True, False], ids=["rich", "plain"])
def test_the_table_shows_ids_and_errors_as_they_are(use_rich: bool) -> None:
    letters = [
        _letter("[bold]id-1[/bold]", TRICKY_ERRORS[0]),
        _letter("[/]", TRICKY_ERRORS[1]),
        _letter("id-[3]", TRICKY_ERRORS[2], error_type="[i]Key[/i]Error"),
        _letter("id-4", TRICKY_ERRORS[3]),
    ]
    out = io.StringIO()
    print_table(Terminal(out, use_rich=use_rich), "jobs", letters)
    text = out.getvalue()
    assert "dead letters of 'jobs' (4)" in text
    for shown in ("[bold]id-1[/bold]", "[/]", "id-[3]", "[i]Key[/i]Error", *TRICKY_ERRORS[:3]):
        assert shown in text
    assert "\x1b" not in text and "\\x1b[31mred" in text  # a forged escape is shown, not run


@pytest.mark.parametrize("use_rich", [True, False], ids=["rich", "plain"])
def test_lines_are_printed_as_they_are(use_rich: bool) -> None:
    out = io.StringIO()
    Terminal(out, use_rich=use_rich).print("[red]x[/red] [/] :smile: 42", style="bold")
    assert out.getvalue() == "[red]x[/red] [/] :smile: 42\n"  # no markup, emoji nor colour


@pytest.mark.parametrize("use_rich", [True, False], ids=["rich", "plain"])
def test_show_prints_wire_texts_literally_and_escaped(use_rich: bool) -> None:
    letter = _letter(
        "[b]id[/b]",
        "RuntimeError: [red]boom[/red] \x1b[31m\ud800",
        message={"[bold]k[/bold]": "\x1b[2J", "text": "line\u009bx"},
        traceback=TRICKY_TRACEBACK,
        failed_by="[blink]host[/blink]",
        trace_id="\x1b[0m",
    )
    out = io.StringIO()
    print_letter(Terminal(out, use_rich=use_rich), letter, app="crm")
    text = out.getvalue()
    assert not {"\x1b", "\x07", "\x9b"} & set(text)  # no escape reaches the terminal
    for literal in (
        "dead letter '[b]id[/b]' of 'jobs' (app 'crm')",
        "error:       RuntimeError: [red]boom[/red] \\x1b[31m\\ud800",
        "failed_by:   [blink]host[/blink]",
        "trace_id:    \\x1b[0m",
        '"[bold]k[/bold]": "\\u001b[2J"',
        '"text": "line\\x9bx"',
        '  File "[bold]x.py[/bold]", line 1, in <module>',
        "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m [/] :smile:",
        "RuntimeError: [red]boom[/red]",
    ):
        assert literal in text, literal
    assert text.index("payload:") < text.index("headers:") < text.index("traceback:")


def test_the_json_of_a_letter_is_ascii_and_escaped() -> None:
    letter = _letter(
        "id-1",
        "E: \x1b[31m\x7f\u009b\ud800 é",
        message={"a": b"\x00\x01", "nan": float("nan"), 1: (1, 2), b"k": None},
        traceback=TRICKY_TRACEBACK,
    )
    text = dumps(letter_json(letter))
    assert text.isascii() and "\x1b" not in text and "\x7f" not in text
    back = json.loads(text)
    assert back["error"] == "E: \x1b[31m\x7f\u009b\ud800 é"  # the exact text, for a program
    assert back["message"] == {
        "a": {"base64": "AAE="},
        "nan": "nan",
        "1": [1, 2],
        "b'k'": None,
    }


def test_jsonable_cuts_deep_nesting_and_keeps_big_numbers() -> None:
    deep: Any = "bottom"
    for _ in range(1000):
        deep = [deep]
    converted = jsonable({"deep": deep, "big": 2**64 - 1, "neg": -(2**63)})
    text = json.dumps(converted)  # no RecursionError
    assert "nested deeper than 100 levels" in text
    assert converted["big"] == 2**64 - 1 and converted["neg"] == -(2**63)


def test_hex_dump_shows_printable_ascii_only() -> None:
    dump = hex_dump(b"\xc1\xc1ab\x1b[31m" + bytes(range(20)))
    lines = dump.splitlines()
    assert lines[0] == "29 byte(s) (raw: not decodable, or a bytes payload)"
    assert lines[1].startswith("00000000  c1 c1 61 62 1b 5b 33 31 6d 00 01 02 03 04 05 06  |")
    assert lines[1].endswith("|..ab.[31m.......|")
    assert "\x1b" not in dump
    long = hex_dump(bytes(100), limit=32)
    assert long.splitlines()[-1] == "... 68 more byte(s) (--json carries all, in base64)"


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


def test_dlq_list_and_show_with_markup_in_error_texts(
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
    assert "\x1b[31m" not in out and "\\x1b[31mred" in out
    assert main(["dlq", "show", "jobs", ids[3], "--app", app]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "error:       RuntimeError: Boom: [/]\\x1b[31mred\\x1b[0m" in out
    assert "RuntimeError: Boom: [/]\\x1b[31mred\\x1b[0m" in out.split("traceback:")[1]


def _save_letter(path: Path, queue: str, body: bytes, message_id: str) -> None:
    """A saved file holding one dead letter of ``queue`` with ``body`` as it is."""
    envelope = Envelope.new(body, sender="peer", message_id=message_id, trace_id="t-1")
    dead = parked(
        envelope,
        error="undecodable: body is not valid msgpack",
        attempts=0,
        instance="peer-1",
    )
    queue_file.save(path, {queue: ([], [dead])})


def test_a_raw_payload_is_dumped_and_carried_in_base64(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = b"\xc1\xc1\x1b[31mraw"
    _save_letter(tmp_path / "crm.queues.msgpack", "crm.queue.jobs", body, "raw-1")
    monkeypatch.setenv("CLUSTERBUS_STORAGE_DIR", str(tmp_path))
    assert main(["dlq", "show", "jobs", "raw-1", "--app", "crm"]) == 0
    out = capsys.readouterr().out
    assert "10 byte(s) (raw: not decodable, or a bytes payload)" in out
    assert "00000000  c1 c1 1b 5b 33 31 6d 72 61 77" in out and "|...[31mraw|" in out
    assert "\x1b" not in out
    assert "error_type:  -" in out and "traceback:\n(none: parked without running" in out
    assert main(["dlq", "show", "jobs", "raw-1", "--app", "crm", "--json"]) == 0
    letter = json.loads(capsys.readouterr().out)
    assert letter["message"] == {"base64": "wcEbWzMxbXJhdw=="}
    assert letter["attempts"] == 0 and letter["failed_by"] == "peer-1"


def test_an_unreadable_saved_file_is_reported_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "crm.queues.msgpack"
    path.write_bytes(b"\x00not msgpack")
    monkeypatch.setenv("CLUSTERBUS_STORAGE_DIR", str(tmp_path))
    for argv in (["list", "jobs"], ["show", "jobs", "x"], ["replay", "jobs", "--all"]):
        assert main(["dlq", *argv, "--app", "crm"]) == 1
        out = capsys.readouterr().out.strip()
        assert out.startswith(f"dlq failed: saved queues in {path} are unreadable")
        assert out.endswith("the file is left as it is") and len(out.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crm.queues.msgpack"]  # not renamed
    assert path.read_bytes() == b"\x00not msgpack"


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
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no route to amqp://guest:S3CRET@10.0.0.1:5672/\nsecond line")

    monkeypatch.setattr("bus.dlq_source.read_saved", broken)
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
