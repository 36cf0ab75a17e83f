"""The ``clusterbus`` command line from the wheel without extras: ``--help``, ``settings`` and
``dlq`` work (in plain text when rich is missing); ``demo`` and ``node`` say which extra to
install (one line, exit 2); ``import clusterbus`` loads none of the extras.

Each run is a fresh interpreter in which the extras' modules cannot be imported
(``sys.modules[name] = None`` makes ``import name`` raise ModuleNotFoundError).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, MemoryHub
from managers.queue import QueueContext
from tests.conftest import fast_settings, unique_app

EXTRA_MODULES = ("sqlalchemy", "aiosqlite", "psycopg", "redis", "fastapi", "rich")
EXTRA_LINE = "needs the demo extra: pip install 'clusterbus[demo]'"


def run_python(
    tmp_path: Path, code: str, blocked: Sequence[str] = EXTRA_MODULES
) -> subprocess.CompletedProcess[str]:
    """``code`` in a subprocess where none of ``blocked`` can be imported."""
    code = f"import sys\nfor name in {tuple(blocked)!r}:\n    sys.modules[name] = None\n{code}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERBUS_")}
    env.update(COLUMNS="200", CLUSTERBUS_STORAGE_DIR=str(tmp_path / "storage"))
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )


def run_cli(
    tmp_path: Path, *argv: str, blocked: Sequence[str] = EXTRA_MODULES
) -> subprocess.CompletedProcess[str]:
    """``main(argv)`` in a subprocess where none of ``blocked`` (default: no extra) imports."""
    code = f"from plugins.cli import main\nsys.exit(main({list(argv)!r}))\n"
    return run_python(tmp_path, code, blocked)


def test_help_needs_no_extra(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for command in ("settings", "dlq", "demo", "node"):
        assert command in proc.stdout


def test_settings_needs_no_extra(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "settings")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"storage_dir = {tmp_path / 'storage'}" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_dlq_list_needs_no_extra(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "dlq", "list", "jobs", "--app", "t-no-extras")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # nothing saved for that app
    assert proc.stdout.startswith("no saved queues of app 't-no-extras': ")
    assert "Traceback" not in proc.stderr


async def _park(app: str, store: Path, errors: list[str]) -> list[str]:
    """Park one message per error text in the dead queue of channel ``jobs``; their ids."""
    async with Bus(app, hub=MemoryHub(), settings=fast_settings(storage_dir=store)) as bus:

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


def test_dlq_list_without_rich_is_a_plain_table(tmp_path: Path) -> None:
    app = unique_app()
    errors = ["[bold]not bold[/bold]", "closing tag [/]"]
    ids = asyncio.run(_park(app, tmp_path / "storage", errors))
    proc = run_cli(tmp_path, "dlq", "list", "jobs", "--app", app)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "dead letters of 'jobs' (2)"
    assert lines[1].split() == ["id", "attempts", "error_type", "error", "failed_at", "age"]
    assert set(lines[2]) <= {"-", " "}
    rows = lines[3:]
    assert len(rows) == 2
    for message_id in ids:  # one row per letter, its id first, its error as it is
        (row,) = [line for line in rows if line.startswith(f"{message_id} ")]
        assert f"RuntimeError: {errors[ids.index(message_id)]}" in row
    assert not {"│", "┃", "━", "\x1b"} & set(proc.stdout)  # no rich box, no colour
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["demo", "node"])
def test_demo_commands_name_the_extra(tmp_path: Path, command: str) -> None:
    proc = run_cli(tmp_path, command, "--log-file", str(tmp_path / "demo.log"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.strip() == f"{command} {EXTRA_LINE}"
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "demo.log").exists()  # nothing started, not even the log file


def test_demo_without_rich_names_the_demo_extra(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "demo", "--log-file", str(tmp_path / "demo.log"), blocked=["rich"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.strip() == f"demo {EXTRA_LINE}"
    assert not (tmp_path / "demo.log").exists()


def test_import_clusterbus_loads_no_extra(tmp_path: Path) -> None:
    watched = ("rich", "sqlalchemy", "fastapi", "redis", "bus.terminal", "bus.cli")
    code = (
        "import clusterbus\n"
        f"watched = {watched!r}\n"
        "loaded = sorted(\n"
        "    name for name, module in sys.modules.items() if module is not None\n"
        "    and any(name == w or name.startswith(w + '.') for w in watched)\n"
        ")\n"
        "print(clusterbus.Bus.__name__, loaded)\n"
    )
    proc = run_python(tmp_path, code, blocked=["rich"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "Bus []"
