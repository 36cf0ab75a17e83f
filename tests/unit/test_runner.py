"""``clusterbus run module:attr``, run as a user would: real processes from the repository
root, in memory mode (the broker run is tests/amqp/test_runner_amqp.py).

Waits poll a condition until a deadline; the runner's targets are examples/app_of_plugins.py
and tests/unit/runner_apps.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.test_cli_without_extras import EXTRA_MODULES, run_cli

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 30.0
APPS = "tests.unit.runner_apps"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERBUS_")}
    env.update(
        CLUSTERBUS_MODE="memory",
        CLUSTERBUS_STORAGE_DIR=str(tmp_path / "storage"),
        PYTHONDONTWRITEBYTECODE="1",
        COLUMNS="200",
    )
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(tmp_path: Path, *argv: str, **env: str) -> subprocess.Popen[str]:
    """``clusterbus run ARGV`` in the background, from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-m", "clusterbus", "run", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path, **env),
        cwd=ROOT,
    )


def _run(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``clusterbus run ARGV`` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "clusterbus", "run", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(tmp_path, **env),
        cwd=ROOT,
        check=False,
    )


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _until(check: Callable[[], bool], what: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert process.poll() is None, f"exited {process.returncode}: {process.communicate()}"
        assert time.monotonic() < deadline, f"not within {DEADLINE} s: {what}"
        time.sleep(0.05)


def _ready(process: subprocess.Popen[str], port: int) -> None:
    """Wait until ``/health/ready`` answers 200."""

    def ready() -> bool:
        try:
            return _get(f"http://127.0.0.1:{port}/health/ready")[0] == 200
        except OSError:  # not listening yet
            return False

    _until(ready, "/health/ready answers 200", process)


def _stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[str, str]:
    process.send_signal(signum)
    try:
        return process.communicate(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_the_example_serves_health_and_metrics_then_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    process = _start(tmp_path, "examples.app_of_plugins:app", "--http-port", str(port))
    try:
        _ready(process, port)
        status, body = _get(f"http://127.0.0.1:{port}/health/ready")
        health = json.loads(body)
        assert health["status"] == "ok" and health["mode"] == "memory"
        assert health["consumers"] == {"mail": "ok"}
        assert "sync.price-list" in health["subscriptions"]
        assert _get(f"http://127.0.0.1:{port}/health/live") == (200, b'{"status": "ok"}')
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200, body
        assert b"# TYPE " in body and b"messaging_client_sent_messages" in body
        status, body = _get(f"http://127.0.0.1:{port}/elsewhere")
        assert status == 404 and b"/health/ready" in body
    finally:
        out, err = _stop(process)
    assert process.returncode == 0, out + err
    assert "runner.stopping" in err and "SIGTERM" in err, err
    assert "mail.sent" in err and "runner.stopped" in err
    assert "Traceback" not in out + err
    with socket.socket() as sock:  # the HTTP server went with the app
        assert sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("target", "signum"),
    [
        (f"{APPS}:sync_factory", signal.SIGINT),
        (f"{APPS}:async_factory", signal.SIGTERM),
        (f"{APPS}:factories.sync", signal.SIGTERM),
    ],
)
def test_factories_sync_or_async_are_called_in_the_loop(
    tmp_path: Path, target: str, signum: int
) -> None:
    port = _free_port()
    process = _start(tmp_path, target, "--http-port", str(port), "--log-format", "json")
    try:
        _ready(process, port)
    finally:
        out, err = _stop(process, signum)
    assert process.returncode == 0, out + err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    stopping = [e for e in events if e["event"] == "runner.stopping"]
    assert [e["signal"] for e in stopping] == [signal.Signals(signum).name], err
    assert "bus.stopped" in {e["event"] for e in events}


@pytest.mark.parametrize(("second", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_second_signal_stops_at_once(tmp_path: Path, second: int, status: int) -> None:
    port = _free_port()
    marker = tmp_path / "stopping"
    process = _start(
        tmp_path, f"{APPS}:slow_stop", "--http-port", str(port), RUNNER_TEST_STOPPING=str(marker)
    )
    try:
        _ready(process, port)
        process.send_signal(signal.SIGTERM)
        _until(marker.exists, "the slow before_stop begins", process)
        began = time.monotonic()
        out, err = _stop(process, second)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == status, out + err
    assert time.monotonic() - began < 10  # not the minute before_stop sleeps
    assert "runner.forced_exit" in err, err


@pytest.mark.parametrize(
    ("target", "line"),
    [
        (
            "nowhere.at_all:app",
            "run: cannot import module 'nowhere.at_all': ModuleNotFoundError: "
            "No module named 'nowhere'",
        ),
        (
            "examples.app_of_plugins:nothing",
            "run: module 'examples.app_of_plugins' has no attribute 'nothing'",
        ),
        (
            "examples.app_of_plugins:app.nothing",
            "run: module 'examples.app_of_plugins' has no attribute 'app.nothing'",
        ),
        (
            f"{APPS}:not_an_app",
            f"run: '{APPS}:not_an_app' is a int, not an App or a zero-argument factory "
            "returning one",
        ),
        (
            f"{APPS}:needs_a_name",
            f"run: '{APPS}:needs_a_name' is a function, not an App or a zero-argument "
            "factory returning one",
        ),
        (f"{APPS}:returns_none", f"run: '{APPS}:returns_none' returned a NoneType, not an App"),
        ("examples.app_of_plugins", "run: TARGET must look like module:attribute"),
        ("examples/app_of_plugins.py:app", "run: TARGET must look like module:attribute"),
    ],
)
def test_a_target_that_cannot_run_exits_2_in_one_line(
    tmp_path: Path, target: str, line: str
) -> None:
    proc = _run(tmp_path, target)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.strip().startswith(line), proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1
    assert "Traceback" not in proc.stdout + proc.stderr


UNREACHABLE = {
    "CLUSTERBUS_MODE": "amqp",
    "CLUSTERBUS_AMQP_URL": "amqp://guest:s3cret@127.0.0.1:1/",
    "CLUSTERBUS_CONNECT_TIMEOUT": "1",
}


def test_a_start_failure_exits_1_in_one_line(tmp_path: Path) -> None:
    port = _free_port()
    proc = _run(tmp_path, "examples.app_of_plugins:app", "--http-port", str(port), **UNREACHABLE)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = proc.stdout.strip().splitlines()
    assert line.startswith("run failed: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/")
    assert "connect_timeout" in line
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr
    with socket.socket() as sock:  # the HTTP server went too
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_start_failure_shows_its_traceback_at_debug_level(tmp_path: Path) -> None:
    proc = _run(tmp_path, "examples.app_of_plugins:app", "--log-level", "debug", **UNREACHABLE)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.strip().startswith("run failed: cannot reach RabbitMQ")
    assert "Traceback (most recent call last)" in proc.stderr
    assert "BusUnavailable" in proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr


def test_an_app_that_cannot_be_built_names_the_setting(tmp_path: Path) -> None:
    proc = _run(tmp_path, f"{APPS}:bad_settings")
    assert proc.returncode == 2, proc.stdout + proc.stderr  # invalid settings: usage
    [line] = proc.stdout.strip().splitlines()
    assert line.startswith("run failed: invalid settings: stop_timeout: "), line
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_port_in_use_fails_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run(tmp_path, "examples.app_of_plugins:app", "--http-port", str(port))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "run failed: OSError: [Errno 98] Address already in use"


def test_http_port_without_uvicorn_names_the_extra(tmp_path: Path) -> None:
    blocked = (*EXTRA_MODULES, "uvicorn")
    proc = run_cli(
        tmp_path, "run", "examples.app_of_plugins:app", "--http-port", "0", blocked=blocked
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "run: --http-port needs uvicorn: pip install 'clusterbus[http]'"


def test_run_needs_no_extra(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "run", "nowhere:app", blocked=(*EXTRA_MODULES, "uvicorn"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.startswith("run: cannot import module 'nowhere'")
    assert "Traceback" not in proc.stderr
