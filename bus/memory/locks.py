"""Locks on the hub, for memory-mode instances (implements ``LockBackend``): FIFO per key,
fencing tokens that keep increasing for the life of the hub."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

from managers.errors import BusError, LockAcquireError
from managers.protocols import LostCallback


@dataclass(eq=False, slots=True)
class _Waiter:
    owner: MemoryLocks
    on_lost: LostCallback
    granted: asyncio.Future[MemoryHold]


@dataclass(eq=False)
class MemoryKeyState:
    """One key on the hub: its holder, its waiters in order, its last token."""

    holder: MemoryHold | None = None
    waiters: collections.deque[_Waiter] = field(default_factory=collections.deque)
    token: int = 0


class MemoryHold:
    """A key held by one memory-mode instance (implements ``LockHold``)."""

    def __init__(
        self, owner: MemoryLocks, key: str, state: MemoryKeyState, on_lost: LostCallback
    ) -> None:
        self.owner = owner
        self.key = key
        self.state = state
        self.on_lost = on_lost
        state.token = max(state.token + 1, time.time_ns() // 1000)
        self.token = state.token
        state.holder = self
        owner.holds.add(self)

    async def release(self) -> None:
        """Hand the key to the first waiter still waiting."""
        self.owner.holds.discard(self)
        state = self.state
        if state.holder is not self:
            return
        state.holder = None
        while state.waiters:
            waiter = state.waiters.popleft()
            if not waiter.granted.done():
                waiter.granted.set_result(MemoryHold(waiter.owner, self.key, state, waiter.on_lost))
                return


class MemoryLocks:
    """One instance's locks on the hub's lock table (shared by the app's instances)."""

    def __init__(self, table: dict[str, MemoryKeyState]) -> None:
        self._table = table
        self.holds: set[MemoryHold] = set()
        self._waits: set[_Waiter] = set()

    async def acquire(self, key: str, timeout: float | None, on_lost: LostCallback) -> MemoryHold:
        """Hold ``key`` now if it is free and nobody waits, else wait in line."""
        state = self._table.setdefault(key, MemoryKeyState())
        if state.holder is None and not state.waiters:
            return MemoryHold(self, key, state, on_lost)
        if timeout == 0:
            raise LockAcquireError(f"lock {key!r} is held")
        waiter = _Waiter(self, on_lost, asyncio.get_running_loop().create_future())
        state.waiters.append(waiter)
        self._waits.add(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter.granted)
        except BaseException as exc:
            if waiter.granted.done() and not waiter.granted.cancelled():
                await waiter.granted.result().release()  # granted as we gave up: pass it on
            else:
                waiter.granted.cancel()
            if isinstance(exc, TimeoutError):
                raise LockAcquireError(f"lock {key!r}: not acquired within {timeout}s") from None
            raise
        finally:
            self._waits.discard(waiter)

    async def stop(self) -> None:
        """Release every hold (telling the manager) and end every wait."""
        for waiter in list(self._waits):
            if not waiter.granted.done():
                waiter.granted.set_exception(BusError("the bus is stopping"))
        for hold in list(self.holds):
            hold.on_lost("bus stopping")
            await hold.release()
