"""One claim on one lock queue: a consumer on a channel of its own, from the wait to the
give-back. The claim is the unit of failure: a channel that dies, a broker operation that
times out or a cancelled waiter affects this claim and no other key's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bus.amqp.transport import quietly
from managers.protocols import LostCallback

HEADER_TOKEN = "x-lock-token"
# A token's generation is an int; a forged header must not turn into an absurd one.
MAX_GENERATION = 2**62

ClaimState = Literal["waiting", "holding", "closed"]


def now_us() -> int:
    """Wall-clock microseconds: the floor of a new holder's generation."""
    return time.time_ns() // 1000


def token_of(message: AbstractIncomingMessage) -> int:
    """The generation a token message carries (0 when absent or forged)."""
    try:
        value = message.headers.get(HEADER_TOKEN)
    except Exception:  # headers that cannot be read are no generation
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GENERATION:
        return 0
    return value


class Claim:
    """One consumer on one lock queue.

    ``state``: ``waiting`` (deliveries go to ``inbox``), ``holding`` (the first delivery was
    taken: the lock is ours; duplicates are acked), ``closed`` (given back; a late delivery
    is handed on by ``on_late``). ``gone`` is set when the broker cancelled the consumer or
    the channel closed; ``on_lost`` is told only once the claim was handed to the caller
    (``handed_over``), so a loss before that is seen by the acquire itself.
    """

    def __init__(self, key: str, queue_name: str, channel: aio_pika.abc.AbstractChannel) -> None:
        self.key = key
        self.queue_name = queue_name
        self.channel = channel
        self.tag: str | None = None
        self.state: ClaimState = "waiting"
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.late: list[AbstractIncomingMessage] = []
        self.collected = False  # the give-back took what was received
        self.own: set[str] = set()
        self.held: AbstractIncomingMessage | None = None
        self.token = 0
        self.proposal = 0  # the generation of the token we published on arrival
        self.on_lost: LostCallback | None = None
        self.handed_over = False
        self.gone = asyncio.Event()
        self.gone_reason = ""
        self.background: set[asyncio.Task[None]] = set()
        self.inflight: set[asyncio.Task[Any]] = set()  # round trips on the channel
        self.broken = False  # a round trip failed: the channel is not reused
        self.detach: list[Callable[[], None]] = []  # removes our callbacks from the channel
        self.on_late: Callable[[Claim, AbstractIncomingMessage], None] | None = None

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """Consumer callback (each delivery in a task of its own)."""
        if self.state == "waiting":
            self.inbox.put_nowait(message)
        elif self.state == "holding":
            held = self.held
            if (
                held is not None
                and token_of(held) < self.token
                and message.message_id in self.own
                and token_of(message) >= self.token
            ):  # our token carrying our generation: hold it instead
                self.held = message
                message = held
            await quietly(message.ack)  # a duplicate token: one is enough
        elif self.on_late is not None:
            self.on_late(self, message)

    def spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work()`` for as long as the claim lives (cancelled at the give-back)."""

        async def run() -> None:
            try:
                await work()
            except Exception:
                self.broken = True

        task = asyncio.get_running_loop().create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def settled(self, task: asyncio.Task[Any]) -> None:
        """Done callback of a round trip on the channel (whose caller may be gone): its
        outcome is retrieved, and a failed one marks the channel as not reusable (aiormq
        may have closed it without saying so yet)."""
        self.inflight.discard(task)
        if task.cancelled() or task.exception() is not None:
            self.broken = True

    def lose(self, reason: str) -> None:
        """The consumer is gone (channel closed, consumer cancelled by the broker, broker
        silent): record it, and tell the holder if the claim was handed over."""
        if self.gone.is_set():
            return
        self.gone_reason = reason
        self.gone.set()
        if self.handed_over and self.state == "holding" and self.on_lost is not None:
            self.on_lost(reason)

    def received(self) -> list[AbstractIncomingMessage]:
        """Take every token delivered to this claim and not yet settled."""
        messages = [m for m in (self.held, *self.late) if m is not None]
        self.held = None
        self.late = []
        while not self.inbox.empty():
            messages.append(self.inbox.get_nowait())
        return messages
