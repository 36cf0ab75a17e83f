"""The guide's event-queue and pub/sub examples: an async-tasks plugin.

Tasks are queue messages: any instance submits, one instance (whichever is free) runs each,
a failed attempt is retried (on whichever instance takes it next). Cancelling is a
broadcast: every instance hears it and the one running the task (perhaps the sender itself)
stops it; a cancelled task counts as done and is not retried.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from bus import QueueContext
from plugins.plugin import Plugin

if TYPE_CHECKING:
    from plugins.app import App

RUN_CHANNEL = "async-tasks.run"
CANCEL_CHANNEL = "async-tasks.task.cancel"
KINDS = ("sleep", "fail-once")
SLEEP_STEP = 0.05
REMEMBERED_CANCELS = 10_000


class AsyncTasksPlugin(Plugin):
    """Options: ``concurrency`` (tasks run at once on this instance, default 2),
    ``max_retries`` (retries of a failed task, default 1) and ``timeout`` (seconds an
    attempt may run, default 300)."""

    name = "async-tasks"

    def __init__(self, app: App, **options: Any) -> None:
        super().__init__(app, **options)
        self.concurrency = int(options.get("concurrency", 2))
        self.max_retries = int(options.get("max_retries", 1))
        self.timeout = float(options.get("timeout", 300.0))
        self.running: dict[str, asyncio.Task[Any]] = {}
        """Task id -> the asyncio task running it on this instance."""
        self.started: list[str] = []
        """Ids of the attempts started here (a retried task appears once per attempt)."""
        self.done: list[str] = []
        self.cancelled: list[str] = []
        self._cancelling: set[str] = set()
        # cancels heard for tasks not running here: a queued or retrying task may start
        # here later, and must then stop at once
        self._cancel_requested: OrderedDict[str, None] = OrderedDict()

    async def load(self) -> None:
        """Consume the task queue and listen for cancels (bound when the bus starts)."""
        await self.bus.queue.subscribe(RUN_CHANNEL, self._run, concurrency=self.concurrency)
        await self.bus.pubsub.subscribe(CANCEL_CHANNEL, self._on_cancel)

    async def submit(self, kind: str, **params: Any) -> str:
        """Queue a task of ``kind`` (``"sleep"`` with ``seconds``, or ``"fail-once"``);
        returns its id."""
        if kind not in KINDS:
            raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(KINDS)}")
        task_id = await self.bus.queue.publish(
            RUN_CHANNEL,
            {"kind": kind, "params": params},
            timeout=self.timeout,
            max_retries=self.max_retries,
        )
        self.log.info("async_tasks.submitted", task_id=task_id, kind=kind)
        return task_id

    async def cancel(self, task_id: str) -> None:
        """Stop ``task_id`` wherever it runs (this instance included)."""
        await self.bus.pubsub.publish(CANCEL_CHANNEL, {"id": task_id}, skip_self=False)

    async def _on_cancel(self, message: Any) -> None:
        task_id = str(message["id"])
        self._cancel_requested[task_id] = None
        while len(self._cancel_requested) > REMEMBERED_CANCELS:
            self._cancel_requested.popitem(last=False)
        task = self.running.get(task_id)
        if task is not None and not task.done():
            self._cancelling.add(task_id)  # before cancel(): _run must know it was us
            task.cancel()
            self.log.info("async_tasks.cancelling", task_id=task_id)

    async def _run(self, message: Any, ctx: QueueContext) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.started.append(ctx.id)
        if ctx.id in self._cancel_requested:  # cancelled before it could start here
            self._finish_cancelled(ctx)
            return
        self.running[ctx.id] = task
        try:
            await self._execute(str(message["kind"]), dict(message["params"]), ctx)
        except asyncio.CancelledError:
            if ctx.id not in self._cancelling:
                raise  # the timeout or the instance stopping: not ours to swallow
            task.uncancel()
            self._finish_cancelled(ctx)
            return
        finally:
            self.running.pop(ctx.id, None)
            self._cancelling.discard(ctx.id)
        self.done.append(ctx.id)
        self.log.info("async_tasks.done", task_id=ctx.id, attempt=ctx.attempt)

    def _finish_cancelled(self, ctx: QueueContext) -> None:
        self.cancelled.append(ctx.id)
        self.log.info("async_tasks.cancelled", task_id=ctx.id, attempt=ctx.attempt)

    async def _execute(self, kind: str, params: dict[str, Any], ctx: QueueContext) -> None:
        if kind == "sleep":
            await _sleep(float(params.get("seconds", 1.0)), ctx)
        elif kind == "fail-once":
            if ctx.attempt == 0:
                raise RuntimeError(f"task {ctx.id} fails on its first attempt")
        else:
            raise ValueError(f"unknown task kind {kind!r}")


async def _sleep(seconds: float, ctx: QueueContext) -> None:
    """Sleep ``seconds`` in small steps, giving up when ``ctx.cancelled`` is set."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        if ctx.cancelled.is_set():
            raise TimeoutError(f"task {ctx.id} was stopped (timeout or shutdown)")
        await asyncio.sleep(min(left, SLEEP_STEP))


__all__ = ["CANCEL_CHANNEL", "KINDS", "RUN_CHANNEL", "AsyncTasksPlugin"]
