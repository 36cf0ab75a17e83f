"""Targets for tests/unit/test_runner.py: ``clusterbus run tests.unit.runner_apps:<name>``.

``RUNNER_TEST_STOPPING``, when set, names a file the slow plugin creates when its
``before_stop`` begins (it then sleeps a minute: a stop that only a second signal cuts short).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

from bus import Settings
from plugins import App, Plugin


class SlowStop(Plugin):
    """Takes a minute to stop."""

    name = "slow-stop"

    async def before_stop(self) -> None:
        marker = os.environ.get("RUNNER_TEST_STOPPING")
        if marker:
            Path(marker).write_text("stopping\n", encoding="utf-8")
        await asyncio.sleep(60)


class Echo(Plugin):
    """Logs what it hears on the pub/sub channel ``echo``."""

    name = "echo"

    async def load(self) -> None:
        await self.bus.pubsub.subscribe("echo", self.on_echo)

    async def on_echo(self, message: object) -> None:
        self.log.info("echo", message=message)


def slow_stop() -> App:
    """An app whose stop takes a minute."""
    app = App("t-runner-slow")
    app.add(SlowStop)
    return app


def sync_factory() -> App:
    """A sync factory; it checks that the runner calls it inside the running loop."""
    asyncio.get_running_loop()
    app = App("t-runner-sync")
    app.add(Echo)
    return app


async def async_factory() -> App:
    """An async factory."""
    await asyncio.sleep(0)
    app = App("t-runner-async")
    app.add(Echo)
    return app


def needs_a_name(name: str) -> App:
    """Not a zero-argument factory."""
    return App(name)


def returns_none() -> None:
    """A factory that forgets to return its app."""


def bad_settings() -> App:
    """Fails to build: a setting out of range (pydantic's ValidationError)."""
    return App("t-runner-bad", settings=Settings(stop_timeout=-1))


not_an_app = 42
factories = SimpleNamespace(sync=sync_factory)
"""``tests.unit.runner_apps:factories.sync``: a dotted attribute."""
