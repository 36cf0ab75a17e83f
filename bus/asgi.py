"""Liveness and readiness endpoints for any ASGI server or framework, from a bus's health.

>>> from clusterbus.asgi import health_app
>>> app.mount("/health", health_app(lambda: app.state.bus))  # doctest: +SKIP

``GET .../live`` answers 200 while the bus is started (the process is alive and running its
bus), else 503. ``GET .../ready`` (and ``GET .../health`` itself) answers 200 when
:meth:`bus.Bus.health` says ``ok``, else 503, with the health as JSON either way. Any other
path answers 404, ``/metrics`` included: metrics are :func:`bus.prometheus.metrics_app`'s, so
health probes never pay for a scrape. Pure ASGI: no framework needed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bus.facade import Bus

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def health_app(bus: Bus | Callable[[], Bus | None]) -> ASGIApp:
    """An ASGI app serving ``/live`` and ``/ready`` (under wherever it is mounted, e.g.
    ``/health/live``) for ``bus``, or for the bus a callable returns at each request (one
    made in a lifespan)."""

    def current() -> Bus | None:
        return bus() if callable(bus) else bus

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = str(scope.get("path", "")).rstrip("/")
        target = current()
        if path.endswith("/live"):
            alive = target is not None and target.started
            await answer_json(send, 200 if alive else 503, {"status": "ok" if alive else "down"})
        elif path.endswith(("/ready", "/health")) or path == "":
            if target is None:
                await answer_json(send, 503, {"status": "down", "reason": "no bus yet"})
                return
            health = await target.health()
            await answer_json(send, 200 if health.ok else 503, health.as_dict())
        else:
            await answer_json(send, 404, {"error": "not found: use /live or /ready"})

    return app


async def answer_json(send: Send, status: int, body: dict[str, Any]) -> None:
    """Send one HTTP response: ``body`` as JSON with ``status`` (never cached)."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
