"""Health in memory mode, the health rules, and the ASGI liveness/readiness app."""

from __future__ import annotations

import json
from typing import Any

from bus import Bus, Health, MemoryHub, QueueContext
from bus.asgi import health_app
from bus.health import assess
from tests.conftest import fast_settings, unique_app


async def _noop(message: object) -> None:
    return None


async def _process(message: object, ctx: QueueContext) -> None:
    return None


async def test_memory_mode_health() -> None:
    bus = Bus(unique_app(), hub=MemoryHub(), settings=fast_settings())
    assert (await bus.health()).status == "down"
    async with bus:
        await bus.pubsub.subscribe("news", _noop)
        await bus.queue.subscribe("jobs", _process)
        health = await bus.health()
        assert health == Health(
            "ok",
            mode="memory",
            connected=True,
            node="memory",
            subscriptions={"cache.invalidate": "ok", "news": "ok"},
            consumers={"jobs": "ok"},
        )
        assert bus.connected
    assert not bus.connected and (await bus.health()).reason == "not started"


def test_the_rules() -> None:
    facts: dict[str, Any] = {"mode": "amqp", "node": "amqp://u:***@h:5672/"}
    ok = assess(started=True, answered=True, subscriptions={"a": "ok"}, consumers={}, **facts)
    assert ok.status == "ok" and ok.reason == ""
    paused = assess(
        started=True, answered=True, subscriptions={}, consumers={"q": "paused"}, **facts
    )
    assert paused.status == "ok"  # paused by its idle predicate: on purpose
    degraded = assess(
        started=True, answered=True, subscriptions={"a": "down"}, consumers={"q": "down"}, **facts
    )
    assert degraded.status == "degraded"
    assert degraded.reason == "not receiving: pub/sub a, queue q"
    down = assess(started=True, answered=False, subscriptions={}, consumers={}, **facts)
    assert down.status == "down" and down.reason == "the broker did not answer"
    assert json.loads(json.dumps(down.as_dict()))["status"] == "down"


async def _get(app: Any, path: str) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path}, receive, send)
    status = sent[0]["status"]
    return status, json.loads(sent[1]["body"])


async def test_the_asgi_endpoints() -> None:
    bus = Bus(unique_app(), hub=MemoryHub(), settings=fast_settings())
    app = health_app(bus)
    assert await _get(app, "/health/live") == (503, {"status": "down"})
    status, body = await _get(app, "/health/ready")
    assert status == 503 and body["reason"] == "not started"
    async with bus:
        assert await _get(app, "/health/live") == (200, {"status": "ok"})
        status, body = await _get(app, "/health/ready")
        assert status == 200 and body["status"] == "ok" and body["node"] == "memory"
        assert (await _get(app, "/health"))[0] == 200
        assert (await _get(app, "/metrics"))[0] == 404
    holder: list[Bus] = []
    lazy = health_app(lambda: holder[0] if holder else None)
    assert (await _get(lazy, "/ready"))[0] == 503
