"""Bounding broker operations without a timer each: one sweeper task per connection."""

from __future__ import annotations

import asyncio
import itertools


class Deadlines:
    """Cancels tasks whose broker operation outlived ``timeout`` seconds.

    ``enter()`` costs a dict insert (a per-operation ``asyncio.timeout`` costs a timer heap
    push, a cancel and a context object, which showed at thousands of publishes a second).
    A sweeper task wakes every ``timeout / 8`` (at least 20 ms) while operations are in
    flight, so an operation is cancelled between ``timeout`` and ``1.125 * timeout``.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tick = max(0.02, timeout / 8)
        self._ops: dict[int, tuple[float, asyncio.Task[object]]] = {}
        self._expired: set[int] = set()
        self._ids = itertools.count()
        self._sweeper: asyncio.Task[None] | None = None

    def enter(self, task: asyncio.Task[object]) -> int:
        """Watch ``task``'s operation from now on; the token to pass to :meth:`leave`."""
        token = next(self._ids)
        loop = task.get_loop()
        self._ops[token] = (loop.time() + self.timeout, task)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep())
        return token

    def leave(self, token: int) -> bool:
        """Stop watching; True when the operation was cancelled for being late."""
        self._ops.pop(token, None)
        if token in self._expired:
            self._expired.discard(token)
            return True
        return False

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self._ops:
            await asyncio.sleep(self._tick)
            self.expire(loop.time())

    def expire(self, now: float) -> None:
        """Cancel the operations due by ``now`` that are still waiting on the broker.

        An operation whose awaited future already completed (its task is scheduled to resume
        with the result, e.g. a confirm that arrived in this loop iteration) is left to
        finish: cancelling it then would throw away a completed result (a confirmed publish
        reported as unavailable, inviting a duplicate). It is checked again next tick, or
        leaves the watch when it returns.
        """
        late = [(t, task) for t, (due, task) in self._ops.items() if due <= now]
        for token, task in late:
            if _resuming(task):
                continue
            del self._ops[token]
            self._expired.add(token)
            task.cancel()

    def close(self) -> None:
        """Stop the sweeper (operations still in flight are no longer bounded)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def _resuming(task: asyncio.Task[object]) -> bool:
    """True when ``task`` is not blocked on a pending future: what it waited for is done (or
    it yielded), so it resumes in this or the next loop iteration. asyncio keeps the awaited
    future in ``Task._fut_waiter`` (the C and the Python tasks alike, Python 3.11 to 3.13);
    without it, the task counts as blocked (cancelled as before)."""
    if not hasattr(task, "_fut_waiter"):
        return False
    waiter: asyncio.Future[object] | None = task._fut_waiter
    return waiter is None or waiter.done()
