"""clusterbus in a FastAPI service: the lifespan builds, starts and stops the bus (kept on
``app.state``), and ``/health/live`` and ``/health/ready`` come from
:func:`clusterbus.asgi.health_app`.

Run several copies behind a load balancer with ``CLUSTERBUS_AMQP_URL`` set (memory mode
without it)::

    uvicorn examples.fastapi_app:app --port 8000
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from bus import Bus, QueueContext
from bus.asgi import health_app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build and start the bus with the app (settings from ``CLUSTERBUS_*`` variables); stop
    it (draining handlers) on shutdown. Built here, not at import, so each run of the app
    (each test client) has a bus of its own."""
    bus = Bus("fastapi-demo")
    processed: list[dict[str, Any]] = []

    async def send_mail(message: dict[str, Any], ctx: QueueContext) -> None:
        """The event-queue handler: runs on whichever instance takes the job."""
        processed.append({"id": ctx.id, "to": message["to"], "attempt": ctx.attempt})

    await bus.queue.subscribe("mail", send_mail, concurrency=4)
    async with bus:
        app.state.bus, app.state.processed = bus, processed
        try:
            yield
        finally:
            app.state.bus = None


app = FastAPI(lifespan=lifespan)
app.state.bus = None  # until the lifespan starts one
# GET /health/live: 200 while the bus runs; GET /health/ready: 200 when its health is "ok"
app.mount("/health", health_app(lambda: app.state.bus))


def current_bus(request: Request) -> Bus:
    """The bus the lifespan started."""
    bus: Bus = request.app.state.bus
    return bus


@app.post("/mail")
async def queue_mail(payload: dict[str, Any], request: Request) -> dict[str, str]:
    """Queue a mail; the answer comes once the broker has it stored."""
    message_id = await current_bus(request).queue.publish("mail", payload, max_retries=3)
    return {"id": message_id}


@app.get("/settings/{key}")
async def read_setting(key: str, request: Request) -> dict[str, Any]:
    """A read-through cached value, shared and invalidated across instances."""

    async def load() -> str:
        return f"value of {key} from {request.url.hostname}"

    value = await current_bus(request).cache.wrap(f"setting:{key}", load, ttl=60)
    return {"key": key, "value": value}
