"""Lock users in processes of their own, for the stress and crash tests.

``python -m tests.amqp.lock_worker stress AMQP_URL APP KEY COUNT REDIS_URL``: COUNT
acquisitions of KEY; inside each, INCR a Redis counter of holders, check it was 0 before,
yield, DECR it; prints ``overlaps <n> done <count>``.

``python -m tests.amqp.lock_worker hold AMQP_URL APP KEY``: acquires KEY, prints ``held``,
and holds it until killed.
"""

from __future__ import annotations

import asyncio
import sys

from bus import Bus, Settings


async def stress(url: str, app: str, key: str, count: int, redis_url: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    holders, done = f"{app}:holders", f"{app}:done"
    overlaps = 0
    settings = Settings(log_level="WARNING", log_format="console")
    async with Bus(app, amqp_url=url, settings=settings) as bus:
        print("ready", flush=True)
        for _ in range(count):
            async with bus.locks.lock(key, ttl=30):
                if await redis.incr(holders) != 1:
                    overlaps += 1
                await asyncio.sleep(0)
                await redis.decr(holders)
                await redis.incr(done)
    await redis.aclose()
    print(f"overlaps {overlaps} done {count}", flush=True)


async def hold(url: str, app: str, key: str) -> None:
    settings = Settings(log_level="WARNING", log_format="console")
    async with Bus(app, amqp_url=url, settings=settings) as bus:
        await bus.locks.acquire(key, ttl=600)
        print("held", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "stress":
        url, app, key, count, redis_url = rest
        asyncio.run(stress(url, app, key, int(count), redis_url))
    else:
        asyncio.run(hold(*rest[:3]))
