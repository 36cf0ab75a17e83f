"""The cluster harness: three nodes come up, share a quorum queue, survive a kill, go away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from tests.cluster.harness import RabbitCluster, epmd_names, port_open

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RabbitCluster]:
    """A fresh 3-node cluster of its own, torn down afterwards.

    Other names and ports than the session cluster of ``conftest.py`` (cbcluster*, 5681+),
    so this test never disturbs it: cbharness1..3@localhost on 5691..5693.
    """
    harness = RabbitCluster(tmp_path / "cluster", prefix="cbharness", first_port=5691)
    try:
        harness.start()
        yield harness
    finally:
        harness.teardown()


async def _connect(url: str) -> aio_pika.abc.AbstractRobustConnection:
    return await aio_pika.connect_robust(url, timeout=10)


async def _share_quorum_queue(cluster: RabbitCluster) -> str:
    """Declare a quorum queue through node 1, publish; see and consume it through node 3.

    Also declares a classic queue ``<name>-classic`` through node 3 (so hosted there).
    """
    queue_name = f"cb-harness-{uuid.uuid4().hex[:8]}"
    first = await _connect(cluster.nodes[0].url)
    third = await _connect(cluster.nodes[2].url)
    try:
        channel = await first.channel()
        await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(
            aio_pika.Message(b"hello", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue_name,
        )
        remote = await third.channel()
        seen = await remote.declare_queue(queue_name, passive=True)
        assert seen.declaration_result.message_count == 1
        message = await seen.get(timeout=10)
        assert message.body == b"hello"
        await message.ack()
        await remote.declare_queue(f"{queue_name}-classic", durable=True)  # hosted on node 3
    finally:
        await first.close()
        await third.close()
    return queue_name


async def _kill_and_restart_second(cluster: RabbitCluster, queue_name: str) -> None:
    """Kill node 2: the others stay up; start it again: it is back in running_nodes."""
    names = {node.name for node in cluster.nodes}
    await asyncio.to_thread(cluster.kill_node, 1)
    assert not cluster.running(1)
    assert not port_open(cluster.nodes[1].amqp_port)
    assert cluster.running(0)
    assert cluster.running(2)
    view = await asyncio.to_thread(cluster.cluster_view, 0)
    assert view == names - {cluster.nodes[1].name}

    await asyncio.to_thread(cluster.start_node, 1)
    assert cluster.running(1)
    for i in range(3):
        assert await asyncio.to_thread(cluster.cluster_view, i) == names
    second = await _connect(cluster.nodes[1].url)
    try:  # the quorum queue is still there, seen through the restarted node
        channel = await second.channel()
        await channel.declare_queue(queue_name, passive=True)
    finally:
        await second.close()


async def _teardown_leaves_default_broker(cluster: RabbitCluster) -> None:
    """Teardown closes every port of the cluster; the default broker still answers."""
    default_before = epmd_names().get("rabbit")
    await asyncio.to_thread(cluster.teardown)
    for node in cluster.nodes:
        assert not port_open(node.amqp_port), node.name
        assert not port_open(node.dist_port), node.name
        assert node.short_name not in epmd_names()
    assert not cluster.base_dir.exists()
    assert epmd_names().get("rabbit") == default_before  # the default broker is untouched
    default = await aio_pika.connect(DEFAULT_BROKER_URL, timeout=10)
    await default.close()


async def test_cluster_harness(own_cluster: RabbitCluster) -> None:
    """Bring-up, cross-node quorum queue, kill and restart of a node, clean teardown."""
    cluster = own_cluster
    assert cluster.bring_up_seconds is not None
    print(f"\ncluster up in {cluster.bring_up_seconds:.1f} s: {cluster.url_list()}")
    for url in cluster.urls():  # every node accepts an AMQP connection
        connection = await _connect(url)
        assert not connection.is_closed
        await connection.close()

    queue_name = await _share_quorum_queue(cluster)
    assert await asyncio.to_thread(cluster.queue_leader, queue_name) in {0, 1, 2}
    assert await asyncio.to_thread(cluster.queue_leader, f"{queue_name}-classic") == 2
    assert await asyncio.to_thread(cluster.queue_leader, "no-such-queue") is None

    await _kill_and_restart_second(cluster, queue_name)
    await _teardown_leaves_default_broker(cluster)
