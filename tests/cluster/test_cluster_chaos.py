"""Every primitive on a 3-node RabbitMQ cluster while nodes die.

The suite runs one node loss per primitive (``CLUSTERBUS_CHAOS_SCALE=1``); ``make chaos``
runs the long version. Each scenario prints its figures as one JSON line.

(a) a quorum event queue, producer and consumer on different nodes, the leader's node
    stopped and restarted mid-run: no confirmed message lost, duplicates counted, the longest
    publish stall at most 10 s;
(b) locks from 3 processes on 3 nodes with a Redis holder counter, the lock queue's leader
    node killed, then the node of the process holding the lock killed mid-section: no
    overlap, acquisitions resume within 10 s;
(c) pub/sub on 3 nodes, a subscriber's node stopped: that instance is back through another
    node within 5 s and receives everything published after that;
(d) the whole cluster stopped and started with pending quorum and delayed messages: none
    lost.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, BusUnavailable, Settings
from bus.amqp import AmqpTransport
from managers.queue import QueueContext
from tests.cluster.conftest import SCALE
from tests.cluster.harness import RabbitCluster
from tests.conftest import SESSION_STORAGE, Recorder, eventually, unique_app

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600 * SCALE)]
ROOT = Path(__file__).resolve().parents[2]


def rotated(cluster: RabbitCluster, first: int) -> str:
    """The cluster's URLs starting at node ``first`` (with ``in_order``: that node first)."""
    urls = cluster.urls()
    return ";".join(urls[first:] + urls[:first])


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_failover": "in_order",
        "queue_type": "quorum",
        "heartbeat": 2.0,
        "reconnect_interval": 0.5,
        "publish_timeout": 5.0,
        "connect_timeout": 10.0,
        "retry_delay": 0.1,
        "stop_timeout": 2.0,
        "storage_dir": SESSION_STORAGE,
        "log_level": "ERROR",
    }
    values.update(overrides)
    return Settings(**values)


def report(capsys: pytest.CaptureFixture[str], scenario: str, **figures: Any) -> None:
    """One JSON line of figures, shown in the test log."""
    with capsys.disabled():
        print("\n" + json.dumps({"scenario": scenario, "scale": SCALE, **figures}), flush=True)


def transport_of(bus: Bus) -> AmqpTransport:
    transport = getattr(bus._backend, "transport", None)
    assert isinstance(transport, AmqpTransport)
    return transport


def other_than(cluster: RabbitCluster, *taken: int) -> int:
    return next(i for i in range(cluster.size) if i not in taken)


async def leader_of(cluster: RabbitCluster, queue: str) -> int:
    async with asyncio.timeout(30):
        while (leader := await asyncio.to_thread(cluster.queue_leader, queue)) is None:
            await asyncio.sleep(0.5)
    return leader


# (a) --------------------------------------------------------------------------------------


async def test_a_quorum_queue_loses_nothing_when_its_leader_node_stops(
    all_nodes_up: RabbitCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = all_nodes_up
    app = unique_app()
    total = 300 * SCALE
    async with Bus(app, amqp_url=rotated(cluster, 0), settings=settings()) as first:
        await first.queue.publish("orders", "warm-up", message_id="warm-up")
    leader = await leader_of(cluster, f"{app}.queue.orders")
    producer_node = other_than(cluster, leader)
    consumer_node = other_than(cluster, leader, producer_node)
    consumed: collections.Counter[str] = collections.Counter()

    async def process(_message: object, ctx: QueueContext) -> None:
        consumed[ctx.id] += 1

    confirmed: set[str] = set()
    resent = 0
    longest = 0.0
    async with (
        Bus(app, amqp_url=rotated(cluster, producer_node), settings=settings()) as producer,
        Bus(app, amqp_url=rotated(cluster, consumer_node), settings=settings()) as consumer,
    ):
        await consumer.queue.subscribe("orders", process, concurrency=20)

        async def produce() -> None:
            nonlocal resent, longest
            for n in range(total):
                message_id, began = f"m{n}", time.monotonic()
                while True:
                    try:  # retried with the same id: idempotent on the consumer's side
                        await producer.queue.publish("orders", n, message_id=message_id)
                        break
                    except BusUnavailable:
                        resent += 1
                        await asyncio.sleep(0.1)
                confirmed.add(message_id)
                longest = max(longest, time.monotonic() - began)
                await asyncio.sleep(0.02 / SCALE)

        producing = asyncio.create_task(produce())
        down = []
        for round_ in range(1, SCALE + 1):  # the suite: once; the long run: ten times
            share = round_ * total // (SCALE + 2)
            await eventually(
                lambda n=share: len(confirmed) >= n,  # type: ignore[misc]
                timeout=120,
                what=f"{share} sent",
            )
            if round_ > 1:  # the leader moved: stop the node that leads now
                leader = await leader_of(cluster, f"{app}.queue.orders")
            stopped_at = time.monotonic()
            await asyncio.to_thread(cluster.stop_node, leader)
            await asyncio.sleep(3)
            await asyncio.to_thread(cluster.start_node, leader)
            down.append(round(time.monotonic() - stopped_at, 1))
        await asyncio.wait_for(producing, 300 * SCALE)
        await eventually(
            lambda: confirmed <= set(consumed), timeout=120, what="every confirmed message"
        )
    lost = len(confirmed - set(consumed))
    duplicates = sum(count - 1 for count in consumed.values())
    report(
        capsys,
        "queue: leader node stopped",
        confirmed=len(confirmed),
        lost=lost,
        duplicates=duplicates,
        publishes_resent=resent,
        longest_publish_s=round(longest, 2),
        leader_stops=len(down),
        leader_down_s=max(down),
    )
    assert lost == 0
    assert longest <= 10.0


# (b) --------------------------------------------------------------------------------------


async def spawn_lock_worker(
    urls: str, app: str, key: str, redis_url: str, seconds: float
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.cluster.lock_worker",
        urls,
        app,
        key,
        redis_url,
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ),
    )


async def test_locks_never_overlap_when_nodes_die(
    all_nodes_up: RabbitCluster, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from redis.asyncio import Redis

    cluster = all_nodes_up
    app, key = unique_app(), "shared"
    redis = Redis.from_url(redis_url)
    seconds = 45.0 * SCALE
    ends = time.monotonic() + seconds  # the workers stop acquiring then
    workers = [
        await spawn_lock_worker(rotated(cluster, i), app, key, redis_url, seconds)
        for i in range(cluster.size)
    ]
    kills: list[tuple[str, float]] = []
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = await asyncio.wait_for(worker.stdout.readline(), 60)
            assert line.decode().strip() == "ready"
        await eventually_async(lambda: redis.llen(f"{app}:acquired"), at_least=5)
        for _round in range(SCALE):
            # the lock queue's leader node dies
            leader = await leader_of(cluster, f"{app}.lock.{key}")
            kills.append(("leader", time.time()))
            await asyncio.to_thread(cluster.kill_node, leader)
            await asyncio.sleep(2)
            await asyncio.to_thread(cluster.start_node, leader)
            # the node the holder is connected to dies while the holder runs its section
            port = text(await redis.get(f"{app}:holder_node"))
            holder = next(n.index for n in cluster.nodes if str(n.amqp_port) == port)
            kills.append(("holder's node", time.time()))
            await asyncio.to_thread(cluster.kill_node, holder)
            await asyncio.sleep(2)
            await asyncio.to_thread(cluster.start_node, holder)
        results = []
        for worker in workers:
            assert worker.stdout is not None
            left = max(0.0, ends - time.monotonic()) + 120
            results.append((await asyncio.wait_for(worker.stdout.readline(), left)).decode())
        acquired = sorted(float(t) for t in await redis.lrange(f"{app}:acquired", 0, -1))
        overlaps = int(await redis.get(f"{app}:overlaps") or 0)
        errors = collections.Counter(text(e) for e in await redis.lrange(f"{app}:errors", 0, -1))
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
            await worker.wait()
        await redis.delete(
            *(f"{app}:{k}" for k in ("holders", "overlaps", "holder_node", "acquired", "errors"))
        )
        await redis.aclose()
    resumed = {
        f"{what} {n}": round(min((t for t in acquired if t > at), default=float("inf")) - at, 2)
        for n, (what, at) in enumerate(kills)
    }
    report(
        capsys,
        "locks: leader node and holder's node killed",
        acquisitions=len(acquired),
        overlaps=overlaps,
        resumed_after_s=resumed,
        errors=dict(errors),
        workers=[r.strip() for r in results],
    )
    assert overlaps == 0
    assert all(seconds_ <= 10.0 for seconds_ in resumed.values()), resumed


def text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


async def eventually_async(get: Any, *, at_least: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (value := await get()) < at_least:
        assert time.monotonic() < deadline, f"only {value}, wanted {at_least}"
        await asyncio.sleep(0.1)


# (c) --------------------------------------------------------------------------------------


async def test_pubsub_reaches_an_instance_whose_node_stopped(
    all_nodes_up: RabbitCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = all_nodes_up
    app = unique_app()
    count = 200 * SCALE
    buses = [Bus(app, amqp_url=rotated(cluster, i), settings=settings()) for i in range(3)]
    recorders = [Recorder(f"r{i}") for i in range(3)]
    try:
        for bus, recorder in zip(buses, recorders, strict=True):
            await bus.start()
            await bus.pubsub.subscribe("news", recorder)
        await buses[0].pubsub.publish("news", "hello", skip_self=False)
        for recorder in recorders:
            await recorder.wait_for(1)
        back_after: list[float] = []
        lost_at: dict[int, float] = {}
        sent = 0
        for round_ in range(SCALE):  # the suite: once; the long run: ten times
            node = 2 - round_ % 3
            port = f":{cluster.nodes[node].amqp_port}/"
            moving = [t for t in map(transport_of, buses) if port in (t.node_url or "")]
            assert moving, f"no instance on node {node}"
            before = [t.reconnects for t in moving]
            for transport in moving:
                transport.connection.close_callbacks.add(
                    lambda *_, r=round_: lost_at.setdefault(r, time.monotonic())
                )
            stopped = time.monotonic()
            await asyncio.to_thread(cluster.stop_node, node)  # the TCP close reaches it at once
            await eventually(
                lambda m=moving, b=before: all(  # type: ignore[misc]
                    t.reconnects > n for t, n in zip(m, b, strict=True)
                ),
                timeout=30,
                what="failover",
            )
            back_after.append(round(time.monotonic() - lost_at.get(round_, stopped), 2))
            first = sent
            publisher = next((b for b in buses if transport_of(b) not in moving), buses[0])
            for n in range(count):
                await publisher.pubsub.publish("news", first + n, skip_self=False)
            sent += count
            for recorder in recorders:
                await eventually(
                    lambda r=recorder, f=first: set(range(f, f + count)) <= set(r.messages),  # type: ignore[misc]
                    timeout=60,
                    what=f"{recorder.name} got every message",
                )
            await asyncio.to_thread(cluster.start_node, node)
        expected = set(range(sent))
        report(
            capsys,
            "pubsub: subscriber's node stopped",
            node_stops=len(back_after),
            published_after=sent,
            missing=[len(expected - set(r.messages)) for r in recorders],
            back_after_close_s=max(back_after),
        )
        assert max(back_after) <= 5.0
    finally:
        await asyncio.gather(*(bus.stop() for bus in buses))


# (d) --------------------------------------------------------------------------------------


async def test_a_whole_cluster_restart_loses_no_pending_message(
    all_nodes_up: RabbitCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = all_nodes_up
    app = unique_app()
    plain, delayed = 200 * SCALE, 50 * SCALE
    async with Bus(app, amqp_url=rotated(cluster, 0), settings=settings()) as bus:
        for n in range(plain):
            await bus.queue.publish("backlog", n, message_id=f"p{n}")
        for n in range(delayed):
            await bus.queue.publish("backlog", -n - 1, message_id=f"d{n}", delay=3.0)
    restarted = time.monotonic()
    await asyncio.to_thread(cluster.stop_all)
    await asyncio.to_thread(cluster.start_all)
    restart_took = time.monotonic() - restarted
    seen: collections.Counter[str] = collections.Counter()

    async def process(_message: object, ctx: QueueContext) -> None:
        seen[ctx.id] += 1

    async with Bus(app, amqp_url=rotated(cluster, 1), settings=settings()) as bus:
        await bus.queue.subscribe("backlog", process, concurrency=50)
        wanted = {f"p{n}" for n in range(plain)} | {f"d{n}" for n in range(delayed)}
        await eventually(lambda: wanted <= set(seen), timeout=120, what="every pending message")
    report(
        capsys,
        "whole cluster restarted",
        pending=plain,
        delayed=delayed,
        lost=len(wanted - set(seen)),
        duplicates=sum(c - 1 for c in seen.values()),
        restart_s=round(restart_took, 1),
    )
