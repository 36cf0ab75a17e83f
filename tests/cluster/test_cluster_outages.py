"""A classic queue whose node is down is an outage: ``BusUnavailable``, and lock waits that
end in ``LockAcquireError``, never a raw ``BusError`` (``NOT_FOUND - home node ... is
down``)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bus import Bus, BusUnavailable, LockAcquireError
from tests.cluster.harness import RabbitCluster
from tests.cluster.test_cluster_chaos import leader_of, other_than, rotated, settings
from tests.conftest import unique_app

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


async def _idle_process(message: object, ctx: object) -> None:
    await asyncio.sleep(0)


async def test_a_classic_queue_on_a_dead_node_is_unavailable(
    all_nodes_up: RabbitCluster,
) -> None:
    cluster = all_nodes_up
    app = unique_app()
    classic = settings(queue_type="classic", lock_queue_type="classic")
    async with Bus(app, amqp_url=rotated(cluster, 0), settings=classic) as bus:
        await bus.queue.publish("jobs", "before")
        async with bus.locks.lock("k"):  # the lock queue now exists on node 0
            pass
    home = await leader_of(cluster, f"{app}.queue.jobs")
    lock_home = await leader_of(cluster, f"{app}.lock.k")
    assert home == lock_home == 0  # classic queues live on the node that declared them
    elsewhere = other_than(cluster, home)
    await asyncio.to_thread(cluster.stop_node, home)
    try:
        async with Bus(app, amqp_url=rotated(cluster, elsewhere), settings=classic) as bus:
            with pytest.raises(BusUnavailable, match="down"):
                await bus.queue.publish("jobs", "while its node is down")
            with pytest.raises(BusUnavailable):
                await bus.queue.subscribe("jobs", _idle_process)
            began = time.monotonic()
            with pytest.raises(LockAcquireError):  # retried within the timeout, then this
                await bus.locks.acquire("k", timeout=2.0)
            assert 1.5 <= time.monotonic() - began <= 6.0
            with pytest.raises(LockAcquireError):
                await bus.locks.try_acquire("k")
    finally:
        await asyncio.to_thread(cluster.start_node, home)
    bus = Bus(app, amqp_url=rotated(cluster, elsewhere), settings=classic)
    async with bus, bus.locks.lock("k", timeout=30):  # back with its node
        pass
