"""``clusterbus doctor`` on the 3-node cluster, whose first node runs the management plugin:
every node is checked, and the checks that need the management API (feature flags, clock
skew, leftover topology) read a real one."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from bus.logs import configure_logging
from plugins.cli import main
from tests.cluster.harness import RabbitCluster

pytestmark = pytest.mark.cluster


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("CLUSTERBUS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLUSTERBUS_STORAGE_DIR", str(tmp_path / "storage"))
    yield
    configure_logging(format="console", level="WARNING")


async def _leave_a_queue_without_consumer(url: str, name: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True)


def _wait_for_statistics(management_url: str, name: str) -> None:
    """The management API shows a queue's consumer count only once its statistics were
    collected (every 5 s by default): wait for them."""
    parts = urllib.parse.urlsplit(management_url)
    base = f"{parts.scheme}://{parts.hostname}:{parts.port}"
    request = urllib.request.Request(f"{base}/api/queues/%2F/{urllib.parse.quote(name, safe='')}")
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(request, timeout=5) as answer:
            if "consumers" in json.loads(answer.read()):
                return
        time.sleep(0.25)
    pytest.fail(f"no statistics for {name} within 30 s")


async def _delete_queue(url: str, name: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


def test_doctor_reads_the_management_api(
    all_nodes_up: RabbitCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = all_nodes_up
    app = "t-doctor-cluster"
    leftover = f"{app}.queue.forgotten"
    asyncio.run(_leave_a_queue_without_consumer(cluster.nodes[0].url, leftover))
    try:
        _wait_for_statistics(cluster.nodes[0].management_url, leftover)
        monkeypatch.setenv("CLUSTERBUS_AMQP_URL", ";".join(n.url for n in cluster.nodes))
        monkeypatch.setenv("CLUSTERBUS_QUEUE_TYPE", "quorum")
        code = main(
            ["doctor", "--json", "--app", app, "--management-url", cluster.nodes[0].management_url]
        )
        document: dict[str, Any] = json.loads(capsys.readouterr().out)
    finally:
        asyncio.run(_delete_queue(cluster.nodes[0].url, leftover))
    found = {check["name"]: check for check in document["checks"]}
    for i in (1, 2, 3):
        for what in ("reachable", "version", "capabilities", "permissions", "quorum queues"):
            assert found[f"broker {i} {what}"]["status"] == "ok", found[f"broker {i} {what}"]
    assert found["management api"]["status"] == "ok", found["management api"]
    assert "3.10" in found["management api"]["detail"]
    assert found["feature flags"]["status"] in {"ok", "warn"}, found["feature flags"]
    assert found["clock skew"]["status"] == "ok", found["clock skew"]  # the same host
    assert found["leftover topology"]["status"] == "warn", found["leftover topology"]
    assert leftover in found["leftover topology"]["detail"]
    assert "guest:guest" not in json.dumps(document)
    assert code == 0, document  # warnings do not fail
