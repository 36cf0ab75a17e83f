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
            now = loop.time()
            late = [(t, task) for t, (due, task) in self._ops.items() if due <= now]
            for token, task in late:
                del self._ops[token]
                self._expired.add(token)
                task.cancel()

    def close(self) -> None:
        """Stop the sweeper (operations still in flight are no longer bounded)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
