"""The runner's HTTP endpoints (``clusterbus run --http-port``): ``/health/live`` and
``/health/ready`` (:func:`bus.asgi.health_app`) and ``/metrics``
(:func:`bus.prometheus.metrics_app`, with the ``prometheus`` extra), served with uvicorn (the
``http`` extra) on the runner's event loop, without taking its signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

from bus.asgi import ASGIApp, Receive, Scope, Send, answer_json, health_app
from bus.logs import get_logger

if TYPE_CHECKING:
    from bus import Bus

UVICORN_MISSING = "--http-port needs uvicorn: pip install 'clusterbus[http]'"
"""What the runner says when ``--http-port`` is asked for without uvicorn."""
METRICS_EXTRA = "/metrics needs the prometheus extra: pip install 'clusterbus[prometheus]'"

log = get_logger("clusterbus.runner")


def uvicorn_available() -> bool:
    """Whether uvicorn (the ``http`` extra) can be imported."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


def metrics_endpoint() -> tuple[ASGIApp | None, str]:
    """The ``/metrics`` app after :func:`bus.prometheus.enable_prometheus`, or None and why
    there is none (the extra is missing, or the application set its own MeterProvider)."""
    try:
        from bus.prometheus import PrometheusSetupError, enable_prometheus, metrics_app

        try:
            enable_prometheus()
        except PrometheusSetupError as exc:
            log.warning("runner.metrics_unavailable", reason=str(exc))
            return None, f"/metrics is not served by the runner: {exc}"
        return metrics_app(), ""
    except ImportError:
        return None, METRICS_EXTRA


def endpoints(bus: Callable[[], Bus | None]) -> ASGIApp:
    """The runner's ASGI app: ``/health/live``, ``/health/ready`` (and ``/health``) for the
    bus ``bus()`` returns (503 while there is none yet), ``/metrics``, else 404."""
    health = health_app(bus)
    metrics, why_not = metrics_endpoint()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        path = str(scope.get("path", "")).rstrip("/")
        if path in ("/health", "/health/live", "/health/ready"):
            await health(scope, receive, send)
        elif path == "/metrics" and metrics is not None:
            await metrics(scope, receive, send)
        elif path == "/metrics":
            await answer_json(send, 404, {"error": why_not})
        else:
            await answer_json(
                send, 404, {"error": "not found: /health/live, /health/ready, /metrics"}
            )

    return app


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (OSError, e.g. the port in use, at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def http_server(app: ASGIApp, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``app`` on ``host:port`` with uvicorn while the block runs; yields the port (the
    one the system chose when ``port`` is 0). The socket is bound before this yields, so a
    port in use raises :class:`OSError` before anything else starts. uvicorn installs no
    signal handler: the runner handles SIGTERM and SIGINT and stops this server itself."""
    import uvicorn

    listening = asyncio.Event()

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the runner's signals, not uvicorn's

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            listening.set()

    sock = _listen(host, port)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,  # uvicorn's loggers propagate to the runner's logging set-up
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="runner http")
    try:
        started = asyncio.create_task(listening.wait())
        await asyncio.wait((serving, started), return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if not server.started:
            await serving  # raises what stopped it
            raise RuntimeError("the HTTP server did not start")
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        sock.close()
