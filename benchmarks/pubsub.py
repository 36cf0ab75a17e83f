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
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.cli import finite, positive
from benchmarks.pubsub_measurement import VariantReport, run_all
from benchmarks.pubsub_variants import CLUSTERBUS_AMQP, CLUSTERBUS_MEMORY, RAW_AIOPIKA, SUBSCRIBERS

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
THROUGHPUT_TARGET = 0.8
LATENCY_TARGET = 1.25
MEMORY_TARGET = 100_000


# reporting ---------------------------------------------------------------------------------


def divide(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0."""
    return numerator / denominator if denominator else math.nan


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
