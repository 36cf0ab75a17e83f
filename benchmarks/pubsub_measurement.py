"""Measuring the pub/sub benchmark: driving a rig through its runs and rounds.

A run publishes ``count`` messages with at most ``window`` publishes in flight and waits for
every delivery (giving up after a quiet spell); a round is a warm-up run and a measured run
on a fresh rig, tried once more when it broke or lost deliveries. :func:`run_all` runs every
round of every variant and keeps them, with their medians, in a :class:`VariantReport`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field

from benchmarks.cli import finite, log
from benchmarks.pubsub_variants import SUBSCRIBERS, Recorder, Rig, rig_factories

ATTEMPTS = 2
POLL_SECONDS = 0.5


# the figures of a run ----------------------------------------------------------------------


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
