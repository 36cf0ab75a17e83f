"""Cache benchmark: clusterbus caches against cashews, aiocache and raw redis-py.

Every operation is awaited one at a time in a loop (sequential), on a small realistic value
(a dict of four fields, 41 msgpack bytes) over a key space of 1000 keys; gets always hit.
Figures are operations per second, the median of ``--rounds`` rounds of ``--ops`` operations
per variant and operation, each round after a warm-up (not counted).

Variants:

* ``clusterbus_memory``: a ``memory`` store cache of a started memory-mode :class:`bus.Bus`
  (alone on its :class:`bus.MemoryHub`); every set publishes its invalidation on the hub.
* ``clusterbus_memory_peers``: the same with two other started instances of the app on the
  hub, which receive every invalidation (in this process).
* ``clusterbus_memory_unstarted``: the memory store of a bus that was never started, so a
  set invalidates nothing: the cost of the store and the codec alone (for reference).
* ``cashews_mem``: cashews ``Cache().setup("mem://")`` with its defaults (no pickling; the
  store keeps a shallow copy of the value and a get returns that stored object).
* ``aiocache_memory``: aiocache ``SimpleMemoryCache`` with its default serializer,
  ``NullSerializer`` (stores the object itself: a get returns the very object set).
* ``clusterbus_redis``: a ``redis`` store cache (values msgpack-encoded by the codec).
* ``raw_redis``: redis-py asyncio ``SET``/``GET`` of ``msgpack.packb(value)`` on the same
  Redis, decoding with ``msgpack.unpackb`` on get (the work a hand-written cache does).
* ``clusterbus_amqp_peers``: a memory store cache of a started amqp-mode bus with two other
  started instances of the app on RabbitMQ: every set waits for the broker to confirm its
  invalidation ("the cost of coherence").

The variants of a group (memory, redis, amqp) run side by side in one event loop: each
round splits the operations into chunks and the variants take turns, chunk by chunk, so
that a slow spell of a shared machine hits all of them alike. ``set x64`` runs the sets 64
at a time (``asyncio.gather`` over batches of distinct keys), which lets concurrent writers
share one invalidation message. The peers of the ``*_peers`` variants hold the keys being
written (put into their stores before each chunk, untimed) and must have dropped every one
of them after it; the invalidation messages per set are counted on one peer during the
warm-up.

Targets: clusterbus memory store >= 1.5x cashews ``mem://`` (get, set, and combined: a 1:1
mix of gets and sets, i.e. ``2 / (1/get + 1/set)``); clusterbus redis store >= 0.9x raw
redis-py. The amqp figures are reported against the memory-mode set, without a target.
A ratio is the median of its per-round ratios (within a group the two figures of a round
were measured side by side, so their quotient moves less than either).

Run::

    python -m benchmarks.cache [--amqp-url URL] [--redis-url URL] [--ops N] [--rounds R]
                               [--skip-amqp]

The last line of stdout is one JSON object with every figure. The exit status is 0 even when
a target is missed; it is non-zero only when something broke (an error, a get that missed,
invalidations that did not arrive).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
from rich.console import Console
from rich.table import Table

from benchmarks.cache_measurement import CONCURRENCY, OPERATIONS, Run, VariantReport, run_all
from benchmarks.cache_variants import (
    AIOCACHE_MEMORY,
    CASHEWS_MEM,
    CLUSTERBUS_AMQP_PEERS,
    CLUSTERBUS_MEMORY,
    CLUSTERBUS_MEMORY_PEERS,
    CLUSTERBUS_MEMORY_UNSTARTED,
    CLUSTERBUS_REDIS,
    COMBINED,
    DESCRIPTIONS,
    GET,
    KEY_SPACE,
    RAW_REDIS,
    SET,
    SET_X64,
    VALUE,
)
from benchmarks.cli import finite, positive

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MEMORY_TARGET = 1.5
REDIS_TARGET = 0.9
CONSOLE_WIDTH = 150

COMPARED = (GET, SET, COMBINED)
TARGETS = {
    (CLUSTERBUS_MEMORY, CASHEWS_MEM): MEMORY_TARGET,
    (CLUSTERBUS_REDIS, RAW_REDIS): REDIS_TARGET,
}


# reporting ---------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Ratio:
    """One comparison (ops/s over ops/s, higher is better), with an optional target."""

    label: str
    value: float
    target: float | None

    @property
    def met(self) -> bool | None:
        """Whether the target was met (None: no target, or no figure)."""
        if self.target is None or not math.isfinite(self.value):
            return None
        return self.value >= self.target

    def as_json(self) -> dict[str, object]:
        """The comparison as JSON-able data."""
        return {
            "label": self.label,
            "ratio": finite(self.value),
            "target": self.target,
            "met": self.met,
        }


def ratios(run: Run) -> list[Ratio]:
    """Every comparison that has figures: the targets first, then the informative ones."""

    def ratio(label: str, ours: str, reference: str, op: str, ref_op: str = "") -> Ratio:
        target = TARGETS.get((ours, reference)) if not ref_op else None
        value = run.paired_ratio(ours, op, reference, ref_op or op)
        return Ratio(f"{label}: {ours} / {reference}", value, target)

    found = [ratio(f"memory {op}", CLUSTERBUS_MEMORY, CASHEWS_MEM, op) for op in COMPARED]
    found += [ratio(f"redis {op}", CLUSTERBUS_REDIS, RAW_REDIS, op) for op in COMPARED]
    found += [ratio(f"memory {op}", CLUSTERBUS_MEMORY, AIOCACHE_MEMORY, op) for op in COMPARED]
    found += [
        ratio("coherence, set", CLUSTERBUS_AMQP_PEERS, CLUSTERBUS_MEMORY, SET),
        ratio("coherence, set x64", CLUSTERBUS_AMQP_PEERS, CLUSTERBUS_MEMORY, SET_X64),
        ratio(
            "batching, set x64 over set",
            CLUSTERBUS_AMQP_PEERS,
            CLUSTERBUS_AMQP_PEERS,
            SET_X64,
            SET,
        ),
        ratio("memory-mode peers, set", CLUSTERBUS_MEMORY_PEERS, CLUSTERBUS_MEMORY, SET),
        ratio("no invalidation, set", CLUSTERBUS_MEMORY_UNSTARTED, CLUSTERBUS_MEMORY, SET),
    ]
    return [r for r in found if math.isfinite(r.value)]


def cell(ops_per_s: float) -> str:
    """A table cell: ops/s and µs per op, or a dash when not measured."""
    if not math.isfinite(ops_per_s):
        return "-"
    return f"{ops_per_s:,.0f} ({1e6 / ops_per_s:.2f} µs)"


def messages_cell(report: VariantReport) -> str:
    """Invalidation messages per set (sequential / x64) received by the peers."""
    values = [report.messages_per_set(op) for op in (SET, SET_X64)]
    if not any(math.isfinite(v) for v in values):
        return "-"
    return " / ".join(f"{v:.3f}" if math.isfinite(v) else "-" for v in values)


def print_tables(console: Console, run: Run, args: argparse.Namespace) -> None:
    """The figures per variant and what each variant is, then the ratios with targets."""
    table = Table(
        title=f"cache ops/s (µs per op): {args.ops} ops per figure, sequential unless x"
        f"{CONCURRENCY}, {KEY_SPACE} keys, median of {args.rounds} round(s)"
    )
    headers = (
        "variant",
        "get",
        "set",
        "combined 1:1",
        f"set x{CONCURRENCY}",
        "inval msgs/set\n(set / x64)",
        "get returns",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "variant" else "right")
    for report in run.reports.values():
        table.add_row(
            report.name,
            *(cell(report.median(op)) for op in OPERATIONS),
            messages_cell(report),
            report.copy() or "-",
        )
    console.print(table)
    for report in run.reports.values():
        console.print(f"  {report.name}: {DESCRIPTIONS[report.name]}", highlight=False)
    targets = Table(title="ratios (higher is better), median of the per-round ratios")
    for header in ("comparison", "ratio", "target", "verdict"):
        targets.add_column(header, justify="left" if header == "comparison" else "right")
    for ratio in ratios(run):
        targets.add_row(
            ratio.label,
            f"{ratio.value:.3f}",
            "-" if ratio.target is None else f">= {ratio.target}",
            {True: "MET", False: "MISSED", None: "info"}[ratio.met],
        )
    console.print(targets)
    for error in run.errors:
        console.print(f"[red]error:[/red] {error}", highlight=False)


def make_console() -> Console:
    """A console for the report; wide enough for the table when stdout is not a terminal."""
    console = Console()
    return console if console.is_terminal else Console(width=CONSOLE_WIDTH)


def report_json(run: Run, args: argparse.Namespace) -> str:
    """The one-line JSON report."""
    found = ratios(run)
    return json.dumps(
        {
            "benchmark": "cache",
            "ops": args.ops,
            "rounds": args.rounds,
            "key_space": KEY_SPACE,
            "value": VALUE,
            "value_bytes": len(msgpack.packb(VALUE)),
            "concurrency": CONCURRENCY,
            "variants": {name: report.as_json() for name, report in run.reports.items()},
            "ratios": [ratio.as_json() for ratio in found],
            "targets_met": all(r.met for r in found if r.met is not None),
            "errors": run.errors,
            "ok": not run.errors,
        },
        allow_nan=False,
    )


# command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cache",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL, help="RabbitMQ URL")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis URL")
    parser.add_argument("--ops", type=positive, default=20_000, help="operations per figure")
    parser.add_argument("--rounds", type=positive, default=3, help="rounds per variant")
    parser.add_argument("--skip-amqp", action="store_true", help="no RabbitMQ variant")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report; 1 when something broke."""
    args = parse_args(argv)
    run = asyncio.run(run_all(args))
    console = make_console()
    print_tables(console, run, args)
    print(report_json(run, args), flush=True)
    return 0 if not run.errors and run.reports else 1


if __name__ == "__main__":
    sys.exit(main())
