"""Tracing and metrics overhead: the same workloads with OpenTelemetry off, on over the API
alone, and on with the SDK configured.

Scenarios (each publishes a msgpack payload of a sequence number and 64 bytes of padding):

* ``memory_pubsub``: two buses on one :class:`bus.MemoryHub`; bus A publishes
  ``--messages-memory`` messages one after the other, bus B's handler counts them; from the
  first publish to the last delivery (deliveries/s).
* ``amqp_queue``: ``bus.queue.publish(..., max_retries=0)`` awaited one by one (persistent,
  confirmed), ``--messages-queue`` of them, no consumer (messages/s).
* ``amqp_pubsub``: two buses of one app on RabbitMQ; A publishes ``--messages-pubsub``
  messages with ``--window`` confirmed publishes in flight, B's handler counts them; from
  the first publish to the last delivery (deliveries/s).

Variants, each in a process of its own (OpenTelemetry's providers are process-wide):

* ``none``: the ``otel`` extra not installed (the process cannot import ``opentelemetry``):
  the bus uses its no-op telemetry object.
* ``off``: OpenTelemetry installed, the ``telemetry`` setting off: the same no-op object.
* ``api``: telemetry on, the OpenTelemetry API installed but no SDK: its default no-op
  providers (what a service that installs the extra but configures nothing pays).
* ``sdk``: telemetry on, a ``TracerProvider`` (every span sampled) with a
  ``BatchSpanProcessor`` over an exporter that drops the spans, and the metrics of
  :func:`bus.prometheus.enable_prometheus` (an SDK ``MeterProvider`` with a
  ``PrometheusMetricReader``, never scraped during the run).

A round runs one process per variant (their order rotates each round); each process runs
every scenario after a warm-up. Reported: the median and the minimum over ``--rounds`` rounds
per variant and scenario, and the ratios ``sdk/off``, ``api/off`` and ``none/off`` of the
medians (throughput kept: 1.0 is free; goals ``sdk/off >= 0.85``, ``none/off`` about 1).
App names start with ``t-bench-``; the queues and exchanges made are deleted at the end of
each process.

Run::

    python -m benchmarks.telemetry [--amqp-url URL] [--rounds R] [--messages-memory N]
                                   [--messages-queue N] [--messages-pubsub N] [--window W]
                                   [--skip-amqp] [--quick]
    python -m benchmarks.telemetry --profile sdk  # cProfile of one process, top functions

The last line of stdout is one JSON object with every figure. The exit status is 0 even when
the goal is missed; it is non-zero only when something broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import math
import pstats
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from rich.console import Console
from rich.table import Table

from benchmarks.cli import finite, log, positive
from bus import Bus, MemoryHub, Settings

DESCRIPTION = "Tracing and metrics overhead: OpenTelemetry off, API only, and SDK on."
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
CHANNEL = "bench"
PAD = "x" * 64
SDK_GOAL = 0.85
VARIANTS = ("none", "off", "api", "sdk")
RATIOS = ("api", "sdk", "none")  # each over "off"
BLOCK_OTEL = (
    "import sys; sys.modules['opentelemetry'] = None; "  # import opentelemetry fails
    "from benchmarks.telemetry import main; sys.exit(main(sys.argv[1:]))"
)
MEMORY_PUBSUB, AMQP_QUEUE, AMQP_PUBSUB = "memory_pubsub", "amqp_queue", "amqp_pubsub"
SCENARIOS = (MEMORY_PUBSUB, AMQP_QUEUE, AMQP_PUBSUB)
IDLE_TIMEOUT = 15.0  # a run is given up after this long without progress
CHILD_TIMEOUT = 600.0


# the variants' OpenTelemetry set-up (in the child process) ---------------------------------


def configure(variant: str) -> Settings:
    """Set up OpenTelemetry for ``variant`` in this process; the buses' settings."""
    settings = Settings(log_level="WARNING", pubsub_max_backlog=100_000, telemetry=True)
    if variant == "none":
        from bus.otel import available

        if available():
            raise RuntimeError("the none variant runs where opentelemetry cannot be imported")
        return settings
    if variant == "off":
        return settings.model_copy(update={"telemetry": False})
    if variant == "sdk":
        from collections.abc import Sequence as Spans

        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from bus.prometheus import enable_prometheus

        class Dropping(SpanExporter):
            """Exports nowhere: the cost measured is the SDK's, not a network's."""

            def export(self, spans: Spans[ReadableSpan]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Dropping()))
        trace.set_tracer_provider(provider)
        enable_prometheus()
    return settings


# the scenarios (in the child process) ------------------------------------------------------


class Counter:
    """Counts deliveries; signals when ``expected`` arrived."""

    def __init__(self) -> None:
        self.count = 0
        self.expected = 0
        self.last = time.perf_counter()
        self.done = asyncio.Event()

    def expect(self, expected: int) -> None:
        """Start counting a run of ``expected`` deliveries."""
        self.count, self.expected = 0, expected
        self.done.clear()

    async def __call__(self, message: Any) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.last = time.perf_counter()
            self.done.set()


async def wait_for(counter: Counter) -> None:
    """Wait for every expected delivery; raise when none arrives for ``IDLE_TIMEOUT``."""
    while not counter.done.is_set():
        before = counter.count
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IDLE_TIMEOUT):
                await counter.done.wait()
        if counter.count == before and not counter.done.is_set():
            raise RuntimeError(f"{before} of {counter.expected} deliveries, then no more")


async def publish_window(publish: Callable[[int], Awaitable[Any]], count: int, window: int) -> None:
    """Publish ``count`` messages with at most ``window`` publishes in flight."""
    sequence = iter(range(count))

    async def worker() -> None:
        for seq in sequence:
            await publish(seq)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(window, count)):
            group.create_task(worker())


async def deliveries_per_s(
    publisher: Bus, counter: Counter, count: int, window: int, warmup: int
) -> float:
    """Warm up, then one measured run of ``count`` publishes on ``publisher``."""

    async def publish(seq: int) -> None:
        await publisher.pubsub.publish(CHANNEL, {"seq": seq, "pad": PAD})

    for size in (warmup, count):
        counter.expect(size)
        gc.collect()
        started = time.perf_counter()
        await publish_window(publish, size, window)
        await wait_for(counter)
    return count / (counter.last - started)


async def memory_pubsub(settings: Settings, args: argparse.Namespace) -> float:
    """Two buses on one hub: A publishes one by one, B counts."""
    hub, app = MemoryHub(), new_app()
    counter = Counter()
    async with Bus(app, hub=hub, settings=settings) as a, Bus(app, hub=hub, settings=settings) as b:
        await b.pubsub.subscribe(CHANNEL, counter)
        count = args.messages_memory
        return await deliveries_per_s(a, counter, count, 1, warmup(count))


async def amqp_queue(settings: Settings, args: argparse.Namespace) -> float:
    """Sequential confirmed queue publishes."""
    app = new_app()
    bus = Bus(app, amqp_url=args.amqp_url, settings=settings)
    count: int = args.messages_queue
    try:
        await bus.start()
        for size in (warmup(count), count):
            gc.collect()
            started = time.perf_counter()
            for seq in range(size):
                await bus.queue.publish(CHANNEL, {"seq": seq, "pad": PAD}, max_retries=0)
            seconds = time.perf_counter() - started
        return count / seconds
    finally:
        await bus.stop()
        await delete_entities(args.amqp_url, app)


async def amqp_pubsub(settings: Settings, args: argparse.Namespace) -> float:
    """Two buses on RabbitMQ: A publishes (``--window`` in flight), B counts."""
    app = new_app()
    counter = Counter()
    a = Bus(app, amqp_url=args.amqp_url, settings=settings)
    b = Bus(app, amqp_url=args.amqp_url, settings=settings)
    try:
        await a.start()
        await b.start()
        await b.pubsub.subscribe(CHANNEL, counter)
        count = args.messages_pubsub
        return await deliveries_per_s(a, counter, count, args.window, warmup(count))
    finally:
        await b.stop()
        await a.stop()
        await delete_entities(args.amqp_url, app)


RUNS: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[float]]] = {
    MEMORY_PUBSUB: memory_pubsub,
    AMQP_QUEUE: amqp_queue,
    AMQP_PUBSUB: amqp_pubsub,
}


def new_app() -> str:
    """A fresh app name (``t-bench-...``), so that runs never share exchanges or queues."""
    return f"t-bench-{uuid.uuid4().hex[:10]}"


def warmup(count: int) -> int:
    """The warm-up run's size: a tenth of the measured run, at least 100."""
    return max(100, count // 10)


async def delete_entities(amqp_url: str, app: str) -> None:
    """Delete the exchanges and durable queues a bus of ``app`` declared (the others are
    exclusive, gone with its connection)."""
    exchanges = [f"{app}.pubsub.{CHANNEL}", f"{app}.pubsub.cache.invalidate"]
    queues = [f"{app}.queue.{CHANNEL}", f"{app}.queue.{CHANNEL}.dead"]
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in exchanges:
            await channel.exchange_delete(name)  # no error when it is not there
        for name in queues:
            await channel.queue_delete(name)


def scenarios(args: argparse.Namespace) -> list[str]:
    """The scenarios this run measures."""
    return [MEMORY_PUBSUB] if args.skip_amqp else list(SCENARIOS)


async def child(args: argparse.Namespace) -> dict[str, float]:
    """Every scenario in this process, with ``args.child``'s OpenTelemetry set-up."""
    settings = configure(args.child)
    return {name: await RUNS[name](settings, args) for name in scenarios(args)}


# the parent: rounds of child processes -----------------------------------------------------


@dataclass(slots=True)
class Report:
    """Every round of one variant (rate by scenario) and the errors of broken ones."""

    rounds: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def values(self, scenario: str) -> list[float]:
        """The rates of ``scenario`` over the rounds."""
        return [r[scenario] for r in self.rounds if scenario in r]

    def median(self, scenario: str) -> float:
        """The median over the rounds (NaN without a round)."""
        values = self.values(scenario)
        return statistics.median(values) if values else math.nan

    def minimum(self, scenario: str) -> float:
        """The slowest round (NaN without a round)."""
        values = self.values(scenario)
        return min(values) if values else math.nan


def child_command(args: argparse.Namespace, variant: str) -> list[str]:
    """The command line of one child process."""
    runner = ["-c", BLOCK_OTEL] if variant == "none" else ["-m", "benchmarks.telemetry"]
    command = [sys.executable, *runner, "--child", variant]
    command += ["--amqp-url", args.amqp_url, "--window", str(args.window)]
    command += ["--messages-memory", str(args.messages_memory)]
    command += ["--messages-queue", str(args.messages_queue)]
    command += ["--messages-pubsub", str(args.messages_pubsub)]
    return command + (["--skip-amqp"] if args.skip_amqp else [])


def run_child(args: argparse.Namespace, variant: str) -> dict[str, float]:
    """Run one child process; its rates by scenario."""
    done = subprocess.run(
        child_command(args, variant),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"exit status {done.returncode}: {done.stderr.strip()[-2000:]}")
    rates: dict[str, float] = json.loads(lines[-1])
    return rates


def run_all(args: argparse.Namespace) -> dict[str, Report]:
    """Every round: one child process per variant, their order rotating."""
    reports = {variant: Report() for variant in VARIANTS}
    for index in range(args.rounds):
        shift = index % len(VARIANTS)
        order = VARIANTS[shift:] + VARIANTS[:shift]
        for variant in order:
            log(f"round {index + 1}/{args.rounds}: {variant}")
            try:
                rates = run_child(args, variant)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                log(f"  broke: {exc}")
                reports[variant].errors.append(str(exc))
                continue
            log("  " + ", ".join(f"{s} {v:,.0f}/s" for s, v in rates.items()))
            reports[variant].rounds.append(rates)
    return reports


def ratio(reports: dict[str, Report], variant: str, scenario: str) -> float:
    """``variant``'s median over ``off``'s (NaN when either has no round)."""
    base = reports["off"].median(scenario)
    value = reports[variant].median(scenario)
    return value / base if base and math.isfinite(base) else math.nan


def cell(value: float, spec: str) -> str:
    """A table cell: ``value`` formatted with ``spec``, or a dash when there is none."""
    return format(value, spec) if math.isfinite(value) else "-"


def print_report(console: Console, reports: dict[str, Report], args: argparse.Namespace) -> None:
    """The human table: median and minimum per variant and scenario, then the ratios."""
    table = Table(title=f"OpenTelemetry overhead, rates per second over {args.rounds} round(s)")
    table.add_column("scenario")
    for variant in VARIANTS:
        table.add_column(f"{variant} median", justify="right")
        table.add_column(f"{variant} min", justify="right")
    for variant in RATIOS:
        table.add_column(f"{variant}/off", justify="right")
    for scenario in scenarios(args):
        row = [scenario]
        for variant in VARIANTS:
            row += [
                cell(reports[variant].median(scenario), ",.0f"),
                cell(reports[variant].minimum(scenario), ",.0f"),
            ]
        row += [cell(ratio(reports, v, scenario), ".3f") for v in RATIOS]
        table.add_row(*row)
    console.print(table)
    for scenario in scenarios(args):
        value = ratio(reports, "sdk", scenario)
        met = "n/a" if not math.isfinite(value) else "MET" if value >= SDK_GOAL else "MISSED"
        console.print(f"{scenario:<14} sdk/off {cell(value, '.3f')} (goal >= {SDK_GOAL}) {met}")


def report_json(reports: dict[str, Report], args: argparse.Namespace) -> str:
    """The one-line JSON report."""
    names = scenarios(args)
    variants = {
        variant: {
            "median_per_s": {s: finite(report.median(s)) for s in names},
            "min_per_s": {s: finite(report.minimum(s)) for s in names},
            "rounds": report.rounds,
            "errors": report.errors,
        }
        for variant, report in reports.items()
    }
    ratios = {
        f"{variant}/off": {s: finite(ratio(reports, variant, s)) for s in names}
        for variant in RATIOS
    }
    settings = {
        k: getattr(args, k)
        for k in ("rounds", "messages_memory", "messages_queue", "messages_pubsub", "window")
    }
    return json.dumps(
        {"benchmark": "telemetry_overhead", **settings, "variants": variants, "ratios": ratios}
        | {"sdk_goal": SDK_GOAL, "ok": not any(r.errors for r in reports.values())},
        allow_nan=False,
    )


def profile(args: argparse.Namespace) -> None:
    """cProfile one child's scenarios in this process; print the top functions."""
    profiler = cProfile.Profile()
    args.child = args.profile
    profiler.enable()
    rates = asyncio.run(child(args))
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    stats.print_stats(40)
    print(out.getvalue())
    print(json.dumps(rates))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser("python -m benchmarks.telemetry", description=DESCRIPTION)
    add = parser.add_argument
    add("--amqp-url", default=DEFAULT_URL, help="RabbitMQ URL")
    add("--rounds", type=positive, default=5, help="rounds (one process per variant each)")
    add("--messages-memory", type=positive, default=20_000, help="memory pub/sub messages")
    add("--messages-queue", type=positive, default=2_000, help="sequential queue publishes")
    add("--messages-pubsub", type=positive, default=10_000, help="amqp pub/sub messages")
    add("--window", type=positive, default=64, help="amqp pub/sub publishes in flight")
    add("--skip-amqp", action="store_true", help="the memory scenario only")
    add("--quick", action="store_true", help="3 rounds of a quarter of the messages")
    add("--profile", choices=VARIANTS[1:], default=None, help="cProfile a variant in-process")
    add("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 3)
        for name in ("messages_memory", "messages_queue", "messages_pubsub"):
            setattr(args, name, max(100, getattr(args, name) // 4))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report; 1 when something broke."""
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(asyncio.run(child(args))), flush=True)
        return 0
    if args.profile is not None:
        profile(args)
        return 0
    reports = run_all(args)
    print_report(Console(width=max(Console().width, 170)), reports, args)
    print(report_json(reports, args), flush=True)
    return 1 if any(report.errors for report in reports.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
