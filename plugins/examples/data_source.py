"""The guide's sync-message and lock examples: a data-source plugin that keeps the schema
(collection -> field names) in memory on every instance.

A change is written in a transaction that carries a sync message: the message goes out only
when the transaction commits (never after a rollback), and the other instances reload that
collection from the database. Removing fields runs under a cluster-wide lock per collection,
so two instances never change one collection's schema at the same time.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from plugins.examples.db import Field, database_option
from plugins.plugin import Plugin

if TYPE_CHECKING:
    from plugins.app import App

TABLES_LOCK = "examples:create-tables"

LockEvent = tuple[str, str, float]
"""``(instance id, "enter" | "exit", time.monotonic())`` of a removal's critical section."""


class _Abort(Exception):
    """Raised inside a transaction to roll it back on purpose (``add_field(fail=True)``)."""


class DataSourcePlugin(Plugin):
    """Option: ``database`` (a :class:`Database`; or ``database_url`` / ``directory``)."""

    name = "data-source"

    def __init__(self, app: App, **options: Any) -> None:
        super().__init__(app, **options)
        self.db, self._owns_db = database_option(options)
        self.collections: dict[str, list[str]] = {}
        """Collection name -> its sorted field names, as this instance knows them."""
        self.reloads: list[str] = []
        """Collections reloaded because of another instance's sync message, in order."""
        self.lock_log: list[LockEvent] = []
        """Entries and exits of :meth:`remove_field`'s critical section on this instance."""

    async def after_start(self) -> None:
        """Create the tables (one instance at a time), then load every collection."""
        await self.bus.locks.run_exclusive(TABLES_LOCK, self.db.create_all, ttl=30)
        async with self.db.session() as session:
            rows = await session.execute(select(Field.collection, Field.name))
        loaded: dict[str, list[str]] = {}
        for collection, field in rows:
            loaded.setdefault(collection, []).append(field)
        self.collections = {name: sorted(fields) for name, fields in loaded.items()}

    async def before_stop(self) -> None:
        """Close the database if this plugin opened it."""
        if self._owns_db:
            await self.db.dispose()

    async def handle_sync_message(self, message: Any) -> None:
        """Another instance changed a collection: reload it from the database."""
        collection = str(message["collection"])
        await self.reload(collection)
        self.reloads.append(collection)
        self.log.info("data_source.reloaded", collection=collection)

    async def reload(self, collection: str) -> None:
        """Read ``collection``'s fields from the database into :attr:`collections`."""
        async with self.db.session() as session:
            result = await session.scalars(
                select(Field.name).where(Field.collection == collection).order_by(Field.name)
            )
            fields = list(result)
        if fields:
            self.collections[collection] = fields
        else:
            self.collections.pop(collection, None)

    async def add_field(self, collection: str, field: str, *, fail: bool = False) -> bool:
        """Add ``field`` to ``collection`` and tell the other instances once committed.

        ``fail=True`` raises inside the transaction after the sync message was registered,
        to show that a rollback sends nothing. False when the field was not added (rolled
        back, or it exists already)."""
        try:
            await self._insert(collection, field, fail=fail)
        except (_Abort, IntegrityError) as exc:
            self.log.info(
                "data_source.add_rolled_back", collection=collection, field=field, error=str(exc)
            )
            return False
        await self.reload(collection)
        return True

    async def _insert(self, collection: str, field: str, *, fail: bool) -> None:
        async with self.db.session() as session, session.begin():
            session.add(Field(collection=collection, name=field))
            await session.flush()
            await self.send_sync_message({"collection": collection}, transaction=session)
            if fail:  # the sync message is registered: the rollback must discard it
                raise _Abort(f"adding {collection}.{field} fails on purpose")

    async def remove_field(self, collection: str, field: str) -> bool:
        """Remove ``field`` from ``collection`` under the collection's cluster-wide lock and
        tell the other instances once committed. False when there was no such field."""
        key = f"{self.name}:fields.before_destroy:{collection}"
        return await self.bus.locks.run_exclusive(
            key, lambda: self._remove(collection, field), ttl=30
        )

    async def _remove(self, collection: str, field: str) -> bool:
        me = self.bus.instance_id
        self.lock_log.append((me, "enter", time.monotonic()))
        try:
            async with self.db.session() as session, session.begin():
                result = await session.execute(
                    delete(Field).where(Field.collection == collection, Field.name == field)
                )
                removed = bool(getattr(result, "rowcount", 0))
                if removed:
                    await self.send_sync_message({"collection": collection}, transaction=session)
            await self.reload(collection)
            return removed
        finally:
            self.lock_log.append((me, "exit", time.monotonic()))


__all__ = ["DataSourcePlugin", "LockEvent"]
