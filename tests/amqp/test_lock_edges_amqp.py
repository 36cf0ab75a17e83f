"""Locks on the broker at their edges: a claim whose channel dies between the token's
delivery and the acquire returning, one key's trouble never reaching another key's lease,
nothing left on the lock queue after cancellations (issue 10, findings 1, 2 and 15)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bus import Bus
from bus.amqp.locks import AmqpLocks
from managers.names import lock_queue
from tests.conftest import eventually, fast_settings, unique_app

if TYPE_CHECKING:
    from bus.amqp.lock_claims import Claim
else:
    Claim = Any

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(180)]

Take = Callable[[AmqpLocks, Claim, AbstractIncomingMessage], Awaitable[tuple[bool, bool]]]


async def consumers(raw: AbstractChannel, queue: str) -> tuple[int, int]:
    """(consumers, ready messages) of ``queue`` as the broker sees them."""
    declared = (await raw.declare_queue(queue, passive=True)).declaration_result
    assert declared is not None
    return int(declared.consumer_count or 0), int(declared.message_count or 0)


@pytest.mark.parametrize("when", ["before_take", "after_take"])
async def test_a_claim_whose_channel_dies_after_delivery_is_never_handed_over(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """The channel closes right after the token came (before and after the claim took it):
    the acquire must not return a lease the broker already gave to the next waiter."""
    app = unique_app()
    settings = fast_settings()
    original: Take = AmqpLocks._take
    injected: list[str] = []

    async def take_then_die(
        self: AmqpLocks, claim: Claim, first: AbstractIncomingMessage
    ) -> tuple[bool, bool]:
        if not injected and when == "before_take":
            injected.append(claim.key)
            await claim.channel.close()
        taken = await original(self, claim, first)
        if not injected and when == "after_take":
            injected.append(claim.key)
            await claim.channel.close()
        return taken

    async with (
        Bus(app, amqp_url=amqp_url, settings=settings) as a,
        Bus(app, amqp_url=amqp_url, settings=settings) as b,
    ):
        monkeypatch.setattr(AmqpLocks, "_take", take_then_die)
        lease = await a.locks.acquire("k", timeout=20)
        monkeypatch.setattr(AmqpLocks, "_take", original)
        assert injected == ["k"]
        waiting = asyncio.get_running_loop().create_task(b.locks.acquire("k"))
        await asyncio.sleep(1.0)  # long enough for b to take a token the broker handed on
        assert not waiting.done() or lease.lost.is_set(), "two holders, neither told lost"
        if not lease.lost.is_set():
            await lease.release()
        got = await asyncio.wait_for(waiting, 10)
        await got.release()


async def test_trouble_on_one_key_never_loses_another_keys_lease(amqp_url: str) -> None:
    """Cancel waits on key X at many points (a cancelled broker operation closes the channel
    it ran on): the lease on key Y of the same bus stays held throughout."""
    app = unique_app()
    settings = fast_settings()
    async with (
        Bus(app, amqp_url=amqp_url, settings=settings) as a,
        Bus(app, amqp_url=amqp_url, settings=settings) as b,
    ):
        held_y = await a.locks.acquire("y", ttl=120)
        held_x = await b.locks.acquire("x", ttl=120)
        for point in range(0, 60, 2):
            task = asyncio.get_running_loop().create_task(a.locks.acquire("x"))
            for _ in range(point):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert not held_y.lost.is_set(), f"lease on y lost after a cancel at point {point}"
        await held_x.release()
        await held_y.release()


async def test_no_consumer_or_token_is_left_behind_by_cancelled_waiters(
    amqp_url: str, raw: AbstractChannel
) -> None:
    app = unique_app()
    settings = fast_settings()
    async with (
        Bus(app, amqp_url=amqp_url, settings=settings) as a,
        Bus(app, amqp_url=amqp_url, settings=settings) as b,
    ):
        lease = await a.locks.acquire("k")
        for point in range(0, 30, 3):
            task = asyncio.get_running_loop().create_task(b.locks.acquire("k"))
            for _ in range(point):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        queue = lock_queue(app, "k")

        async def only_the_holder() -> bool:
            return (await consumers(raw, queue))[0] == 1

        deadline = asyncio.get_running_loop().time() + settings.publish_timeout
        while not await only_the_holder():
            assert asyncio.get_running_loop().time() < deadline, "a waiter stayed on the queue"
            await asyncio.sleep(0.05)
        await lease.release()
        again = await b.locks.acquire("k", timeout=settings.publish_timeout)
        await again.release()
        await eventually(lambda: not again.lost.is_set(), what="released cleanly")


@pytest.mark.parametrize("direction", ["both", "up", "down"])
async def test_a_stalled_holder_is_told_lost_before_the_next_holder_enters(
    amqp_url: str, direction: Literal["both", "up", "down"]
) -> None:
    """The network of the holder stops forwarding (sockets stay open: only heartbeats can
    tell). The holder must know its lease is lost before the broker hands the token on."""
    from tests.faults.proxy import FaultProxy

    app = unique_app()
    settings = fast_settings(heartbeat=2)
    async with (
        FaultProxy.in_front_of(amqp_url) as proxy,
        Bus(app, amqp_url=proxy.url(), settings=settings) as holder,
        Bus(app, amqp_url=amqp_url, settings=settings) as other,
    ):
        lease = await holder.locks.acquire("k", ttl=600)
        order: list[str] = []

        async def told() -> None:
            await lease.lost.wait()
            order.append("holder told lost")

        async def next_holder() -> None:
            got = await other.locks.acquire("k")
            order.append("next holder entered")
            await got.release()

        watching = asyncio.get_running_loop().create_task(told())
        waiting = asyncio.get_running_loop().create_task(next_holder())
        await asyncio.sleep(0.3)
        proxy.stall(direction)
        await asyncio.wait_for(watching, 30)
        if direction != "down":  # the broker still hears the holder when only "down" stalls
            await asyncio.wait_for(waiting, 60)
            assert order == ["holder told lost", "next holder entered"]
        proxy.unstall(direction)
        await asyncio.wait_for(waiting, 60)
        assert order[0] == "holder told lost"
