"""The FastAPI example: the lifespan starts the bus, routes use it, shutdown stops it."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from examples import fastapi_app


def test_lifespan_runs_the_bus_and_routes_use_it() -> None:
    assert not fastapi_app.bus.started
    with TestClient(fastapi_app.app) as client:
        health = client.get("/health").json()
        assert health["bus"] is True and health["mode"] == "memory"
        queued = client.post("/mail", json={"to": "a@b.c"}).json()
        deadline = time.monotonic() + 10
        while not any(p["id"] == queued["id"] for p in fastapi_app.processed):
            assert time.monotonic() < deadline, "the queued mail was never processed"
            time.sleep(0.01)
        first = client.get("/settings/theme").json()
        assert first == client.get("/settings/theme").json()
        assert first["value"].startswith("value of theme")
    assert not fastapi_app.bus.started  # the lifespan stopped it
