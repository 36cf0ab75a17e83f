"""Locks at their edges, on both backends: cancelled waiters and holders (asyncio, twice,
anyio cancel scopes) leave nothing behind, and a section cut by its ttl finishes unwinding
before the next holder enters (issue 10, findings 1 and 14)."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from bus import Bus, LockLost
from tests.conftest import BusFactory

pytestmark = pytest.mark.timeout(120)


async def acquirable(bus: Bus, key: str) -> None:
    """``key`` can be taken by ``bus`` within publish_timeout (and is given back)."""
    lease = await bus.locks.acquire(key, timeout=bus.settings.publish_timeout)
    await lease.release()


async def test_a_waiter_cut_by_anyio_move_on_after_leaves_the_key_free(
    make_bus: BusFactory,
) -> None:
    holder, waiter, other = await make_bus(), await make_bus(), await make_bus()
    lease = await holder.locks.acquire("k")
    with anyio.move_on_after(0.3) as scope:
        await waiter.locks.acquire("k")
    assert scope.cancelled_caught
    await lease.release()
    await acquirable(other, "k")
    await acquirable(waiter, "k")


async def test_a_body_cut_by_anyio_move_on_after_releases_the_key(make_bus: BusFactory) -> None:
    holder, other = await make_bus(), await make_bus()
    with anyio.move_on_after(0.3) as scope:
        async with holder.locks.lock("k"):
            await asyncio.sleep(30)
    assert scope.cancelled_caught
    await acquirable(other, "k")
    await acquirable(holder, "k")


async def test_a_waiter_cancelled_twice_leaves_the_key_free(make_bus: BusFactory) -> None:
    holder, waiter, other = await make_bus(), await make_bus(), await make_bus()
    lease = await holder.locks.acquire("k")
    task = asyncio.get_running_loop().create_task(waiter.locks.acquire("k"))
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await lease.release()
    await acquirable(other, "k")


async def test_a_holder_cancelled_during_release_leaves_the_key_free(
    make_bus: BusFactory,
) -> None:
    holder, other = await make_bus(), await make_bus()
    for _ in range(5):
        lease = await holder.locks.acquire("k")
        releasing = asyncio.get_running_loop().create_task(lease.release())
        await asyncio.sleep(0)
        releasing.cancel()
        await asyncio.gather(releasing, return_exceptions=True)
        await acquirable(other, "k")


async def test_cancelling_an_acquire_at_successive_points_never_blocks_the_key(
    make_bus: BusFactory,
) -> None:
    """Cancel the acquire after 0, 1, 2, ... loop iterations, with a holder in the way or
    not: afterwards another instance always gets the key."""
    holder, waiter, other = await make_bus(), await make_bus(), await make_bus()
    for contended in (False, True):
        for point in range(0, 40, 3):
            lease = await holder.locks.acquire("k") if contended else None
            task = asyncio.get_running_loop().create_task(waiter.locks.acquire("k"))
            for _ in range(point):
                await asyncio.sleep(0)
            task.cancel()
            results = await asyncio.gather(task, return_exceptions=True)
            if lease is not None:
                await lease.release()
            got = results[0]
            if not isinstance(got, BaseException):
                await got.release()  # the acquire finished before the cancel
            await acquirable(other, "k")


async def test_a_section_cut_by_its_ttl_unwinds_before_the_next_holder_enters(
    make_bus: BusFactory,
) -> None:
    a, b = await make_bus(), await make_bus()
    events: list[str] = []
    entered = asyncio.Event()

    async def slow_to_unwind() -> None:
        async with a.locks.lock("k", ttl=0.3):
            events.append("A enter")
            entered.set()
            try:
                await asyncio.sleep(30)
            finally:
                await asyncio.sleep(0.5)  # still cleaning up under the lock
                events.append("A exit")

    async def next_holder() -> None:
        await entered.wait()
        async with b.locks.lock("k"):
            events.append("B enter")

    results = await asyncio.gather(slow_to_unwind(), next_holder(), return_exceptions=True)
    assert isinstance(results[0], LockLost)
    assert results[1] is None
    assert events == ["A enter", "A exit", "B enter"]
