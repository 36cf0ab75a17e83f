"""Pub/sub fanout benchmark: clusterbus against raw aio-pika, and clusterbus in memory mode.

Scenario: one publisher and three subscriber instances in one process (so both sides share
the CPU). The publisher sends ``--messages`` messages with at most ``--window`` publishes in
flight (each waits for its broker confirm in AMQP mode); every subscriber handler records
the end-to-end latency from the send time carried in the payload. Throughput is the number
of deliveries (3 x messages) over the time from the first publish to the last delivery.

Variants:

* ``clusterbus_amqp``: four :class:`bus.Bus` objects of one app on RabbitMQ.
* ``raw_aiopika``: the same job written directly with aio-pika (fanout exchange, three
  exclusive queues on their own connections, prefetch 256, manual ack after the callback,
  a confirming publisher channel, msgpack bodies, non-persistent messages with a message id).
* ``clusterbus_memory``: four buses on one :class:`bus.MemoryHub` (target >= 100k
  deliveries/s). A memory-mode publish returns at once, so the window does not hold the
  publisher back: its latencies are mostly the time messages wait in the subscribers' inboxes.

Each variant runs a warm-up (not counted) and then the measured run, ``--rounds`` times,
alternating the order of the AMQP variants; the medians of the rounds are reported, with the
ratios clusterbus/raw for throughput (target >= 0.8) and p50 latency (target <= 1.25). The
broker may be shared, so a round that breaks or loses deliveries is tried once more on fresh
connections; a run is given up (with its partial figures) after ``--timeout`` seconds
without a delivery. Every exchange and queue created is deleted afterwards.

Run::

    python -m benchmarks.pubsub [--amqp-url URL] [--messages N] [--window W] [--rounds R]
                                [--skip-amqp] [--warmup N] [--timeout SECONDS]

The last line of stdout is one JSON object with every figure. The exit status is 0 even when
a target is missed; it is non-zero only when something broke (e.g. deliveries went missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import aio_pika
import msgpack
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)
from rich.console import Console
from rich.table import Table

from benchmarks.cli import finite, positive
from bus import Bus, MemoryHub, Settings

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
SUBSCRIBERS = 3
PREFETCH = 256
MAX_BACKLOG = 100_000
CHANNEL = "bench"
PAD = "x" * 64
THROUGHPUT_TARGET = 0.8
LATENCY_TARGET = 1.25
MEMORY_TARGET = 100_000
ATTEMPTS = 2
POLL_SECONDS = 0.5

CLUSTERBUS_AMQP = "clusterbus_amqp"
RAW_AIOPIKA = "raw_aiopika"
CLUSTERBUS_MEMORY = "clusterbus_memory"


# measurement -------------------------------------------------------------------------------


class Recorder:
    """Collects the end-to-end latencies of one run and signals when all arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.latencies: list[float] = []
        self.started = self.last_delivery = time.perf_counter()
        self.done = asyncio.Event()

    def start(self) -> None:
        """Mark the first publish: the run's clock starts now."""
        self.started = self.last_delivery = time.perf_counter()

    def record(self, sent: float) -> None:
        """One delivery of a message sent at ``sent`` (``perf_counter`` time)."""
        now = time.perf_counter()
        self.latencies.append(now - sent)
        self.last_delivery = now
        if len(self.latencies) >= self.expected:
            self.done.set()


class Sink:
    """What every subscriber handler reports to; points at the recorder of the current run."""

    def __init__(self) -> None:
        self.recorder = Recorder(0)

    def deliver(self, payload: object) -> None:
        """Record the delivery of ``payload`` (a decoded benchmark payload)."""
        self.recorder.record(sent_time(payload))


def make_payload(seq: int) -> dict[str, object]:
    """The benchmark message: a sequence number, the send time and some padding."""
    return {"seq": seq, "sent": time.perf_counter(), "pad": PAD}


def sent_time(payload: object) -> float:
    """The send time carried by a decoded payload."""
    if not isinstance(payload, dict):
        raise TypeError(f"unexpected payload {payload!r}")
    sent = payload.get("sent")
    if not isinstance(sent, float):
        raise TypeError(f"payload without a float 'sent': {payload!r}")
    return sent


@dataclass(slots=True)
class RunResult:
    """The figures of one measured run."""

    deliveries: int
    expected: int
    seconds: float
    deliveries_per_s: float
    p50_ms: float
    p99_ms: float

    @property
    def complete(self) -> bool:
        """True when every expected delivery arrived."""
        return self.deliveries >= self.expected


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of an ascending sequence, nearest rank; NaN when empty."""
    if not ordered:
        return math.nan
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[min(rank, len(ordered) - 1)]


def summarize(recorder: Recorder) -> RunResult:
    """Throughput and latency percentiles of a finished (or timed-out) run."""
    count = len(recorder.latencies)
    seconds = recorder.last_delivery - recorder.started if count else 0.0
    ordered = sorted(recorder.latencies)
    return RunResult(
        deliveries=count,
        expected=recorder.expected,
        seconds=seconds,
        deliveries_per_s=count / seconds if seconds > 0 else 0.0,
        p50_ms=percentile(ordered, 0.50) * 1000,
        p99_ms=percentile(ordered, 0.99) * 1000,
    )


# the variants ------------------------------------------------------------------------------


class Rig(Protocol):
    """One publisher and its subscribers, ready to publish benchmark payloads."""

    sink: Sink

    async def setup(self) -> None:
        """Connect and subscribe."""

    async def publish(self, seq: int) -> None:
        """Publish message ``seq`` and wait until it is accepted (confirmed on AMQP)."""

    async def teardown(self) -> None:
        """Disconnect and delete what was declared."""


def bench_settings() -> Settings:
    """Settings of every benchmark bus: quiet logs, the prefetch the raw variant uses."""
    return Settings(log_level="WARNING", pubsub_prefetch=PREFETCH, pubsub_max_backlog=MAX_BACKLOG)


def new_app_name() -> str:
    """A fresh app name, so that runs never share exchanges or queues."""
    return f"bench-{uuid.uuid4().hex[:12]}"


class ClusterbusRig:
    """clusterbus: one publisher bus and three subscriber buses of one app."""

    def __init__(self, *, amqp_url: str | None, hub: MemoryHub | None) -> None:
        self.sink = Sink()
        self.app = new_app_name()
        self._amqp_url = amqp_url
        self._hub = hub
        self._buses: list[Bus] = []

    def _new_bus(self) -> Bus:
        if self._amqp_url is not None:
            return Bus(self.app, amqp_url=self._amqp_url, settings=bench_settings())
        return Bus(self.app, hub=self._hub, settings=bench_settings())

    async def _handle(self, message: Any) -> None:
        self.sink.deliver(message)

    async def setup(self) -> None:
        """Start the four buses and subscribe the three subscriber buses."""
        self._buses = [self._new_bus() for _ in range(SUBSCRIBERS + 1)]
        for bus in self._buses:
            await bus.start()
        for bus in self._buses[1:]:
            await bus.pubsub.subscribe(CHANNEL, self._handle)

    async def publish(self, seq: int) -> None:
        """Publish through the publisher bus."""
        await self._buses[0].pubsub.publish(CHANNEL, make_payload(seq))

    async def teardown(self) -> None:
        """Stop the buses and, on RabbitMQ, delete the channel's exchange."""
        connected = any(bus.started for bus in self._buses)
        for bus in self._buses:
            await bus.stop()
        if self._amqp_url is not None and connected:
            await delete_exchanges(self._amqp_url, [f"{self.app}.pubsub.{CHANNEL}"])


class RawRig:
    """The same fanout written directly with aio-pika."""

    def __init__(self, amqp_url: str) -> None:
        self.sink = Sink()
        self.exchange_name = f"{new_app_name()}.raw.{CHANNEL}"
        self._url = amqp_url
        self._connections: list[AbstractConnection] = []
        self._exchange: AbstractExchange | None = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            self.sink.deliver(msgpack.unpackb(message.body, raw=False))
        finally:
            await message.ack()

    async def _subscribe(self) -> None:
        connection = await aio_pika.connect(self._url)
        self._connections.append(connection)
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=PREFETCH)
        exchange = await self._declare(channel)
        queue = await channel.declare_queue(
            exclusive=True, auto_delete=True, arguments={"x-max-length": MAX_BACKLOG}
        )
        await queue.bind(exchange)
        await queue.consume(self._on_message)

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        return await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.FANOUT, durable=False
        )

    async def setup(self) -> None:
        """Open the confirming publisher and the three consuming connections."""
        connection = await aio_pika.connect(self._url)
        self._connections.append(connection)
        channel = await connection.channel(publisher_confirms=True)
        self._exchange = await self._declare(channel)
        for _ in range(SUBSCRIBERS):
            await self._subscribe()

    async def publish(self, seq: int) -> None:
        """Publish one confirmed, non-persistent msgpack message."""
        assert self._exchange is not None
        message = aio_pika.Message(
            msgpack.packb(make_payload(seq), use_bin_type=True),
            message_id=uuid.uuid4().hex,
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        )
        await self._exchange.publish(message, routing_key="", mandatory=False)

    async def teardown(self) -> None:
        """Close every connection (the queues go with them), then delete the exchange."""
        self._exchange = None
        connected, self._connections = self._connections, []
        for connection in reversed(connected):
            with contextlib.suppress(Exception):  # a connection the broker already closed
                await connection.close()
        if connected:
            await delete_exchanges(self._url, [self.exchange_name])


async def delete_exchanges(amqp_url: str, names: Sequence[str]) -> None:
    """Delete ``names`` on the broker through a short-lived connection."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for name in names:
            await channel.exchange_delete(name)
    finally:
        await connection.close()


# driving a run -----------------------------------------------------------------------------


async def publish_all(publish: Callable[[int], Awaitable[None]], count: int, window: int) -> None:
    """Publish ``count`` messages with at most ``window`` publishes in flight."""
    sequence = itertools.count()

    async def worker() -> None:
        for seq in sequence:
            if seq >= count:
                return
            await publish(seq)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(window, count)):
            group.create_task(worker())


async def until_delivered(recorder: Recorder, publisher: asyncio.Task[None], idle: float) -> None:
    """Wait for every delivery, re-raising a failed publish.

    Raises :class:`TimeoutError` when nothing was delivered for ``idle`` seconds.
    """
    while not recorder.done.is_set():
        if publisher.done():
            publisher.result()
        quiet = time.perf_counter() - recorder.last_delivery
        if quiet >= idle:
            raise TimeoutError
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(idle - quiet, POLL_SECONDS)):
                await recorder.done.wait()


async def measure(rig: Rig, count: int, window: int, idle: float) -> RunResult:
    """Publish ``count`` messages and wait for every delivery (partial after ``idle`` s)."""
    recorder = Recorder(count * SUBSCRIBERS)
    rig.sink.recorder = recorder
    gc.collect()
    recorder.start()
    publisher = asyncio.create_task(publish_all(rig.publish, count, window))
    try:
        await until_delivered(recorder, publisher, idle)
    except TimeoutError:
        log(
            f"  no delivery for {idle}s: {len(recorder.latencies)} of "
            f"{recorder.expected} deliveries arrived"
        )
    finally:
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
    return summarize(recorder)


async def run_round(rig: Rig, args: argparse.Namespace) -> RunResult:
    """Set ``rig`` up, warm it up, measure it and tear it down."""
    try:
        await rig.setup()
        warm = await measure(rig, args.warmup, args.window, args.timeout)
        if not warm.complete:
            return warm
        return await measure(rig, args.messages, args.window, args.timeout)
    finally:
        try:
            await rig.teardown()
        except Exception as exc:  # a leftover exchange does not spoil the figures
            log(f"  cleanup failed: {type(exc).__name__}: {exc}")


async def attempt_round(factory: Callable[[], Rig], args: argparse.Namespace) -> RunResult:
    """One round on a fresh rig, tried again once when it broke or lost deliveries.

    The broker is shared: something else (a test closing every connection, say) can break a
    round; a second failure is reported as such.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            result = await run_round(factory(), args)
        except Exception as exc:
            if attempt == ATTEMPTS:
                raise
            log(f"  round broke ({type(exc).__name__}: {exc}); trying again")
            continue
        if result.complete or attempt == ATTEMPTS:
            return result
        log("  round lost deliveries; trying again")
    raise AssertionError("unreachable")


@dataclass(slots=True)
class VariantReport:
    """Every round of one variant and their medians."""

    name: str
    rounds: list[RunResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every round ran and got every delivery."""
        return not self.errors and bool(self.rounds) and all(r.complete for r in self.rounds)

    def median(self, metric: str) -> float:
        """The median over the rounds of ``metric`` (a :class:`RunResult` field)."""
        values = [float(getattr(r, metric)) for r in self.rounds]
        return statistics.median(values) if values else math.nan

    def as_json(self) -> dict[str, object]:
        """The report as JSON-able data."""
        return {
            "deliveries_per_s": finite(self.median("deliveries_per_s")),
            "p50_ms": finite(self.median("p50_ms")),
            "p99_ms": finite(self.median("p99_ms")),
            "complete": self.complete,
            "errors": self.errors,
            "rounds": [
                {k: finite(v) if isinstance(v, float) else v for k, v in asdict(r).items()}
                | {"complete": r.complete}
                for r in self.rounds
            ],
        }


def rig_factories(args: argparse.Namespace) -> dict[str, Callable[[], Rig]]:
    """How to build a fresh rig of each variant that is to run."""
    url: str = args.amqp_url
    factories: dict[str, Callable[[], Rig]] = {}
    if not args.skip_amqp:
        factories[CLUSTERBUS_AMQP] = lambda: ClusterbusRig(amqp_url=url, hub=None)
        factories[RAW_AIOPIKA] = lambda: RawRig(url)
    factories[CLUSTERBUS_MEMORY] = lambda: ClusterbusRig(amqp_url=None, hub=MemoryHub())
    return factories


async def run_all(args: argparse.Namespace) -> dict[str, VariantReport]:
    """Every round of every variant, alternating the order of the variants per round."""
    factories = rig_factories(args)
    reports = {name: VariantReport(name) for name in factories}
    for index in range(args.rounds):
        order = list(factories) if index % 2 == 0 else list(reversed(factories))
        for name in order:
            log(f"round {index + 1}/{args.rounds}: {name}")
            try:
                result = await attempt_round(factories[name], args)
            except Exception as exc:
                log(f"  round failed: {type(exc).__name__}: {exc}")
                reports[name].errors.append(f"{type(exc).__name__}: {exc}")
                continue
            log(
                f"  {result.deliveries_per_s:,.0f} deliveries/s, "
                f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
            )
            reports[name].rounds.append(result)
    return reports


# reporting ---------------------------------------------------------------------------------


def divide(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0."""
    return numerator / denominator if denominator else math.nan


def log(text: str) -> None:
    """Progress on stderr, keeping stdout for the report."""
    print(text, file=sys.stderr, flush=True)


@dataclass(slots=True, frozen=True)
class Ratios:
    """clusterbus/raw: throughput (higher is better) and p50 latency (lower is better)."""

    throughput: float
    p50_latency: float

    @property
    def throughput_met(self) -> bool:
        """Whether clusterbus keeps at least ``THROUGHPUT_TARGET`` of raw's throughput."""
        return self.throughput >= THROUGHPUT_TARGET

    @property
    def p50_latency_met(self) -> bool:
        """Whether clusterbus's p50 stays within ``LATENCY_TARGET`` times raw's."""
        return self.p50_latency <= LATENCY_TARGET

    def as_json(self) -> dict[str, object]:
        """The ratios, their targets and whether each was met."""
        return {
            "throughput": finite(self.throughput),
            "throughput_target": THROUGHPUT_TARGET,
            "throughput_met": self.throughput_met,
            "p50_latency": finite(self.p50_latency),
            "p50_latency_target": LATENCY_TARGET,
            "p50_latency_met": self.p50_latency_met,
        }


def ratios(reports: dict[str, VariantReport]) -> Ratios | None:
    """The clusterbus/raw ratios of the medians; None when either AMQP variant has no result."""
    ours, raw = reports.get(CLUSTERBUS_AMQP), reports.get(RAW_AIOPIKA)
    if ours is None or raw is None or not ours.rounds or not raw.rounds:
        return None
    return Ratios(
        throughput=divide(ours.median("deliveries_per_s"), raw.median("deliveries_per_s")),
        p50_latency=divide(ours.median("p50_ms"), raw.median("p50_ms")),
    )


def memory_met(reports: dict[str, VariantReport]) -> bool | None:
    """Whether memory mode reached ``MEMORY_TARGET`` deliveries/s (None when it did not run)."""
    memory = reports.get(CLUSTERBUS_MEMORY)
    if memory is None or not memory.rounds:
        return None
    return memory.median("deliveries_per_s") >= MEMORY_TARGET


def print_table(console: Console, reports: dict[str, VariantReport], args: Any) -> None:
    """The human table: one row per variant, medians of the rounds."""
    table = Table(
        title=f"pub/sub fanout 1 -> {SUBSCRIBERS}: {args.messages} messages, "
        f"window {args.window}, median of {args.rounds} round(s)"
    )
    for header in ("variant", "deliveries/s", "p50 ms", "p99 ms", "complete"):
        table.add_column(header, justify="left" if header == "variant" else "right")
    for report in reports.values():
        table.add_row(
            report.name,
            cell(report.median("deliveries_per_s"), ",.0f"),
            cell(report.median("p50_ms"), ".2f"),
            cell(report.median("p99_ms"), ".2f"),
            "yes" if report.complete else "NO",
        )
    console.print(table)


def print_targets(console: Console, reports: dict[str, VariantReport]) -> None:
    """The ratios clusterbus/raw and the memory-mode target, each marked met or missed."""
    found = ratios(reports)
    if found is not None:
        console.print(
            f"throughput  clusterbus/raw: {found.throughput:.3f} "
            f"(target >= {THROUGHPUT_TARGET}) {mark(found.throughput_met)}"
        )
        console.print(
            f"p50 latency clusterbus/raw: {found.p50_latency:.3f} "
            f"(target <= {LATENCY_TARGET}) {mark(found.p50_latency_met)}"
        )
    elif CLUSTERBUS_AMQP in reports:
        console.print("ratios clusterbus/raw: not available (an AMQP variant has no result)")
    met = memory_met(reports)
    if met is not None:
        rate = reports[CLUSTERBUS_MEMORY].median("deliveries_per_s")
        console.print(
            f"memory mode: {rate:,.0f} deliveries/s (target >= {MEMORY_TARGET:,}) {mark(met)}"
        )


def cell(value: float, spec: str) -> str:
    """A table cell: ``value`` formatted with ``spec``, or a dash when there is none."""
    return format(value, spec) if math.isfinite(value) else "-"


def mark(met: bool) -> str:
    """How a target shows in the human report."""
    return "MET" if met else "MISSED"


def report_json(reports: dict[str, VariantReport], args: argparse.Namespace) -> str:
    """The one-line JSON report."""
    found = ratios(reports)
    return json.dumps(
        {
            "benchmark": "pubsub_fanout",
            "subscribers": SUBSCRIBERS,
            "messages": args.messages,
            "window": args.window,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "variants": {name: report.as_json() for name, report in reports.items()},
            "ratios": found.as_json() if found is not None else None,
            "memory_target": MEMORY_TARGET,
            "memory_target_met": memory_met(reports),
            "ok": all(report.complete for report in reports.values()),
        },
        allow_nan=False,
    )


# command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pubsub",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument("--amqp-url", default=DEFAULT_URL, help="RabbitMQ URL")
    parser.add_argument("--messages", type=positive, default=20_000, help="messages per run")
    parser.add_argument("--window", type=positive, default=256, help="publishes in flight")
    parser.add_argument("--rounds", type=positive, default=3, help="rounds per variant")
    parser.add_argument("--warmup", type=positive, default=1_000, help="warm-up messages")
    parser.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        help="give a run up after this long without a delivery (s)",
    )
    parser.add_argument("--skip-amqp", action="store_true", help="memory mode only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report; 1 when deliveries went missing."""
    args = parse_args(argv)
    reports = asyncio.run(run_all(args))
    console = Console()
    print_table(console, reports, args)
    print_targets(console, reports)
    print(report_json(reports, args), flush=True)
    return 0 if all(report.complete for report in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
