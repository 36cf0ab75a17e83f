"""No input stops a consumer: raw messages a peer can put on the broker (out-of-range or
non-UTF-8 properties, headers nested thousands deep, bad msgpack, huge or deeply nested
bodies, forged queue headers) are injected with :mod:`tests.faults.inject`. Each time the
consumer keeps consuming (a good message published afterwards arrives), the connection is
never lost, and the bad message is dropped (pub/sub) or parked with the reason (event queue),
logged once with its id."""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any

import pytest

from bus import Bus
from bus.codec import MsgpackCodec
from managers.queue_messages import MAX_HEADER_COUNT, MAX_HEADER_TIMEOUT, QueueContext
from tests.conftest import Recorder, eventually, fast_settings, unique_app
from tests.faults.inject import Injector, Timestamp, nested_field
from tests.shared.test_queue import wait_dead

pytestmark = pytest.mark.amqp

Logs = list[MutableMapping[str, Any]]

LIMIT = 64 * 1024  # max_message_bytes of the consuming buses
GOOD_BODY = MsgpackCodec(LIMIT).encode({"payload": "fine"}, channel="c")

Poison = tuple[str, dict[str, Any], dict[Any, Any] | None, bytes, str]
"""(case id, properties, headers, body, what the reason says)"""

POISONS: list[Poison] = [
    (
        "timestamp-2**63-1",
        {"timestamp": 2**63 - 1},
        None,
        GOOD_BODY,
        "timestamp 9223372036854775807",
    ),
    ("timestamp-2**64-1", {"timestamp": 2**64 - 1}, None, GOOD_BODY, "is out of range"),
    ("header-timestamp", {}, {"x-when": Timestamp(2**63 - 1)}, GOOD_BODY, "is out of range"),
    ("content-type-not-utf8", {"content_type": b"\xc3("}, None, GOOD_BODY, "not UTF-8"),
    ("header-name-not-utf8", {}, {b"x-\xff": 1}, GOOD_BODY, "header name is not UTF-8"),
    ("headers-5000-deep", {}, {"x-n": nested_field(5000)}, GOOD_BODY, "nested deeper"),
    ("arrays-5000-deep", {}, {"x-n": nested_field(5000, kind="array")}, GOOD_BODY, "deeper"),
    ("bad-msgpack", {}, None, b"\xc1\xc1", "not valid msgpack"),
    ("body-50000-deep", {}, None, b"\x91" * 50_000 + b"\xc0", "not valid msgpack"),
    ("body-over-max", {}, None, b"\x00" * (2 * LIMIT), "over max_message_bytes"),
]
POISON_IDS = [case[0] for case in POISONS]


def settings() -> Any:
    return fast_settings(max_message_bytes=LIMIT)


def assert_connection_kept(logs: Logs) -> None:
    lost = [e for e in logs if e.get("event") == "amqp.connection_lost"]
    assert not lost, f"a consumer's connection was lost: {lost}"


def assert_logged_once(logs: Logs, event: str, message_id: str) -> None:
    found = [e for e in logs if e.get("event") == event and e.get("message_id") == message_id]
    assert len(found) == 1, f"{event} for {message_id!r}: {found}"


@pytest.mark.parametrize("poison", POISONS, ids=POISON_IDS)
async def test_a_poisonous_queue_message_is_parked_and_the_consumer_keeps_consuming(
    amqp_url: str, debug_logs: Logs, poison: Poison
) -> None:
    case, props, headers, body, reason = poison
    app = unique_app()
    seen: list[object] = []

    async def process(message: object, ctx: QueueContext) -> None:
        seen.append(message)

    async with Bus(app, amqp_url=amqp_url, settings=settings()) as bus:
        await bus.queue.subscribe("jobs", process)
        async with Injector(amqp_url) as injector:
            await injector.publish(
                routing_key=f"{app}.queue.jobs",
                body=body,
                properties={"message_id": f"poison-{case}", **props},
                headers=headers,
            )
        await bus.queue.publish("jobs", "good")
        await eventually(lambda: "good" in seen, what="the good message after the poison")
        [letter] = await wait_dead(bus, "jobs", 1)
        assert letter.id == f"poison-{case}"
        assert reason in letter.error, letter.error
        assert seen == ["good"]
        # parked with clean properties: the dead letter can be read (and replayed)
        assert letter.message in ({"payload": "fine"}, body)
    assert_connection_kept(debug_logs)
    assert_logged_once(debug_logs, "queue.malformed", f"poison-{case}")


async def test_a_message_id_that_is_not_utf8_is_parked_under_a_readable_id(
    amqp_url: str, debug_logs: Logs
) -> None:
    app = unique_app()
    async with Bus(app, amqp_url=amqp_url, settings=settings()) as bus:
        good = Recorder("good")

        async def process(message: Any, ctx: QueueContext) -> None:
            await good(message)

        await bus.queue.subscribe("jobs", process)
        async with Injector(amqp_url) as injector:
            await injector.publish(
                routing_key=f"{app}.queue.jobs",
                body=GOOD_BODY,
                properties={"message_id": b"poison-\xff\xfe", "timestamp": 2**63 - 1},
            )
        await bus.queue.publish("jobs", "good")
        await good.wait_for(1)
        [letter] = await wait_dead(bus, "jobs", 1)
        assert letter.id == "poison-\ufffd\ufffd"
        assert "not UTF-8" in letter.error and "out of range" in letter.error
        assert good.messages == ["good"]
    assert_connection_kept(debug_logs)


FORGED: list[dict[str, Any]] = [
    {"x-attempt": "abc", "x-max-retries": -5, "x-timeout": 0},
    {"x-attempt": 2**63 - 1, "x-max-retries": 2**63 - 1, "x-timeout": 2**62},
    {"x-attempt": 1.5e300, "x-timeout": -1.0e300, "x-not-before": "soon"},
    {"x-sender": b"\xff\xfe", "x-trace-id": 7, "x-not-before": -(2**63)},
    {"x-attempt": [1, 2], "x-max-retries": {"a": 1}, "x-timeout": True},
]


async def test_forged_queue_headers_are_parked_with_the_reason_and_consuming_goes_on(
    amqp_url: str, debug_logs: Logs
) -> None:
    """Headers present but not valid are parked naming them (never run with made-up
    values); valid odd ones (a not-before long past) run."""
    app = unique_app()
    calls: list[tuple[object, QueueContext]] = []

    async def process(message: object, ctx: QueueContext) -> None:
        calls.append((message, ctx))

    async with Bus(app, amqp_url=amqp_url, settings=settings()) as bus:
        await bus.queue.subscribe("jobs", process)
        codec = MsgpackCodec(LIMIT)
        async with Injector(amqp_url) as injector:
            for n, headers in enumerate(FORGED):
                await injector.publish(
                    routing_key=f"{app}.queue.jobs",
                    body=codec.encode(f"forged-{n}", channel="jobs"),
                    properties={"message_id": f"forged-{n}"},
                    headers=headers,
                )
        await bus.queue.publish("jobs", "good")
        await eventually(
            lambda: "good" in [m for m, _ in calls], what="the good message after the forged"
        )
        letters = await wait_dead(bus, "jobs", len(FORGED) - 1)
    dead = {d.id: d.error for d in letters}
    assert set(dead) == {f"forged-{n}" for n in (0, 1, 2, 4)}
    assert sorted(str(m) for m, _ in calls) == ["forged-3", "good"]
    for n, names in [
        (0, ["x-attempt", "x-max-retries", "x-timeout"]),
        (1, ["x-attempt", "x-max-retries", "x-timeout"]),
        (2, ["x-attempt", "x-timeout", "x-not-before"]),
        (4, ["x-attempt", "x-max-retries", "x-timeout"]),
    ]:
        assert dead[f"forged-{n}"].startswith("malformed headers: ")
        for name in names:
            assert f"{name}=" in dead[f"forged-{n}"], dead[f"forged-{n}"]
        assert_logged_once(debug_logs, "queue.malformed", f"forged-{n}")
    for _, ctx in calls:
        assert 0 <= ctx.attempt <= MAX_HEADER_COUNT and 0 <= ctx.max_retries <= MAX_HEADER_COUNT
        assert math.isfinite(ctx.timeout) and 0 < ctx.timeout <= MAX_HEADER_TIMEOUT
        assert math.isfinite(ctx.deadline)
    assert_connection_kept(debug_logs)


@pytest.mark.parametrize("poison", POISONS, ids=POISON_IDS)
async def test_a_poisonous_broadcast_is_dropped_and_logged_once(
    amqp_url: str, debug_logs: Logs, poison: Poison
) -> None:
    case, props, headers, body, reason = poison
    app = unique_app()
    recorder = Recorder()
    async with (
        Bus(app, amqp_url=amqp_url, settings=settings()) as bus,
        Bus(app, amqp_url=amqp_url, settings=settings()) as peer,
    ):
        await bus.pubsub.subscribe("news", recorder)
        async with Injector(amqp_url) as injector:
            await injector.publish(
                exchange=f"{app}.pubsub.news",
                routing_key="",
                body=body,
                properties={"message_id": f"poison-{case}", **props},
                headers=headers,
            )
        await peer.pubsub.publish("news", "good")
        await recorder.wait_for(1)
        await eventually(
            lambda: any(e.get("event") == "pubsub.malformed" for e in debug_logs),
            what="the poison was logged",
        )
        assert recorder.messages == ["good"]
    assert_connection_kept(debug_logs)
    assert_logged_once(debug_logs, "pubsub.malformed", f"poison-{case}")
    [event] = [e for e in debug_logs if e.get("event") == "pubsub.malformed"]
    assert reason in event["error"]


async def test_a_poisonous_message_on_a_lock_queue_leaves_the_key_acquirable(
    amqp_url: str, debug_logs: Logs
) -> None:
    app = unique_app()
    async with (
        Bus(app, amqp_url=amqp_url, settings=settings()) as a,
        Bus(app, amqp_url=amqp_url, settings=settings()) as b,
    ):
        lease = await a.locks.acquire("k", ttl=30.0)  # the lock queue exists while held
        async with Injector(amqp_url) as injector:
            await injector.publish(
                routing_key=f"{app}.lock.k",
                body=b"\xc1",
                properties={"message_id": "poison-lock", "timestamp": 2**63 - 1},
                headers={"x-n": nested_field(5000)},
            )
        await lease.release()
        second = await b.locks.acquire("k", timeout=10.0)
        assert not second.lost.is_set()
        await second.release()
        async with a.locks.lock("k", timeout=10.0) as third:
            assert not third.lost.is_set()
        async with b.locks.lock("k", timeout=10.0):
            pass
    assert_connection_kept(debug_logs)
