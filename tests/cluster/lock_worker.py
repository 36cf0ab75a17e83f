"""A lock user in a process of its own, for the cluster chaos test.

``python -m tests.cluster.lock_worker URLS APP KEY REDIS_URL SECONDS``: for SECONDS,
acquire KEY again and again (quorum lock queues, URLs tried in the order given, so the
process sits on the first URL's node first). Inside each section: INCR the Redis holder counter (a
value above 1 is an overlap: INCR ``overlaps``), record the node this process is connected
to (``holder_node``) and the time (RPUSH ``acquired``), hold for a fifth of a second,
DECR. Prints ``ready`` once started and ``done <acquisitions>`` at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time

from bus import Bus, BusError, LockLost, Settings
from bus.amqp import AmqpTransport

SECTION = 0.2


def node_of(bus: Bus) -> str:
    transport = getattr(bus._backend, "transport", None)
    url = transport.node_url if isinstance(transport, AmqpTransport) else None
    return (url or "?").rsplit(":", 1)[-1].split("/")[0]  # the port


async def run(urls: str, app: str, key: str, redis_url: str, seconds: float) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    settings = Settings(
        amqp_url=urls,
        amqp_failover="in_order",
        lock_queue_type="quorum",
        queue_type="quorum",
        heartbeat=2,
        reconnect_interval=0.5,
        publish_timeout=5,
        connect_timeout=10,
        log_level="WARNING",
        log_format="console",
    )
    acquisitions = 0
    async with Bus(app, settings=settings) as bus:
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                async with bus.locks.lock(key, ttl=30, timeout=30):
                    try:
                        if await redis.incr(f"{app}:holders") != 1:
                            await redis.incr(f"{app}:overlaps")
                        await redis.set(f"{app}:holder_node", node_of(bus))
                        await redis.rpush(f"{app}:acquired", repr(time.time()))
                        acquisitions += 1
                        await asyncio.sleep(SECTION)
                    finally:
                        await redis.decr(f"{app}:holders")
            except (BusError, LockLost) as exc:  # an outage: wait a little, try again
                await redis.rpush(f"{app}:errors", type(exc).__name__)
                await asyncio.sleep(0.1)
    await redis.aclose()
    print(f"done {acquisitions}", flush=True)


if __name__ == "__main__":
    urls, app, key, redis_url, seconds = sys.argv[1:6]
    asyncio.run(run(urls, app, key, redis_url, float(seconds)))
