"""The ``memory`` cache store: a bounded LRU with a per-key expiry, inside one instance."""

from __future__ import annotations

import fnmatch
import math
import time
from collections import OrderedDict


class MemoryStore:
    """A bounded LRU of encoded values with per-key ttl (implements ``CacheStore``).

    Expired entries are never returned; they are dropped when touched or when the LRU
    evicts them. Operations never wait, so the async methods complete without suspending.
    """

    shared = False

    def __init__(self, max_size: int) -> None:
        if max_size <= 0:
            raise ValueError(f"max_size must be > 0, got {max_size}")
        self.max_size = max_size
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= now:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def _put(self, key: str, value: bytes, expires: float | None) -> None:
        data = self._data
        data[key] = (value, expires)
        data.move_to_end(key)
        if len(data) > self.max_size:
            data.popitem(last=False)

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when missing or expired."""
        return self._live(key, time.monotonic())

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys`` in order."""
        now = time.monotonic()
        return [self._live(key, now) for key in keys]

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value``; the least recently used entry goes when the store is full."""
        self._put(key, value, _expiry(ttl))

    async def mset(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        """Store every pair with ``ttl``."""
        expires = _expiry(ttl)
        for key, value in items:
            self._put(key, value, expires)

    async def delete(self, keys: list[str]) -> None:
        """Remove ``keys``."""
        for key in keys:
            self._data.pop(key, None)

    async def keys(self, prefix: str, pattern: str) -> list[str]:
        """Live keys under ``prefix`` whose rest matches ``pattern`` (glob)."""
        now = time.monotonic()
        return [
            key
            for key, (_, expires) in list(self._data.items())
            if key.startswith(prefix)
            and (expires is None or expires > now)
            and fnmatch.fnmatchcase(key[len(prefix) :], pattern)
        ]

    async def clear(self, prefix: str) -> None:
        """Remove every key under ``prefix``."""
        for key in [k for k in self._data if k.startswith(prefix)]:
            del self._data[key]

    async def ttl(self, key: str) -> float | None:
        """Remaining seconds of ``key``; None when missing or without expiry."""
        now = time.monotonic()
        if self._live(key, now) is None:
            return None
        expires = self._data[key][1]
        return None if expires is None else expires - now

    async def close(self) -> None:
        """Nothing to release."""


def _expiry(ttl: float | None) -> float | None:
    """The monotonic time ``ttl`` seconds from now; ``ValueError`` for a ttl that is not a
    finite number above 0 (as the redis store, so both stores refuse the same values)."""
    if ttl is None:
        return None
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"memory store: ttl must be a finite number of seconds > 0, got {ttl!r}")
    return time.monotonic() + ttl
