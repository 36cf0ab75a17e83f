"""Sync messages on SQLAlchemy Core connections at their edges (issue 10, finding 6): a COMMIT
the server refuses sends nothing, and a message sent inside a savepoint that rolls back is
discarded; on SQLite and PostgreSQL, on both backends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    create_engine,
    event,
    insert,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bus import Bus
from tests.conftest import BusFactory, Recorder


@dataclass
class Db:
    engine: AsyncEngine
    parent: Table
    child: Table  # child.parent_id references parent.id, checked at COMMIT (deferred)

    def sync_engine(self) -> Engine:
        """A blocking engine on the same database (for Connection in a worker thread)."""
        driver = {"sqlite+aiosqlite": "sqlite", "postgresql+psycopg": "postgresql+psycopg"}
        engine = create_engine(self.engine.url.set(drivername=driver[self.engine.url.drivername]))
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_foreign_keys)
        return engine

    def dangling(self) -> Any:
        """An insert that only the deferred foreign key check at COMMIT refuses."""
        return insert(self.child).values(parent_id=999_999)


def _end_refused(connection: Connection) -> None:
    """Roll back what a refused COMMIT left: PostgreSQL ended the transaction itself, but
    SQLite keeps it open (with its write lock) and SQLAlchemy, whose transaction is already
    inactive, would hand the DBAPI connection back to the pool as it is."""
    connection.rollback()
    connection.connection.dbapi_connection.rollback()  # type: ignore[union-attr]


def _sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    """Two tables with a DEFERRABLE INITIALLY DEFERRED foreign key between them."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'edges.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_foreign_keys)
    suffix = uuid.uuid4().hex[:8]
    metadata = MetaData()
    parent = Table(f"parent_{suffix}", metadata, Column("id", Integer, primary_key=True))
    child = Table(
        f"child_{suffix}",
        metadata,
        Column("id", Integer, primary_key=True),
        Column(
            "parent_id",
            Integer,
            ForeignKey(parent.c.id, deferrable=True, initially="DEFERRED"),
            nullable=False,
        ),
    )
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield Db(engine, parent, child)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
    await engine.dispose()


async def pair(make_bus: BusFactory) -> tuple[Bus, Recorder]:
    sender, receiver = await make_bus(), await make_bus()
    rec = Recorder("receiver")
    await receiver.sync.subscribe("schema", rec)
    return sender, rec


async def marker(sender: Bus, rec: Recorder, count: int) -> list[Any]:
    """Send a marker after what is under test; once it arrived, anything sent before it on
    the channel has arrived too (or never will)."""
    await sender.sync.publish("schema", {"marker": count})
    return await rec.wait_for(count)


async def test_a_commit_the_server_refuses_sends_nothing(make_bus: BusFactory, db: Db) -> None:
    sender, rec = await pair(make_bus)
    async with db.engine.connect() as connection:
        await connection.execute(db.dangling())
        assert await sender.sync.publish("schema", "refused", transaction=connection)
        with pytest.raises(IntegrityError):
            await connection.commit()
        await connection.run_sync(_end_refused)
        # a good commit on the same connection sends only its own message
        await connection.execute(insert(db.parent).values(id=1))
        await sender.sync.publish("schema", "committed", transaction=connection)
        await connection.commit()
    assert await marker(sender, rec, 2) == ["committed", {"marker": 2}]


async def test_a_refused_commit_of_a_begin_block_sends_nothing(
    make_bus: BusFactory, db: Db
) -> None:
    sender, rec = await pair(make_bus)
    async with db.engine.connect() as connection:
        with pytest.raises(IntegrityError):
            async with connection.begin():
                await connection.execute(db.dangling())
                await sender.sync.publish("schema", "refused", transaction=connection)
        await connection.run_sync(_end_refused)
    # the refused COMMIT's DBAPI connection goes back to the pool: its next user's commit
    # must not carry the discarded message either
    async with db.engine.begin() as connection:
        await connection.execute(insert(db.parent).values(id=2))
    assert await marker(sender, rec, 1) == [{"marker": 1}]


async def test_a_rolled_back_savepoint_discards_its_messages(make_bus: BusFactory, db: Db) -> None:
    sender, rec = await pair(make_bus)
    async with db.engine.connect() as connection:
        await connection.execute(insert(db.parent).values(id=3))
        await sender.sync.publish("schema", "outer", transaction=connection)
        savepoint = await connection.begin_nested()
        await sender.sync.publish("schema", "in a rolled-back savepoint", transaction=connection)
        inner = await connection.begin_nested()
        await sender.sync.publish("schema", "nested in the rolled-back one", transaction=connection)
        await inner.commit()  # released into the savepoint that then rolls back
        await savepoint.rollback()
        async with connection.begin_nested():
            await sender.sync.publish("schema", "in a released savepoint", transaction=connection)
        await asyncio.sleep(0.1)
        assert rec.messages == []
        await connection.commit()
    messages = await marker(sender, rec, 3)
    assert sorted(map(str, messages[:2])) == ["in a released savepoint", "outer"]
    assert messages[2] == {"marker": 3}


async def test_a_savepoint_rolled_back_by_an_exception_discards(
    make_bus: BusFactory, db: Db
) -> None:
    sender, rec = await pair(make_bus)
    async with db.engine.begin() as connection:
        await sender.sync.publish("schema", "kept", transaction=connection)
        with pytest.raises(RuntimeError):
            async with connection.begin_nested():
                await sender.sync.publish("schema", "dropped", transaction=connection)
                raise RuntimeError("roll the savepoint back")
    assert await marker(sender, rec, 2) == ["kept", {"marker": 2}]


async def test_a_blocking_connection_in_a_worker_thread(make_bus: BusFactory, db: Db) -> None:
    sender, rec = await pair(make_bus)
    engine = db.sync_engine()
    with engine.connect() as refused:
        refused.execute(db.dangling())
        await sender.sync.publish("schema", "refused", transaction=refused)
        with pytest.raises(IntegrityError):
            await asyncio.to_thread(refused.commit)
        _end_refused(refused)
    with engine.connect() as connection:
        connection.execute(insert(db.parent).values(id=4))
        savepoint = connection.begin_nested()
        await sender.sync.publish("schema", "rolled back", transaction=connection)
        savepoint.rollback()
        await sender.sync.publish("schema", "committed", transaction=connection)
        await asyncio.to_thread(connection.commit)  # the hooks run in the worker thread
    engine.dispose()
    assert await marker(sender, rec, 2) == ["committed", {"marker": 2}]
