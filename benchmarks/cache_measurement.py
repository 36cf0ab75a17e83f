"""Measuring the cache benchmark: the timing loops, a group's round, every round's figures.

:func:`measure_group` warms every variant of a group up, then times each operation chunk by
chunk with the variants taking turns; :func:`run_all` runs every round of every group and
keeps the figures per variant in a :class:`VariantReport`, and what broke, in a :class:`Run`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.cache_variants import (
    COMBINED,
    DESCRIPTIONS,
    GET,
    KEY_SPACE,
    KEYS,
    SET,
    SET_X64,
    VALUE,
    GetFn,
    GroupFactory,
    SetFn,
    Subject,
    groups,
)
from benchmarks.cli import finite, log

CONCURRENCY = 64
CHUNKS = 20

MEASURED = (SET, GET, SET_X64)
OPERATIONS = (GET, SET, COMBINED, SET_X64)


# the loops ---------------------------------------------------------------------------------


async def sequential_sets(set_: SetFn, keys: Sequence[str]) -> float:
    """Seconds to set every key of ``keys``, one after the other."""
    value = VALUE
    start = time.perf_counter()
    for key in keys:
        await set_(key, value)
    return time.perf_counter() - start


async def sequential_gets(get: GetFn, keys: Sequence[str]) -> float:
    """Seconds to get every key of ``keys``, one after the other."""
    start = time.perf_counter()
    for key in keys:
        await get(key)
    return time.perf_counter() - start


async def concurrent_sets(set_: SetFn, keys: Sequence[str]) -> float:
    """Seconds to set every key of ``keys``, ``CONCURRENCY`` at a time."""
    value = VALUE
    start = time.perf_counter()
    for first in range(0, len(keys), CONCURRENCY):
        await asyncio.gather(*[set_(key, value) for key in keys[first : first + CONCURRENCY]])
    return time.perf_counter() - start


async def run_operation(subject: Subject, operation: str, keys: Sequence[str]) -> float:
    """Run ``operation`` of ``subject`` over ``keys``; the seconds it took."""
    if operation == GET:
        assert subject.get is not None
        return await sequential_gets(subject.get, keys)
    peers = subject.peers
    if peers is not None:
        await peers.prime(keys)
    if operation == SET:
        seconds = await sequential_sets(subject.set, keys)
    else:
        seconds = await concurrent_sets(subject.set, keys)
    if peers is not None:
        await peers.settle()
    return seconds


async def warm_up(subject: Subject, operation: str, keys: Sequence[str]) -> None:
    """Run ``operation`` untimed; for the sets of a variant with peers, count the
    invalidation messages a peer receives per set."""
    if subject.peers is None or operation == GET:
        await run_operation(subject, operation, keys)
        return
    async with subject.peers.counting() as counter:
        await run_operation(subject, operation, keys)
        await counter.wait_for(len(keys))
    subject.messages[operation] = counter.messages / len(keys)


def key_run(start: int, count: int) -> list[str]:
    """``count`` keys of the key space in order, from the ``start``-th (wrapping around)."""
    return [KEYS[(start + i) % KEY_SPACE] for i in range(count)]


def chunk_sizes(total: int, chunks: int) -> list[int]:
    """``total`` split into ``chunks`` near-equal positive parts (fewer when total is small)."""
    chunks = max(1, min(chunks, total))
    base, extra = divmod(total, chunks)
    return [base + (1 if i < extra else 0) for i in range(chunks)]


async def check_hits(subject: Subject) -> None:
    """Every key of the key space reads back as the benchmark value."""
    if subject.get is None:
        return
    for key in KEYS:
        value = await subject.get(key)
        if value != VALUE:
            raise RuntimeError(f"{subject.name}: get({key!r}) returned {value!r}")


def copy_kind(got: object) -> str:
    """What a get returned for the benchmark value: ``"same object"`` as the one set, a
    ``"shallow copy"`` (the nested list is shared) or a ``"deep copy"``."""
    if got is VALUE:
        return "same object"
    if isinstance(got, dict) and got.get("roles") is VALUE["roles"]:
        return "shallow copy"
    return "deep copy"


@dataclass(slots=True)
class RoundResult:
    """The figures of one variant in one round: ops/s per operation."""

    ops_per_s: dict[str, float]
    messages_per_set: dict[str, float]
    copy: str | None
    index: int = 0  # which round


async def measure_group(subjects: list[Subject], ops: int) -> dict[str, RoundResult]:
    """Warm every variant up, then time each operation chunk by chunk, variants taking turns."""
    warmup = max(KEY_SPACE, ops // 10)
    for subject in subjects:
        for operation in MEASURED:
            if subject.measures(operation):
                await warm_up(subject, operation, key_run(0, warmup))
        await check_hits(subject)
    seconds = {s.name: dict.fromkeys(MEASURED, 0.0) for s in subjects}
    for operation in MEASURED:
        runners = [s for s in subjects if s.measures(operation)]
        gc.collect()
        start = 0
        for index, size in enumerate(chunk_sizes(ops, CHUNKS)):
            keys = key_run(start, size)
            start += size
            shift = index % len(runners) if runners else 0
            for subject in runners[shift:] + runners[:shift]:
                seconds[subject.name][operation] += await run_operation(subject, operation, keys)
    results: dict[str, RoundResult] = {}
    for subject in subjects:
        await check_hits(subject)
        rates = {op: ops / t for op, t in seconds[subject.name].items() if t > 0}
        if GET in rates and SET in rates:
            rates[COMBINED] = 2 / (1 / rates[GET] + 1 / rates[SET])
        copy = None if subject.get is None else copy_kind(await subject.get(KEYS[0]))
        results[subject.name] = RoundResult(
            ops_per_s=rates,
            messages_per_set=dict(subject.messages),
            copy=copy,
        )
    return results


# rounds and their medians ------------------------------------------------------------------


@dataclass(slots=True)
class VariantReport:
    """Every round of one variant and their medians."""

    name: str
    group: str
    rounds: list[RoundResult] = field(default_factory=list)

    def median(self, operation: str) -> float:
        """Median ops/s of ``operation`` over the rounds (NaN when not measured)."""
        values = [r.ops_per_s[operation] for r in self.rounds if operation in r.ops_per_s]
        return statistics.median(values) if values else math.nan

    def messages_per_set(self, operation: str) -> float:
        """Median invalidation messages per set received by the peers (NaN: no peers)."""
        values = [
            r.messages_per_set[operation] for r in self.rounds if operation in r.messages_per_set
        ]
        return statistics.median(values) if values else math.nan

    def copy(self) -> str | None:
        """What a get returns (see :func:`copy_kind`; None: no get measured)."""
        kinds = {r.copy for r in self.rounds} - {None}
        return kinds.pop() if len(kinds) == 1 else None

    def as_json(self) -> dict[str, object]:
        """The report as JSON-able data."""
        ops = {op: finite(self.median(op)) for op in OPERATIONS}
        return {
            "group": self.group,
            "description": DESCRIPTIONS[self.name],
            "ops_per_s": ops,
            "us_per_op": {op: finite(divide(1e6, self.median(op))) for op in OPERATIONS},
            "invalidation_messages_per_set": {
                op: finite(self.messages_per_set(op))
                for op in (SET, SET_X64)
                if any(op in r.messages_per_set for r in self.rounds)
            }
            or None,
            "get_returns": self.copy(),
            "rounds": [{op: finite(v) for op, v in r.ops_per_s.items()} for r in self.rounds],
        }


@dataclass(slots=True)
class Run:
    """Everything measured, and what broke."""

    reports: dict[str, VariantReport] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def paired_ratio(self, ours: str, op: str, reference: str, ref_op: str) -> float:
        """Median over the rounds of ``ours``'s ``op`` over ``reference``'s ``ref_op``
        (ops/s), pairing the figures of each round: the variants of a group were measured
        side by side, so their ratio within a round is the steadiest figure. NaN if none."""
        mine, theirs = self.reports.get(ours), self.reports.get(reference)
        if mine is None or theirs is None:
            return math.nan
        wanted = {r.index: r.ops_per_s.get(ref_op, math.nan) for r in theirs.rounds}
        values = [
            divide(r.ops_per_s.get(op, math.nan), wanted[r.index])
            for r in mine.rounds
            if r.index in wanted
        ]
        values = [v for v in values if math.isfinite(v)]
        return statistics.median(values) if values else math.nan


async def run_group_round(
    factory: GroupFactory, args: argparse.Namespace
) -> dict[str, RoundResult]:
    """Set one group up, measure it, tear it down."""
    async with contextlib.AsyncExitStack() as stack:
        subjects = await factory(stack, args)
        return await measure_group(subjects, args.ops)


async def run_all(args: argparse.Namespace) -> Run:
    """Every round of every group; a group that breaks is reported and the rest goes on."""
    run = Run()
    for index in range(args.rounds):
        for group, factory in groups(args).items():
            log(f"round {index + 1}/{args.rounds}: {group}")
            try:
                results = await run_group_round(factory, args)
            except Exception as exc:
                log(f"  {group} failed: {type(exc).__name__}: {exc}")
                run.errors.append(f"{group} round {index + 1}: {type(exc).__name__}: {exc}")
                continue
            for name, result in results.items():
                result.index = index
                run.reports.setdefault(name, VariantReport(name, group)).rounds.append(result)
                figures = ", ".join(f"{op} {v:,.0f}/s" for op, v in result.ops_per_s.items())
                log(f"  {name}: {figures}")
    return run


def divide(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 or NaN."""
    if not denominator or not math.isfinite(denominator):
        return math.nan
    return numerator / denominator
