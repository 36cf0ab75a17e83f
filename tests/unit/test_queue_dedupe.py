"""The window of completed ids: remembered for ``window`` seconds, at most ``limit``."""

from __future__ import annotations

import time

import pytest

from managers.queue_dedupe import CompletedIds


def test_an_id_is_remembered_for_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    ids = CompletedIds(10)
    ids.add("a")
    now[0] = 109.9
    assert "a" in ids
    now[0] = 110.1
    assert "a" not in ids
    ids.add("b")  # adding drops what expired
    assert len(ids) == 1


def test_the_oldest_go_first_past_the_limit() -> None:
    ids = CompletedIds(60, limit=3)
    for name in "abcd":
        ids.add(name)
    assert "a" not in ids and all(n in ids for n in "bcd") and len(ids) == 3
    ids.add("b")  # completing again refreshes it
    ids.add("e")
    assert "c" not in ids and "b" in ids


def test_only_strings_are_ids() -> None:
    assert 5 not in CompletedIds(1)
