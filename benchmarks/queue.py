"""Event-queue benchmark: clusterbus ``bus.queue`` against raw aio-pika and FastStream.

Each variant publishes persistent msgpack messages, mandatory, through the default exchange
to a durable classic queue of its own, each publish awaited until the broker confirms it:

* ``sequential``: ``--messages-seq`` publishes awaited one by one (messages/s).
* ``concurrent``: ``--messages`` publishes, ``--window`` in flight (confirms pipelined).
* ``consume``: the ``--messages`` that ``concurrent`` left in the queue (checked to all be
  there) are consumed with prefetch 100 by a trivial async handler, each acked after it
  returns; timed from the subscribe call to the last message handled (messages/s).

Variants: ``clusterbus`` (a :class:`bus.Bus`), ``raw_aiopika`` (aio-pika written the
straightforward way, message properties the size of ours) and ``faststream`` (its
``RabbitBroker``, logging off); see their classes. Each round of a variant runs on fresh
connections after a warm-up (500 messages out and in, not counted); the variants' order
alternates per round; a broken round is tried once more (the broker may be shared).
Reported: the medians of ``--rounds`` rounds and the ratios clusterbus/raw (targets:
sequential >= 0.9, concurrent >= 0.85, consume >= 0.8) and clusterbus/FastStream (target:
concurrent >= 3). Every queue created is deleted.

Run::

    python -m benchmarks.queue [--amqp-url URL] [--messages-seq N] [--messages N]
                               [--window W] [--rounds R] [--skip-faststream]

The last line of stdout is one JSON object with every figure. The exit status is 0 even when
a target is missed; it is non-zero only when something broke (an error, a message missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aio_pika
import msgpack
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue
from rich.console import Console
from rich.table import Table

from benchmarks.cli import finite, positive
from bus import Bus, Settings

DESCRIPTION = "Event-queue benchmark: clusterbus against raw aio-pika and FastStream."
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
CHANNEL = "bench"
PREFETCH = 100
WARMUP = 500
PAD = "x" * 64
CONTENT_TYPE = "application/msgpack"
QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic"}
PUBLISH_TIMEOUT = 15.0  # the clusterbus attempt timeout (carried in the x-timeout header)
IDLE_TIMEOUT = 15.0  # a consume is given up after this long without a message
PHASE_TIMEOUT = 300.0  # a publishing phase is given up after this long
ATTEMPTS = 2

SEQUENTIAL, CONCURRENT, CONSUME = "sequential", "concurrent", "consume"
SCENARIOS = (SEQUENTIAL, CONCURRENT, CONSUME)
CLUSTERBUS, RAW_AIOPIKA, FASTSTREAM = "clusterbus", "raw_aiopika", "faststream"
# (scenario, reference variant, target of clusterbus/reference or None)
RATIOS: tuple[tuple[str, str, float | None], ...] = (
    (SEQUENTIAL, RAW_AIOPIKA, 0.9),
    (CONCURRENT, RAW_AIOPIKA, 0.85),
    (CONSUME, RAW_AIOPIKA, 0.8),
    (SEQUENTIAL, FASTSTREAM, None),
    (CONCURRENT, FASTSTREAM, 3.0),
    (CONSUME, FASTSTREAM, None),
)

Hit = Callable[[Any], None]
log = functools.partial(print, file=sys.stderr, flush=True)  # progress; stdout has the report


class Variant(Protocol):
    """Publishes to and consumes from one durable queue, ``queue``."""

    queue: str

    async def setup(self) -> None: ...  # connect
    async def publish(self, seq: int) -> None: ...  # message ``seq``, until confirmed
    async def consume(self, hit: Hit) -> None: ...  # start: ``hit(payload)`` per message
    async def stop_consuming(self) -> None: ...
    async def teardown(self) -> None: ...  # disconnect


class ClusterbusVariant:
    """``bus.queue.publish(..., max_retries=0)``, ``bus.queue.subscribe(..., concurrency=100)``."""

    def __init__(self, url: str) -> None:
        app = f"bench-q-{uuid.uuid4().hex[:12]}"
        self.queue = f"{app}.queue.{CHANNEL}"
        self._bus = Bus(app, amqp_url=url, settings=Settings(log_level="WARNING"))

    async def setup(self) -> None:
        await self._bus.start()

    async def publish(self, seq: int) -> None:
        await self._bus.queue.publish(
            CHANNEL, {"seq": seq, "pad": PAD}, timeout=PUBLISH_TIMEOUT, max_retries=0
        )

    async def consume(self, hit: Hit) -> None:
        async def process(message: Any, ctx: object) -> None:
            hit(message)

        await self._bus.queue.subscribe(CHANNEL, process, concurrency=PREFETCH)

    async def stop_consuming(self) -> None:
        await self._bus.queue.unsubscribe(CHANNEL)

    async def teardown(self) -> None:
        await self._bus.stop()


class Direct:
    """The raw and FastStream variants' queue, app and message properties (like ours)."""

    def __init__(self, url: str) -> None:
        self.app = f"bench-q-{uuid.uuid4().hex[:12]}"
        self.queue = f"{self.app}.{type(self).__name__.lower()}"
        self._url = url

    def properties(self) -> dict[str, Any]:
        """Message id, content type and headers the size of a clusterbus queue message's."""
        headers = {"x-sender": self.app, "x-trace-id": os.urandom(16).hex(), "x-attempt": 0}
        headers |= {"x-max-retries": 0, "x-timeout": round(PUBLISH_TIMEOUT * 1000)}
        return {"message_id": uuid.uuid4().hex, "content_type": CONTENT_TYPE, "headers": headers}


class RawVariant(Direct):
    """A robust connection; a channel with publisher confirms, raising on returns; a consumer
    on a channel of its own with ``prefetch_count=100``, acking after the handler."""

    _connection: AbstractConnection | None = None
    _exchange: AbstractExchange | None = None
    _consumer: tuple[AbstractChannel, AbstractQueue, str] | None = None

    async def setup(self) -> None:
        self._connection = await aio_pika.connect_robust(self._url)
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue(self.queue, durable=True, arguments=QUEUE_ARGUMENTS)
        self._exchange = channel.default_exchange

    async def publish(self, seq: int) -> None:
        assert self._exchange is not None
        message = aio_pika.Message(
            msgpack.packb({"seq": seq, "pad": PAD}),
            timestamp=time.time(),
            app_id=self.app,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            **self.properties(),
        )
        await self._exchange.publish(message, routing_key=self.queue, mandatory=True)

    async def consume(self, hit: Hit) -> None:
        assert self._connection is not None

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            hit(msgpack.unpackb(message.body))
            await message.ack()

        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(self.queue, durable=True, arguments=QUEUE_ARGUMENTS)
        self._consumer = (channel, queue, await queue.consume(on_message))

    async def stop_consuming(self) -> None:
        if self._consumer is not None:
            (channel, queue, tag), self._consumer = self._consumer, None
            await queue.cancel(tag)
            await channel.close()

    async def teardown(self) -> None:
        if self._connection is not None:
            await self._connection.close()


class FastStreamVariant(Direct):
    """``RabbitBroker`` (logging off): ``publish(..., persist=True, mandatory=True)`` of the
    msgpack bytes; a subscriber on ``Channel(prefetch_count=100)``, acking after it."""

    _broker: Any = None
    _subscriber: Any = None
    _hit: Hit | None = None

    async def setup(self) -> None:
        from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

        self._broker = RabbitBroker(
            self._url, logger=None, default_channel=Channel(on_return_raises=True)
        )
        await self._broker.start()
        queue = RabbitQueue(self.queue, durable=True)  # classic: x-queue-type=classic
        await self._broker.declare_queue(queue)
        # made after start, so it consumes only once started by consume()
        self._subscriber = self._broker.subscriber(queue, channel=Channel(prefetch_count=PREFETCH))
        self._subscriber(self._handle)

    async def _handle(self, body: bytes) -> None:
        assert self._hit is not None, "a message arrived with no consume running"
        self._hit(msgpack.unpackb(body))

    async def publish(self, seq: int) -> None:
        await self._broker.publish(
            msgpack.packb({"seq": seq, "pad": PAD}),
            queue=self.queue,
            persist=True,
            mandatory=True,
            **self.properties(),
        )

    async def consume(self, hit: Hit) -> None:
        self._hit = hit
        await self._subscriber.start()

    async def stop_consuming(self) -> None:
        await self._subscriber.stop()

    async def teardown(self) -> None:
        if self._broker is not None:
            await self._broker.stop()


FACTORIES: dict[str, Callable[[str], Variant]] = {
    CLUSTERBUS: ClusterbusVariant,
    RAW_AIOPIKA: RawVariant,
    FASTSTREAM: FastStreamVariant,
}


async def check(conn: AbstractConnection, queue: str, expected: int | None, purge: bool) -> None:
    """Raise unless ``queue`` holds ``expected`` messages ready (None: any); then maybe purge."""
    channel = await conn.channel()  # a fresh one: the broker closes a channel on any error
    declared = await channel.declare_queue(queue, passive=True)
    result = declared.declaration_result
    found = int(result.message_count or 0) if result is not None else 0
    if expected is not None and found != expected:
        raise RuntimeError(f"queue {queue!r} holds {found} messages, expected {expected}")
    if purge:
        await declared.purge()
    await channel.close()


async def publish_all(variant: Variant, count: int, window: int) -> float:
    """Publish ``count`` messages, ``window`` publishes in flight (1: one by one); messages/s."""
    sequence = iter(range(count))

    async def worker() -> None:
        for seq in sequence:
            await variant.publish(seq)

    gc.collect()
    started = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT), asyncio.TaskGroup() as group:
        for _ in range(min(window, count)):
            group.create_task(worker())
    return count / (time.perf_counter() - started)


async def consume(variant: Variant, count: int) -> float:
    """Consume the ``count`` messages in the queue; messages/s from subscribe to the last."""
    seen: set[int] = set()
    done = asyncio.Event()
    finished = time.perf_counter()

    def hit(message: Any) -> None:
        nonlocal finished
        seen.add(message["seq"])
        if len(seen) == count and not done.is_set():
            finished = time.perf_counter()
            done.set()

    gc.collect()
    started = time.perf_counter()
    await variant.consume(hit)
    try:
        while not done.is_set():
            before = len(seen)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_TIMEOUT):
                    await done.wait()
            if len(seen) == before and not done.is_set():
                raise RuntimeError(f"{before} of {count} messages consumed, then no more")
    finally:
        await variant.stop_consuming()
    return count / (finished - started)


async def run_variant(name: str, args: Any) -> dict[str, float]:
    """One round of one variant on fresh connections: warm-up, then the three scenarios."""
    variant = FACTORIES[name](args.amqp_url)
    async with await aio_pika.connect(args.amqp_url) as admin:  # counts, purges, deletes
        try:
            await variant.setup()
            await publish_all(variant, WARMUP, args.window)
            await consume(variant, WARMUP)
            # requeued: what the consumer had not acked yet when it stopped
            await check(admin, variant.queue, None, purge=True)
            figures = {SEQUENTIAL: await publish_all(variant, args.messages_seq, 1)}
            await check(admin, variant.queue, args.messages_seq, purge=True)
            figures[CONCURRENT] = await publish_all(variant, args.messages, args.window)
            await check(admin, variant.queue, args.messages, purge=False)
            figures[CONSUME] = await consume(variant, args.messages)
            return figures
        finally:
            try:
                await variant.teardown()
            finally:  # the queue of a clusterbus channel, and its dead queue if it made one
                channel = await admin.channel()
                for queue in (variant.queue, f"{variant.queue}.dead"):
                    await channel.queue_delete(queue)  # no error when it is not there


@dataclass(slots=True)
class Report:
    """Every round of one variant (messages/s by scenario) and the errors of broken ones."""

    rounds: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, scenario: str) -> float:
        """The median over the rounds of ``scenario`` (NaN without a round)."""
        values = [r[scenario] for r in self.rounds]
        return statistics.median(values) if values else math.nan


async def run_all(args: argparse.Namespace) -> dict[str, Report]:
    """Every round of every variant, alternating their order; a broken round is tried again."""
    names = [n for n in FACTORIES if not (args.skip_faststream and n == FASTSTREAM)]
    reports = {name: Report() for name in names}
    for index in range(args.rounds):
        for name in names if index % 2 == 0 else reversed(names):
            log(f"round {index + 1}/{args.rounds}: {name}")
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    figures = await run_variant(name, args)
                except Exception as exc:
                    log(f"  round broke ({type(exc).__name__}: {exc})")
                    if attempt == ATTEMPTS:
                        reports[name].errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                log("  " + ", ".join(f"{s} {v:,.0f}/s" for s, v in figures.items()))
                reports[name].rounds.append(figures)
                break
    return reports


def ratios(reports: dict[str, Report]) -> list[dict[str, Any]]:
    """clusterbus's median over each reference's that ran, with the target and whether met."""
    found: list[dict[str, Any]] = []
    for scenario, reference, target in RATIOS:
        if CLUSTERBUS in reports and reference in reports:
            theirs = reports[reference].median(scenario)
            value = reports[CLUSTERBUS].median(scenario) / theirs if theirs else math.nan
            met = None if target is None or not math.isfinite(value) else value >= target
            ratio = {"scenario": scenario, "ratio": f"{CLUSTERBUS}/{reference}"}
            found.append(ratio | {"value": finite(value), "target": target, "met": met})
    return found


def cell(value: float | None, spec: str) -> str:
    """A table cell: ``value`` formatted with ``spec``, or a dash when there is none."""
    return format(value, spec) if value is not None and math.isfinite(value) else "-"


def print_report(console: Console, reports: dict[str, Report], args: Any) -> None:
    """The human tables: messages/s per variant, then the ratios and their targets."""
    title = f"event queue, messages/s, median of {args.rounds} round(s): {args.messages_seq} "
    title += f"sequential, {args.messages} concurrent (window {args.window}) and consumed"
    table = Table(title=title)
    table.add_column("variant")
    for header in (*SCENARIOS, "rounds ok"):
        table.add_column(header, justify="right")
    for name, report in reports.items():
        figures = (cell(report.median(s), ",.0f") for s in SCENARIOS)
        table.add_row(name, *figures, f"{len(report.rounds)}/{args.rounds}")
    console.print(table)
    for ratio in ratios(reports):
        line = f"{ratio['scenario']:<10} {ratio['ratio']:<22} {cell(ratio['value'], '.3f')}"
        if ratio["target"] is not None:
            met = {None: "n/a", True: "MET", False: "MISSED"}[ratio["met"]]
            line += f" (target >= {ratio['target']}) {met}"
        console.print(line)


def report_json(reports: dict[str, Report], args: argparse.Namespace) -> str:
    """The one-line JSON report."""
    variants = {
        name: {
            "messages_per_s": {s: finite(report.median(s)) for s in SCENARIOS},
            "rounds": [{s: finite(r[s]) for s in SCENARIOS} for r in report.rounds],
            "errors": report.errors,
        }
        for name, report in reports.items()
    }
    settings = {k: getattr(args, k) for k in ("messages_seq", "messages", "window", "rounds")}
    return json.dumps(
        {"benchmark": "event_queue", **settings, "prefetch": PREFETCH, "warmup": WARMUP}
        | {"variants": variants, "ratios": ratios(reports)}
        | {"ok": not any(report.errors for report in reports.values())},
        allow_nan=False,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser("python -m benchmarks.queue", description=DESCRIPTION)
    add = parser.add_argument
    add("--amqp-url", default=DEFAULT_URL, help="RabbitMQ URL")
    add("--messages-seq", type=positive, default=5_000, help="messages of the sequential run")
    add("--messages", type=positive, default=20_000, help="messages of concurrent and consume")
    add("--window", type=positive, default=256, help="publishes in flight in concurrent")
    add("--rounds", type=positive, default=3, help="rounds per variant")
    add("--skip-faststream", action="store_true", help="leave the FastStream variant out")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report; 1 when something broke."""
    args = parse_args(argv)
    reports = asyncio.run(run_all(args))
    print_report(Console(width=max(Console().width, 100)), reports, args)
    print(report_json(reports, args), flush=True)
    return 1 if any(report.errors for report in reports.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
