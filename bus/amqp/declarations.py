"""Exchanges and queues declared once per name, by a round trip no caller can cut short.

aiormq closes a channel whose round trip was cancelled. A declare made on a shared channel
(the publishing channel, the queue-declaring channel) by a caller that is then cancelled
(a request handler cut by its framework's timeout) would take every other operation on that
channel down with it. So each declare runs in a task of its own, shielded from the callers
that wait for it (concurrent callers of one name share it) and bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from managers.tasks import TaskKeeper

T = TypeVar("T")


class Declarations(Generic[T]):
    """What was declared, by name (``T``: what the declare returns, e.g. the exchange)."""

    def __init__(self, keeper: TaskKeeper, timeout: float) -> None:
        self._keeper = keeper
        self._timeout = timeout
        self._done: dict[str, T] = {}
        self._running: dict[str, asyncio.Task[T]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._done

    def get(self, name: str) -> T | None:
        """What declaring ``name`` returned, if it was declared."""
        return self._done.get(name)

    async def ensure(self, name: str, declare: Callable[[], Awaitable[T]]) -> T:
        """``declare()`` once for ``name`` (shared by concurrent callers, shielded from
        their cancellation, within ``timeout``: then ``TimeoutError``)."""
        if name in self._done:
            return self._done[name]
        task = self._running.get(name)
        if task is None:
            task = self._keeper.spawn(
                self._run(name, declare), name=f"declaring {name}", awaited=True
            )
            self._running[name] = task
        return await asyncio.shield(task)

    async def _run(self, name: str, declare: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                result = await declare()
            self._done[name] = result
            return result
        finally:
            self._running.pop(name, None)

    def discard(self, name: str) -> None:
        """Declare ``name`` again next time (it was deleted behind our back)."""
        self._done.pop(name, None)

    def clear(self) -> None:
        """Declare everything again (a new connection or channel)."""
        self._done.clear()
