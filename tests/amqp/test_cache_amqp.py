"""Cache behaviour that only a broker (or a missing Redis) shows."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest

from bus import Bus, BusUnavailable
from bus.amqp import AmqpTransport
from tests.amqp.broker import rabbitmqctl
from tests.conftest import eventually, fast_settings, unique_app

pytestmark = pytest.mark.amqp


async def test_a_reconnect_drops_memory_caches(amqp_url: str, redis_url: str) -> None:
    settings = fast_settings(redis_url=redis_url)
    async with Bus(unique_app(), amqp_url=amqp_url, settings=settings) as bus:
        memory = await bus.cache_manager.create_cache("local", store="memory")
        shared = await bus.cache_manager.create_cache("shared", store="redis")
        await memory.set("k", "maybe stale after an outage")
        await shared.set("k", "shared")
        transport = getattr(bus._backend, "transport", None)
        assert isinstance(transport, AmqpTransport)

        await rabbitmqctl("close_all_connections", "clusterbus test: cache reconnect")
        await eventually(lambda: transport.reconnects >= 1, timeout=30, what="reconnect")
        await eventually(lambda: len(memory.store) == 0, what="memory cache dropped")  # type: ignore[arg-type]

        assert await memory.get("k") is None
        assert await shared.get("k") == "shared"  # the shared store is not affected
        await shared.reset()


async def test_an_unreachable_redis_is_a_clear_error(
    amqp_url: str, debug_logs: list[MutableMapping[str, Any]]
) -> None:
    settings = fast_settings(redis_url="redis://127.0.0.1:1/0")
    async with Bus(unique_app(), amqp_url=amqp_url, settings=settings) as bus:
        cache = await bus.cache_manager.create_cache("shared", store="redis")
        with pytest.raises(BusUnavailable, match="redis store"):
            await cache.get("k")
        with pytest.raises(BusUnavailable, match="redis store"):
            await cache.set("k", 1)
    errors = [e for e in debug_logs if e["event"] == "cache.store_error"]
    assert len(errors) == 2 and errors[0]["store"] == "redis"
