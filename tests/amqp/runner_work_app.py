"""The App tests/amqp/test_runner_amqp.py runs with ``clusterbus run
tests.amqp.runner_work_app:app``: it consumes the queue channel ``work`` (three at a time),
each message taking about half a second, and appends ``started <id>`` and ``done <id>`` lines
to the file ``RUNNER_TEST_RECORD`` names (flushed and fsynced, so what the file says
happened happened). The app name is ``RUNNER_TEST_APP``; settings come from ``CLUSTERBUS_*``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from bus import QueueContext
from plugins import App, Plugin

CHANNEL = "work"
SECONDS = 0.5


class Worker(Plugin):
    """Takes the ``work`` messages and records each one's start and end."""

    name = "worker"

    async def load(self) -> None:
        self.record = Path(os.environ["RUNNER_TEST_RECORD"])
        await self.bus.queue.subscribe(CHANNEL, self.process, concurrency=3)

    async def process(self, message: Any, ctx: QueueContext) -> None:
        self._write(f"started {ctx.id}")
        await asyncio.sleep(SECONDS)
        self._write(f"done {ctx.id}")

    def _write(self, line: str) -> None:
        with self.record.open("a", encoding="utf-8") as record:
            record.write(f"{line}\n")
            record.flush()
            os.fsync(record.fileno())


def app() -> App:
    """A new worker app."""
    worker = App(os.environ["RUNNER_TEST_APP"])
    worker.add(Worker)
    return worker
