"""A named cache: get/set/delete/reset, single-flight wrap, batch operations, ttl."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from managers.errors import PayloadError
from managers.logger import Logger
from managers.names import cache_key_prefix
from managers.protocols import CacheStore, Codec
from managers.tasks import TaskKeeper
from managers.telemetry import CACHE_HITS, CACHE_MISSES, NO_TELEMETRY, Telemetry

IsCacheable = Callable[[Any], bool | Awaitable[bool]]

MAX_TTL = 2.0**53 / 1000
"""The longest ttl accepted, in seconds (about 285,000 years): the largest whole number of
milliseconds a float holds exactly, far below Redis' own limit, the same on every store."""


def check_ttl(ttl: object, where: str) -> float | None:
    """``ttl`` as seconds (None: no expiry); ``ValueError`` naming ``where`` unless it is a
    finite number of seconds above 0 and at most :data:`MAX_TTL` (``TypeError`` when it is
    not a number at all)."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(
            f"{where}: ttl must be a number of seconds or None, got {type(ttl).__name__}"
        )
    if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL):
        raise ValueError(
            f"{where}: ttl must be a finite number of seconds > 0 and <= {MAX_TTL:.0f}, "
            f"or None; got {ttl!r}"
        )
    return float(ttl)


class Invalidator(Protocol):
    """Tells the other instances that keys of a cache changed (``None``: all of them)."""

    async def __call__(self, cache: str, keys: list[str] | None) -> None: ...


CACHE_ATTRIBUTE = "clusterbus.cache.name"
"""The attribute naming a cache in metrics and spans."""


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
        log: Logger,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self.name = name
        self._telemetry = telemetry
        self._named = {CACHE_ATTRIBUTE: name}
        self.prefix = prefix
        self.store = store
        self.store_kind = store_kind
        self.default_ttl = ttl
        self._codec = codec
        self._invalidate = invalidate
        self._log = log
        self._head = cache_key_prefix(app, prefix)
        self._flights: dict[str, _Flight] = {}
        self._fills = TaskKeeper(log, f"cache {name}")
        self._epoch = 0  # bumped by every invalidation received: fills started before it lose

    def full_key(self, key: str) -> str:
        """The stored form of ``key``: ``<app>:<prefix>:<key>``."""
        if not isinstance(key, str):
            raise TypeError(f"cache {self.name!r}: keys are str, got {type(key).__name__}")
        return self._head + key

    def _encode(self, key: str, value: object) -> bytes:
        channel = f"cache {self.name}"
        try:
            return self._codec.encode(value, channel=channel)
        except PayloadError as exc:
            # the codec's own reason (its cause), else its text without the channel part
            cause = exc.__cause__
            reason = str(cause) if cause else str(exc).removeprefix(f"channel {channel!r}: ")
            raise PayloadError(
                f"cache {self.name!r}, key {key!r}: value of type {type(value).__name__} "
                f"cannot be cached: {reason}"
            ) from exc

    def _decode(self, raw: bytes) -> Any:
        return self._codec.decode(raw)

    def _ttl(self, ttl: float | None, keys: list[str]) -> float | None:
        """The ttl of a write of ``keys`` (default: the cache's), checked before anything
        is stored or computed."""
        if ttl is None:
            return self.default_ttl
        shown = ", ".join(repr(k) for k in keys[:3]) + (", ..." if len(keys) > 3 else "")
        where = f"cache {self.name!r}, key{'s' if len(keys) != 1 else ''} {shown}"
        return check_ttl(ttl, where)

    async def _changed(self, keys: list[str] | None) -> None:
        self._epoch += 1  # a fill that started before this write must not store its value
        if not self.store.shared:
            await self._invalidate(self.name, keys)

    # single keys ---------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The cached value of ``key``, or ``default``."""
        raw = await self.store.get(self.full_key(key))
        self._count(raw is not None)
        return default if raw is None else self._decode(raw)

    def _count(self, hit: bool, amount: int = 1) -> None:
        if amount:
            self._telemetry.add(CACHE_HITS if hit else CACHE_MISSES, amount, self._named)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Cache ``value`` under ``key`` for ``ttl`` seconds (default: the cache's ttl)."""
        ttl = self._ttl(ttl, [key])
        raw = self._encode(key, value)
        await self.store.set(self.full_key(key), raw, ttl)
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
        found = sum(raw is not None for raw in raws)
        self._count(True, found)
        self._count(False, len(raws) - found)
        return [None if raw is None else self._decode(raw) for raw in raws]

    async def mset(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], ttl: float | None = None
    ) -> None:
        """Cache every (key, value) pair; every value is checked before any is stored."""
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        ttl = self._ttl(ttl, [k for k, _ in pairs])
        encoded = [(self.full_key(k), self._encode(k, v)) for k, v in pairs]
        await self.store.mset(encoded, ttl)
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

        The shared call runs in a task of its own, so cancelling one caller (the first
        included) never cancels the others: they still get the value. When every caller
        has been cancelled, the call is cancelled too, caches nothing, and the key is free:
        the next ``wrap`` of it calls ``fn`` again.
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
        value is a hit; ``None`` is never cached. Concurrent callers share the first
        caller's ``fn``, ``is_cacheable`` and ``ttl``."""
        full = self.full_key(key)
        ttl = self._ttl(ttl, [key])
        if not use_cache:
            return await fn()
        raw = await self.store.get(full)
        self._count(raw is not None)
        if raw is not None:
            return self._decode(raw)
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
            flight.task = self._fills.spawn(
                self._fly(flight, key=key, full=full, fn=fn, is_cacheable=is_cacheable, ttl=ttl),
                name=f"cache {self.name} fill {key}",
            )
        task = flight.task
        flight.waiters += 1
        try:
            ok, result = await asyncio.shield(task)
        finally:
            flight.waiters -= 1
            if not flight.waiters and not task.done():
                self._abandon(key, flight)
        if not ok:
            raise result
        return result

    def _abandon(self, key: str, flight: _Flight) -> None:
        """Every caller of a fill was cancelled: cancel it and free the key at once (a fill
        slow to unwind must not block the next caller, nor store its value)."""
        flight.abandoned = True
        flight.task.cancel()
        if self._flights.get(key) is flight:
            del self._flights[key]
        self._log.debug("cache.fill_abandoned", cache=self.name, key=key)

    async def _fly(
        self,
        flight: _Flight,
        *,
        key: str,
        full: str,
        fn: Callable[[], Awaitable[Any]],
        is_cacheable: IsCacheable | None,
        ttl: float | None,
    ) -> tuple[bool, Any]:
        """Run one shared fill; (True, value) or (False, the exception for every caller)."""
        try:
            value = await self._fill(
                flight, key=key, full=full, fn=fn, is_cacheable=is_cacheable, ttl=ttl
            )
            return True, value
        except Exception as exc:
            return False, exc
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]

    async def _fill(
        self,
        flight: _Flight,
        *,
        key: str,
        full: str,
        fn: Callable[[], Awaitable[Any]],
        is_cacheable: IsCacheable | None,
        ttl: float | None,
    ) -> Any:
        epoch = self._epoch
        self._log.debug("cache.miss", cache=self.name, key=key)
        with self._telemetry.internal("cache wrap miss", self._named):
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
        # stored only when no invalidation arrived while fn ran (the value is fresh) and
        # some caller still wants it (an abandoned fill that ignored its cancellation)
        if epoch == self._epoch and not flight.abandoned:
            await self.store.set(full, raw, ttl)
        return value

    # invalidation from other instances -----------------------------------------------------

    async def drop_local(self, keys: list[str] | None) -> None:
        """Forget ``keys`` (None: everything) in this instance's store, telling no one."""
        self._epoch += 1
        if keys is None:
            await self.store.clear(self._head)
        else:
            await self.store.delete([self.full_key(k) for k in keys])


class _Flight:
    """One shared ``fn()`` call of :meth:`Cache.wrap` and how many callers wait for it."""

    __slots__ = ("abandoned", "task", "waiters")

    task: asyncio.Task[tuple[bool, Any]]

    def __init__(self) -> None:
        self.waiters = 0
        self.abandoned = False
