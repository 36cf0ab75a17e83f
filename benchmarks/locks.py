"""Lock benchmark: clusterbus ``bus.locks`` against redis-py's asyncio ``Lock``, both local.

Scenarios, run by every variant in each round:

* ``uncontended``: one task acquires and releases one key ``--cycles`` times in a row
  (cycles/s). Target: clusterbus on RabbitMQ >= 0.5x redis-py.
* ``contended``: ``CONTENDERS`` contenders, each on its own bus (its own connection) or its
  own Redis client, all in this process, loop ``acquire; sleep(1 ms); release`` on one
  shared key for ``--duration`` seconds. Reported: hand-offs/s (acquisitions within the
  window / the window), switches/s (those by another contender than the previous holder's:
  a lock handed over rather than re-taken), the wait from the acquire call to the lock in
  hand (p50, p99, max, mean; acquires still waiting at the end of the window finish and
  count here), and the acquisitions per contender (fairness). Targets: clusterbus
  hand-offs/s >= 1.5x redis-py; clusterbus wait max <= 4x its mean. Mutual exclusion is
  checked with a shared "inside" counter: an overlap (two holders at once) makes the exit
  status non-zero.

Variants: ``clusterbus_amqp`` (:class:`bus.Bus` objects of one app on RabbitMQ, one lock
queue per key), ``clusterbus_memory`` (the same on one :class:`bus.MemoryHub`; no target)
and ``redis_py`` (``Redis.lock(name, timeout=30)`` with its default polling, ``sleep=0.1``).
Each round of a variant runs on fresh connections after a short warm-up; the variants'
order alternates per round; a round that breaks is tried once more (the servers may be
shared). Reported: the medians of ``--rounds`` rounds and the ratios to redis-py. The lock
queues (they would expire after 60 s anyway) and the Redis keys are deleted afterwards.

Run::

    python -m benchmarks.locks [--amqp-url URL] [--redis-url URL] [--cycles N]
                               [--duration SECONDS] [--rounds R] [--skip-memory]

The last line of stdout is one JSON object with every figure. The exit status is 0 even when
a target is missed; it is non-zero only when something broke (an error, an overlap).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
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
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from benchmarks.cli import finite, positive
from bus import Bus, MemoryHub, Settings
from managers.names import lock_queue

DESCRIPTION = "Lock benchmark: clusterbus locks against redis-py's asyncio Lock."
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CONTENDERS = 4
HOLD = 0.001  # seconds a contender holds the lock
TTL = 30.0
SOLO_KEY, SHARED_KEY = "solo", "shared"
WARMUP = 50  # uncontended cycles before the measurements, not counted
DRAIN_TIMEOUT = 30.0  # the contenders still waiting at the end of the window get this long
ATTEMPTS = 2

CLUSTERBUS_AMQP, CLUSTERBUS_MEMORY, REDIS_PY = "clusterbus_amqp", "clusterbus_memory", "redis_py"
METRICS: tuple[str, ...] = ("cycles_per_s", "handoffs_per_s", "switches_per_s", "wait_p50_ms")
METRICS += ("wait_p99_ms", "wait_max_ms", "wait_mean_ms", "max_over_mean", "min_over_max_count")
# (label, metric, variant, reference (None: the figure itself), target, higher is better)
TARGETS: tuple[tuple[str, str, str, str | None, float | None, bool], ...] = (
    ("uncontended", "cycles_per_s", CLUSTERBUS_AMQP, REDIS_PY, 0.5, True),
    ("hand-offs", "handoffs_per_s", CLUSTERBUS_AMQP, REDIS_PY, 1.5, True),
    ("fairness", "max_over_mean", CLUSTERBUS_AMQP, None, 4.0, False),
    ("uncontended", "cycles_per_s", CLUSTERBUS_MEMORY, REDIS_PY, None, True),
    ("hand-offs", "handoffs_per_s", CLUSTERBUS_MEMORY, REDIS_PY, None, True),
    ("fairness", "max_over_mean", REDIS_PY, None, None, False),
)

Release = Callable[[], Awaitable[None]]
Acquire = Callable[[str], Awaitable[Release]]  # waits for the key; returns its release
log = functools.partial(print, file=sys.stderr, flush=True)  # progress; stdout has the report


class Rig(Protocol):
    """``CONTENDERS`` independent lock clients of one variant."""

    async def setup(self) -> list[Acquire]: ...  # connect; one acquire per client
    async def teardown(self) -> None: ...  # disconnect, delete what was created


class ClusterbusRig:
    """``CONTENDERS`` buses of one app: ``bus.locks.acquire(key, ttl=30)``, ``lease.release``."""

    def __init__(self, amqp_url: str | None) -> None:
        self.app = f"bench-l-{uuid.uuid4().hex[:12]}"
        self._url = amqp_url
        settings = Settings(log_level="WARNING")
        hub = MemoryHub() if amqp_url is None else None
        self._buses = [
            Bus(self.app, amqp_url=amqp_url, settings=settings)
            if amqp_url is not None
            else Bus(self.app, hub=hub, settings=settings)
            for _ in range(CONTENDERS)
        ]

    async def setup(self) -> list[Acquire]:
        for bus in self._buses:
            await bus.start()
        return [self._acquirer(bus) for bus in self._buses]

    @staticmethod
    def _acquirer(bus: Bus) -> Acquire:
        async def acquire(key: str) -> Release:
            lease = await bus.locks.acquire(key, ttl=TTL)
            return lease.release

        return acquire

    async def teardown(self) -> None:
        connected = any(bus.started for bus in self._buses)
        for bus in self._buses:
            await bus.stop()
        if self._url is not None and connected:
            async with await aio_pika.connect(self._url) as connection:
                channel = await connection.channel()
                for key in (SOLO_KEY, SHARED_KEY):
                    await channel.queue_delete(lock_queue(self.app, key))


class RedisRig:
    """``CONTENDERS`` clients: ``Redis.lock(name, timeout=30)`` (polling every 0.1 s)."""

    def __init__(self, redis_url: str) -> None:
        self.prefix = f"bench-l-{uuid.uuid4().hex[:12]}"
        self._clients: list[Redis] = [Redis.from_url(redis_url) for _ in range(CONTENDERS)]

    async def setup(self) -> list[Acquire]:
        for client in self._clients:
            await client.ping()
        return [self._acquirer(client) for client in self._clients]

    def _acquirer(self, client: Redis) -> Acquire:
        async def acquire(key: str) -> Release:
            lock = client.lock(f"{self.prefix}:{key}", timeout=TTL)
            if not await lock.acquire():
                raise RuntimeError(f"redis lock {lock.name!r} not acquired")
            return lock.release

        return acquire

    async def teardown(self) -> None:
        try:
            await self._clients[0].delete(*(f"{self.prefix}:{k}" for k in (SOLO_KEY, SHARED_KEY)))
        finally:
            for client in self._clients:
                await client.aclose()


# measuring ---------------------------------------------------------------------------------


@dataclass(slots=True)
class RoundResult:
    """The figures of one round of one variant."""

    cycles_per_s: float
    handoffs_per_s: float
    switches_per_s: float  # acquisitions by another contender than the previous holder
    wait_p50_ms: float
    wait_p99_ms: float
    wait_max_ms: float
    wait_mean_ms: float
    max_over_mean: float
    min_over_max_count: float  # the least served contender's acquisitions / the most's
    waits: int
    counts: list[int]
    overlaps: int


async def uncontended(acquire: Acquire, cycles: int) -> float:
    """``cycles`` acquire+release of one key by one task; cycles/s."""
    gc.collect()
    started = time.perf_counter()
    for _ in range(cycles):
        release = await acquire(SOLO_KEY)
        await release()
    return cycles / (time.perf_counter() - started)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of an ascending sequence, nearest rank; NaN when empty."""
    if not ordered:
        return math.nan
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[min(rank, len(ordered) - 1)]


async def contended(acquires: list[Acquire], duration: float, cycles_per_s: float) -> RoundResult:
    """Every contender loops acquire, hold, release on the shared key for ``duration`` s."""
    inside = overlaps = switches = 0
    last = -1
    waits: list[float] = []
    counts = [0] * len(acquires)
    gc.collect()
    end = time.perf_counter() + duration

    async def contender(index: int, acquire: Acquire) -> None:
        nonlocal inside, overlaps, switches, last
        while (asked := time.perf_counter()) < end:
            release = await acquire(SHARED_KEY)
            got = time.perf_counter()
            waits.append(got - asked)
            counts[index] += got < end
            switches += got < end and index != last
            last = index
            inside += 1
            if inside > 1:
                overlaps += 1
            try:
                await asyncio.sleep(HOLD)
            finally:
                inside -= 1
                await release()

    async with asyncio.timeout(duration + DRAIN_TIMEOUT), asyncio.TaskGroup() as group:
        for index, acquire in enumerate(acquires):
            group.create_task(contender(index, acquire))
    ordered = sorted(waits)
    mean = statistics.fmean(ordered) if ordered else math.nan
    return RoundResult(
        cycles_per_s=cycles_per_s,
        handoffs_per_s=sum(counts) / duration,
        switches_per_s=switches / duration,
        wait_p50_ms=percentile(ordered, 0.50) * 1000,
        wait_p99_ms=percentile(ordered, 0.99) * 1000,
        wait_max_ms=ordered[-1] * 1000 if ordered else math.nan,
        wait_mean_ms=mean * 1000,
        max_over_mean=ordered[-1] / mean if ordered and mean > 0 else math.nan,
        min_over_max_count=min(counts) / max(counts) if max(counts) else math.nan,
        waits=len(ordered),
        counts=counts,
        overlaps=overlaps,
    )


async def run_round(factory: Callable[[], Rig], args: argparse.Namespace) -> RoundResult:
    """One round on a fresh rig: warm-up, uncontended, contended; then the teardown."""
    rig = factory()
    try:
        acquires = await rig.setup()
        await uncontended(acquires[0], WARMUP)
        rate = await uncontended(acquires[0], args.cycles)
        return await contended(acquires, args.duration, rate)
    finally:
        try:
            await rig.teardown()
        except Exception as exc:  # a leftover queue or key does not spoil the figures
            log(f"  cleanup failed: {type(exc).__name__}: {exc}")


@dataclass(slots=True)
class Report:
    """Every round of one variant and the errors of broken ones."""

    rounds: list[RoundResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, metric: str) -> float:
        """The median over the rounds of ``metric`` (NaN without a round)."""
        values = [float(getattr(r, metric)) for r in self.rounds]
        return statistics.median(values) if values else math.nan

    @property
    def overlaps(self) -> int:
        """Overlaps seen over every round (must be 0)."""
        return sum(r.overlaps for r in self.rounds)

    @property
    def ok(self) -> bool:
        """Nothing broke and mutual exclusion held."""
        return not self.errors and bool(self.rounds) and self.overlaps == 0


def factories(args: argparse.Namespace) -> dict[str, Callable[[], Rig]]:
    """How to build a fresh rig of each variant that is to run."""
    found: dict[str, Callable[[], Rig]] = {
        CLUSTERBUS_AMQP: lambda: ClusterbusRig(args.amqp_url),
        REDIS_PY: lambda: RedisRig(args.redis_url),
    }
    if not args.skip_memory:
        found[CLUSTERBUS_MEMORY] = lambda: ClusterbusRig(None)
    return found


async def run_all(args: argparse.Namespace) -> dict[str, Report]:
    """Every round of every variant, alternating their order; a broken round is tried again."""
    rigs = factories(args)
    reports = {name: Report() for name in rigs}
    for index in range(args.rounds):
        for name in list(rigs) if index % 2 == 0 else list(reversed(rigs)):
            log(f"round {index + 1}/{args.rounds}: {name}")
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    result = await run_round(rigs[name], args)
                except Exception as exc:
                    log(f"  round broke ({type(exc).__name__}: {exc})")
                    if attempt == ATTEMPTS:
                        reports[name].errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                log(
                    f"  {result.cycles_per_s:,.0f} cycles/s; {result.handoffs_per_s:,.0f} "
                    f"hand-offs/s, wait p50 {result.wait_p50_ms:.2f} ms, max "
                    f"{result.wait_max_ms:.1f} ms, counts {result.counts}, "
                    f"overlaps {result.overlaps}"
                )
                reports[name].rounds.append(result)
                break
    return reports


# reporting ---------------------------------------------------------------------------------


def targets(reports: dict[str, Report]) -> list[dict[str, Any]]:
    """Each ratio (or figure) of TARGETS whose variants ran, with its target and whether met."""
    found: list[dict[str, Any]] = []
    for label, metric, variant, reference, target, higher in TARGETS:
        if variant not in reports or (reference is not None and reference not in reports):
            continue
        value = reports[variant].median(metric)
        name = f"{variant} {metric}"
        if reference is not None:
            theirs = reports[reference].median(metric)
            value = value / theirs if theirs else math.nan
            name = f"{variant}/{reference} {metric}"
        met = None
        if target is not None and math.isfinite(value):
            met = value >= target if higher else value <= target
        found.append(
            {"scenario": label, "figure": name, "value": finite(value), "target": target}
            | {"higher_is_better": higher, "met": met}
        )
    return found


def cell(value: float, spec: str) -> str:
    """A table cell: ``value`` formatted with ``spec``, or a dash when there is none."""
    return format(value, spec) if math.isfinite(value) else "-"


def print_report(console: Console, reports: dict[str, Report], args: argparse.Namespace) -> None:
    """The human tables (medians of the rounds, acquisitions per contender), then the targets."""
    table = Table(
        title=f"locks, median of {args.rounds} round(s): {args.cycles} uncontended cycles; "
        f"{CONTENDERS} contenders holding {HOLD * 1000:g} ms for {args.duration:g} s (waits in ms)"
    )
    table.add_column("variant", no_wrap=True, min_width=len(CLUSTERBUS_MEMORY))
    headers = ["acq+rel/s", "hand-offs/s", "switches/s", "wait p50", "p99", "max", "mean"]
    for header in [*headers, "max/mean", "min/max n", "overlaps", "rounds ok"]:
        table.add_column(header, justify="right")
    for name, report in reports.items():
        row = [cell(report.median(m), ",.0f") for m in METRICS[:3]]
        row += [cell(report.median(m), ".2f") for m in METRICS[3:]]
        table.add_row(name, *row, str(report.overlaps), f"{len(report.rounds)}/{args.rounds}")
    console.print(table)
    counts = Table(title="contended: acquisitions per contender, per round")
    counts.add_column("variant")
    for index in range(args.rounds):
        counts.add_column(f"round {index + 1}", justify="right")
    for name, report in reports.items():
        counts.add_row(name, *(" ".join(map(str, r.counts)) for r in report.rounds))
    console.print(counts)
    for found in targets(reports):
        line = f"{found['scenario']:<12} {found['figure']:<45} "
        line += cell(found["value"] if found["value"] is not None else math.nan, ".3f")
        if found["target"] is not None:
            sign = ">=" if found["higher_is_better"] else "<="
            met = {None: "n/a", True: "MET", False: "MISSED"}[found["met"]]
            line += f" (target {sign} {found['target']}) {met}"
        console.print(line)
    for name, report in reports.items():
        verdict = "OK" if report.overlaps == 0 else "VIOLATED"
        console.print(f"mutual exclusion {name}: {report.overlaps} overlap(s) {verdict}")
        for error in report.errors:
            console.print(f"[red]{name} broke: {error}[/red]")


def report_json(reports: dict[str, Report], args: argparse.Namespace) -> str:
    """The one-line JSON report."""
    variants = {
        name: {m: finite(report.median(m)) for m in METRICS}
        | {"overlaps": report.overlaps, "errors": report.errors}
        | {
            "rounds": [
                {k: finite(v) if isinstance(v, float) else v for k, v in asdict(r).items()}
                for r in report.rounds
            ]
        }
        for name, report in reports.items()
    }
    settings = {k: getattr(args, k) for k in ("cycles", "duration", "rounds")}
    return json.dumps(
        {"benchmark": "locks", **settings, "contenders": CONTENDERS, "hold_s": HOLD}
        | {"ttl_s": TTL, "redis_lock_sleep_s": 0.1, "warmup": WARMUP}
        | {"variants": variants, "targets": targets(reports)}
        | {"ok": all(report.ok for report in reports.values())},
        allow_nan=False,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser("python -m benchmarks.locks", description=DESCRIPTION)
    add = parser.add_argument
    add("--amqp-url", default=DEFAULT_AMQP_URL, help="RabbitMQ URL")
    add("--redis-url", default=DEFAULT_REDIS_URL, help="Redis URL")
    add("--cycles", type=positive, default=1_000, help="uncontended acquire+release cycles")
    add("--duration", type=float, default=5.0, help="seconds of each contended run")
    add("--rounds", type=positive, default=3, help="rounds per variant")
    add("--skip-memory", action="store_true", help="leave the memory-mode variant out")
    args = parser.parse_args(argv)
    if not (args.duration > 0 and math.isfinite(args.duration)):
        parser.error(f"--duration must be > 0, got {args.duration}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report; 1 when something broke or locks overlapped."""
    args = parse_args(argv)
    reports = asyncio.run(run_all(args))
    print_report(Console(width=max(Console().width, 150)), reports, args)
    print(report_json(reports, args), flush=True)
    return 0 if all(report.ok for report in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
