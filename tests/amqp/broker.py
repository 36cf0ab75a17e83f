"""Helpers that look at the real broker's state (rabbitmqctl and raw aio-pika)."""

from __future__ import annotations

import asyncio
import subprocess


async def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl -q ARGS`` and return its output (fails the test on error)."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "-q",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {err.decode()}")
    return out.decode()


async def queue_info(name: str) -> dict[str, str] | None:
    """consumers, exclusive, auto_delete and arguments of queue ``name`` (None if absent)."""
    fields = ["name", "consumers", "exclusive", "auto_delete", "durable", "arguments"]
    out = await rabbitmqctl("list_queues", "--no-table-headers", *fields)
    for line in out.splitlines():
        parts = line.split("\t")
        if parts and parts[0] == name:
            return dict(zip(fields, parts, strict=False))
    return None
