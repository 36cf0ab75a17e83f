"""Background work owned by one component: spawn and keep, log what fails, drain with a bound
then cancel, and clean-up that is shielded from the caller's cancellation and bounded in time.

Every component that starts tasks of its own holds one :class:`TaskKeeper` instead of a
hand-written set of tasks, so that no task is lost (asyncio keeps only weak references), no
failure goes unlogged, and no stop waits without a bound on a task that ignores cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from managers.logger import Logger

T = TypeVar("T")

# How long a cancelled task may take to unwind before a drain stops waiting for it.
CANCEL_GRACE = 1.0


class TaskKeeper:
    """The tasks of one component (``what`` names it in log lines)."""

    def __init__(self, log: Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None, awaited: bool = False
    ) -> asyncio.Task[T]:
        """Run ``coro`` in a task kept until it ends; an exception it raises is logged, unless
        ``awaited`` says a caller awaits the task and handles its outcome."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._settled if awaited else self._done)
        return task

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the awaiting caller may have been cancelled

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error(
                "background.failed",
                component=self._what,
                task=task.get_name(),
                error=f"{type(exc).__name__}: {exc}",
            )

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        """The tasks still running."""
        return frozenset(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    async def shielded(
        self,
        work: Callable[[], Awaitable[T]],
        *,
        timeout: float,
        on_timeout: Callable[[], Awaitable[None]] | None = None,
        what: str = "clean-up",
    ) -> T | None:
        """Run ``work()`` to its end even if the caller is cancelled, within ``timeout``.

        The work runs in a task of its own that the caller's cancellation does not reach (the
        caller gets its ``CancelledError`` at once; the work goes on). When ``timeout``
        passes, the work is cancelled and ``on_timeout()`` runs (e.g. close the channel so
        the broker cleans up), itself bounded by ``timeout``. Returns the work's result, or
        None when it timed out or failed (logged).
        """

        async def bounded() -> T | None:
            try:
                async with asyncio.timeout(timeout):
                    return await work()
            except TimeoutError:
                self._log.warning(
                    "background.cleanup_timed_out",
                    component=self._what,
                    what=what,
                    timeout=timeout,
                )
                if on_timeout is not None:
                    with contextlib.suppress(Exception, TimeoutError):
                        async with asyncio.timeout(timeout):
                            await on_timeout()
                return None

        task = self.spawn(bounded(), name=what)
        return await asyncio.shield(task)

    async def drain(self, timeout: float, *, exclude: asyncio.Task[Any] | None = None) -> int:
        """Wait up to ``timeout`` seconds for the tasks to end, cancel the rest and wait up to
        :data:`CANCEL_GRACE` more for them to unwind (a task that ignores cancellation is
        abandoned, and logged). Returns how many had to be cancelled. ``exclude`` (e.g. the
        caller's own task) is neither waited for nor cancelled."""
        running = {t for t in self._tasks if t is not exclude and not t.done()}
        return await cancel_after(running, timeout, self._log, self._what)

    def cancel_all(self) -> None:
        """Cancel every task without waiting."""
        for task in list(self._tasks):
            task.cancel()


async def cancel_after(
    tasks: set[asyncio.Task[Any]], timeout: float, log: Logger, what: str
) -> int:
    """Wait up to ``timeout`` for ``tasks``, cancel the late ones, give them
    :data:`CANCEL_GRACE` to unwind; returns how many were cancelled. Never waits longer than
    ``timeout + CANCEL_GRACE`` in all, whatever the tasks do with the cancellation."""
    current = asyncio.current_task()
    tasks = {t for t in tasks if t is not current and not t.done()}
    if not tasks:
        return 0
    _, late = await asyncio.wait(tasks, timeout=timeout)
    if not late:
        return 0
    for task in late:
        task.cancel()
    _, stuck = await asyncio.wait(late, timeout=CANCEL_GRACE)
    if stuck:
        log.error(
            "background.abandoned",
            component=what,
            count=len(stuck),
            reason=f"still running {CANCEL_GRACE}s after being cancelled",
        )
    return len(late)


__all__ = ["CANCEL_GRACE", "TaskKeeper", "cancel_after"]
