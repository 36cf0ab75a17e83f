"""A named cache: get/set/delete/reset, single-flight wrap, batch operations, ttl."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from structlog.typing import FilteringBoundLogger

from managers.errors import PayloadError
from managers.protocols import CacheStore, Codec

IsCacheable = Callable[[Any], bool | Awaitable[bool]]


class Invalidator(Protocol):
    """Tells the other instances that keys of a cache changed (``None``: all of them)."""

    async def __call__(self, cache: str, keys: list[str] | None) -> None: ...


class Cache:
    """One named cache. Keys are stored as ``<app>:<prefix>:<key>``.

    Values are anything msgpack carries; they are stored encoded, so a value read back is a
    copy. On a ``memory`` store, writes (set, mset, delete, mdelete, reset) invalidate the
    same keys on the other instances before they return; ``wrap`` fills are local.
    """

    def __init__(
        self,
        *,
        name: str,
        app: str,
        prefix: str,
        store: CacheStore,
        store_kind: str,
        ttl: float | None,
        codec: Codec,
        invalidate: Invalidator,
        log: FilteringBoundLogger,
    ) -> None:
        self.name = name
        self.prefix = prefix
        self.store = store
        self.store_kind = store_kind
        self.default_ttl = ttl
        self._codec = codec
        self._invalidate = invalidate
        self._log = log
        self._head = f"{app}:{prefix}:"
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._epoch = 0  # bumped by every invalidation received: fills started before it lose

    def full_key(self, key: str) -> str:
        """The stored form of ``key``: ``<app>:<prefix>:<key>``."""
        if not isinstance(key, str):
            raise TypeError(f"cache {self.name!r}: keys are str, got {type(key).__name__}")
        return self._head + key

    def _encode(self, key: str, value: object) -> bytes:
        try:
            return self._codec.encode(value, channel=f"cache {self.name}")
        except PayloadError as exc:
            raise PayloadError(
                f"cache {self.name!r}, key {key!r}: value of type {type(value).__name__} "
                f"cannot be cached: {exc.__cause__ or exc}"
            ) from exc

    def _decode(self, raw: bytes) -> Any:
        return self._codec.decode(raw)

    def _ttl(self, ttl: float | None) -> float | None:
        ttl = self.default_ttl if ttl is None else ttl
        if ttl is not None and not ttl > 0:
            raise ValueError(f"cache {self.name!r}: ttl must be > 0 seconds or None, got {ttl}")
        return ttl

    async def _changed(self, keys: list[str] | None) -> None:
        self._epoch += 1  # a fill that started before this write must not store its value
        if not self.store.shared:
            await self._invalidate(self.name, keys)

    # single keys ---------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The cached value of ``key``, or ``default``."""
        raw = await self.store.get(self.full_key(key))
        return default if raw is None else self._decode(raw)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Cache ``value`` under ``key`` for ``ttl`` seconds (default: the cache's ttl)."""
        raw = self._encode(key, value)
        await self.store.set(self.full_key(key), raw, self._ttl(ttl))
        await self._changed([key])

    async def delete(self, key: str) -> None:
        """Remove ``key``."""
        await self.store.delete([self.full_key(key)])
        await self._changed([key])

    async def ttl(self, key: str) -> float | None:
        """Remaining seconds of ``key``; None when missing or without expiry."""
        return await self.store.ttl(self.full_key(key))

    # batches -------------------------------------------------------------------------------

    async def mget(self, *keys: str) -> list[Any]:
        """The values of ``keys`` in order (None for missing ones)."""
        raws = await self.store.mget([self.full_key(k) for k in keys])
        return [None if raw is None else self._decode(raw) for raw in raws]

    async def mset(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], ttl: float | None = None
    ) -> None:
        """Cache every (key, value) pair; every value is checked before any is stored."""
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        encoded = [(self.full_key(k), self._encode(k, v)) for k, v in pairs]
        await self.store.mset(encoded, self._ttl(ttl))
        await self._changed([k for k, _ in pairs])

    async def mdelete(self, *keys: str) -> None:
        """Remove ``keys``."""
        await self.store.delete([self.full_key(k) for k in keys])
        await self._changed(list(keys))

    async def keys(self, pattern: str = "*") -> list[str]:
        """Keys of this cache matching the glob ``pattern``, without the prefix."""
        found = await self.store.keys(self._head, pattern)
        return sorted(k[len(self._head) :] for k in found)

    async def reset(self) -> None:
        """Remove every key of this cache (and no other cache's)."""
        await self.store.clear(self._head)
        await self._changed(None)

    # read-through --------------------------------------------------------------------------

    async def wrap(
        self, key: str, fn: Callable[[], Awaitable[Any]], ttl: float | None = None
    ) -> Any:
        """The cached value of ``key``, or ``await fn()`` cached for ``ttl``.

        Single-flight: concurrent callers on this instance share one ``fn()`` call; its
        exception reaches all of them and nothing is cached. ``None`` is never cached.
        """
        return await self.wrap_with_condition(key, fn, ttl=ttl)

    async def wrap_with_condition(
        self,
        key: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        use_cache: bool = True,
        is_cacheable: IsCacheable | None = None,
        ttl: float | None = None,
    ) -> Any:
        """Like :meth:`wrap`, with ``use_cache=False`` to bypass the cache and
        ``is_cacheable(value)`` (sync or async) to decide what is kept. A cached falsy
        value is a hit; ``None`` is never cached."""
        if not use_cache:
            return await fn()
        full = self.full_key(key)
        raw = await self.store.get(full)
        if raw is not None:
            return self._decode(raw)
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        flight.add_done_callback(_retrieve)
        self._flights[key] = flight
        try:
            value = await self._fill(key, full, fn, is_cacheable, ttl)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                flight.cancel()
            else:
                flight.set_exception(exc)
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            del self._flights[key]

    async def _fill(
        self,
        key: str,
        full: str,
        fn: Callable[[], Awaitable[Any]],
        is_cacheable: IsCacheable | None,
        ttl: float | None,
    ) -> Any:
        epoch = self._epoch
        self._log.debug("cache.miss", cache=self.name, key=key)
        value = await fn()
        if value is None:
            return None
        if is_cacheable is not None:
            verdict = is_cacheable(value)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if not verdict:
                return value
        raw = self._encode(key, value)
        if epoch == self._epoch:  # no invalidation arrived while fn ran: the value is fresh
            await self.store.set(full, raw, self._ttl(ttl))
        return value

    # invalidation from other instances -----------------------------------------------------

    async def drop_local(self, keys: list[str] | None) -> None:
        """Forget ``keys`` (None: everything) in this instance's store, telling no one."""
        self._epoch += 1
        if keys is None:
            await self.store.clear(self._head)
        else:
            await self.store.delete([self.full_key(k) for k in keys])


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a flight's exception as seen even when no follower awaited it."""
    if not future.cancelled():
        future.exception()
