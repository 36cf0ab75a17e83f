"""``clusterbus node --http-port``: the demo node (the runner applied to the demo's app)
serves its health and metrics over HTTP (what the compose healthcheck asks), started with the
node and stopped with it; its control channel is off unless asked for. Memory mode, as a
subprocess; ``clusterbus run clusterbus.demo:app`` runs the same node."""

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
from pathlib import Path

import pytest

DEADLINE = 30.0
COMPOSE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"


def _compose_healthcheck(port: int) -> str:
    """The compose app's healthcheck (a ``python -c`` line), aimed at ``port``."""
    lines = COMPOSE.read_text(encoding="utf-8").splitlines()
    [code] = {line.strip()[3:-1] for line in lines if "/health/ready" in line and "- " in line}
    return code.replace(":8080/", f":{port}/")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _probe(command: list[str]) -> int:
    """The exit status of ``command`` (the healthcheck)."""
    return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERBUS_")}
    env["CLUSTERBUS_MODE"] = "memory"
    env["CLUSTERBUS_STORAGE_DIR"] = str(tmp_path / "storage")
    env["CLUSTERBUS_DEMO_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"
    env.update(extra)
    return env


def _node(tmp_path: Path, *argv: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "clusterbus", "node", "--label", "n1", "--app", "t-node"]
    return subprocess.Popen(
        [*command, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
    )


def _wait_ready(process: subprocess.Popen[str], port: int) -> dict[str, object]:
    """The health ``/health/ready`` answers once it answers 200."""
    ready = f"http://127.0.0.1:{port}/health/ready"
    deadline = time.monotonic() + DEADLINE
    while True:
        assert process.poll() is None, process.communicate()
        try:
            status, body = _get(ready)
        except OSError:  # not listening yet
            status, body = 0, {}
        if status == 200:
            return body
        assert time.monotonic() < deadline, f"{ready} never answered 200: {status} {body}"
        time.sleep(0.1)


def _metrics(port: int) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as answer:
        return answer.status, answer.read()


def test_the_node_serves_its_health_until_it_stops(tmp_path: Path) -> None:
    port = _free_port()
    node = _node(tmp_path, "--http-port", str(port))
    try:
        body = _wait_ready(node, port)
        assert body["status"] == "ok" and body["mode"] == "memory"
        assert body["consumers"] == {"async-tasks.run": "ok"}
        subscriptions = body["subscriptions"]
        assert isinstance(subscriptions, dict)
        assert "demo.control" not in subscriptions  # off unless asked for
        assert _get(f"http://127.0.0.1:{port}/health/live") == (200, {"status": "ok"})
        status, metrics = _metrics(port)  # the prometheus extra is in the dev environment
        assert status == 200 and b"# TYPE " in metrics
        healthcheck = [sys.executable, "-c", _compose_healthcheck(port)]
        assert _probe(healthcheck) == 0
        node.send_signal(signal.SIGTERM)
        out, err = node.communicate(timeout=30)
    finally:
        if node.poll() is None:
            node.kill()
            node.communicate()
    assert node.returncode == 0, out + err
    assert f"health http://127.0.0.1:{port}/health/ready" in out
    assert "ready " in out
    assert "bus.stopped" in err and "runner.stopping" in err, err
    with socket.socket() as sock:  # the HTTP server went with the node
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert _probe(healthcheck) == 1


def test_a_port_in_use_fails_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = _node(tmp_path, "--http-port", str(port))
        out, err = node.communicate(timeout=60)
    assert node.returncode == 1, out + err
    assert out.strip() == "node failed: OSError: [Errno 98] Address already in use", out + err


def test_a_bad_port_is_refused(tmp_path: Path) -> None:
    node = _node(tmp_path, "--http-port", "70000")
    _out, err = node.communicate(timeout=60)
    assert node.returncode == 2 and "a port is 0 to 65535" in err


def test_the_control_channel_is_hosted_when_asked_for(tmp_path: Path) -> None:
    port = _free_port()
    node = _node(tmp_path, "--http-port", str(port), "--control")
    try:
        body = _wait_ready(node, port)
        subscriptions = body["subscriptions"]
        assert isinstance(subscriptions, dict) and subscriptions["demo.control"] == "ok"
        node.send_signal(signal.SIGTERM)
        out, err = node.communicate(timeout=30)
    finally:
        if node.poll() is None:
            node.kill()
            node.communicate()
    assert node.returncode == 0, out + err


@pytest.mark.parametrize("control", ["", "1"])
def test_clusterbus_run_runs_the_demo_app(tmp_path: Path, control: str) -> None:
    port = _free_port()
    env = _env(tmp_path, CLUSTERBUS_DEMO_LABEL="n9", CLUSTERBUS_DEMO_CONTROL=control)
    command = [sys.executable, "-m", "clusterbus", "run", "clusterbus.demo:app"]
    process = subprocess.Popen(
        [*command, "--http-port", str(port), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        body = _wait_ready(process, port)
        assert body["consumers"] == {"async-tasks.run": "ok"}
        subscriptions = body["subscriptions"]
        assert isinstance(subscriptions, dict)
        assert ("demo.control" in subscriptions) == bool(control)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, out + err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "runner.stopping" in events and "runner.stopped" in events
    assert (tmp_path / "demo.db").exists()
