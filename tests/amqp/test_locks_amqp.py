"""Locks on the real broker: topology, separate processes, a holder killed with SIGKILL, a
holder's connection closed by the broker, a deleted queue, a lost token."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aio_pika.abc import AbstractChannel

from bus import Bus, LockLost
from bus.amqp import AmqpTransport
from bus.amqp.locks import AmqpHold
from managers.locks import Lease
from managers.names import lock_queue
from tests.amqp.broker import queue_info, rabbitmqctl
from tests.conftest import fast_settings, unique_app

pytestmark = pytest.mark.amqp
ROOT = Path(__file__).resolve().parents[2]


async def spawn(*args: str, lock_queue_type: str = "classic") -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.amqp.lock_worker",
        *args,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "CLUSTERBUS_LOCK_QUEUE_TYPE": lock_queue_type},
    )


async def line(process: asyncio.subprocess.Process, within: float = 60) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), within)).decode().strip()


async def test_quorum_lock_queue_topology(amqp_url: str) -> None:
    """Quorum lock queues: single active consumer, expiry, leaders spread; no delivery limit
    on 3.x (where -1 would drop a token at its first return; 4.x gets -1, unlimited)."""
    app = unique_app()
    bus = Bus(app, amqp_url=amqp_url, settings=fast_settings(lock_queue_type="quorum"))
    async with bus, bus.locks.lock("orders.42"):
        info = await queue_info(f"{app}.lock.orders.42")
        assert info is not None
        assert "quorum" in info["arguments"] and "x-single-active-consumer" in info["arguments"]
        assert "x-expires" in info["arguments"] and "balanced" in info["arguments"]
        out = await rabbitmqctl("list_consumers", "--no-table-headers", "queue_name")
        assert [row for row in out.splitlines() if row.strip() == f"{app}.lock.orders.42"]
        transport = getattr(bus._backend, "transport", None)
        assert isinstance(transport, AmqpTransport)
        unlimited = transport.broker_version >= (4, 0, 0)
        assert ("x-delivery-limit" in info["arguments"]) == unlimited


async def test_racing_for_new_quorum_lock_queues_never_drops_the_connection(
    amqp_url: str,
) -> None:
    """Two instances declaring and consuming a brand-new quorum lock queue at once: a
    consume that reaches the queue before its leader runs would make RabbitMQ close the
    whole connection (every lease of that instance lost). Regression test."""
    app = unique_app()
    settings = fast_settings(lock_queue_type="quorum")
    async with (
        Bus(app, amqp_url=amqp_url, settings=settings) as a,
        Bus(app, amqp_url=amqp_url, settings=settings) as b,
    ):
        for n in range(15):
            key = f"fresh.{n}"

            async def hold(bus: Bus, key: str = key) -> None:
                async with bus.locks.lock(key, timeout=20):
                    await asyncio.sleep(0)

            await asyncio.gather(hold(a), hold(b))
        for bus in (a, b):
            transport = getattr(bus._backend, "transport", None)
            assert isinstance(transport, AmqpTransport)
            assert transport.reconnects == 0


async def test_lock_queue_topology(amqp_url: str) -> None:
    app = unique_app()
    bus = Bus(app, amqp_url=amqp_url, settings=fast_settings())
    async with bus, bus.locks.lock("orders.42"):
        info = await queue_info(f"{app}.lock.orders.42")
        assert info is not None
        assert "x-single-active-consumer" in info["arguments"]
        assert "x-expires" in info["arguments"] and "60000" in info["arguments"]
        assert info["consumers"] == "1"
    odd = lock_queue(app, "fields.before_destroy:users")
    assert odd.startswith(f"{app}.lock-h.fields.before_destroy_users.")
    assert lock_queue(app, "k" * 500) != lock_queue(app, "k" * 501)
    assert len(lock_queue(app, "k" * 500).encode()) < 256


@pytest.mark.parametrize(("kind", "count"), [("classic", 2000), ("quorum", 400)])
async def test_three_processes_never_overlap(
    amqp_url: str, redis_url: str, kind: str, count: int
) -> None:
    from redis.asyncio import Redis

    app = unique_app()
    workers = [
        await spawn("stress", amqp_url, app, "shared", str(count), redis_url, lock_queue_type=kind)
        for _ in range(3)
    ]
    try:
        for worker in workers:
            assert await line(worker) == "ready"
        results = [await line(worker, within=600) for worker in workers]
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
            await worker.wait()
    assert results == [f"overlaps 0 done {count}"] * 3
    redis = Redis.from_url(redis_url)
    try:
        assert int(await redis.get(f"{app}:done") or 0) == 3 * count
        assert int(await redis.get(f"{app}:holders") or 0) == 0
    finally:
        await redis.delete(f"{app}:done", f"{app}:holders")
        await redis.aclose()


@pytest.mark.parametrize("kind", ["classic", "quorum"])
async def test_a_holder_killed_with_sigkill_frees_the_lock(
    amqp_url: str, raw: AbstractChannel, kind: str
) -> None:
    app = unique_app()
    holder = await spawn("hold", amqp_url, app, "job", lock_queue_type=kind)
    try:
        assert await line(holder) == "held"
        # the token comes back `redelivered`: the next holder waits out the guard that
        # covers a live holder's detection time (1.25 * heartbeat / 2 + 0.25 s = 1.5 s here)
        settings = fast_settings(heartbeat=2, lock_queue_type=kind)
        async with Bus(app, amqp_url=amqp_url, settings=settings) as waiter:
            waiting = asyncio.get_running_loop().create_task(waiter.locks.acquire("job"))
            await consumers_on(raw, lock_queue(app, "job"), 2)
            holder.send_signal(signal.SIGKILL)
            await holder.wait()
            lease = await asyncio.wait_for(waiting, 3.5)  # the guard, then within 2 s
            await lease.release()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def _connection_of(bus: Bus) -> str:
    out = await rabbitmqctl("list_connections", "--no-table-headers", "pid", "client_properties")
    for row in out.splitlines():
        if bus.instance_id in row:
            return row.split("\t")[0]
    raise AssertionError(f"no broker connection of {bus.instance_id}")


async def test_closing_the_holders_connection_cancels_its_section(amqp_url: str) -> None:
    app = unique_app()
    settings = fast_settings()
    async with (
        Bus(app, amqp_url=amqp_url, settings=settings) as holder,
        Bus(app, amqp_url=amqp_url, settings=settings) as waiter,
    ):
        entered = asyncio.Event()

        async def section() -> None:
            entered.set()
            await asyncio.sleep(60)

        running = asyncio.get_running_loop().create_task(holder.locks.run_exclusive("k", section))
        await entered.wait()
        waiting = asyncio.get_running_loop().create_task(waiter.locks.acquire("k"))
        await rabbitmqctl("close_connection", await _connection_of(holder), "test: holder cut off")
        with pytest.raises(LockLost, match="channel closed"):
            await asyncio.wait_for(running, 10)
        lease = await asyncio.wait_for(waiting, 10)
        await lease.release()
        # the holder's bus reconnects and can lock again
        again = await asyncio.wait_for(holder.locks.acquire("k"), 20)
        await again.release()


@dataclass
class Contended:
    """Bus ``holder`` holds key ``k`` of ``app``; another bus waits for it in ``waiting``."""

    app: str
    holder: Bus
    lease: Lease
    waiting: asyncio.Task[Lease]


async def consumers_on(raw: AbstractChannel, queue: str, count: int) -> None:
    """Wait until ``queue`` has ``count`` consumers (the holder and the waiters)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        declared = (await raw.declare_queue(queue, passive=True)).declaration_result
        if declared is not None and declared.consumer_count == count:
            return
        # a quorum queue with a single active consumer counts only the active one
        if declared is not None and declared.consumer_count == 1:
            out = await rabbitmqctl("list_consumers", "--no-table-headers", "queue_name")
            if sum(row.strip() == queue for row in out.splitlines()) == count:
                return
        assert loop.time() < deadline, f"{queue} never had {count} consumers"
        await asyncio.sleep(0.02)


@pytest.fixture(params=["classic", "quorum"])
async def contended(
    amqp_url: str, raw: AbstractChannel, request: pytest.FixtureRequest
) -> AsyncIterator[Contended]:
    app = unique_app()
    settings = fast_settings(lock_queue_type=request.param)
    async with (
        Bus(app, amqp_url=amqp_url, settings=settings) as holder,
        Bus(app, amqp_url=amqp_url, settings=settings) as waiter,
    ):
        lease = await holder.locks.acquire("k")
        waiting = asyncio.get_running_loop().create_task(waiter.locks.acquire("k"))
        await consumers_on(raw, lock_queue(app, "k"), 2)
        yield Contended(app, holder, lease, waiting)
        waiting.cancel()


async def test_a_deleted_lock_queue_heals(contended: Contended, raw: AbstractChannel) -> None:
    await raw.queue_delete(lock_queue(contended.app, "k"))
    await asyncio.wait_for(contended.lease.lost.wait(), 10)  # the holder knows
    got = await asyncio.wait_for(contended.waiting, 10)  # the waiter starts over and wins
    await got.release()


async def test_a_lost_token_is_healed_by_the_waiters(contended: Contended) -> None:
    # fault injection: the held token vanishes instead of going back to the queue
    lease = contended.lease
    hold = lease.hold
    assert isinstance(hold, AmqpHold)
    claim = hold._claim
    assert claim.held is not None
    await claim.held.reject(requeue=False)
    claim.held = None
    await lease.release()
    got = await asyncio.wait_for(contended.waiting, 10)  # a waiter's periodic token heals it
    assert got.token > lease.token
    await got.release()
