"""The cancellation driver on toy operations (it finds exactly the points where a toy leaks),
then on real ones: a lock wait and a lock section cancelled at every point, on both backends."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aio_pika
import aiormq
import pytest

from bus import Bus, MemoryHub
from managers.locks import Lease
from managers.names import lock_queue
from tests.conftest import AMQP_URL, fast_settings, unique_app
from tests.faults.cancel import (
    ANYIO_AVAILABLE,
    MODES,
    Outcome,
    cancel_at_every_point,
    count_points,
    run_once,
)


@dataclass
class Pool:
    """A toy resource with a counter of what is taken; ``taken`` must be back to 0 after
    every run, whatever cancelled it."""

    taken: int = 0
    log: list[str] = field(default_factory=list)

    async def leaky(self) -> str:
        """Takes, suspends three times, gives back: a cancel at any point leaks one."""
        self.taken += 1
        for _ in range(3):
            await asyncio.sleep(0)
        self.taken -= 1
        return "done"

    async def careful(self) -> str:
        """Gives back in ``finally`` before any await: no cancel leaks."""
        self.taken += 1
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            return "done"
        finally:
            self.taken -= 1

    async def slow_cleanup(self) -> str:
        """Gives back in ``finally`` after one unshielded await: a second cancel (or a
        level-triggered scope) interrupts the clean-up and leaks."""
        self.taken += 1
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            return "done"
        finally:
            await asyncio.sleep(0)
            self.taken -= 1

    async def check(self, outcome: Outcome[str]) -> None:
        leaked, self.taken = self.taken, 0
        assert leaked == 0, f"{leaked} left taken"


async def test_it_counts_the_suspension_points() -> None:
    pool = Pool()
    outcome = await count_points(pool.leaky)
    assert (outcome.suspensions, outcome.returned, outcome.result) == (3, True, "done")
    assert outcome.cancels == 0 and not outcome.cancelled


async def test_a_cancel_lands_exactly_on_the_chosen_point() -> None:
    for point in (1, 2, 3):
        outcome = await run_once(Pool().leaky, mode="once", point=point)
        assert outcome.cancelled and outcome.cancels == 1
        assert outcome.suspensions == point  # nothing ran after the k-th await
    late = await run_once(Pool().leaky, mode="once", point=4)
    assert late.returned and late.cancels == 0  # it ended before the 4th point


async def test_it_reports_exactly_the_points_that_leak() -> None:
    pool = Pool()
    report = await cancel_at_every_point(pool.leaky, pool.check, random_points=0)
    assert report.points == 3
    assert len(report.runs) == 1 + 3 * len(MODES)
    assert report.failed_points() == {mode: [1, 2, 3] for mode in MODES}
    assert "failed at points [1, 2, 3]" in report.summary()


async def test_a_careful_operation_passes_in_every_mode() -> None:
    pool = Pool()
    report = await cancel_at_every_point(pool.careful, pool.check, random_points=2, seed=7)
    assert report.ok, report.summary()
    assert len(report.runs) == 1 + (3 + 2) * len(MODES)


async def test_twice_level_and_anyio_interrupt_an_unshielded_cleanup() -> None:
    pool = Pool()
    report = await cancel_at_every_point(pool.slow_cleanup, pool.check, random_points=0)
    failed = report.failed_points()
    assert report.points == 4  # three in the body, one in the clean-up
    # one cancel leaks only when it lands in the clean-up's own await
    assert failed["once"] == [4]
    assert failed["twice"] == [1, 2, 3, 4]
    assert failed["level"] == [1, 2, 3, 4]
    if ANYIO_AVAILABLE:
        assert failed["anyio"] == [1, 2, 3, 4]


@pytest.mark.skipif(not ANYIO_AVAILABLE, reason="anyio is not installed")
async def test_the_anyio_mode_runs_the_op_in_a_cancel_scope() -> None:
    outcome = await run_once(Pool().careful, mode="anyio", point=2)
    assert outcome.cancelled and not outcome.returned and outcome.error is None


async def test_a_swallowed_cancel_and_a_hang_are_reported() -> None:
    async def swallows() -> str:
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            return "swallowed"
        return "done"

    outcome = await run_once(swallows, mode="once", point=1)
    assert outcome.swallowed and outcome.result == "swallowed"

    stop = asyncio.Event()

    async def never_ends() -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    try:
        hung = await run_once(never_ends, mode="once", point=1, op_timeout=0.2)
        assert hung.hung and not hung.cancelled
    finally:
        stop.set()
        await asyncio.sleep(0.05)


async def test_a_check_that_raises_anything_is_a_failure() -> None:
    async def op() -> int:
        await asyncio.sleep(0)
        return 1

    async def check(outcome: Outcome[int]) -> None:
        if outcome.cancelled:
            raise RuntimeError("boom")

    report = await cancel_at_every_point(op, check, modes=["once"], random_points=0)
    assert [str(f.error) for f in report.failures] == ["boom"]
    limited = await cancel_at_every_point(
        op, check, modes=["once", "twice"], random_points=0, max_failures=1
    )
    assert limited.stopped_early and len(limited.failures) == 1


# a real operation: locks, on both backends ------------------------------------------------------


@dataclass
class Contention:
    """Buses ``a``, ``b`` and ``c`` of one app. Each run uses a fresh key: ``a`` takes it and
    hands it on after a few loop turns while ``b`` waits for it (the operation cancelled);
    the check then wants the key from ``c`` and from ``b`` again within ``within`` (the
    bus's publish_timeout) and, on the broker, no consumer left on the key's lock queue."""

    a: Bus
    b: Bus
    c: Bus
    within: float
    consumers: Callable[[str], Awaitable[int]] | None = None
    keys: itertools.count[int] = field(default_factory=itertools.count)
    key: str = ""
    held: list[Lease] = field(default_factory=list)
    releasers: list[asyncio.Task[None]] = field(default_factory=list)

    async def _release_soon(self, lease: Lease) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        await lease.release()

    async def _hold_a(self) -> None:
        self.key = f"k{next(self.keys)}"
        lease = await self.a.locks.acquire(self.key, ttl=30)
        self.held.append(lease)
        self.releasers.append(asyncio.get_running_loop().create_task(self._release_soon(lease)))

    async def acquire(self) -> Lease:
        """The operation: ``b`` waits for the key ``a`` holds."""
        await self._hold_a()
        return await self.b.locks.acquire(self.key, ttl=30)

    async def section(self) -> None:
        """The operation: ``b`` waits for the key, then holds it for a few loop turns."""
        await self._hold_a()
        async with self.b.locks.lock(self.key, ttl=30):
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    async def check(self, outcome: Outcome[object]) -> None:
        await asyncio.gather(*self.releasers)
        for lease in self.held:
            await lease.release()
        self.releasers.clear()
        self.held.clear()
        for who, bus in (("another instance", self.c), ("the cancelled instance", self.b)):
            try:
                lease = await asyncio.wait_for(bus.locks.acquire(self.key), self.within)
            except TimeoutError:
                raise AssertionError(
                    f"{self.key} not acquirable by {who} within {self.within}s"
                ) from None
            await lease.release()
        if self.consumers is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.within
            while (left := await self.consumers(self.key)) != 0:
                assert loop.time() < deadline, f"{left} consumer(s) left on {self.key}'s queue"
                await asyncio.sleep(0.05)


@pytest.fixture
async def contention(backend: str) -> AsyncIterator[Contention]:
    hub, app = MemoryHub(), unique_app()
    settings = fast_settings(publish_timeout=2.0)
    if backend == "amqp":
        buses = [Bus(app, amqp_url=AMQP_URL, settings=settings) for _ in range(3)]
    else:
        buses = [Bus(app, hub=hub, settings=settings) for _ in range(3)]
    for bus in buses:
        await bus.start()
    raw = await aio_pika.connect(AMQP_URL) if backend == "amqp" else None

    async def consumers(key: str) -> int:
        assert raw is not None
        channel = await raw.channel()
        try:
            declared = await channel.declare_queue(lock_queue(app, key), passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0
        await channel.close()
        result = declared.declaration_result
        return 0 if result is None else int(result.consumer_count or 0)

    yield Contention(
        buses[0],
        buses[1],
        buses[2],
        within=settings.publish_timeout,
        consumers=consumers if raw is not None else None,
    )
    await asyncio.gather(*(bus.stop() for bus in buses), return_exceptions=True)
    if raw is not None:
        await raw.close()


async def _release(lease: object) -> None:
    assert isinstance(lease, Lease)
    await lease.release()


# These test issue 10's finding 1 (a cancelled lock waiter or holder must leave nothing
# behind: no consumer on the lock queue, the key acquirable by any instance within
# publish_timeout) at every suspension point, with single, double, level-triggered and anyio
# cancellation, on both backends. On the broker they fail on the code before the lock
# rewrite (twice@3, level@3/6/7, anyio@6 of the wait were seen): do not weaken them.


@pytest.mark.parametrize("operation", ["acquire", "section"])
async def test_a_lock_operation_cancelled_at_every_point_leaves_nothing(
    contention: Contention, operation: str
) -> None:
    op: Callable[[], Awaitable[object]] = (
        contention.acquire if operation == "acquire" else contention.section
    )
    report = await cancel_at_every_point(
        op, contention.check, cleanup=_release, op_timeout=10.0, random_points=3, max_failures=5
    )
    assert report.points >= 1  # it really waited
    assert report.ok, report.summary()
