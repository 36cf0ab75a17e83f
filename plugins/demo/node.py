"""One instance of the demo service: an :class:`App` with the example plugins and, when
asked for, a control plugin through which the demo driver (``clusterbus demo``) asks it to
act and to report.

``clusterbus node`` runs one with the runner (:mod:`plugins.runner`) until SIGTERM/SIGINT
(the compose service does this), as ``clusterbus run clusterbus.demo:app`` does; the demo
runs three, in its own process on the memory hub or as three processes on RabbitMQ.

The control channel lets any peer on the broker add and remove fields, submit and cancel
tasks: it is off unless asked for (``control=True``, ``clusterbus node --control``,
``CLUSTERBUS_DEMO_CONTROL=1``), and only the demo driver asks for it.
"""

from __future__ import annotations

import os
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
from plugins.examples.db import URL_ENV, Database, default_url
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
    control: bool = False,
) -> App:
    """An App with the three example plugins on ``database`` (which the caller creates and
    disposes of), and the demo control plugin when ``control`` is True."""
    app = App(app_name, amqp_url=amqp_url, hub=hub, settings=settings)
    _add_plugins(app, label, database, control=control)
    return app


class DemoDatabase(Plugin):
    """Owns the node's database: creates its tables before the other plugins load, disposes
    of its engine after their ``before_stop`` hooks (it is added first, so stopped last)."""

    name = "demo-database"

    async def before_load(self) -> None:
        self.database: Database = self.options["database"]
        await self.database.create_all()

    async def before_stop(self) -> None:
        await self.database.dispose()


def node_app(
    *,
    label: str | None = None,
    database_url: str | None = None,
    app_name: str = APP_NAME,
    amqp_url: str | None = None,
    settings: Settings | None = None,
    control: bool = False,
) -> App:
    """One demo node as the runner runs it (``clusterbus node``, ``clusterbus run
    clusterbus.demo:app``): :func:`build_node` on a database of its own, at
    ``database_url``, else ``$CLUSTERBUS_DEMO_DATABASE_URL``, else ``clusterbus-demo.db`` in
    the working directory. ``label`` defaults to the host name; the control channel is off
    unless ``control`` is True."""
    url = database_url or os.environ.get(URL_ENV) or default_url(Path())
    database = Database(url)
    app = App(app_name, amqp_url=amqp_url, settings=settings)
    app.add(DemoDatabase, database=database)
    _add_plugins(app, label or socket.gethostname(), database, control=control)
    return app


def _add_plugins(app: App, label: str, database: Database, *, control: bool) -> None:
    app.add(AuthPlugin, database=database, ttl=60.0)
    app.add(DataSourcePlugin, database=database)
    app.add(AsyncTasksPlugin, concurrency=2, max_retries=1)
    if control:
        app.add(DemoControl, label=label)
