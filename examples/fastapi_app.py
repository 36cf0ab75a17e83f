"""clusterbus in a FastAPI service: the lifespan starts and stops the bus.

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

bus = Bus("fastapi-demo")
processed: list[dict[str, Any]] = []


async def send_mail(message: dict[str, Any], ctx: QueueContext) -> None:
    """The event-queue handler: runs on whichever instance takes the job."""
    processed.append({"id": ctx.id, "to": message["to"], "attempt": ctx.attempt})


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """Start the bus with the app, stop it (draining handlers) on shutdown."""
    await bus.queue.subscribe("mail", send_mail, concurrency=4)
    async with bus:
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/mail")
async def queue_mail(payload: dict[str, Any]) -> dict[str, str]:
    """Queue a mail; the answer comes once the broker has it stored."""
    message_id = await bus.queue.publish("mail", payload, max_retries=3)
    return {"id": message_id}


@app.get("/settings/{key}")
async def read_setting(key: str, request: Request) -> dict[str, Any]:
    """A read-through cached value, shared and invalidated across instances."""

    async def load() -> str:
        return f"value of {key} from {request.url.hostname}"

    return {"key": key, "value": await bus.cache.wrap(f"setting:{key}", load, ttl=60)}


@app.get("/health")
async def health() -> dict[str, Any]:
    """Liveness: the bus is started."""
    return {"bus": bus.started, "mode": bus.mode, "instance": bus.instance_id}
