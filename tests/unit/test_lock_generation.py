"""The fencing generation a new AMQP lock holder takes (``AmqpLocks._take``).

A generation is never above its holder's clock at the moment it took the lock, so a new
holder's generation is at least its own clock: strictly above every earlier holder's on
one host, even when the first token delivered to it is stale (a waiter's arrival token
stamped before the previous holder took the key, whose hand-on token has not arrived yet).
"""

from __future__ import annotations

from typing import Any, cast

from aio_pika.abc import AbstractIncomingMessage

from bus.amqp.lock_claims import HEADER_TOKEN, Claim, now_us
from bus.amqp.locks import AmqpLocks


class _Token:
    """A delivered token as ``_take`` reads it."""

    def __init__(self, generation: int, message_id: str, *, redelivered: bool = False) -> None:
        self.headers = {HEADER_TOKEN: generation}
        self.message_id = message_id
        self.redelivered = redelivered
        self.acked = False

    async def ack(self) -> None:
        self.acked = True


def _claim(proposal: int, own: set[str]) -> Claim:
    claim = Claim("k", "app.lock.k", cast(Any, object()))
    claim.proposal = proposal
    claim.own = own
    return claim


async def _take(claim: Claim, first: _Token, *rest: _Token) -> tuple[bool, bool]:
    for message in rest:
        claim.inbox.put_nowait(cast(AbstractIncomingMessage, message))
    locks = AmqpLocks.__new__(AmqpLocks)
    return await locks._take(claim, cast(AbstractIncomingMessage, first))


async def test_a_stale_own_arrival_token_does_not_lower_the_generation() -> None:
    # our arrival token was stamped long ago and reached the queue after the previous
    # holder (who took the key after our stamp) gave it back: it is the first we get
    stamped = now_us() - 5_000_000
    previous_holder = stamped + 1_000_000  # took the key after our stamp, before now
    claim = _claim(stamped, {"ours"})
    redelivered, carry = await _take(claim, _Token(stamped, "ours"))
    assert claim.token > previous_holder
    assert claim.state == "holding" and not redelivered
    assert carry  # the token in hand carries less: one carrying ours is published


async def test_the_generation_is_above_every_token_seen() -> None:
    ahead = now_us() + 60_000_000  # a generation from a host whose clock runs ahead
    claim = _claim(now_us(), set())
    first, extra = _Token(5, "a"), _Token(ahead, "b")
    await _take(claim, first, extra)
    assert claim.token == ahead + 1
    assert claim.held is cast(AbstractIncomingMessage, extra)
    assert first.acked and not extra.acked


async def test_generations_of_successive_takes_strictly_increase() -> None:
    previous = 0
    for turn in range(50):  # each holder is handed the previous one's token
        claim = _claim(0, {"ours"})
        await _take(claim, _Token(previous, f"hand-on {turn}"))
        assert claim.token > previous
        previous = claim.token
