"""One instance of the demo service: an :class:`App` with the example plugins, and a control
plugin through which the demo driver (``clusterbus demo``) asks it to act and to report.

``clusterbus node`` runs one until SIGTERM/SIGINT (the compose service does this); the demo
runs three, in its own process on the memory hub or as three processes on RabbitMQ. With
``--http-port`` the node also serves ``/health/live`` and ``/health/ready``
(:func:`bus.asgi.health_app`) over HTTP with uvicorn, for a container's healthcheck.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from bus import Bus, MemoryHub, Settings
from bus.asgi import health_app
from plugins.app import App
from plugins.demo import APP_NAME
from plugins.examples.async_tasks import AsyncTasksPlugin
from plugins.examples.auth import AuthPlugin
from plugins.examples.data_source import DataSourcePlugin
from plugins.examples.db import Database, default_url
from plugins.plugin import Plugin

CONTROL = "demo.control"
REPLY = "demo.reply"


class DemoControl(Plugin):
    """Carries out the demo driver's requests addressed to this node (``label``) and
    replies with the result: the driver's remote control, over pub/sub."""

    name = "demo-control"

    async def load(self) -> None:
        self.label: str = self.options["label"]
        await self.bus.pubsub.subscribe(CONTROL, self._on_request)

    async def _on_request(self, request: dict[str, Any]) -> None:
        if request.get("node") not in (self.label, "*"):
            return
        reply: dict[str, Any] = {"id": request.get("id"), "node": self.label, "ok": True}
        try:
            operation = self._operations()[str(request.get("op"))]
            reply["result"] = await operation(**request.get("args", {}))
        except Exception as exc:  # reported to the driver, which fails the step
            reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        await self.bus.pubsub.publish(REPLY, reply, skip_self=False)

    def _operations(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        data = self.app.get(DataSourcePlugin)
        tasks = self.app.get(AsyncTasksPlugin)
        auth = self.app.get(AuthPlugin)
        return {
            "status": self.status,
            "add_field": data.add_field,
            "remove_field": data.remove_field,
            "token_policy": auth.token_policy,
            "submit": tasks.submit,
            "cancel": tasks.cancel,
        }

    async def status(self) -> dict[str, Any]:
        """What this node has seen so far."""
        data = self.app.get(DataSourcePlugin)
        tasks = self.app.get(AsyncTasksPlugin)
        auth = self.app.get(AuthPlugin)
        return {
            "label": self.label,
            "instance": self.bus.instance_id,
            "collections": data.collections,
            "reloads": list(data.reloads),
            "lock_log": [list(entry) for entry in data.lock_log],
            "started": list(tasks.started),
            "done": list(tasks.done),
            "cancelled": list(tasks.cancelled),
            "running": list(tasks.running),
            "auth_db_reads": auth.db_reads,
        }


def build_node(
    label: str,
    database: Database,
    *,
    app_name: str = APP_NAME,
    amqp_url: str | None = None,
    hub: MemoryHub | None = None,
    settings: Settings | None = None,
) -> App:
    """An App with the three example plugins and the demo control plugin."""
    app = App(app_name, amqp_url=amqp_url, hub=hub, settings=settings)
    app.add(AuthPlugin, database=database, ttl=60.0)
    app.add(DataSourcePlugin, database=database)
    app.add(AsyncTasksPlugin, concurrency=2, max_retries=1)
    app.add(DemoControl, label=label)
    return app


@contextlib.asynccontextmanager
async def health_server(bus: Bus, host: str, port: int) -> AsyncIterator[int]:
    """Serve :func:`bus.asgi.health_app` for ``bus`` on ``host:port`` (``/health/live``,
    ``/health/ready``) with uvicorn while the block runs; yields the port (the one the system
    chose when ``port`` is 0). The socket is bound here, so a port in use raises
    :class:`OSError` before anything else starts. Needs uvicorn (the ``demo`` extra)."""
    import uvicorn

    listening = asyncio.Event()

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the node handles SIGTERM and SIGINT, and stops this server itself

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            listening.set()

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
    config = uvicorn.Config(
        health_app(bus),
        lifespan="off",
        log_config=None,  # uvicorn's loggers propagate to the node's logging set-up
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="health http")
    try:
        started = asyncio.create_task(listening.wait())
        await asyncio.wait((serving, started), return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if not server.started:
            await serving  # raises what stopped it
            raise RuntimeError("the health server did not start")
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        sock.close()


async def run_node(
    *,
    label: str | None,
    amqp_url: str | None,
    database_url: str | None,
    app_name: str,
    settings: Settings,
    http_port: int | None = None,
    http_host: str = "127.0.0.1",
) -> int:
    """``clusterbus node``: run one instance until SIGTERM or SIGINT; the exit status.

    With ``http_port``, ``/health/live`` and ``/health/ready`` are served on
    ``http_host:http_port`` from before the node starts (503 until it is ready) until after
    it stopped."""
    url = database_url or os.environ.get("CLUSTERBUS_DEMO_DATABASE_URL") or default_url(Path())
    database = Database(url)
    await database.create_all()
    node = build_node(
        label or socket.gethostname(),
        database,
        app_name=app_name,
        amqp_url=amqp_url,
        settings=settings,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with contextlib.AsyncExitStack() as running:
            if http_port is not None:
                port = await running.enter_async_context(
                    health_server(node.bus, http_host, http_port)
                )
                where = f"[{http_host}]" if ":" in http_host else http_host
                print(f"health http://{where}:{port}/health/ready", flush=True)
            running.push_async_callback(node.stop)  # before the health server closes
            await node.start()
            print(f"ready {node.bus.instance_id}", flush=True)
            await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await database.dispose()
    return 0
