"""Lock behaviour, written once and run on both backends (memory hub and RabbitMQ)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import MutableMapping
from typing import Any

import aio_pika
import pytest

from bus import Bus, BusError, LockAcquireError, LockLost, LockReentryError
from managers.names import lock_queue
from tests.conftest import AMQP_URL, BusFactory, eventually


async def waiting_consumers(bus: Bus, key: str) -> int:
    """How many instances wait for (or hold) ``key`` on the backend."""
    if bus.mode == "memory":
        assert bus.hub is not None
        state = bus.hub.lock_table(bus.name).get(key)
        if state is None:
            return 0
        return len([w for w in state.waiters if not w.granted.done()]) + (state.holder is not None)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(lock_queue(bus.name, key), passive=True)
        assert queue.declaration_result is not None
        return int(queue.declaration_result.consumer_count or 0)


async def test_mutual_exclusion_across_instances(make_bus: BusFactory) -> None:
    buses = [await make_bus() for _ in range(3)]
    state = {"counter": 0, "inside": 0, "max_inside": 0}

    async def worker(bus: Bus) -> None:
        for _ in range(10):
            async with bus.locks.lock("counter"):
                state["inside"] += 1
                state["max_inside"] = max(state["max_inside"], state["inside"])
                value = state["counter"]
                await asyncio.sleep(0.001)  # a real await inside the section
                state["counter"] = value + 1
                state["inside"] -= 1

    await asyncio.gather(*(worker(b) for b in buses for _ in range(2)))
    assert state["counter"] == 60
    assert state["max_inside"] == 1


async def test_waiters_are_served_in_arrival_order(make_bus: BusFactory) -> None:
    holder, *others = [await make_bus() for _ in range(4)]
    lease = await holder.locks.acquire("fifo")
    order: list[int] = []

    async def wait(index: int, bus: Bus) -> None:
        async with bus.locks.lock("fifo"):
            order.append(index)

    tasks = []
    for index, bus in enumerate(others):
        tasks.append(asyncio.get_running_loop().create_task(wait(index, bus)))
        expected = index + 2  # the holder and every waiter so far
        await _wait_registered(holder, "fifo", expected)
    await lease.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def _wait_registered(bus: Bus, key: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await waiting_consumers(bus, key) < count:
        assert loop.time() < deadline, f"{count} consumers never registered on {key!r}"
        await asyncio.sleep(0.01)


async def test_try_acquire_fails_fast_then_succeeds_then_waits(make_bus: BusFactory) -> None:
    a, b = await make_bus(), await make_bus()
    lease = await a.locks.acquire("k")
    with pytest.raises(LockAcquireError, match="'k'"):
        await b.locks.try_acquire("k")
    await lease.release()
    second = await b.locks.try_acquire("k")
    releasing = asyncio.get_running_loop().call_later(
        0.2, lambda: asyncio.ensure_future(second.release())
    )
    third = await a.locks.try_acquire("k", timeout=10)  # waits for b's release
    assert third.token > second.token > lease.token
    releasing.cancel()
    await third.release()


async def test_acquire_timeout_raises_and_leaves_the_line(make_bus: BusFactory) -> None:
    a, b, c = await make_bus(), await make_bus(), await make_bus()
    lease = await a.locks.acquire("k")
    with pytest.raises(LockAcquireError, match="not acquired"):
        await b.locks.acquire("k", timeout=0.3)
    await lease.release()
    # the one that gave up does not hold the token: the next comer gets it
    got = await asyncio.wait_for(c.locks.acquire("k"), 10)
    await got.release()


async def test_ttl_expiry_cancels_the_section_and_lets_the_next_waiter_in(
    make_bus: BusFactory,
) -> None:
    a, b = await make_bus(), await make_bus()
    cancelled = asyncio.Event()
    entered = asyncio.Event()

    async def section() -> None:
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    running = asyncio.get_running_loop().create_task(a.locks.run_exclusive("k", section, ttl=0.3))
    await entered.wait()
    got = await asyncio.wait_for(b.locks.acquire("k"), 10)
    with pytest.raises(LockLost, match="ttl passed"):
        await running
    assert cancelled.is_set()
    await got.release()


async def test_ttl_expiry_of_an_acquired_lease_sets_lost_and_cancels_nothing(
    make_bus: BusFactory,
) -> None:
    a, b = await make_bus(), await make_bus()
    lease = await a.locks.acquire("k", ttl=0.2)
    await asyncio.wait_for(lease.lost.wait(), 10)  # this task keeps running
    assert lease.lost_reason == "ttl passed"
    got = await asyncio.wait_for(b.locks.acquire("k"), 10)
    await lease.release()  # idempotent, and it does not release b's lease
    with pytest.raises(LockAcquireError):
        await a.locks.try_acquire("k")
    await got.release()
    with pytest.raises(LockLost):
        await lease.extend(5)


async def test_extend_keeps_the_lease(make_bus: BusFactory) -> None:
    a, b = await make_bus(), await make_bus()
    async with a.locks.lock("k", ttl=0.3) as lease:
        for _ in range(4):
            await asyncio.sleep(0.15)
            await lease.extend(0.3)
        assert not lease.lost.is_set()
        with pytest.raises(LockAcquireError):
            await b.locks.try_acquire("k")
    got = await b.locks.try_acquire("k", timeout=5)
    await got.release()


async def test_fencing_tokens_strictly_increase_across_hand_overs(make_bus: BusFactory) -> None:
    buses = [await make_bus() for _ in range(3)]
    tokens: list[int] = []

    async def worker(bus: Bus) -> None:
        for _ in range(8):
            async with bus.locks.lock("fenced") as lease:
                tokens.append(lease.token)

    await asyncio.gather(*(worker(b) for b in buses))
    assert len(tokens) == 24
    assert all(later > earlier for earlier, later in itertools.pairwise(tokens))


async def test_reentry_by_the_same_task_raises_at_once(make_bus: BusFactory) -> None:
    a = await make_bus()
    other_bus = await make_bus()
    async with a.locks.lock("k"):
        with pytest.raises(LockReentryError, match="'k'"):
            await a.locks.acquire("k")
        with pytest.raises(LockReentryError):
            await a.locks.try_acquire("k")
        # another task of the same bus, or another bus, waits as anyone would
        with pytest.raises(LockAcquireError):
            await asyncio.get_running_loop().create_task(a.locks.acquire("k", timeout=0.2))
        with pytest.raises(LockAcquireError):
            await other_bus.locks.acquire("k", timeout=0.2)
    lease = await a.locks.acquire("k")  # released on exit: the same task may take it again
    await lease.release()
    await lease.release()


async def test_tasks_of_one_instance_queue_locally_behind_one_backend_wait(
    make_bus: BusFactory,
) -> None:
    a, b = await make_bus(), await make_bus()
    lease = await b.locks.acquire("k")
    done: list[int] = []

    async def one(i: int) -> None:
        async with a.locks.lock("k"):
            done.append(i)

    tasks = [asyncio.get_running_loop().create_task(one(i)) for i in range(20)]
    await _wait_registered(b, "k", 2)
    await asyncio.sleep(0.1)
    assert await waiting_consumers(b, "k") == 2  # b's hold and one wait for all of a's tasks
    await lease.release()
    await asyncio.gather(*tasks)
    assert done == list(range(20))  # and in their arrival order


async def test_stopping_a_holder_cancels_its_section_and_frees_the_lock(
    make_bus: BusFactory,
) -> None:
    a, b = await make_bus(), await make_bus()
    entered = asyncio.Event()

    async def section() -> None:
        entered.set()
        await asyncio.sleep(60)

    running = asyncio.get_running_loop().create_task(a.locks.run_exclusive("k", section))
    await entered.wait()
    await a.stop()
    with pytest.raises(LockLost, match="bus stopping"):
        await running
    got = await asyncio.wait_for(b.locks.acquire("k"), 10)
    await got.release()
    with pytest.raises(BusError, match="not started"):
        await a.locks.acquire("k")


async def test_keys_may_hold_any_characters(make_bus: BusFactory) -> None:
    a, b = await make_bus(), await make_bus()
    for key in ("data:fields.before_destroy:users", "ü @ /#*" * 40, "x"):
        async with a.locks.lock(key):
            with pytest.raises(LockAcquireError):
                await b.locks.try_acquire(key)
    with pytest.raises(ValueError, match="ttl"):
        await a.locks.acquire("k", ttl=0)
    with pytest.raises(ValueError, match="key"):
        await a.locks.acquire("")


async def test_lock_events_are_logged(
    make_bus: BusFactory, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    a, b = await make_bus(), await make_bus()
    lease = await a.locks.acquire("logged", ttl=0.2)
    with pytest.raises(LockAcquireError):
        await b.locks.acquire("logged", timeout=0.05)
    await eventually(lease.lost.is_set, what="ttl passed")
    async with b.locks.lock("logged"):
        pass
    events = {(e["event"], e.get("instance")) for e in debug_logs if e.get("key") == "logged"}
    assert ("lock.acquired", a.instance_id) in events
    assert ("lock.lost", a.instance_id) in events
    assert ("lock.timed_out", b.instance_id) in events
    assert ("lock.released", b.instance_id) in events
    acquired = next(e for e in debug_logs if e["event"] == "lock.acquired")
    assert {"token", "waited", "app"} <= set(acquired)
