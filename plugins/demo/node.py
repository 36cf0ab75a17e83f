"""One instance of the demo service: an :class:`App` with the example plugins, and a control
plugin through which the demo driver (``clusterbus demo``) asks it to act and to report.

``clusterbus node`` runs one until SIGTERM/SIGINT (the compose service does this); the demo
runs three, in its own process on the memory hub or as three processes on RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bus import MemoryHub, Settings
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


async def run_node(
    *,
    label: str | None,
    amqp_url: str | None,
    database_url: str | None,
    app_name: str,
    settings: Settings,
) -> int:
    """``clusterbus node``: run one instance until SIGTERM or SIGINT; the exit status."""
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
        await node.start()
        print(f"ready {node.bus.instance_id}", flush=True)
        await stop.wait()
    finally:
        await node.stop()
        with contextlib.suppress(Exception):
            await database.dispose()
    return 0
