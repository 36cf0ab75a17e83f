"""The debouncer on its own: trailing edge, keys, cancellation."""

from __future__ import annotations

import asyncio

from managers.debounce import Debouncer


async def test_trailing_edge_per_key_and_cancel_all() -> None:
    calls: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    debouncer = Debouncer(lambda coro: tasks.append(asyncio.ensure_future(coro)))

    def call(tag: str) -> None:
        async def run() -> None:
            calls.append(tag)

        debouncer.call(tag[0], 0.05, run)

    call("a1")
    call("a2")
    call("b1")
    assert debouncer.pending == 2
    while debouncer.pending:
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert sorted(calls) == ["a2", "b1"]  # the last call of each key wins

    call("c1")
    assert debouncer.cancel_all() == 1
    await asyncio.sleep(0.1)
    assert "c1" not in calls
