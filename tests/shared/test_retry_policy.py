"""Consumer-side retry policy, on both backends: a subscription's ``max_retries`` and
``timeout`` apply to messages published without their own, ``retry_on`` sends other
exceptions straight to the dead queue, and a dead letter keeps the exception's type and a
sanitised traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus import Bus, BusError, DeadLetter, MemoryHub, QueueContext
from managers.queue_messages import MAX_TRACEBACK_BYTES
from tests.conftest import BusFactory, eventually, fast_settings, unique_app

SECRET = "".join(["hunter", "2"])


async def _dead(bus: Bus, channel: str, count: int = 1) -> list[DeadLetter]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while len(letters := await bus.queue.dead_letters(channel)) < count:
        assert loop.time() < deadline, f"no {count} dead letter(s) on {channel}"
        await asyncio.sleep(0.05)
    return letters


async def test_the_subscriptions_defaults_apply_to_messages_without_their_own(
    make_bus: BusFactory,
) -> None:
    bus = await make_bus()
    seen: list[tuple[int, int, float]] = []

    async def fail(message: object, ctx: QueueContext) -> None:
        seen.append((ctx.attempt, ctx.max_retries, ctx.timeout))
        raise ConnectionError("downstream is down")

    await bus.queue.subscribe("jobs", fail, max_retries=2, timeout=0.5)
    await bus.queue.publish("jobs", {"n": 1})
    (letter,) = await _dead(bus, "jobs")
    assert seen == [(0, 2, 0.5), (1, 2, 0.5), (2, 2, 0.5)]
    assert letter.attempts == 3

    seen.clear()
    await bus.queue.purge_dead("jobs")
    await bus.queue.publish("jobs", {"n": 2}, max_retries=0, timeout=1.0)  # its own win
    (letter,) = await _dead(bus, "jobs")
    assert seen == [(0, 0, 1.0)] and letter.attempts == 1


async def test_without_defaults_the_old_ones_hold(make_bus: BusFactory) -> None:
    bus = await make_bus()
    seen: list[tuple[int, float]] = []

    async def ok(message: object, ctx: QueueContext) -> None:
        seen.append((ctx.max_retries, ctx.timeout))

    await bus.queue.subscribe("jobs", ok)
    await bus.queue.publish("jobs", 1)
    await eventually(lambda: seen == [(0, 15.0)], what="15 s and no retry")


async def test_retry_on_sends_other_exceptions_to_the_dead_queue_at_once(
    make_bus: BusFactory,
) -> None:
    bus = await make_bus()
    attempts: dict[str, int] = {}

    async def process(message: str, ctx: QueueContext) -> None:
        attempts[message] = ctx.attempt + 1
        if message == "bug":
            raise ValueError("a bug: retrying will not help")
        if message == "slow":
            await asyncio.sleep(5)
        raise ConnectionError("try again")

    await bus.queue.subscribe(
        "jobs", process, max_retries=2, timeout=0.3, retry_on=(ConnectionError, TimeoutError)
    )
    for message in ("bug", "flaky", "slow"):
        await bus.queue.publish("jobs", message)
    letters = {letter.message: letter for letter in await _dead(bus, "jobs", 3)}
    assert attempts == {"bug": 1, "flaky": 3, "slow": 3}
    bug = letters["bug"]
    assert bug.attempts == 1 and bug.error_type == "ValueError"
    assert bug.error.startswith("ValueError: a bug")
    assert "not retried: ValueError is not in retry_on" in bug.error
    assert letters["flaky"].error_type == "ConnectionError"
    assert letters["slow"].error_type == "TimeoutError"


async def test_a_dead_letter_keeps_a_sanitised_traceback(make_bus: BusFactory) -> None:
    bus = await make_bus()

    async def leaky_handler(message: object, ctx: QueueContext) -> None:
        password = SECRET  # a local only: a traceback never shows locals
        raise RuntimeError(f"cannot reach amqp://app:{password}@db:5672/ ({len(password)})")

    await bus.queue.subscribe("jobs", leaky_handler)
    await bus.queue.publish("jobs", 1)
    (letter,) = await _dead(bus, "jobs")
    assert letter.error_type == "RuntimeError"
    assert "Traceback (most recent call last)" in letter.traceback
    assert "leaky_handler" in letter.traceback
    assert "RuntimeError: cannot reach amqp://app:***@db:5672/" in letter.traceback
    assert SECRET not in letter.traceback and SECRET not in letter.error


async def test_a_long_traceback_is_cut_keeping_its_end(make_bus: BusFactory) -> None:
    bus = await make_bus()

    async def huge(message: object, ctx: QueueContext) -> None:
        raise ValueError("x" * 100_000 + " the end")

    await bus.queue.subscribe("jobs", huge)
    await bus.queue.publish("jobs", 1)
    (letter,) = await _dead(bus, "jobs")
    assert len(letter.traceback.encode()) <= MAX_TRACEBACK_BYTES
    assert letter.traceback.startswith("[... the start of the traceback was cut ...]")
    assert letter.traceback.rstrip().endswith("the end")


async def test_bad_policies_are_refused_at_subscribe(make_bus: BusFactory) -> None:
    bus = await make_bus()

    async def process(message: object, ctx: QueueContext) -> None:
        return None

    with pytest.raises(TypeError, match="retry_on for channel 'jobs'"):
        await bus.queue.subscribe("jobs", process, retry_on="ValueError")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry_on for channel 'jobs'"):
        await bus.queue.subscribe("jobs", process, retry_on=())
    with pytest.raises(ValueError, match="max_retries must be an int"):
        await bus.queue.subscribe("jobs", process, max_retries=-1)
    with pytest.raises(BusError, match="exceeds consumer_timeout"):
        await bus.queue.subscribe("jobs", process, timeout=10_000.0)
    await bus.queue.subscribe("jobs", process, retry_on=ValueError)  # nothing was left behind


async def test_memory_mode_saves_the_traceback_with_the_dead_letter(tmp_path: Path) -> None:
    app, storage = unique_app(), tmp_path / "saved"

    async def fail(message: object, ctx: QueueContext) -> None:
        raise KeyError("missing")

    async with Bus(app, hub=MemoryHub(), settings=fast_settings(storage_dir=storage)) as bus:
        await bus.queue.subscribe("jobs", fail)
        await bus.queue.publish("jobs", 1)
        (before,) = await _dead(bus, "jobs")
    async with Bus(app, hub=MemoryHub(), settings=fast_settings(storage_dir=storage)) as again:
        (after,) = await again.queue.dead_letters("jobs")
    assert after.error_type == before.error_type == "KeyError"
    assert after.traceback == before.traceback and "KeyError: 'missing'" in after.traceback
