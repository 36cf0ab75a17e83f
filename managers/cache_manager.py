"""Named caches of one instance, and the invalidation traffic that keeps memory stores
coherent across instances."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

from managers.cache import CACHE_ATTRIBUTE, Cache, check_ttl
from managers.errors import BusError, InvalidName
from managers.logger import Logger
from managers.names import INVALIDATION_CHANNEL, validate_channel
from managers.protocols import CacheStore, Codec
from managers.pubsub import PubSubManager
from managers.tasks import TaskKeeper
from managers.telemetry import (
    INVALIDATIONS_RECEIVED,
    INVALIDATIONS_SENT,
    NO_TELEMETRY,
    Telemetry,
)

StoreKind = Literal["memory", "redis"]
StoreFactory = Callable[[StoreKind, int], CacheStore]

DEFAULT_CACHE = "default"


class CacheManager:
    """Creates and finds the caches of an instance (``bus.cache_manager``).

    Writes to ``memory`` caches are announced on the pub/sub channel ``cache.invalidate``,
    and each writer returns once its announcement was published. On a broker (``peers()``
    is None: who listens is unknown), writes of the same event-loop turn share one message,
    confirmed by the broker. On the in-process hub publishing never waits, so each write
    publishes at once, and only when ``peers()`` says another instance listens.

    Writes are announced from :meth:`start` (the bus starting) until :meth:`close` (the bus
    closed), so also while the app is stopping: deliveries into this instance have stopped,
    but a plugin's ``before_stop`` still writes, and the instances that keep running must
    drop what it changed.
    """

    def __init__(
        self,
        *,
        app: str,
        pubsub: PubSubManager,
        codec: Codec,
        store_factory: StoreFactory,
        default_store: StoreKind,
        default_max_size: int,
        log: Logger,
        peers: Callable[[], int | None] | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._telemetry = telemetry
        self._app = app
        self._pubsub = pubsub
        self._codec = codec
        self._store_factory = store_factory
        self._default_store: StoreKind = default_store
        self._default_max_size = default_max_size
        self._log = log
        self._peers = peers
        self._caches: dict[str, Cache] = {}
        self._pending: dict[str, set[str] | None] = {}
        self._flush: asyncio.Future[None] | None = None
        self._tasks = TaskKeeper(log, "cache invalidation")
        self._open = False
        self.default = self._create(DEFAULT_CACHE, DEFAULT_CACHE, default_store, None, None)

    async def start(self) -> None:
        """Listen for other instances' invalidations (bound when the bus starts), and
        announce this instance's writes from now on."""
        await self._pubsub.subscribe(INVALIDATION_CHANNEL, self._on_invalidation)
        self._open = True

    async def create_cache(
        self,
        name: str,
        *,
        prefix: str | None = None,
        store: StoreKind | None = None,
        ttl: float | None = None,
        max_size: int | None = None,
    ) -> Cache:
        """Create the cache ``name`` (keys ``<app>:<prefix>:<key>``, prefix defaults to name).

        ``store`` is ``memory`` (default) or ``redis``; ``ttl`` the default expiry in seconds;
        ``max_size`` the LRU bound of a memory store. Creating an existing name again returns
        it when the options match and raises otherwise.

        A prefix cannot contain ``:`` (:class:`InvalidName`): with ``auth`` and ``auth:v2``
        the key ``v2:x`` of the first and ``x`` of the second would be the same Redis key,
        and one's ``reset()`` would wipe the other, also across processes that each know
        only one of them. Without ``:`` in prefixes, every stored key belongs to exactly
        one prefix (use ``auth.v2`` or ``auth-v2``; keys may contain ``:``).
        """
        kind: StoreKind = store or self._default_store
        existing = self._caches.get(name)
        if existing is not None:
            if (existing.prefix, existing.store_kind, existing.default_ttl) != (
                prefix or name,
                kind,
                ttl,
            ):
                raise BusError(f"cache {name!r} already exists with other options")
            return existing
        return self._create(name, prefix or name, kind, ttl, max_size)

    def _create(
        self, name: str, prefix: str, kind: StoreKind, ttl: float | None, max_size: int | None
    ) -> Cache:
        validate_channel(name)
        if not isinstance(prefix, str) or ":" in prefix:
            raise InvalidName(
                f"cache {name!r}: prefix {prefix!r} must be a str without ':' (keys are "
                f"'<app>:<prefix>:<key>', so a ':' would nest one cache's keys in another's; "
                f"use '.' or '-' instead)"
            )
        if kind not in ("memory", "redis"):
            raise ValueError(f"cache {name!r}: store must be 'memory' or 'redis', got {kind!r}")
        check_ttl(ttl, f"cache {name!r}")
        cache = Cache(
            name=name,
            app=self._app,
            prefix=prefix,
            store=self._store_factory(kind, max_size or self._default_max_size),
            store_kind=kind,
            ttl=ttl,
            codec=self._codec,
            invalidate=self._announce,
            log=self._log,
            telemetry=self._telemetry,
        )
        self._caches[name] = cache
        return cache

    def get_cache(self, name: str) -> Cache:
        """The cache ``name``; ``KeyError`` naming it when there is none."""
        try:
            return self._caches[name]
        except KeyError:
            raise KeyError(f"no cache named {name!r} (create it with create_cache)") from None

    async def close(self) -> None:
        """Stop announcing writes and close every store (Redis connections)."""
        self._open = False
        for cache in self._caches.values():
            await cache.store.close()

    async def drop_memory_caches(self, reason: str) -> None:
        """Forget every memory-store entry (after a reconnect they may be stale)."""
        dropped = 0
        for cache in self._caches.values():
            if not cache.store.shared:
                await cache.drop_local(None)
                dropped += 1
        self._log.warning("cache.memory_dropped", reason=reason, caches=dropped)

    # sending invalidations -----------------------------------------------------------------

    async def _announce(self, cache: str, keys: list[str] | None) -> None:
        """Queue an invalidation and wait until the batch that carries it is published."""
        if not self._open:
            return  # not started (nobody can hold this instance's writes) or closed
        listening = None if self._peers is None else self._peers()
        if listening is not None:  # known (the hub): publish now, and only to listeners
            if listening:
                await self._publish([{"cache": cache, "keys": keys}])
            return
        if keys is None:
            self._pending[cache] = None
        else:
            pending = self._pending.setdefault(cache, set())
            if pending is not None:
                pending.update(keys)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().create_future()
            self._tasks.spawn(self._send_batch(self._flush), name="cache invalidation batch")
        await asyncio.shield(self._flush)

    async def _send_batch(self, done: asyncio.Future[None]) -> None:
        await asyncio.sleep(0)  # writers of this loop turn join the batch
        batch, self._pending, self._flush = self._pending, {}, None
        entries: list[dict[str, Any]] = [
            {"cache": name, "keys": None if keys is None else sorted(keys)}
            for name, keys in batch.items()
        ]
        try:
            await self._publish(entries)
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            done.set_exception(exc)
            done.exception()  # seen here; every waiting writer re-raises it
            return
        done.set_result(None)

    async def _publish(self, entries: list[dict[str, Any]]) -> None:
        try:
            await self._pubsub.publish(INVALIDATION_CHANNEL, entries)
        except Exception as exc:
            self._log.error("cache.invalidation_failed", entries=len(entries), error=str(exc))
            raise
        for entry in entries:
            self._telemetry.add(INVALIDATIONS_SENT, attributes={CACHE_ATTRIBUTE: entry["cache"]})
            keys = entry["keys"]
            self._log.debug(
                "cache.invalidation_sent",
                cache=entry["cache"],
                count="all" if keys is None else len(keys),
            )

    # receiving invalidations ---------------------------------------------------------------

    async def _on_invalidation(self, entries: Any) -> None:
        if not isinstance(entries, list):
            self._log.error("cache.invalidation_malformed", payload_type=type(entries).__name__)
            return
        for entry in entries:
            name = entry.get("cache") if isinstance(entry, dict) else None
            cache = self._caches.get(name) if isinstance(name, str) else None
            if cache is None or cache.store.shared:
                continue
            keys = entry.get("keys")
            if keys is not None and not isinstance(keys, list):
                continue
            await cache.drop_local(None if keys is None else [str(k) for k in keys])
            self._telemetry.add(INVALIDATIONS_RECEIVED, attributes={CACHE_ATTRIBUTE: cache.name})
            self._log.debug(
                "cache.invalidation_received",
                cache=name,
                count="all" if keys is None else len(keys),
            )
