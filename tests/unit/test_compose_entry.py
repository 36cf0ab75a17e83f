"""The compose image's entry command works: the app service's ``command`` (read from
compose/docker-compose.yml, so this test follows the file) run outside a container, as a
subprocess in memory mode. It serves /health/ready (200 once started), the service's own
healthcheck command passes against it, and SIGTERM stops it with exit status 0.

Outside a container: the ``clusterbus`` script of this interpreter's environment instead of
the image's, a free port of 127.0.0.1 instead of 0.0.0.0:8080, memory mode and SQLite
instead of RabbitMQ, Redis and PostgreSQL; every other variable of the service as written.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.unit.compose_runner import RunCompose, compose_model, compose_runner

SERVICE = "app"
DEADLINE = 60.0  # seconds until /health/ready answers 200
STOP_DEADLINE = 30.0  # seconds from SIGTERM to the exit (stop_grace_period is 15 s)
CONTAINER_PORT = "8080"
# the variables that point at the other services of the stack, replaced in memory mode
REPLACED = {"CLUSTERBUS_AMQP_URL", "CLUSTERBUS_REDIS_URL", "CLUSTERBUS_CACHE_STORE"}
REPLACED |= {"CLUSTERBUS_MODE", "CLUSTERBUS_DEMO_DATABASE_URL", "CLUSTERBUS_STORAGE_DIR"}


@pytest.fixture(scope="module")
def run_compose(tmp_path_factory: pytest.TempPathFactory) -> RunCompose:
    return compose_runner(tmp_path_factory.mktemp("docker-config"))


@pytest.fixture(scope="module")
def service(run_compose: RunCompose) -> dict[str, Any]:
    """The app service of the resolved compose model."""
    services: dict[str, Any] = compose_model(run_compose)["services"]
    return dict(services[SERVICE])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_command(command: list[str], port: int) -> list[str]:
    """The service's command as run here: this environment's ``clusterbus`` script, the
    HTTP server on ``port`` of 127.0.0.1."""
    assert command[0] == "clusterbus", command
    script = Path(sys.executable).parent / "clusterbus"
    assert script.is_file(), f"no clusterbus script beside {sys.executable}"
    local = [str(script), *command[1:]]
    port_at = local.index("--http-port") + 1
    host_at = local.index("--http-host") + 1
    assert (local[port_at], local[host_at]) == (CONTAINER_PORT, "0.0.0.0"), command
    local[port_at], local[host_at] = str(port), "127.0.0.1"
    return local


def local_healthcheck(test: list[str], port: int) -> list[str]:
    """The service's healthcheck (``CMD python -c ...``) aimed at ``port``, run by this
    interpreter."""
    assert test[:2] == ["CMD", "python"], test
    address = f"127.0.0.1:{CONTAINER_PORT}/"
    assert any(address in argument for argument in test[2:]), test
    arguments = [argument.replace(address, f"127.0.0.1:{port}/") for argument in test[2:]]
    return [sys.executable, *arguments]


def local_environment(environment: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """This process's environment without CLUSTERBUS_* variables, plus the service's
    variables, with those that name the other services replaced by memory mode and SQLite."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERBUS_")}
    env.update({k: v for k, v in environment.items() if k not in REPLACED})
    env["CLUSTERBUS_MODE"] = "memory"
    env["CLUSTERBUS_CACHE_STORE"] = "memory"
    env["CLUSTERBUS_STORAGE_DIR"] = str(tmp_path / "storage")
    env["CLUSTERBUS_DEMO_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def ready_status(url: str) -> int | None:
    """The HTTP status of ``url``, None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def output(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-6000:]


def test_entry_command_serves_ready_and_stops_on_sigterm(
    service: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()
    command = local_command(list(service["command"]), port)
    healthcheck = local_healthcheck(list(service["healthcheck"]["test"]), port)
    env = local_environment(dict(service["environment"]), tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "app.log"
    url = f"http://127.0.0.1:{port}/health/ready"
    with log.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            command, cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.monotonic() + DEADLINE
            status = None
            while status != 200:
                if process.poll() is not None:
                    pytest.fail(
                        f"{' '.join(command)} exited with {process.returncode} before "
                        f"/health/ready answered 200\n{output(log)}",
                        pytrace=False,
                    )
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{url} still answers {status} after {DEADLINE} s\n{output(log)}",
                        pytrace=False,
                    )
                time.sleep(0.2)
                status = ready_status(url)

            probe = subprocess.run(
                healthcheck, capture_output=True, text=True, timeout=30, check=False
            )
            assert probe.returncode == 0, f"the healthcheck failed:\n{probe.stderr[-4000:]}"

            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"still running {STOP_DEADLINE} s after SIGTERM\n{output(log)}", pytrace=False
                )
            assert code == 0, f"exit status {code} after SIGTERM\n{output(log)}"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
