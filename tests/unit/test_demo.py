"""The README's demo command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_in_memory_mode_behaves(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERBUS_")}
    env["COLUMNS"] = "120"
    proc = subprocess.run(
        [sys.executable, "-m", "plugins.cli", "demo", "--log-file", str(tmp_path / "demo.log")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every step behaved" in proc.stdout
    assert "FAILED" not in proc.stdout
    table = proc.stdout[proc.stdout.index("What each instance saw") :]
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if "│ node-" in line}
    assert "hello" not in rows["node-a"] and "hello, to all, just me" in rows["node-b"]
    assert "just me" not in rows["node-c"]
    logs = (tmp_path / "demo.log").read_text()
    assert '"event": "pubsub.publish"' in logs and '"event": "pubsub.deliver"' in logs
