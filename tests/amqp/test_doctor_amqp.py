"""``clusterbus doctor`` against the test broker (RabbitMQ 3.10.8, no management plugin):
the AMQP checks pass, a quorum setting is probed, an unreachable node or a wrong password
fails (exit 1) without a password in the output, Redis is pinged, and no probe queue or
exchange is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.logs import configure_logging
from plugins.cli import main
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.amqp

SECRET = "s3cret"
PROBES = "clusterbus.doctor."
NODE_CHECKS = ("reachable", "version", "capabilities", "permissions")


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only the variables a test sets; wide tables; no probe left behind; logging restored."""
    for name in [n for n in os.environ if n.startswith("CLUSTERBUS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLUSTERBUS_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("CLUSTERBUS_CONNECT_TIMEOUT", "10")
    monkeypatch.setenv("COLUMNS", "250")
    yield
    configure_logging(format="console", level="WARNING")
    assert_no_probe_left()


def assert_no_probe_left() -> None:
    for kind in ("list_queues", "list_exchanges"):
        out = subprocess.run(
            ["rabbitmqctl", "-q", kind, "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert [name for name in out.split() if name.startswith(PROBES)] == [], kind


def doctor_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    """Run ``clusterbus doctor --json`` in process: exit status, the document, stderr."""
    code = main(["doctor", "--json", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def statuses(document: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["status"] for check in document["checks"]}


def test_healthy_broker(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", amqp_url)
    code, document, _ = doctor_json(capsys)
    assert code == 0, document
    assert document["ok"] is True
    found = statuses(document)
    assert found["mode"] == "ok"
    for what in NODE_CHECKS:
        assert found[f"broker 1 {what}"] == "ok", document
    assert found["broker 1 quorum queues"] == "skip"  # classic queues: nothing to probe
    details = {check["name"]: check["detail"] for check in document["checks"]}
    assert "RabbitMQ 3." in details["broker 1 version"]
    assert "(node 1 of 1)" in details["broker 1 reachable"]
    assert "guest:***@" in details["broker 1 reachable"]
    for name in ("management api", "clock skew", "consumer_timeout", "leftover topology"):
        assert found[name] == "skip"
        assert "--management-url" in details[name]


@pytest.mark.parametrize("setting", ["CLUSTERBUS_QUEUE_TYPE", "CLUSTERBUS_LOCK_QUEUE_TYPE"])
def test_quorum_probe(
    setting: str,
    amqp_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", amqp_url)
    monkeypatch.setenv(setting, "quorum")
    code, document, _ = doctor_json(capsys)
    assert code == 0, document
    assert statuses(document)["broker 1 quorum queues"] == "ok", document


def test_unreachable_second_node(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", f"{amqp_url};amqp://guest:{SECRET}@127.0.0.1:1/")
    code, document, err = doctor_json(capsys, "--timeout", "3")
    assert code == 1
    assert document["ok"] is False
    found = statuses(document)
    assert found["broker 1 reachable"] == found["broker 1 permissions"] == "ok"
    assert found["broker 2 reachable"] == "fail"
    assert found["broker 2 permissions"] == "skip"
    assert found["mode"] == "warn"  # two nodes, classic queues
    assert SECRET not in json.dumps(document) + err
    code = main(["doctor", "--timeout", "3"])  # the table too
    out, err = capsys.readouterr()
    assert code == 1
    assert "(node 2 of 2)" in out and "fail" in out
    assert SECRET not in out + err


def test_wrong_password(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", "amqp://guest:wr0ng-pass@127.0.0.1:5672/")
    code, document, err = doctor_json(capsys)
    assert code == 1
    [reachable] = [c for c in document["checks"] if c["name"] == "broker 1 reachable"]
    assert reachable["status"] == "fail"
    assert "access refused" in reachable["detail"].lower()
    assert "wr0ng-pass" not in json.dumps(document) + err


def test_missing_vhost(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", amqp_url.rstrip("/") + "/t-no-such-vhost")
    code, document, _ = doctor_json(capsys)
    assert code == 1
    [reachable] = [c for c in document["checks"] if c["name"] == "broker 1 reachable"]
    assert "virtual host 't-no-such-vhost'" in reachable["detail"]


def test_redis(
    amqp_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", amqp_url)
    monkeypatch.setenv("CLUSTERBUS_REDIS_URL", redis_url)
    code, document, _ = doctor_json(capsys)
    assert code == 0, document
    assert statuses(document)["redis"] == "ok"
    monkeypatch.setenv("CLUSTERBUS_REDIS_URL", f"redis://:{SECRET}@127.0.0.1:1/0")
    code, document, err = doctor_json(capsys, "--timeout", "3")
    assert code == 1
    assert statuses(document)["redis"] == "fail"
    assert SECRET not in json.dumps(document) + err


def test_subprocess_json(amqp_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERBUS_")}
    env.update(
        CLUSTERBUS_AMQP_URL=amqp_url,
        CLUSTERBUS_QUEUE_TYPE="quorum",
        CLUSTERBUS_REDIS_URL=REDIS_URL,
        CLUSTERBUS_STORAGE_DIR=str(tmp_path / "storage"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "clusterbus", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    document = json.loads(proc.stdout)
    found = statuses(document)
    for what in (*NODE_CHECKS, "quorum queues"):
        assert found[f"broker 1 {what}"] == "ok", document
    assert found["redis"] == "ok"
