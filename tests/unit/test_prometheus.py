"""The Prometheus exposition with the real SDK and exporter: a scripted workload on memory-mode
buses, then ``GET /metrics`` through :func:`bus.prometheus.metrics_app`, its text parsed by
prometheus_client's parser; and :func:`bus.prometheus.enable_prometheus`, in this process
(where the test SDK has set its MeterProvider) and in a fresh one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from bus import Bus, MemoryHub, QueueContext
from bus.otel import OtelTelemetry
from bus.prometheus import PrometheusSetupError, enable_prometheus, metrics_app
from managers.telemetry import METRICS
from tests.conftest import Recorder, fast_settings, unique_app
from tests.otel_sdk import sdk

DESTINATION = "messaging_destination_name"
CACHE = "clusterbus_cache_name"
LOCK_PREFIX = "clusterbus_lock_key_prefix"


async def _get(app: Any, path: str, **scope: Any) -> tuple[int, dict[str, str], bytes]:
    """``GET path`` through the ASGI ``app``: status, headers and body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path, **scope}, receive, send)
    headers = {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


async def _scrape() -> dict[str, Metric]:
    status, headers, body = await _get(metrics_app(), "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def _value(
    families: dict[str, Metric], family: str, sample: str | None = None, **labels: str
) -> float:
    """The sum of ``family``'s samples named ``sample`` (default: the family's own name, or
    ``<name>_total`` for a counter) whose labels include ``labels``."""
    assert family in families, f"no family {family!r} in {sorted(families)}"
    found = families[family]
    names = {sample} if sample else {found.name, f"{found.name}_total"}
    matching = [
        s.value
        for s in found.samples
        if s.name in names and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert matching, f"no {names} sample of {family} with {labels}: {found.samples}"
    return float(sum(matching))


async def _pubsub(a: Bus, b: Bus) -> None:
    """Three publishes on ``a``, delivered to ``b``."""
    news = Recorder("news")
    await b.pubsub.subscribe("news", news)
    for n in range(3):
        await a.pubsub.publish("news", {"n": n})
    await news.wait_for(3)


async def _queue(a: Bus, b: Bus) -> None:
    """A job that fails once then succeeds (``max_retries=1``) and one that dead-letters."""
    attempts: dict[str, int] = {}
    done = asyncio.Event()

    async def flaky(message: dict[str, str], ctx: QueueContext) -> None:
        attempts[message["job"]] = attempts.get(message["job"], 0) + 1
        if message["job"] == "doomed" or ctx.attempt == 0:
            raise RuntimeError("not this time")
        done.set()

    await b.queue.subscribe("jobs", flaky)
    await a.queue.publish("jobs", {"job": "flaky"}, max_retries=1)
    await a.queue.publish("jobs", {"job": "doomed"}, max_retries=0)
    await asyncio.wait_for(done.wait(), 10)
    deadline = asyncio.get_running_loop().time() + 10
    while not await a.queue.dead_letters("jobs"):
        assert asyncio.get_running_loop().time() < deadline, "no dead letter"
        await asyncio.sleep(0.02)
    assert attempts == {"flaky": 2, "doomed": 1}


async def _cache(a: Bus, b: Bus, name: str) -> None:
    """On ``b``: a hit and a miss; then a set on ``a`` invalidates ``b``'s copy."""
    cache_a = await a.cache_manager.create_cache(name)
    cache_b = await b.cache_manager.create_cache(name)
    await cache_b.set("k", 1)
    assert await cache_b.get("k") == 1  # hit
    assert await cache_b.get("absent") is None  # miss
    await cache_a.set("k", 2)
    stored = cache_b.full_key("k")
    for _ in range(500):  # the store itself: a cache lookup would count as a hit
        if await cache_b.store.get(stored) is None:
            return
        await asyncio.sleep(0.01)
    pytest.fail("a's set never invalidated b's copy")


async def test_a_scripted_workload_is_in_the_prometheus_text(tmp_path: Path) -> None:
    sdk()  # the SDK and its Prometheus reader, before anything is measured
    app = unique_app()
    hub = MemoryHub()
    settings = fast_settings(storage_dir=tmp_path / "queues", retry_delay=0.01)
    a, b = Bus(app, hub=hub, settings=settings), Bus(app, hub=hub, settings=settings)
    cache_name = f"c{uuid.uuid4().hex[:8]}"
    lock_prefix = f"orders{uuid.uuid4().hex[:6]}"
    async with a, b:
        await _pubsub(a, b)
        await _queue(a, b)
        async with a.locks.lock(f"{lock_prefix}:42"):
            pass
        await _cache(a, b, cache_name)

    pubsub, queue = f"{app}.pubsub.news", f"{app}.queue.jobs"
    families = await _scrape()
    assert _value(families, "messaging_client_sent_messages", **{DESTINATION: pubsub}) == 3
    assert _value(families, "messaging_client_consumed_messages", **{DESTINATION: pubsub}) == 3
    assert _value(families, "messaging_client_sent_messages", **{DESTINATION: queue}) == 2
    # attempts: flaky 0 (failed) and 1, doomed 0 (failed)
    assert _value(families, "messaging_client_consumed_messages", **{DESTINATION: queue}) == 3
    assert _value(families, "clusterbus_messages_failed", **{DESTINATION: queue}) == 2
    duration = "messaging_process_duration_seconds"
    count, bucket = f"{duration}_count", f"{duration}_bucket"
    assert _value(families, duration, count, **{DESTINATION: pubsub}) == 3
    assert _value(families, duration, count, **{DESTINATION: queue}) == 3
    assert _value(families, duration, bucket, le="+Inf", **{DESTINATION: queue}) == 3
    lag = "clusterbus_messages_delivery_lag_seconds"
    assert _value(families, lag, f"{lag}_count", **{DESTINATION: pubsub}) == 3
    assert _value(families, "clusterbus_messages_retried", **{DESTINATION: queue}) == 1
    assert _value(families, "clusterbus_messages_dead_lettered", **{DESTINATION: queue}) == 1
    for held in ("wait", "hold"):
        name = f"clusterbus_lock_{held}_duration_seconds"
        assert _value(families, name, f"{name}_count", **{LOCK_PREFIX: lock_prefix}) == 1
    assert _value(families, "clusterbus_cache_hits", **{CACHE: cache_name}) == 1
    assert _value(families, "clusterbus_cache_misses", **{CACHE: cache_name}) == 1
    # b's set and a's set; b applied a's (a's own copy may see b's too)
    assert _value(families, "clusterbus_cache_invalidations_sent", **{CACHE: cache_name}) == 2
    received = "clusterbus_cache_invalidations_received"
    assert _value(families, received, **{CACHE: cache_name}) >= 1
    # every clusterbus series says which mode and system it comes from
    sample = families["messaging_client_sent_messages"].samples[0]
    assert sample.labels["clusterbus_mode"] == "memory"
    assert sample.labels["messaging_system"] == "rabbitmq"
    assert families["messaging_client_sent_messages"].type == "counter"
    assert families[duration].type == "histogram"


async def test_enable_prometheus_refuses_a_second_sdk_provider() -> None:
    sdk()  # the test SDK has set its own SDK MeterProvider
    with pytest.raises(PrometheusSetupError) as raised:
        enable_prometheus()
    message = str(raised.value)
    assert "already set" in message
    assert "MeterProvider(metric_readers=[PrometheusMetricReader(), ...])" in message
    assert "from opentelemetry.exporter.prometheus import PrometheusMetricReader" in message


async def test_metrics_app_answers_lifespan_and_ignores_websockets() -> None:
    app = metrics_app()
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return inbox.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    sent.clear()
    await app({"type": "websocket", "path": "/metrics"}, receive, send)
    assert sent == []


ENABLED = """
import asyncio, json
from bus import Bus, MemoryHub, Settings
from bus.prometheus import enable_prometheus, metrics_app
from prometheus_client.parser import text_string_to_metric_families

enable_prometheus()
enable_prometheus()  # a second call changes nothing

async def main():
    settings = Settings(storage_dir=STORAGE)
    async with Bus("t-prom-enabled", hub=MemoryHub(), settings=settings) as bus:
        await bus.pubsub.publish("news", {"n": 1})
    sent = []
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        sent.append(message)
    await metrics_app()({"type": "http", "method": "GET", "path": "/metrics"}, receive, send)
    text = sent[1]["body"].decode()
    family = {f.name: f for f in text_string_to_metric_families(text)}[
        "messaging_client_sent_messages"
    ]
    samples = [[s.labels.get("messaging_destination_name"), s.value] for s in family.samples]
    print(json.dumps(samples))

asyncio.run(main())
"""


def test_enable_prometheus_in_a_fresh_process(tmp_path: Path) -> None:
    code = textwrap.dedent(ENABLED).replace("STORAGE", repr(str(tmp_path / "storage")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTERBUS_", "OTEL_"))}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '["t-prom-enabled.pubsub.news", 1.0]' in proc.stdout.splitlines()[-1]


DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def _docs_table() -> dict[str, list[str]]:
    """The metrics table of docs/observability.md: OpenTelemetry name -> its cells."""
    rows: dict[str, list[str]] = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 6:
            rows[cells[0].strip("`")] = [cell.strip("`") for cell in cells]
    return rows


async def test_the_docs_metrics_table_is_what_the_exporter_produces() -> None:
    sdk()
    table = _docs_table()
    assert list(table) == list(METRICS), "docs/observability.md's table is not METRICS"
    telemetry = OtelTelemetry("memory")
    marker = f"docs-{uuid.uuid4().hex[:8]}"
    for name, (kind, unit, description) in METRICS.items():
        _, kind_cell, unit_cell, _attributes, _, what = table[name]
        assert (kind_cell, unit_cell, what) == (kind, unit, description), name
        if kind == "counter":
            telemetry.add(name, 1, {"docs.marker": marker})
        else:
            telemetry.record(name, 1.0, {"docs.marker": marker})
    families = await _scrape()
    for name, cells in table.items():
        family = cells[4].removesuffix("_total")
        sample = f"{family}_count" if cells[1] == "histogram" else None
        assert _value(families, family, sample, docs_marker=marker) == 1.0, name


def test_metrics_app_serves_an_exact_route_in_fastapi() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from starlette.routing import Route

    sdk()
    app = FastAPI()
    app.routes.append(Route("/metrics", metrics_app()))
    answer = TestClient(app, follow_redirects=False).get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert "target_info" in {f.name for f in text_string_to_metric_families(answer.text)}
