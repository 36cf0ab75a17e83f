"""A publish cancelled at any point leaves nothing behind (issue 10, "Cancellation is never a
leak"): the declares a first publish makes run to their end whatever happens to the caller,
so the channel every other publish of the instance shares is never closed under them."""

from __future__ import annotations

import asyncio

import pytest

from bus import Bus
from tests.conftest import fast_settings, unique_app

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(180)]


@pytest.mark.parametrize("kind", ["pubsub", "queue"])
async def test_cancelled_first_publishes_never_break_the_others(amqp_url: str, kind: str) -> None:
    app = unique_app()
    async with Bus(app, amqp_url=amqp_url, settings=fast_settings()) as bus:
        failures: list[BaseException] = []
        done = asyncio.Event()

        async def publish(channel: str, message: object) -> None:
            if kind == "pubsub":
                await bus.pubsub.publish(channel, message)
            else:
                await bus.queue.publish(channel, message)

        async def steady() -> int:
            sent = 0
            while not done.is_set():
                try:
                    await publish("steady", sent)
                    sent += 1
                except Exception as exc:  # any failure here is the bug
                    failures.append(exc)
                await asyncio.sleep(0)
            return sent

        steady_task = asyncio.get_running_loop().create_task(steady())
        for point in range(24):
            # a channel never published on: its first publish declares (a round trip)
            task = asyncio.get_running_loop().create_task(publish(f"fresh-{point}", point))
            for _ in range(point):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        done.set()
        sent = await steady_task
        assert failures == []
        assert sent > 0
        for point in range(24):  # and every channel works afterwards
            await publish(f"fresh-{point}", "again")
