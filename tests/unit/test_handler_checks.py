"""Handlers are checked at subscribe (SPEC, binding): a pub/sub or sync handler that is not a
coroutine function, or a queue ``process`` that does not take ``(message, ctx)``, raises
``TypeError`` naming the channel, and a refused subscribe leaves no state.

The managers are shared by both backends, so memory mode covers the logic; one broker test
shows the same on RabbitMQ."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import AsyncMock

import pytest

from bus import Bus, InvalidName, MemoryHub
from managers.handler_checks import check_handler, check_process, describe
from managers.queue_messages import QueueContext
from tests.amqp.broker import queue_info, rabbitmqctl
from tests.conftest import Recorder, fast_settings, unique_app
from tests.shared.test_queue import Worker, settle

CHANNEL = "orders"


# handlers -------------------------------------------------------------------------------


def on_order(message: Any) -> None:
    """A plain ``def`` handler: awaiting its result fails on every message."""


async def on_order_async(message: Any) -> None:
    """An async handler."""


async def tagged(tag: str, message: Any) -> None:
    """An async handler meant to be bound with :func:`functools.partial`."""


class AsyncCallable:
    async def __call__(self, message: Any) -> None:
        """An object whose ``__call__`` is async."""


class SyncCallable:
    def __call__(self, message: Any) -> None:
        """An object whose ``__call__`` is not async."""


class Service:
    async def handle(self, message: Any) -> None:
        """A bound async method."""

    async def process(self, message: Any, ctx: QueueContext) -> None:
        """A bound async queue process."""


def sync_process(message: Any, ctx: QueueContext) -> None:
    """A plain ``def`` queue process with the right parameters."""


async def one_param(message: Any) -> None:
    """An async queue process missing ``ctx``: every message would go to the dead queue."""


async def with_default(message: Any, ctx: QueueContext, extra: int = 1) -> None:
    """An async queue process with an optional third parameter."""


async def star_args(*args: Any) -> None:
    """An async queue process taking anything."""


async def three_params(message: Any, ctx: QueueContext, extra: int) -> None:
    """An async queue process needing a third argument."""


async def keyword_only(message: Any, ctx: QueueContext, *, extra: int) -> None:
    """An async queue process needing a keyword-only argument."""


async def process_ok(message: Any, ctx: QueueContext) -> None:
    """An async queue process."""


REFUSED_HANDLERS: dict[str, object] = {
    "def": on_order,
    "lambda": lambda message: None,
    # returns a coroutine, but is not a coroutine function
    "lambda returning a coroutine": lambda message: on_order_async(message),  # noqa: PLW0108
    "not callable": 42,
    "None": None,
    "object with a sync __call__": SyncCallable(),
    "partial of a def": functools.partial(lambda tag, message: None, "t"),
    "class": AsyncCallable,
}

ACCEPTED_HANDLERS: dict[str, object] = {
    "async def": on_order_async,
    "partial of an async def": functools.partial(tagged, "t"),
    "nested partial": functools.partial(functools.partial(tagged), "t"),
    "object with an async __call__": AsyncCallable(),
    "bound async method": Service().handle,
    "AsyncMock": AsyncMock(),
}

REFUSED_PROCESSES: dict[str, object] = {
    "async with one parameter": one_param,
    "def with (message, ctx)": sync_process,
    "lambda with (message, ctx)": lambda message, ctx: process_ok(message, ctx),  # noqa: PLW0108
    "async needing a third argument": three_params,
    "async with a required keyword-only argument": keyword_only,
    "partial leaving one parameter": functools.partial(process_ok, "m"),
    "not callable": "process",
    "object with an async one-argument __call__": AsyncCallable(),
}

ACCEPTED_PROCESSES: dict[str, object] = {
    "async (message, ctx)": process_ok,
    "async (message, ctx, extra=1)": with_default,
    "async (*args)": star_args,
    "bound async method": Service().process,
    "partial of an async def": functools.partial(three_params, extra=3),
    "object with an async __call__": Worker("w"),
    "AsyncMock": AsyncMock(),
}


# buses ----------------------------------------------------------------------------------


@pytest.fixture
async def buses(tmp_path: Path) -> AsyncIterator[tuple[Bus, Bus]]:
    """Two started memory-mode instances of one app on one hub."""
    app, hub = unique_app(), MemoryHub()
    settings = fast_settings(storage_dir=tmp_path / "queues")
    async with Bus(app, hub=hub, settings=settings) as a, Bus(app, hub=hub, settings=settings) as b:
        yield a, b


async def subscribe_handler(bus: Bus, kind: str, channel: str, handler: Any) -> None:
    if kind == "pubsub":
        await bus.pubsub.subscribe(channel, handler)
    else:
        await bus.sync.subscribe(channel, handler)


def wire(kind: str, channel: str) -> str:
    return channel if kind == "pubsub" else f"sync.{channel}"


WHAT = {"pubsub": "pub/sub handler", "sync": "sync handler"}


# the checks themselves ------------------------------------------------------------------


@pytest.mark.parametrize("handler", REFUSED_HANDLERS.values(), ids=REFUSED_HANDLERS)
def test_check_handler_refuses(handler: object) -> None:
    with pytest.raises(TypeError, match=r"pub/sub handler for channel 'orders' must be an async"):
        check_handler(CHANNEL, handler, what="pub/sub handler")


@pytest.mark.parametrize("handler", ACCEPTED_HANDLERS.values(), ids=ACCEPTED_HANDLERS)
def test_check_handler_accepts(handler: object) -> None:
    check_handler(CHANNEL, handler, what="pub/sub handler")


@pytest.mark.parametrize("process", REFUSED_PROCESSES.values(), ids=REFUSED_PROCESSES)
def test_check_process_refuses(process: object) -> None:
    with pytest.raises(TypeError, match=r"queue process for channel 'orders' must"):
        check_process(CHANNEL, process)


@pytest.mark.parametrize("process", ACCEPTED_PROCESSES.values(), ids=ACCEPTED_PROCESSES)
def test_check_process_accepts(process: object) -> None:
    check_process(CHANNEL, process)


def test_a_process_without_a_readable_signature_is_accepted_when_async() -> None:
    class NoSignature:
        __signature__ = None  # inspect.signature then reads __call__ ...

        async def __call__(self, message: Any, ctx: QueueContext) -> None:
            """An async process."""

    check_process(CHANNEL, NoSignature())
    with pytest.raises(TypeError, match="must be an async function"):
        check_process(CHANNEL, len)  # a builtin: no signature, and not async


def test_messages_name_the_handler_without_an_address() -> None:
    with pytest.raises(TypeError) as caught:
        check_handler(CHANNEL, on_order, what="pub/sub handler")
    message = str(caught.value)
    assert message == (
        "pub/sub handler for channel 'orders' must be an async function "
        "(async def handler(message)), got function on_order"
    )
    with pytest.raises(TypeError) as caught:
        check_process(CHANNEL, one_param)
    message = str(caught.value)
    assert message.startswith(
        "queue process for channel 'orders' must take (message, ctx): function one_param(message"
    )
    assert "cannot be called with two positional arguments" in message
    assert "0x" not in message
    assert describe(SyncCallable()) == "SyncCallable object"
    assert describe(functools.partial(tagged, "t")) == "functools.partial of function tagged"
    assert describe(42) == "int 42"


# pub/sub and sync -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pubsub", "sync"])
@pytest.mark.parametrize("handler", REFUSED_HANDLERS.values(), ids=REFUSED_HANDLERS)
async def test_a_handler_that_is_not_async_is_refused_naming_the_channel(
    buses: tuple[Bus, Bus], kind: str, handler: object
) -> None:
    bus, _ = buses
    with pytest.raises(TypeError, match=rf"^{WHAT[kind]} for channel 'orders' must be an async"):
        await subscribe_handler(bus, kind, CHANNEL, handler)
    assert bus.pubsub.subscriptions(wire(kind, CHANNEL)) == []


@pytest.mark.parametrize("kind", ["pubsub", "sync"])
@pytest.mark.parametrize("handler", ACCEPTED_HANDLERS.values(), ids=ACCEPTED_HANDLERS)
async def test_async_handlers_are_accepted(
    buses: tuple[Bus, Bus], kind: str, handler: object
) -> None:
    bus, _ = buses
    await subscribe_handler(bus, kind, CHANNEL, handler)
    [sub] = bus.pubsub.subscriptions(wire(kind, CHANNEL))
    assert sub.handler is handler


@pytest.mark.parametrize("kind", ["pubsub", "sync"])
async def test_an_invalid_channel_is_reported_before_the_handler(
    buses: tuple[Bus, Bus], kind: str
) -> None:
    bus, _ = buses
    with pytest.raises(InvalidName):
        await subscribe_handler(bus, kind, "bad channel!", on_order)
    with pytest.raises(InvalidName):
        await subscribe_handler(bus, kind, "x" * 300, on_order)


async def test_a_refused_pubsub_subscribe_leaves_the_channel_usable(
    buses: tuple[Bus, Bus],
) -> None:
    a, b = buses
    with pytest.raises(TypeError, match="'orders'"):
        await b.pubsub.subscribe(CHANNEL, on_order)  # type: ignore[arg-type]
    rec = Recorder("orders")
    await b.pubsub.subscribe(CHANNEL, rec)
    assert [s.handler for s in b.pubsub.subscriptions(CHANNEL)] == [rec]
    await a.pubsub.publish(CHANNEL, {"n": 1})
    assert await rec.wait_for(1) == [{"n": 1}]


async def test_a_refused_sync_subscribe_leaves_the_channel_usable(
    buses: tuple[Bus, Bus],
) -> None:
    a, b = buses
    with pytest.raises(TypeError, match=r"^sync handler for channel 'orders'"):
        await b.sync.subscribe(CHANNEL, on_order)  # type: ignore[arg-type]
    rec = Recorder("orders")
    await b.sync.subscribe(CHANNEL, rec)
    await a.sync.publish(CHANNEL, {"n": 1})
    assert await rec.wait_for(1) == [{"n": 1}]


# queues ---------------------------------------------------------------------------------


@pytest.mark.parametrize("process", REFUSED_PROCESSES.values(), ids=REFUSED_PROCESSES)
async def test_a_queue_process_that_cannot_take_message_and_ctx_is_refused(
    buses: tuple[Bus, Bus], process: Any
) -> None:
    bus, _ = buses
    with pytest.raises(TypeError, match=r"^queue process for channel 'orders' must"):
        await bus.queue.subscribe(CHANNEL, process)
    with pytest.raises(TypeError, match=r"^queue process for channel 'orders' must"):
        await bus.queue.subscribe(CHANNEL, process, shared=True)


@pytest.mark.parametrize("process", ACCEPTED_PROCESSES.values(), ids=ACCEPTED_PROCESSES)
async def test_async_queue_processes_taking_message_and_ctx_are_accepted(
    buses: tuple[Bus, Bus], process: Any
) -> None:
    bus, _ = buses
    sub = await bus.queue.subscribe(CHANNEL, process)
    assert sub.process is process


async def test_one_parameter_process_error_says_what_is_expected(buses: tuple[Bus, Bus]) -> None:
    bus, _ = buses
    with pytest.raises(TypeError, match=r"must take \(message, ctx\)") as caught:
        await bus.queue.subscribe(CHANNEL, one_param)  # type: ignore[arg-type]
    assert "one_param" in str(caught.value)


async def test_an_invalid_queue_channel_is_reported_before_the_process(
    buses: tuple[Bus, Bus],
) -> None:
    bus, _ = buses
    with pytest.raises(InvalidName):
        await bus.queue.subscribe("bad channel!", one_param)  # type: ignore[arg-type]
    with pytest.raises(InvalidName):  # a reserved suffix
        await bus.queue.subscribe("orders.dead", one_param)  # type: ignore[arg-type]


async def test_a_refused_queue_subscribe_leaves_the_channel_usable(
    buses: tuple[Bus, Bus],
) -> None:
    a, b = buses
    for process in REFUSED_PROCESSES.values():
        with pytest.raises(TypeError, match="'orders'"):
            await b.queue.subscribe(CHANNEL, process)  # type: ignore[arg-type]
    worker = Worker("orders")
    await b.queue.subscribe(CHANNEL, worker)  # no "already has a consumer"
    await a.queue.publish(CHANNEL, {"n": 1})
    await settle(b, CHANNEL, 1, worker)
    assert worker.done == [{"n": 1}]
    assert await b.queue.dead_letters(CHANNEL) == []


# RabbitMQ -------------------------------------------------------------------------------


@pytest.mark.amqp
async def test_a_refused_subscribe_leaves_nothing_on_the_broker(amqp_url: str) -> None:
    app = unique_app()
    settings = fast_settings()
    async with (
        Bus(app, amqp_url=amqp_url, settings=settings) as a,
        Bus(app, amqp_url=amqp_url, settings=settings) as b,
    ):
        with pytest.raises(TypeError, match=r"^pub/sub handler for channel 'orders'"):
            await b.pubsub.subscribe(CHANNEL, on_order)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^sync handler for channel 'orders'"):
            await b.sync.subscribe(CHANNEL, on_order)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^queue process for channel 'orders'"):
            await b.queue.subscribe(CHANNEL, one_param)  # type: ignore[arg-type]
        assert b.pubsub.subscriptions(CHANNEL) == []
        assert b.pubsub.subscriptions(f"sync.{CHANNEL}") == []
        assert await queue_info(f"{app}.queue.{CHANNEL}") is None
        exchanges = (await rabbitmqctl("list_exchanges", "--no-table-headers", "name")).split()
        assert f"{app}.pubsub.{CHANNEL}" not in exchanges
        assert f"{app}.pubsub.sync.{CHANNEL}" not in exchanges

        rec, synced, worker = Recorder("pubsub"), Recorder("sync"), Worker("queue")
        await b.pubsub.subscribe(CHANNEL, rec)
        await b.sync.subscribe(CHANNEL, synced)
        await b.queue.subscribe(CHANNEL, worker)
        await a.pubsub.publish(CHANNEL, "broadcast")
        await a.sync.publish(CHANNEL, "synced")
        await a.queue.publish(CHANNEL, "job")
        assert await rec.wait_for(1) == ["broadcast"]
        assert await synced.wait_for(1) == ["synced"]
        await settle(b, CHANNEL, 1, worker)
        assert worker.done == ["job"]


async def test_a_plugin_with_a_plain_def_sync_handler_is_refused_at_start() -> None:
    from plugins import App, Plugin

    class Plain(Plugin):
        name = "plain"

        def handle_sync_message(self, message: object) -> None:  # type: ignore[override]
            return None

    app = App("t-handler-plugin", hub=MemoryHub())
    app.add(Plain)
    with pytest.raises(TypeError, match="sync handler for channel 'plain'"):
        await app.start()
    assert not app.bus.started
