"""Sync messages and the plugin model (NocoBase's sync tests, ported), on both backends, with
SQLAlchemy sessions and connections on SQLite and on the machine's PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from bus import Bus, MemoryHub, PayloadError
from plugins import App, Plugin
from tests.conftest import AMQP_URL, BusFactory, Recorder, eventually, fast_settings, unique_app

metadata = MetaData()
notes = Table("notes", metadata, Column("id", Integer, primary_key=True), Column("body", String))


@dataclass
class Db:
    engine: AsyncEngine
    table: Table


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    """An async engine and a table of its own, on SQLite or the machine's PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'sync.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_async_engine(url)
    table = Table(
        f"notes_{uuid.uuid4().hex[:8]}",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("body", String),
    )
    async with engine.begin() as connection:
        await connection.run_sync(table.metadata.create_all)
    yield Db(engine, table)
    async with engine.begin() as connection:
        await connection.run_sync(table.metadata.drop_all)
    await engine.dispose()


async def pair(make_bus: BusFactory) -> tuple[Bus, Bus, Recorder]:
    sender, receiver = await make_bus(), await make_bus()
    rec = Recorder("receiver")
    await receiver.sync.subscribe("schema", rec)
    return sender, receiver, rec


async def delivered_marker(sender: Bus, rec: Recorder, count: int) -> None:
    """Send a marker after what is under test; once it arrived, anything sent before it on
    the channel has arrived too (or never will)."""
    await sender.sync.publish("schema", {"marker": count})
    await rec.wait_for(count)


async def test_reaches_other_instances_not_self(make_bus: BusFactory) -> None:
    a, b, c = await make_bus(), await make_bus(), await make_bus()
    recs = {bus.instance_id: Recorder(bus.instance_id) for bus in (a, b, c)}
    for bus in (a, b, c):
        await bus.sync.subscribe("schema", recs[bus.instance_id])
    assert await a.sync.publish("schema", {"collection": "posts"}) is True
    await recs[b.instance_id].wait_for(1)
    await recs[c.instance_id].wait_for(1)
    await a.sync.publish("schema", "to-self-only", only_self=True)
    await recs[a.instance_id].wait_for(1)
    assert recs[a.instance_id].messages == ["to-self-only"]
    assert recs[b.instance_id].messages == [{"collection": "posts"}]


async def test_sync_subscriptions_are_debounced(make_bus: BusFactory) -> None:
    sender, _receiver, rec = await pair(make_bus)
    for _ in range(5):
        await sender.sync.publish("schema", {"collection": "posts"})
    await rec.wait_for(1)
    await delivered_marker(sender, rec, 2)
    assert rec.messages == [{"collection": "posts"}, {"marker": 2}]


async def test_async_session_sends_after_commit_only(make_bus: BusFactory, db: Db) -> None:
    sender, _receiver, rec = await pair(make_bus)
    table = db.table
    async with AsyncSession(db.engine) as session:
        await session.execute(insert(table).values(body="x"))
        # awaiting inside the transaction returns at once: no deadlock, nothing sent yet
        assert await asyncio.wait_for(
            sender.sync.publish("schema", {"after": "commit"}, transaction=session), 5
        )
        await asyncio.sleep(0.2)
        assert rec.messages == []
        await session.commit()
    await rec.wait_for(1)
    assert rec.messages == [{"after": "commit"}]


async def test_async_session_rollback_discards(make_bus: BusFactory, db: Db) -> None:
    sender, _receiver, rec = await pair(make_bus)
    table = db.table
    async with AsyncSession(db.engine) as session:
        await session.execute(insert(table).values(body="x"))
        assert await sender.sync.publish("schema", {"rolled": "back"}, transaction=session)
        await session.rollback()
        # a later commit on the same session does not send the discarded message
        await session.execute(insert(table).values(body="y"))
        await session.commit()
    await delivered_marker(sender, rec, 1)
    assert rec.messages == [{"marker": 1}]


async def test_sync_session_in_a_worker_thread(make_bus: BusFactory, db: Db) -> None:
    sender, _receiver, rec = await pair(make_bus)
    engine = create_engine(db.engine.url.set(drivername=_sync_driver(db.engine.url.drivername)))
    with Session(engine) as rolled_back:
        rolled_back.execute(insert(db.table).values(body="z"))
        await sender.sync.publish("schema", {"thread": "rollback"}, transaction=rolled_back)
        await asyncio.to_thread(rolled_back.rollback)
    with Session(engine) as session:
        session.execute(insert(db.table).values(body="x"))
        assert await sender.sync.publish("schema", {"thread": "commit"}, transaction=session)
        await asyncio.to_thread(session.commit)  # commit hooks fire in the worker thread
    await rec.wait_for(1)
    await delivered_marker(sender, rec, 2)
    assert rec.messages == [{"thread": "commit"}, {"marker": 2}]
    engine.dispose()


def _sync_driver(async_driver: str) -> str:
    """The blocking driver of an async URL's database (aiosqlite -> pysqlite)."""
    return {"sqlite+aiosqlite": "sqlite", "postgresql+psycopg": "postgresql+psycopg"}[async_driver]


async def test_connections_are_hooked_too(make_bus: BusFactory, db: Db) -> None:
    sender, _receiver, rec = await pair(make_bus)
    table = db.table
    async with db.engine.connect() as connection:
        await connection.execute(insert(table).values(body="x"))
        await sender.sync.publish("schema", {"conn": "rolled back"}, transaction=connection)
        await connection.rollback()
        await connection.execute(insert(table).values(body="y"))
        await sender.sync.publish("schema", {"conn": "committed"}, transaction=connection)
        assert rec.messages == []
        await connection.commit()
    await rec.wait_for(1)
    await delivered_marker(sender, rec, 2)
    assert rec.messages == [{"conn": "committed"}, {"marker": 2}]


class ManualTransaction:
    """Any object with after_commit/after_rollback works as a transaction."""

    def __init__(self) -> None:
        self.commits: list[Callable[[], object]] = []
        self.rollbacks: list[Callable[[], object]] = []

    def after_commit(self, callback: Callable[[], object]) -> None:
        self.commits.append(callback)

    def after_rollback(self, callback: Callable[[], object]) -> None:
        self.rollbacks.append(callback)


async def test_any_object_with_commit_hooks(make_bus: BusFactory) -> None:
    sender, _receiver, rec = await pair(make_bus)
    committed, rolled_back = ManualTransaction(), ManualTransaction()
    await sender.sync.publish("schema", "kept", transaction=committed)
    await sender.sync.publish("schema", "dropped", transaction=rolled_back)
    for callback in rolled_back.rollbacks:
        callback()
    for callback in committed.commits:
        callback()
    await rec.wait_for(1)
    await delivered_marker(sender, rec, 2)
    assert rec.messages == ["kept", {"marker": 2}]


async def test_bad_payloads_and_transactions_fail_at_once(make_bus: BusFactory) -> None:
    sender = await make_bus()
    with pytest.raises(PayloadError, match=r"sync\.schema"):
        await sender.sync.publish("schema", object(), transaction=ManualTransaction())
    with pytest.raises(TypeError, match="SQLAlchemy Session"):
        await sender.sync.publish("schema", 1, transaction=object())


class Schema(Plugin):
    name = "schema"

    def __init__(self, app: App, **options: Any) -> None:
        super().__init__(app, **options)
        self.received: list[Any] = []
        self.hooks: list[str] = []

    async def before_load(self) -> None:
        self.hooks.append("before_load")

    async def load(self) -> None:
        self.hooks.append("load")

    async def after_start(self) -> None:
        self.hooks.append(f"after_start:{self.bus.started}")

    async def before_stop(self) -> None:
        # deliveries have stopped but the bus can still publish
        self.hooks.append(f"before_stop:{await self.send_sync_message('bye')}")

    async def handle_sync_message(self, message: Any) -> None:
        self.received.append(message)


class Silent(Plugin):
    name = "silent"


@pytest.fixture
async def apps(backend: str, tmp_path: Path) -> AsyncIterator[list[App]]:
    name, hub = unique_app(), MemoryHub()
    settings = fast_settings(storage_dir=tmp_path)
    made = [
        App(name, amqp_url=AMQP_URL, settings=settings)
        if backend == "amqp"
        else App(name, hub=hub, settings=settings)
        for _ in range(3)
    ]
    for app in made:
        app.add(Schema)
        app.add(Silent)
    yield made
    for app in made:
        await app.stop()


async def test_plugin_messages_reach_the_plugin_on_other_instances(apps: list[App]) -> None:
    for app in apps:
        await app.start()
    a, b, c = (app.get(Schema) for app in apps)
    assert a.hooks == ["before_load", "load", "after_start:True"]
    assert await a.send_sync_message({"reload": "posts"}) is True
    await eventually(lambda: bool(b.received and c.received), what="b and c received")
    assert a.received == []
    assert b.received == c.received == [{"reload": "posts"}]
    # only overriding plugins are subscribed
    assert apps[0].bus.pubsub.subscriptions("sync.silent") == []


async def test_nothing_reaches_a_plugin_once_its_app_stops(apps: list[App]) -> None:
    for app in apps:
        await app.start()
    a, b = apps[0].get(Schema), apps[1].get(Schema)
    await a.send_sync_message("debounced, then cut off")
    await apps[1].stop()  # stops while b's debounced call is pending
    assert apps[1].bus.pubsub.pending_debounced == 0
    await a.send_sync_message("after stop")
    await eventually(lambda: len(apps[2].get(Schema).received) >= 2, what="c got both")
    assert b.received == []
    assert b.hooks[-1] == "before_stop:True"  # before_stop could still publish
    await apps[1].stop()  # a second stop is a no-op


async def test_send_sync_message_in_a_transaction(apps: list[App], tmp_path: Path) -> None:
    for app in apps:
        await app.start()
    a, b = apps[0].get(Schema), apps[1].get(Schema)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'plugin.db'}")
    async with AsyncSession(engine) as session:
        await session.execute(text("select 1"))
        assert await a.send_sync_message("on commit", transaction=session)
        await session.commit()
    await eventually(lambda: b.received == ["on commit"], what="b got it after commit")
    await engine.dispose()


async def test_savepoints_release_and_roll_back_their_own_messages(
    make_bus: BusFactory, db: Db
) -> None:
    sender, _receiver, rec = await pair(make_bus)
    async with AsyncSession(db.engine) as session:
        await session.execute(insert(db.table).values(body="outer"))
        await sender.sync.publish("schema", "outer", transaction=session)
        savepoint = await session.begin_nested()
        await sender.sync.publish("schema", "in a rolled-back savepoint", transaction=session)
        await savepoint.rollback()
        savepoint = await session.begin_nested()
        await sender.sync.publish("schema", "in a released savepoint", transaction=session)
        await savepoint.commit()  # released, but the outer transaction is still open
        await asyncio.sleep(0.2)
        assert rec.messages == []
        await session.commit()
    await rec.wait_for(2)
    await delivered_marker(sender, rec, 3)
    assert sorted(map(str, rec.messages[:2])) == ["in a released savepoint", "outer"]
    assert rec.messages[2] == {"marker": 3}
