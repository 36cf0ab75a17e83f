"""The guide's cache example: an auth plugin that reads its token policy through a cache.

Every instance reads the policy through ``cache.wrap`` (one database read, then hits). A
change on any instance writes the database and deletes the cached key; with a memory store
the delete invalidates the other instances' copies, with a redis store all share one copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, get_args

from sqlalchemy.exc import IntegrityError

from bus import Cache, StoreKind
from plugins.examples.db import TokenPolicy, database_option
from plugins.plugin import Plugin

if TYPE_CHECKING:
    from plugins.app import App

POLICY_KEY = "token-policy"
POLICY_ID = 1
DEFAULT_EXPIRES_IN = 3600
TABLES_LOCK = "examples:create-tables"


class AuthPlugin(Plugin):
    """Options: ``database`` (a :class:`Database`; or ``database_url`` / ``directory``),
    ``store`` (``"memory"``, ``"redis"``, or None for the bus default) and ``ttl`` (seconds
    a cached policy lives, default 60)."""

    name = "auth"

    def __init__(self, app: App, **options: Any) -> None:
        super().__init__(app, **options)
        store = options.get("store")
        if store is not None and store not in get_args(StoreKind):
            raise ValueError(f"option store must be one of {get_args(StoreKind)}, not {store!r}")
        self.store: StoreKind | None = store
        self.ttl = float(options.get("ttl", 60.0))
        self.db, self._owns_db = database_option(options)
        self.db_reads = 0
        """How many times this instance read the policy from the database."""
        self._cache: Cache | None = None

    @property
    def cache(self) -> Cache:
        """The ``auth`` cache (created in :meth:`load`)."""
        if self._cache is None:
            raise RuntimeError("the auth cache exists once the app has loaded its plugins")
        return self._cache

    async def load(self) -> None:
        """Create the ``auth`` cache (keys ``<app>:auth:<key>``)."""
        self._cache = await self.bus.cache_manager.create_cache(
            "auth", prefix="auth", store=self.store, ttl=self.ttl
        )

    async def after_start(self) -> None:
        """Create the tables (one instance at a time)."""
        await self.bus.locks.run_exclusive(TABLES_LOCK, self.db.create_all, ttl=30)

    async def before_stop(self) -> None:
        """Close the database if this plugin opened it."""
        if self._owns_db:
            await self.db.dispose()

    async def token_policy(self) -> dict[str, int]:
        """The token policy, from the cache or else the database."""
        policy: dict[str, int] = await self.cache.wrap(POLICY_KEY, self._read_policy, ttl=self.ttl)
        return policy

    async def set_policy(self, expires_in: int) -> None:
        """Store a new policy and drop the cached one on every instance."""
        async with self.db.session() as session, session.begin():
            row = await session.get(TokenPolicy, POLICY_ID)
            if row is None:
                session.add(TokenPolicy(id=POLICY_ID, expires_in=expires_in))
            else:
                row.expires_in = expires_in
        await self.cache.delete(POLICY_KEY)
        self.log.info("auth.policy_changed", expires_in=expires_in)

    async def _read_policy(self) -> dict[str, int]:
        self.db_reads += 1
        for _ in range(2):  # a second try when another instance created the row meanwhile
            try:
                async with self.db.session() as session, session.begin():
                    row = await session.get(TokenPolicy, POLICY_ID)
                    if row is None:
                        row = TokenPolicy(id=POLICY_ID, expires_in=DEFAULT_EXPIRES_IN)
                        session.add(row)
                    return {"expires_in": row.expires_in}
            except IntegrityError:
                continue
        raise RuntimeError("could not read or create the token policy")


__all__ = ["AuthPlugin"]
