"""``clusterbus run`` on the broker: SIGTERM during in-flight queue work loses nothing.

The runner process consumes 30 queued messages (tests/amqp/runner_work_app.py, half a second
each, three at a time); SIGTERM arrives once a few are done. It must exit 0 after the
messages it had started finished (graceful stop), and a fresh consumer must find every other
message still queued: nothing lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from bus import Bus, QueueContext
from tests.amqp.runner_work_app import CHANNEL
from tests.conftest import fast_settings, unique_app

pytestmark = pytest.mark.amqp

ROOT = Path(__file__).resolve().parents[2]
COUNT = 30
DEADLINE = 60.0


def _lines(record: Path, kind: str) -> list[str]:
    if not record.exists():
        return []
    text = record.read_text(encoding="utf-8")
    return [line.split()[1] for line in text.splitlines() if line.startswith(f"{kind} ")]


async def _publish(app: str, url: str) -> list[str]:
    async with Bus(app, amqp_url=url, settings=fast_settings()) as bus:
        return [await bus.queue.publish(CHANNEL, {"n": n}, timeout=30) for n in range(COUNT)]


async def _consume_rest(app: str, url: str, expected: set[str]) -> set[str]:
    """Consume ``work`` with a fresh bus until ``expected`` ids came (or the deadline)."""
    seen: set[str] = set()
    async with Bus(app, amqp_url=url, settings=fast_settings()) as bus:

        async def take(message: Any, ctx: QueueContext) -> None:
            seen.add(ctx.id)

        await bus.queue.subscribe(CHANNEL, take, concurrency=10)
        deadline = time.monotonic() + DEADLINE
        while not expected <= seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a duplicate still on its way shows up too
    return seen


async def _delete_queues(app: str, url: str) -> None:
    """Delete the app's queues (the session's clean-up would too; this is at once)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in (f"{app}.queue.{CHANNEL}", f"{app}.queue.{CHANNEL}.dead"):
            await channel.queue_delete(name)


def test_sigterm_during_in_flight_work_loses_nothing(amqp_url: str, tmp_path: Path) -> None:
    app = unique_app()
    record = tmp_path / "record.txt"
    ids = asyncio.run(_publish(app, amqp_url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERBUS_")}
    env.update(
        CLUSTERBUS_AMQP_URL=amqp_url,
        CLUSTERBUS_STOP_TIMEOUT="20",
        CLUSTERBUS_STORAGE_DIR=str(tmp_path / "storage"),
        RUNNER_TEST_APP=app,
        RUNNER_TEST_RECORD=str(record),
    )
    try:
        out, err = _run_until_sigterm(env, record)
        assert "runner.stopping" in err and "runner.stopped" in err, out + err
        started, done = set(_lines(record, "started")), set(_lines(record, "done"))
        assert done <= set(ids)
        assert started <= done, "an in-flight handler did not finish at the graceful stop"
        assert len(done) < COUNT, "the runner did everything before SIGTERM: nothing tested"
        rest = asyncio.run(_consume_rest(app, amqp_url, set(ids) - done))
        assert done | rest == set(ids), f"lost: {sorted(set(ids) - done - rest)}"
    finally:
        asyncio.run(_delete_queues(app, amqp_url))


def _run_until_sigterm(env: dict[str, str], record: Path) -> tuple[str, str]:
    """Run the worker app until it has done 3 messages, then SIGTERM it; its output once it
    exited 0."""
    runner = subprocess.Popen(
        [sys.executable, "-m", "clusterbus", "run", "tests.amqp.runner_work_app:app"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while len(_lines(record, "done")) < 3:
            assert runner.poll() is None, runner.communicate()
            assert time.monotonic() < deadline, "the runner did not do 3 messages"
            time.sleep(0.05)
        runner.send_signal(signal.SIGTERM)
        out, err = runner.communicate(timeout=DEADLINE)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert runner.returncode == 0, out + err
    return out, err
