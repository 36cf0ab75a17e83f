"""A queue consumer in a process of its own, for tests that kill it with SIGKILL.

``python -m tests.amqp.queue_worker AMQP_URL APP CHANNEL`` consumes CHANNEL and prints
``started <message id>`` for every message it starts, then hangs in the handler forever.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from bus import Bus, Settings
from managers.queue import QueueContext


async def main(url: str, app: str, channel: str) -> None:
    settings = Settings(log_level="WARNING", log_format="console")
    async with Bus(app, amqp_url=url, settings=settings) as bus:

        async def hang(message: Any, ctx: QueueContext) -> None:
            print(f"started {ctx.id}", flush=True)
            await asyncio.Event().wait()

        await bus.queue.subscribe(channel, hang)
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
