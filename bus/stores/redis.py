"""The ``redis`` cache store: one store shared by every instance (extra ``clusterbus[redis]``)."""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from managers.errors import BusError, BusUnavailable
from managers.logger import Logger

if TYPE_CHECKING:
    from redis.asyncio import Redis

T = TypeVar("T")

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def escape_glob(text: str) -> str:
    """``text`` with Redis glob characters escaped, to match it literally in SCAN."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def connect(url: str) -> Redis:
    """A Redis client for ``url``; a clear error when the ``redis`` extra is missing."""
    try:
        from redis.asyncio import Redis
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BusError(
            "the redis cache store needs the redis extra: pip install 'clusterbus[redis]'"
        ) from exc
    return Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)


class RedisStore:
    """Encoded values in Redis, shared by all instances (implements ``CacheStore``).

    ``clear`` deletes only the keys under the cache's prefix (SCAN + UNLINK, never FLUSHDB).
    Connection failures surface as :class:`BusUnavailable`.
    """

    shared = True

    def __init__(self, client: Redis, *, log: Logger, owns_client: bool = True) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self._redis = client
        self._log = log
        self._owns = owns_client
        self._unavailable = (RedisConnectionError, RedisTimeoutError, OSError)

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except self._unavailable as exc:
            self._log.error("cache.store_error", store="redis", op=what, error=str(exc))
            raise BusUnavailable(f"redis store: {what}: {type(exc).__name__}: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None."""
        value: bytes | str | None = await self._call("GET", lambda: self._redis.get(key))
        return _as_bytes(value)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys`` in order."""
        if not keys:
            return []
        values: list[bytes | str | None] = await self._call("MGET", lambda: self._redis.mget(keys))
        return [_as_bytes(value) for value in values]

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        """SET with a millisecond expiry when ``ttl`` is given."""
        px = _px(ttl)
        await self._call("SET", lambda: self._redis.set(key, value, px=px))

    async def mset(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        """All pairs in one transaction (MSET, or SET PX per key when ``ttl`` is given)."""
        px = _px(ttl)
        if not items:
            return

        async def run() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                if px is None:
                    pipe.mset(dict(items))
                else:
                    for key, value in items:
                        pipe.set(key, value, px=px)
                await pipe.execute()

        await self._call("MSET", run)

    async def delete(self, keys: list[str]) -> None:
        """UNLINK ``keys``."""
        if keys:
            await self._call("UNLINK", lambda: self._redis.unlink(*keys))

    async def keys(self, prefix: str, pattern: str) -> list[str]:
        """SCAN for keys under ``prefix`` matching ``pattern`` (the prefix taken literally)."""

        async def scan() -> list[str]:
            match = escape_glob(prefix) + pattern
            return [
                key.decode() if isinstance(key, bytes) else str(key)
                async for key in self._redis.scan_iter(match=match, count=500)
            ]

        return await self._call("SCAN", scan)

    async def clear(self, prefix: str) -> None:
        """Delete every key under ``prefix`` (in batches), and nothing else."""

        async def run() -> None:
            batch: list[bytes | str] = []
            async for key in self._redis.scan_iter(match=escape_glob(prefix) + "*", count=500):
                batch.append(key)
                if len(batch) >= 500:
                    await self._redis.unlink(*batch)
                    batch = []
            if batch:
                await self._redis.unlink(*batch)

        await self._call("SCAN/UNLINK", run)

    async def ttl(self, key: str) -> float | None:
        """PTTL in seconds; None when missing (-2) or without expiry (-1)."""
        ms: int = await self._call("PTTL", lambda: self._redis.pttl(key))
        return None if ms < 0 else ms / 1000

    async def close(self) -> None:
        """Close the client when this store owns it."""
        if self._owns:
            await self._redis.aclose()


def _px(ttl: float | None) -> int | None:
    """``ttl`` in whole milliseconds (at least 1) for PX; ``ValueError`` for a ttl Redis
    cannot take (not finite, not above 0), which ``Cache`` refuses before it gets here."""
    if ttl is None:
        return None
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"redis store: ttl must be a finite number of seconds > 0, got {ttl!r}")
    return max(1, round(ttl * 1000))


def _as_bytes(value: bytes | str | None) -> bytes | None:
    """Values come back as bytes (the client does not decode); str only if misconfigured."""
    return value.encode() if isinstance(value, str) else value
