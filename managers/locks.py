"""Locks: leases with a ttl watchdog that cancels the critical section, fencing tokens,
reentry detection, and a local queue in front of one backend wait per key."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from managers.errors import BusError, LockAcquireError, LockLost, LockReentryError
from managers.logger import Logger
from managers.protocols import LockBackend, LockHold
from managers.tasks import TaskKeeper
from managers.telemetry import (
    LOCK_HOLD,
    LOCK_LOST,
    LOCK_WAIT,
    NO_SPAN,
    NO_TELEMETRY,
    Span,
    Telemetry,
    key_prefix,
)

T = TypeVar("T")


class Lease:
    """A held lock. ``release()`` is idempotent; ``lost`` is set when the ttl passed or the
    connection died before the release (the lease is then already released)."""

    def __init__(
        self, manager: LockManager, key: str, hold: LockHold, owner: asyncio.Task[object]
    ) -> None:
        self._manager = manager
        self._hold = hold
        self.key = key
        self.token: int = hold.token
        """Fencing generation: strictly increasing per key across successive holders."""
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self.owner = owner
        self.section: asyncio.Task[object] | None = None
        self.cut = False  # the section was cancelled because the lease was lost
        self.released = False
        self.acquired_at = asyncio.get_running_loop().time()
        self.watchdog: asyncio.TimerHandle | None = None
        self.unwound = asyncio.Event()  # the lock() body finished (its finally blocks ran)
        self.span: Span | None = None  # the hold's span, ended at release

    async def release(self) -> None:
        """Give the lock to the next waiter (a no-op when already released or lost)."""
        await self._manager.release(self)

    async def extend(self, ttl: float) -> None:
        """Set the remaining time to ``ttl`` seconds from now; :class:`LockLost` if lost."""
        self._manager.extend(self, ttl)

    @property
    def hold(self) -> LockHold:
        """The backend's hold behind this lease."""
        return self._hold

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "released" if self.released else "held"
        return f"<Lease {self.key!r} token={self.token} {state}>"


class _LocalTurns:
    """The tasks of this instance that want one key, in arrival order; only the one whose
    turn it is waits on the backend, so one instance has at most one backend wait per key."""

    def __init__(self) -> None:
        self.busy = False
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def take(self, key: str, deadline: float | None, trying: bool) -> None:
        if not self.busy:
            self.busy = True
            return
        if trying:
            raise LockAcquireError(f"lock {key!r} is held (by this instance)")
        turn = asyncio.get_running_loop().create_future()
        self.waiters.append(turn)
        try:
            async with asyncio.timeout_at(deadline):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled():
                self.pass_on()  # the turn came as we gave up: hand it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(turn)
            if isinstance(exc, TimeoutError):
                raise LockAcquireError(f"lock {key!r}: not acquired within the timeout") from None
            raise

    def pass_on(self) -> None:
        while self.waiters:
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.busy = False


class LockManager:
    """Cross-instance locks over a :class:`~managers.protocols.LockBackend`."""

    def __init__(
        self,
        *,
        backend: LockBackend,
        log: Logger,
        stop_timeout: float = 10.0,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._telemetry = telemetry
        self._backend = backend
        self._log = log
        self._stop_timeout = stop_timeout
        self._turns: dict[str, _LocalTurns] = {}
        self._holding: dict[str, set[asyncio.Task[object]]] = {}
        self._leases: set[Lease] = set()
        self._background = TaskKeeper(log, "lock manager")
        self._started = False

    async def start(self) -> None:
        """Allow acquisitions."""
        self._started = True

    async def stop(self) -> None:
        """Lose every lease (sections are cancelled) and end every wait."""
        self._started = False
        for lease in list(self._leases):
            self._lose(lease, "bus stopping")
        await self._background.drain(self._stop_timeout)
        await self._backend.stop()

    # the four ways in --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(
        self, key: str, ttl: float = 30.0, timeout: float | None = None
    ) -> AsyncIterator[Lease]:
        """Hold ``key`` for the ``async with`` body. When the ttl passes or the connection is
        lost, the body is cancelled and :class:`LockLost` raised."""
        task = _current_task()
        lease = await self._acquire(key, ttl, timeout, trying=False)
        lease.section = task
        try:
            yield lease
        except asyncio.CancelledError:
            if not lease.cut:
                raise
            task.uncancel()
            raise self._lost_error(lease) from None
        finally:
            lease.section = None  # from here on a loss cancels nothing
            lease.unwound.set()
            await self.release(lease)
        if lease.cut:  # the body swallowed the cancellation
            task.uncancel()
            raise self._lost_error(lease)

    async def run_exclusive(
        self,
        key: str,
        fn: Callable[[], Awaitable[T]],
        ttl: float = 30.0,
        timeout: float | None = None,
    ) -> T:
        """``await fn()`` holding ``key``; cancelled with :class:`LockLost` on a loss."""
        async with self.lock(key, ttl=ttl, timeout=timeout):
            return await fn()

    async def acquire(self, key: str, ttl: float = 30.0, timeout: float | None = None) -> Lease:
        """Hold ``key`` until ``lease.release()``; :class:`LockAcquireError` when ``timeout``
        passes. On a loss ``lease.lost`` is set and the key released; nothing is cancelled."""
        return await self._acquire(key, ttl, timeout, trying=False)

    async def try_acquire(self, key: str, timeout: float = 0.0, ttl: float = 30.0) -> Lease:
        """Hold ``key`` if it is free (or frees within ``timeout``), else
        :class:`LockAcquireError` (at once with the default ``timeout`` 0)."""
        return await self._acquire(key, ttl, timeout, trying=True)

    # acquiring ---------------------------------------------------------------------------

    async def _acquire(self, key: str, ttl: float, timeout: float | None, *, trying: bool) -> Lease:
        _check(key, ttl, timeout)
        if not self._started:
            raise BusError(f"lock {key!r}: the bus is not started")
        task = _current_task()
        if task in self._holding.get(key, ()):
            raise LockReentryError(
                f"lock {key!r} is already held by this task through this bus (not reentrant)"
            )
        loop = asyncio.get_running_loop()
        asked = loop.time()
        deadline = None if timeout is None else asked + timeout
        self._log.debug("lock.acquire_requested", key=key, ttl=ttl, timeout=timeout)
        turns = self._turns.setdefault(key, _LocalTurns())
        traced = _key_attributes(key) if self._telemetry.enabled else {}
        wait = self._telemetry.start("lock acquire", traced) if traced else NO_SPAN
        try:
            await turns.take(key, deadline, trying and timeout == 0)
            box: list[Lease] = []
            early: list[str] = []  # a loss reported before the lease existed

            def lost(why: str) -> None:
                if box:
                    self._lose(box[0], why)
                else:
                    early.append(why)

            try:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                hold = await self._backend.acquire(key, remaining, lost)
            except BaseException:
                turns.pass_on()
                raise
        except LockAcquireError:
            self._log.info("lock.timed_out", key=key, timeout=timeout, trying=trying)
            self._forget_turns(key)
            wait.end({"error.type": "LockAcquireError"})
            raise
        except BaseException as exc:
            self._forget_turns(key)
            wait.end({"error.type": type(exc).__name__})
            raise
        if early:  # lost between the backend's answer and now: not acquired
            self._background.spawn(hold.release(), name="lock lost on the way in")
            turns.pass_on()
            self._forget_turns(key)
            raise LockAcquireError(f"lock {key!r}: lost as it was acquired ({early[0]})")
        lease = Lease(self, key, hold, task)
        self._trace_acquired(lease, wait, traced, lease.acquired_at - asked)
        box.append(lease)
        self._leases.add(lease)
        self._holding.setdefault(key, set()).add(task)
        lease.watchdog = loop.call_at(lease.acquired_at + ttl, self._lose, lease, "ttl passed")
        self._log.debug(
            "lock.acquired", key=key, token=lease.token, waited=round(lease.acquired_at - asked, 6)
        )
        return lease

    def _trace_acquired(
        self, lease: Lease, wait: Span, traced: dict[str, str], waited: float
    ) -> None:
        """End the acquire span, record the wait, start the hold span (when traced)."""
        if not traced:
            return
        token = {"clusterbus.lock.token": lease.token}
        wait.end(token)
        prefix = {"clusterbus.lock.key_prefix": traced["clusterbus.lock.key_prefix"]}
        self._telemetry.record(LOCK_WAIT, waited, prefix)
        lease.span = self._telemetry.start("lock hold", {**traced, **token})

    def _forget_turns(self, key: str) -> None:
        turns = self._turns.get(key)
        if turns is not None and not turns.busy and not turns.waiters:
            del self._turns[key]

    # holding ---------------------------------------------------------------------------

    def extend(self, lease: Lease, ttl: float) -> None:
        """Restart ``lease``'s ttl watchdog at ``ttl`` seconds from now."""
        _check(lease.key, ttl, None)
        if lease.lost.is_set():
            raise self._lost_error(lease)
        if lease.released:
            raise BusError(f"lock {lease.key!r}: the lease was released")
        if lease.watchdog is not None:
            lease.watchdog.cancel()
        loop = asyncio.get_running_loop()
        lease.watchdog = loop.call_at(loop.time() + ttl, self._lose, lease, "ttl passed")
        self._log.debug("lock.extended", key=lease.key, token=lease.token, ttl=ttl)

    async def release(self, lease: Lease) -> None:
        """Release ``lease`` (idempotent)."""
        if lease.released:
            return
        lease.released = True
        if lease.watchdog is not None:
            lease.watchdog.cancel()
        self._leases.discard(lease)
        self._disown(lease)
        try:
            await lease.hold.release()
        except BusError as exc:  # the broker frees it when our channel goes
            self._log.warning("lock.release_failed", key=lease.key, error=str(exc))
        finally:
            turns = self._turns.get(lease.key)
            if turns is not None:
                turns.pass_on()
                self._forget_turns(lease.key)
        held = asyncio.get_running_loop().time() - lease.acquired_at
        if lease.span is not None:  # traced when it was acquired
            prefix = {"clusterbus.lock.key_prefix": key_prefix(lease.key)}
            self._telemetry.record(LOCK_HOLD, held, prefix)
            lease.span.end({"clusterbus.lock.lost": lease.lost.is_set()})
        if not lease.lost.is_set():
            self._log.debug("lock.released", key=lease.key, token=lease.token, held=round(held, 6))

    def _disown(self, lease: Lease) -> None:
        owners = self._holding.get(lease.key)
        if owners is not None:
            owners.discard(lease.owner)
            if not owners:
                del self._holding[lease.key]

    def _lose(self, lease: Lease, reason: str) -> None:
        """The lease is gone (ttl, connection, stop): say so, cancel the section, release."""
        if lease.released or lease.lost.is_set():
            return
        lease.lost_reason = reason
        lease.lost.set()
        self._disown(lease)  # its task may take the key again at once
        self._log.warning("lock.lost", key=lease.key, token=lease.token, reason=reason)
        self._telemetry.add(
            LOCK_LOST, attributes={"clusterbus.lock.key_prefix": key_prefix(lease.key)}
        )
        if lease.section is not None and not lease.section.done():
            lease.cut = True
            lease.section.cancel()
            # the key is handed on once the section unwound (its finally blocks ran), or
            # after stop_timeout if it does not
            self._background.spawn(self._release_after_unwinding(lease), name="lock unwinding")
        else:
            self._background.spawn(self.release(lease), name="lock release after a loss")

    async def _release_after_unwinding(self, lease: Lease) -> None:
        try:
            async with asyncio.timeout(self._stop_timeout):
                await lease.unwound.wait()
        except TimeoutError:
            self._log.error(
                "lock.section_not_unwound",
                key=lease.key,
                token=lease.token,
                seconds=self._stop_timeout,
            )
        await self.release(lease)

    def _lost_error(self, lease: Lease) -> LockLost:
        return LockLost(
            f"lock {lease.key!r} (token {lease.token}) was lost: {lease.lost_reason}; "
            "the critical section was cancelled"
        )


def _current_task() -> asyncio.Task[object]:
    task = asyncio.current_task()
    if task is None:
        raise BusError("locks are taken from inside an asyncio task")
    return task


def _key_attributes(key: str) -> dict[str, str]:
    """A lock's span attributes: its key (a digest when longer than 64 characters) and the
    key's prefix (what metrics use)."""
    shown = (
        key
        if len(key) <= 64
        else "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    )
    return {"clusterbus.lock.key": shown, "clusterbus.lock.key_prefix": key_prefix(key)}


def _check(key: object, ttl: float, timeout: float | None) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"a lock key is a non-empty string, got {key!r}")
    if not (isinstance(ttl, (int, float)) and ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
    if timeout is not None and not (timeout >= 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")


__all__ = ["Lease", "LockManager"]
