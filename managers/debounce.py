"""Trailing-edge debouncing of handler calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

Spawn = Callable[[Coroutine[Any, Any, None]], object]


class Debouncer:
    """Collapses calls with the same key made within ``delay`` into one, run after the last.

    ``spawn`` starts the coroutine of a due call (the owner tracks the task so that it can
    wait for it or cancel it on stop).
    """

    def __init__(self, spawn: Spawn) -> None:
        self._spawn = spawn
        self._pending: dict[Hashable, asyncio.TimerHandle] = {}

    def call(
        self, key: Hashable, delay: float, fn: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        """Schedule ``fn()`` ``delay`` seconds from now, replacing a pending call of ``key``."""
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending.cancel()
        loop = asyncio.get_running_loop()
        self._pending[key] = loop.call_later(delay, self._fire, key, fn)

    def _fire(self, key: Hashable, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._pending.pop(key, None)
        self._spawn(fn())

    @property
    def pending(self) -> int:
        """How many debounced calls are waiting."""
        return len(self._pending)

    def cancel_all(self) -> int:
        """Drop every pending call; returns how many were dropped."""
        count = len(self._pending)
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        return count
