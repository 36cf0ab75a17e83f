"""The FastAPI example: the lifespan builds and starts the bus, routes and the health endpoints
use it, shutdown stops it; a second lifespan in the same process gets a bus of its own."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bus import Bus
from examples import fastapi_app


def _current() -> Bus | None:
    """The bus on the app's state (None outside a lifespan)."""
    bus: Bus | None = fastapi_app.app.state.bus
    return bus


def _run_once() -> Bus:
    """One lifespan of the app: health, a queued mail, a cached setting; the bus it ran."""
    assert _current() is None
    with TestClient(fastapi_app.app) as client:
        bus = _current()
        assert bus is not None and bus.started and bus.mode == "memory"
        live = client.get("/health/live")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        ready = client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ok" and ready.json()["mode"] == "memory"
        assert ready.json()["consumers"] == {"mail": "ok"}
        assert client.get("/health/metrics").status_code == 404
        queued = client.post("/mail", json={"to": "a@b.c"}).json()
        processed = fastapi_app.app.state.processed
        deadline = time.monotonic() + 10
        while not any(p["id"] == queued["id"] for p in processed):
            assert time.monotonic() < deadline, "the queued mail was never processed"
            time.sleep(0.01)
        first = client.get("/settings/theme").json()
        assert first == client.get("/settings/theme").json()
        assert first["value"].startswith("value of theme")
    assert not bus.started  # the lifespan stopped it
    assert _current() is None
    return bus


def test_lifespan_runs_the_bus_and_routes_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLUSTERBUS_AMQP_URL", raising=False)
    monkeypatch.setenv("CLUSTERBUS_MODE", "memory")
    monkeypatch.setenv("CLUSTERBUS_STORAGE_DIR", str(tmp_path))
    first = _run_once()
    second = _run_once()  # a second lifespan in this process: a fresh bus
    assert second is not first and second.instance_id != first.instance_id


def test_health_answers_503_without_a_running_bus() -> None:
    client = TestClient(fastapi_app.app)  # outside ``with``: the lifespan does not run
    assert client.get("/health/live").status_code == 503
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json() == {"status": "down", "reason": "no bus yet"}
