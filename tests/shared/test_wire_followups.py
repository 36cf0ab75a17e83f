"""Follow-ups of issue 10 on what reaches and leaves the wire, on both backends:

- forged or non-numeric queue headers are parked in the dead queue with a reason naming
  them (never run with made-up values), logged once with the message id; absent headers
  take their defaults; ``x-timeout`` is bounded by ``consumer_timeout``;
- pub/sub (and sync) exchange names are checked against the 255-byte limit at the call;
- a pub/sub handler that awaits ``bus.stop()`` completes;
- ``retry_delay`` and ``retry_delay_max`` are bounded so that delay tiers stay valid;
- instance ids stay short whatever the host name.
"""

from __future__ import annotations

import socket
from collections.abc import MutableMapping
from typing import Any

import pytest
from pydantic import ValidationError

from bus import Bus, Settings
from bus.codec import MsgpackCodec
from bus.errors import InvalidName
from bus.instance import MAX_HOST_LENGTH, new_instance_id
from managers.envelope import Envelope
from managers.names import (
    MAX_APP_LENGTH,
    MAX_DELAY,
    MAX_EXCHANGE_BYTES,
    MAX_INSTANCE_ID_LENGTH,
    MAX_NAME_BYTES,
    instance_queue,
)
from managers.queue_messages import QueueContext
from tests.conftest import AMQP_URL, BusFactory, Recorder, eventually, unique_app
from tests.faults.inject import inject
from tests.shared.test_queue import wait_dead

Logs = list[MutableMapping[str, Any]]

codec = MsgpackCodec(max_message_bytes=1 << 20)

CONSUMER_TIMEOUT = 60.0

# (message id, forged headers, the header names the reason must show); each value can travel
# over AMQP as well (RabbitMQ may refuse NaN and infinities: the memory-only cases add them)
FORGED: list[tuple[str, dict[str, Any], list[str]]] = [
    ("text-attempt", {"x-attempt": "abc"}, ["x-attempt"]),
    ("bool-retries", {"x-max-retries": True}, ["x-max-retries"]),
    ("zero-timeout", {"x-timeout": 0}, ["x-timeout"]),
    ("over-consumer-timeout", {"x-timeout": int(CONSUMER_TIMEOUT * 1000) * 2}, ["x-timeout"]),
    ("negative-attempt", {"x-attempt": -1, "x-timeout": 5000}, ["x-attempt"]),
    ("far-not-before", {"x-not-before": 10**15}, ["x-not-before"]),
    ("huge-timeout", {"x-timeout": 1.5e300, "x-max-retries": 10**12}, ["x-timeout"]),
    ("list-retries", {"x-max-retries": [1, 2], "x-attempt": None}, ["x-max-retries"]),
]
MEMORY_ONLY: list[tuple[str, dict[str, Any], list[str]]] = [
    ("nan-timeout", {"x-timeout": float("nan")}, ["x-timeout"]),
    ("inf-attempt", {"x-attempt": float("inf"), "x-max-retries": 10**400}, ["x-attempt"]),
]


async def put_raw(
    backend: str, bus: Bus, channel: str, message_id: str, headers: dict[str, Any] | None
) -> None:
    """Put a message on ``channel``'s work queue as a peer would: exactly these headers."""
    queue = f"{bus.name}.queue.{channel}"
    body = codec.encode(message_id, channel=channel)
    if backend == "memory":
        assert bus.hub is not None
        envelope = Envelope(
            body=body, message_id=message_id, sender="peer", trace_id="t", headers=headers or {}
        )
        bus.hub.work_queue(queue).put(envelope)
    else:
        await inject(
            AMQP_URL,
            routing_key=queue,
            body=body,
            properties={"message_id": message_id, "content_type": "application/msgpack"},
            headers=headers,
        )


class Calls:
    """A queue handler that records ``(message, ctx)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, QueueContext]] = []

    async def __call__(self, message: object, ctx: QueueContext) -> None:
        self.calls.append((message, ctx))

    def seen(self, message: object) -> bool:
        return message in [m for m, _ in self.calls]


# queue headers ---------------------------------------------------------------------------


async def test_malformed_queue_headers_are_parked_naming_them_and_never_run(
    make_bus: BusFactory, backend: str, debug_logs: Logs
) -> None:
    bus = await make_bus(consumer_timeout=CONSUMER_TIMEOUT)
    calls = Calls()
    await bus.queue.subscribe("jobs", calls)
    cases = FORGED + (MEMORY_ONLY if backend == "memory" else [])
    for message_id, headers, _ in cases:
        await put_raw(backend, bus, "jobs", message_id, headers)
    good = await bus.queue.publish("jobs", "good")
    await eventually(lambda: calls.seen("good"), what="the good message after the forged ones")
    letters = {d.id: d for d in await wait_dead(bus, "jobs", len(cases))}
    assert set(letters) == {message_id for message_id, _, _ in cases}
    assert [ctx.id for _, ctx in calls.calls] == [good]  # no forged message ran
    for message_id, _, names in cases:
        letter = letters[message_id]
        assert letter.error.startswith("malformed headers: "), letter.error
        for name in names:
            assert f"{name}=" in letter.error, letter.error
        assert letter.attempts == 0 and letter.message == message_id
        malformed = [
            e
            for e in debug_logs
            if e.get("event") == "queue.malformed" and e.get("message_id") == message_id
        ]
        assert len(malformed) == 1, malformed


async def test_a_plain_producers_message_without_queue_headers_runs_with_defaults(
    make_bus: BusFactory, backend: str
) -> None:
    bus = await make_bus(consumer_timeout=CONSUMER_TIMEOUT)
    calls = Calls()
    await bus.queue.subscribe("jobs", calls)
    await put_raw(backend, bus, "jobs", "plain", None)
    await put_raw(backend, bus, "jobs", "other-headers", {"x-custom": "yes"})
    await eventually(
        lambda: calls.seen("plain") and calls.seen("other-headers"), what="both messages ran"
    )
    for _, ctx in calls.calls:
        assert (ctx.attempt, ctx.max_retries, ctx.timeout) == (0, 0, 15.0)
    assert await bus.queue.dead_letters("jobs") == []


async def test_a_timeout_up_to_consumer_timeout_runs(make_bus: BusFactory, backend: str) -> None:
    bus = await make_bus(consumer_timeout=CONSUMER_TIMEOUT)
    calls = Calls()
    await bus.queue.subscribe("jobs", calls)
    await put_raw(backend, bus, "jobs", "at-limit", {"x-timeout": int(CONSUMER_TIMEOUT * 1000)})
    await bus.queue.publish("jobs", "published", timeout=CONSUMER_TIMEOUT)
    await eventually(lambda: len(calls.calls) == 2, what="both messages ran")
    assert [ctx.timeout for _, ctx in calls.calls] == [CONSUMER_TIMEOUT] * 2


async def test_a_message_parked_for_its_headers_runs_with_defaults_when_replayed(
    make_bus: BusFactory, backend: str
) -> None:
    bus = await make_bus(consumer_timeout=CONSUMER_TIMEOUT)
    calls = Calls()
    await bus.queue.subscribe("jobs", calls)
    forged = {"x-timeout": 0, "x-max-retries": "three", "x-attempt": 2}
    await put_raw(backend, bus, "jobs", "forged", forged)
    [letter] = await wait_dead(bus, "jobs", 1)
    assert "x-timeout=" in letter.error and "x-max-retries=" in letter.error
    assert calls.calls == []
    assert await bus.queue.replay("jobs") == 1
    await eventually(lambda: calls.seen("forged"), what="the replayed message ran")
    [(_, ctx)] = calls.calls
    assert (ctx.attempt, ctx.max_retries, ctx.timeout) == (0, 0, 15.0)


# pub/sub names ---------------------------------------------------------------------------


async def test_pubsub_and_sync_names_too_long_raise_invalid_name_at_the_call(
    make_bus: BusFactory,
) -> None:
    app = unique_app()
    app += "a" * (MAX_APP_LENGTH - len(app))  # the longest app name
    bus, peer = await make_bus(name=app), await make_bus(name=app)
    # exchange names: at most 127 bytes in AMQP 0-9-1, enforced by the client (pamqp)
    longest = "c" * (MAX_EXCHANGE_BYTES - len(f"{app}.pubsub."))
    recorder = Recorder()
    with pytest.raises(InvalidName, match="too long"):
        await bus.pubsub.subscribe(longest + "x", recorder)
    with pytest.raises(InvalidName, match="too long"):
        await bus.pubsub.publish(longest + "x", "hi")
    with pytest.raises(InvalidName, match="too long"):
        await bus.pubsub.publish("c" * 200, "hi", only_self=True)
    sync_longest = longest[len("sync.") :]
    with pytest.raises(InvalidName, match="too long"):
        await bus.sync.subscribe(sync_longest + "x", recorder)
    with pytest.raises(InvalidName, match="too long"):
        await bus.sync.publish(sync_longest + "x", "hi")
    assert bus.pubsub.subscriptions(longest + "x") == []
    # the longest name that fits works end to end
    await bus.pubsub.subscribe(longest, recorder)
    await peer.pubsub.publish(longest, "hi")
    sync = Recorder("sync")
    await bus.sync.subscribe(sync_longest, sync)
    await peer.sync.publish(sync_longest, "synced")
    assert await recorder.wait_for(1) == ["hi"]
    assert await sync.wait_for(1) == ["synced"]


async def test_a_short_app_may_use_longer_channels(make_bus: BusFactory) -> None:
    """The limit is on the whole exchange name: the bus knows its app's length."""
    bus, peer = await make_bus(), await make_bus()
    channel = "c" * (MAX_EXCHANGE_BYTES - len(f"{bus.name}.pubsub."))
    with pytest.raises(InvalidName, match="too long"):
        await bus.pubsub.publish(channel + "c", "hi")
    recorder = Recorder()
    await bus.pubsub.subscribe(channel, recorder)
    await peer.pubsub.publish(channel, "hi")
    assert await recorder.wait_for(1) == ["hi"]


def test_an_instance_queue_fits_whatever_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "h\u00e9\u00f6st-" * 60)
    instance = new_instance_id()
    host = instance.rsplit("-", 2)[0]
    assert len(host) <= MAX_HOST_LENGTH and instance.isascii()
    assert len(instance) <= MAX_INSTANCE_ID_LENGTH
    name = instance_queue("a" * MAX_APP_LENGTH, instance)
    assert len(name.encode()) <= MAX_NAME_BYTES


# a pub/sub handler that stops its own bus ---------------------------------------------------


async def test_a_pubsub_handler_awaiting_bus_stop_completes(make_bus: BusFactory) -> None:
    a, b = await make_bus(), await make_bus()
    events: list[str] = []

    async def stopper(message: object) -> None:
        events.append("stopping")
        await a.stop()
        events.append("stopped")

    await a.pubsub.subscribe("news", stopper)
    await b.pubsub.publish("news", "stop now")
    await eventually(lambda: "stopped" in events, what="the handler's bus.stop() returned")
    assert events == ["stopping", "stopped"] and not a.started


async def test_one_of_several_handlers_awaiting_bus_stop_completes(make_bus: BusFactory) -> None:
    a, b = await make_bus(), await make_bus()
    events: list[str] = []

    async def stopper(message: object) -> None:
        events.append("stopping")
        await a.stop()
        events.append("stopped")

    async def other(message: object) -> None:
        events.append("other")

    await a.pubsub.subscribe("news", other)
    await a.pubsub.subscribe("news", stopper)
    await b.pubsub.publish("news", "stop now")
    await eventually(lambda: "stopped" in events, what="the handler's bus.stop() returned")
    assert sorted(events) == ["other", "stopped", "stopping"] and not a.started


# settings bounds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "setting"),
    [
        ({"retry_delay_max": MAX_DELAY + 1}, "retry_delay_max"),
        ({"retry_delay_max": 1e300}, "retry_delay_max"),
        ({"retry_delay": 0.0001}, "retry_delay"),
        ({"retry_delay": MAX_DELAY * 2, "retry_delay_max": MAX_DELAY * 4}, "retry_delay"),
        ({"retry_delay": float("inf")}, "retry_delay"),
    ],
)
def test_retry_delays_out_of_bounds_fail_naming_the_setting(
    values: dict[str, float], setting: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate(values)
    assert caught.value.errors()[0]["loc"] == (setting,)
    assert setting in str(caught.value)


async def test_the_widest_retry_delays_make_valid_delay_tiers(make_bus: BusFactory) -> None:
    bus = await make_bus(retry_delay=0.001, retry_delay_max=MAX_DELAY)
    calls = Calls()
    await bus.queue.subscribe("jobs", calls)
    await bus.queue.publish("jobs", "later", delay=MAX_DELAY)  # its first hop: the top tier
    await bus.queue.publish("jobs", "now")
    await eventually(lambda: calls.seen("now"), what="the undelayed message ran")
    assert not calls.seen("later")
