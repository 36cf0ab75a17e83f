"""The memory store's LRU bound and expiry, on its own."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest

from bus import Bus, MemoryHub
from bus.stores import MemoryStore
from tests.conftest import fast_settings


async def test_lru_evicts_the_least_recently_used_at_max_size() -> None:
    store = MemoryStore(max_size=3)
    for key in "abc":
        await store.set(key, key.encode(), None)
    assert await store.get("a") == b"a"  # a is now the most recently used
    await store.set("d", b"d", None)
    assert len(store) == 3
    assert await store.get("b") is None
    assert await store.mget(["a", "c", "d"]) == [b"a", b"c", b"d"]


async def test_expired_entries_are_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("bus.stores.memory.time.monotonic", lambda: now[0])
    store = MemoryStore(max_size=10)
    await store.set("k", b"v", 5.0)
    await store.mset([("m", b"v")], 1.0)
    assert await store.ttl("k") == 5.0
    now[0] += 1.0
    assert await store.get("m") is None
    assert await store.keys("", "*") == ["k"]
    now[0] += 4.0
    assert await store.get("k") is None
    assert await store.ttl("k") is None


async def test_cache_max_size_comes_from_create_cache_or_settings() -> None:
    bus = Bus("crm", hub=MemoryHub(), settings=fast_settings(cache_max_size=7))
    small = await bus.cache_manager.create_cache("small", max_size=2)
    default = await bus.cache_manager.create_cache("default-size")
    assert isinstance(small.store, MemoryStore) and small.store.max_size == 2
    assert isinstance(default.store, MemoryStore) and default.store.max_size == 7
    for i in range(5):
        await small.set(str(i), i)
    assert await small.keys() == ["3", "4"]


def test_a_redis_store_without_redis_url_fails_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="redis_url"):
        fast_settings(cache_store="redis")


async def test_memory_mode_announces_writes_only_when_another_instance_listens(
    debug_logs: list[MutableMapping[str, Any]],
) -> None:
    hub = MemoryHub()
    async with Bus("crm", hub=hub, settings=fast_settings()) as alone:
        await alone.cache.set("k", 1)
        assert not [e for e in debug_logs if e["event"] == "cache.invalidation_sent"]
        async with Bus("crm", hub=hub, settings=fast_settings()) as peer:
            await peer.cache.set("k", 2)
            await alone.cache.set("k", 3)
            sent = [e["instance"] for e in debug_logs if e["event"] == "cache.invalidation_sent"]
            assert sent == [peer.instance_id, alone.instance_id]
