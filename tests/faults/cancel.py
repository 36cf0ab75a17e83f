"""A cancellation driver: cancel an operation at each of its suspension points, then check
that nothing was left behind.

An operation (an async factory such as ``lambda: bus.locks.acquire("k")``) is first run to
its end without interference, counting the times it suspends (every ``await`` that really
gives the loop away: a future, a ``sleep(0)``, I/O). Then, for each point ``k`` (and a few
random ones), a fresh run is cancelled right when it suspends for the ``k``-th time, in one
of these modes:

* ``"once"``: ``task.cancel()`` once (what ``asyncio.wait_for``/``asyncio.timeout`` do);
* ``"twice"``: cancelled at point ``k`` and again at the next suspension, which is normally
  the first ``await`` of the operation's own clean-up (a caller that gives up twice, or a
  timeout firing while a cancellation is being handled);
* ``"level"``: cancelled at every suspension from ``k`` on (up to ``level_cancels`` times),
  as anyio's cancel scopes do on asyncio: clean-up that is not shielded cannot finish;
* ``"anyio"``: the operation runs inside ``anyio.CancelScope()`` and ``scope.cancel()`` is
  called at point ``k`` (what ``anyio.move_on_after``, Starlette and FastAPI do). Only when
  anyio is importable.

The cancel is delivered exactly at the suspension: the operation's coroutine is driven step
by step inside its task (same task, same context variables), so ``task.cancel()`` lands on
the very future it awaits, as a real cancellation would.

After each run the :class:`Outcome` goes to ``cleanup`` (when the operation returned a value
anyway, e.g. a lease it got just as it was cancelled) and then to ``check``, which asserts
the invariants (e.g. "the key is acquirable from another bus within publish_timeout", "no
consumer is left on the lock queue") and raises ``AssertionError`` when one is broken::

    report = await cancel_at_every_point(lambda: b.locks.acquire("k"), check, cleanup=release)
    assert report.ok, report.summary()
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")

Mode = Literal["once", "twice", "level", "anyio"]
ANYIO_AVAILABLE = importlib.util.find_spec("anyio") is not None
MODES: tuple[Mode, ...] = (
    ("once", "twice", "level", "anyio")
    if ANYIO_AVAILABLE
    else (
        "once",
        "twice",
        "level",
    )
)
"""Every mode this interpreter can run."""


@dataclass
class Outcome(Generic[T]):
    """How one run of the operation ended."""

    mode: Mode | Literal["none"]
    point: int
    """The suspension the cancel was delivered at (0 for the uncancelled run)."""
    suspensions: int = 0
    """How many times the operation suspended in this run."""
    cancels: int = 0
    """Cancellations delivered (0 when the operation ended before point ``k``)."""
    cancelled: bool = False
    """It ended by the cancellation (``CancelledError``, or the anyio scope caught it)."""
    returned: bool = False
    """It returned a value (``result``): it finished before, or despite, the cancel."""
    result: T | None = None
    error: BaseException | None = None
    """Any other exception it raised."""
    hung: bool = False
    """It did not end within ``op_timeout`` (then it was cancelled repeatedly)."""

    @property
    def swallowed(self) -> bool:
        """Cancelled (by ``task.cancel()``) yet it returned: the cancel was swallowed."""
        return self.cancels > 0 and self.returned and self.mode != "anyio"

    def describe(self) -> str:
        if self.hung:
            end = "hung"
        elif self.cancelled:
            end = "cancelled"
        elif self.returned:
            end = f"returned {self.result!r}"
        else:
            end = f"raised {self.error!r}"
        return (
            f"{self.mode}@{self.point}: {end} after {self.suspensions} suspension(s), "
            f"{self.cancels} cancel(s)"
        )


@dataclass
class Failure:
    """A run after which ``check`` (or ``cleanup``) failed."""

    outcome: Outcome[Any]
    error: BaseException

    def __str__(self) -> str:
        return f"{self.outcome.describe()} -> {type(self.error).__name__}: {self.error}"


@dataclass
class CancelReport:
    """What :func:`cancel_at_every_point` found."""

    points: int
    """Suspension points of the uncancelled run."""
    runs: list[Outcome[Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures

    def failed_points(self) -> dict[str, list[int]]:
        """Mode -> the points whose check failed."""
        found: dict[str, list[int]] = {}
        for failure in self.failures:
            found.setdefault(failure.outcome.mode, []).append(failure.outcome.point)
        return found

    def summary(self) -> str:
        lines = [
            f"{self.points} suspension point(s); {len(self.runs)} run(s); "
            f"{len(self.failures)} failed" + (" (stopped early)" if self.stopped_early else "")
        ]
        for mode, points in self.failed_points().items():
            lines.append(f"  {mode}: failed at points {points}")
        lines.extend(f"  {failure}" for failure in self.failures[:10])
        return "\n".join(lines)


class _Driven(Generic[T]):
    """Awaits ``coro`` by hand: counts its suspensions and calls ``on_suspend(n)`` each time
    it gives the loop away, before the task sees what it awaits."""

    def __init__(self, coro: Coroutine[Any, Any, T], on_suspend: Callable[[int], None]) -> None:
        self._coro = coro
        self._on_suspend = on_suspend
        self.suspensions = 0

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                awaited = coro.send(sent) if thrown is None else coro.throw(thrown)
            except StopIteration as stop:
                result: T = stop.value
                return result
            self.suspensions += 1
            self._on_suspend(self.suspensions)
            sent, thrown = None, None
            try:
                sent = yield awaited
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                thrown = exc


class _Run(Generic[T]):
    """One run of the operation in its own task, cancelled per ``mode`` at ``point``."""

    def __init__(
        self,
        op: Callable[[], Awaitable[T]],
        mode: Mode | Literal["none"],
        point: int,
        level_cancels: int,
    ) -> None:
        self.outcome: Outcome[T] = Outcome(mode=mode, point=point)
        self._op = op
        self._level_cancels = level_cancels
        self._task: asyncio.Task[T | None] | None = None
        self._scope: Any = None
        self._driven: _Driven[T] | None = None

    def _on_suspend(self, n: int) -> None:
        mode, k = self.outcome.mode, self.outcome.point
        if mode == "none" or n < k:
            return
        assert self._task is not None
        if mode == "anyio":
            if n == k:
                self._scope.cancel()
                self.outcome.cancels += 1
            return
        if (
            (mode == "once" and n == k)
            or (mode == "twice" and n in (k, k + 1))
            or (mode == "level" and self.outcome.cancels < self._level_cancels)
        ):
            self._task.cancel()
            self.outcome.cancels += 1

    async def _body(self) -> T | None:
        awaitable = self._op()
        coro: Coroutine[Any, Any, T]
        if asyncio.iscoroutine(awaitable):
            coro = awaitable
        else:

            async def wrap() -> T:
                return await awaitable

            coro = wrap()
        self._driven = _Driven(coro, self._on_suspend)
        if self.outcome.mode != "anyio":
            return await self._driven
        import anyio

        with anyio.CancelScope() as scope:
            self._scope = scope
            return await self._driven
        self.outcome.cancelled = True  # the scope caught its cancellation
        return None

    async def run(self, op_timeout: float) -> Outcome[T]:
        outcome = self.outcome
        task = self._task = asyncio.get_running_loop().create_task(self._body())
        done, _ = await asyncio.wait({task}, timeout=op_timeout)
        if not done:
            outcome.hung = True
            for _ in range(20):  # insist, like a level-triggered scope, then give up
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=0.05)
                if done:
                    break
        if self._driven is not None:
            outcome.suspensions = self._driven.suspensions
        if not task.done():
            return outcome  # still running: leave it, it is reported as hung
        if task.cancelled():
            outcome.cancelled = True
        elif (exc := task.exception()) is not None:
            outcome.error = exc
        elif not outcome.cancelled:
            outcome.returned = True
            outcome.result = task.result()
        return outcome


async def run_once(
    op: Callable[[], Awaitable[T]],
    *,
    mode: Mode | Literal["none"] = "none",
    point: int = 0,
    level_cancels: int = 1000,
    op_timeout: float = 10.0,
) -> Outcome[T]:
    """Run ``op`` once in a new task, cancelled per ``mode`` at suspension ``point``."""
    if mode == "anyio" and not ANYIO_AVAILABLE:
        raise RuntimeError("mode 'anyio' needs anyio installed")
    return await _Run(op, mode, point, level_cancels).run(op_timeout)


async def count_points(op: Callable[[], Awaitable[T]], *, op_timeout: float = 10.0) -> Outcome[T]:
    """Run ``op`` to its end uncancelled; ``outcome.suspensions`` is its number of points."""
    return await run_once(op, op_timeout=op_timeout)


async def cancel_at_every_point(
    op: Callable[[], Awaitable[T]],
    check: Callable[[Outcome[T]], Awaitable[None]],
    *,
    points: Iterable[int] | None = None,
    modes: Sequence[Mode] = MODES,
    random_points: int = 3,
    seed: int | None = 0,
    cleanup: Callable[[T], Awaitable[None]] | None = None,
    op_timeout: float = 10.0,
    check_timeout: float = 30.0,
    level_cancels: int = 1000,
    max_failures: int | None = None,
) -> CancelReport:
    """Cancel ``op`` at each suspension point in each mode and ``check`` after each run.

    ``points`` defaults to 1..n, n being the suspensions of an uncancelled run (which is
    made first, cleaned up and checked too, as mode ``"none"``), plus ``random_points``
    points drawn (with ``seed``) from 1..2n for each mode, since an operation that talks to
    a broker may suspend a different number of times on each run. ``cleanup(result)`` runs
    after a run that returned a value (bounded by ``check_timeout``), before ``check``.
    ``max_failures`` stops after that many failed checks (``report.stopped_early``).
    """
    baseline = await count_points(op, op_timeout=op_timeout)
    report = CancelReport(points=baseline.suspensions)

    async def settle(outcome: Outcome[T]) -> None:
        report.runs.append(outcome)
        try:
            async with asyncio.timeout(check_timeout):
                if outcome.returned and cleanup is not None and outcome.result is not None:
                    await cleanup(outcome.result)
                await check(outcome)
        except Exception as exc:  # AssertionError, TimeoutError, anything check raised
            report.failures.append(Failure(outcome, exc))

    await settle(baseline)
    if baseline.hung or baseline.error is not None:
        return report  # nothing to compare with: the failure (if any) says why
    chosen = sorted(set(points)) if points is not None else list(range(1, baseline.suspensions + 1))
    rng = random.Random(seed)
    for mode in modes:
        extra = [rng.randint(1, max(1, 2 * baseline.suspensions)) for _ in range(random_points)]
        for point in [*chosen, *extra]:
            if max_failures is not None and len(report.failures) >= max_failures:
                report.stopped_early = True
                return report
            outcome = await run_once(
                op, mode=mode, point=point, level_cancels=level_cancels, op_timeout=op_timeout
            )
            await settle(outcome)
    return report


__all__ = [
    "ANYIO_AVAILABLE",
    "MODES",
    "CancelReport",
    "Failure",
    "Mode",
    "Outcome",
    "cancel_at_every_point",
    "count_points",
    "run_once",
]
