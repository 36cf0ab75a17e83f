"""The README's demo command, run as a user would (memory mode; the broker run is in
tests/amqp/test_demo_amqp.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

STEPS = 7


def run_demo(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``clusterbus demo`` in a subprocess; its result and its log file's text."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERBUS_")}
    env["COLUMNS"] = "160"
    log = tmp_path / "demo.log"
    proc = subprocess.run(
        [sys.executable, "-m", "clusterbus", "demo", "--log-file", str(log), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    return proc, log.read_text() if log.exists() else ""


def check_demo(proc: subprocess.CompletedProcess[str], logs: str) -> None:
    """The demo exited 0, every step passed, the table shows who saw what, logs traced."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "every step behaved" in out
    assert out.count("✓") == STEPS and "✗" not in out, out
    table = out[out.index("what each instance saw") :]
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if "│ node-" in line}
    assert set(rows) == {"node-a", "node-b", "node-c"}
    cells = {node: [c.strip() for c in row.split("│")[1:-1]] for node, row in rows.items()}
    assert cells["node-a"][2] == "-"  # node-a sent the schema changes: no sync to itself
    for node in ("node-b", "node-c"):
        assert "posts" in cells[node][2] and "tags" in cells[node][2]
    assert sum(int(cells[node][3]) for node in cells) == 6  # six short tasks, each once
    assert sum(int(cells[node][4]) for node in cells) == 1  # one cancelled
    assert cells["node-c"][6] == "1"  # the token policy came from the database once
    for event in ("sync.pending", "queue.publish", "lock.acquired", "pubsub.deliver"):
        assert f'"event": "{event}"' in logs, event


def test_demo_in_memory_mode_behaves(tmp_path: Path) -> None:
    check_demo(*run_demo(tmp_path))
    assert list(tmp_path.iterdir()) == [tmp_path / "demo.log"]  # nothing else left behind
