"""The example plugins (the guide's four examples), run as a three-instance cluster on both
backends (memory hub and RabbitMQ) over one shared SQLite database."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from bus import MemoryHub
from plugins import App, Plugin
from plugins.examples import AsyncTasksPlugin, AuthPlugin, Database, DataSourcePlugin
from plugins.examples.db import URL_ENV, Field, default_url, resolve_url
from tests.conftest import AMQP_URL, eventually, fast_settings, unique_app

P = TypeVar("P", bound=Plugin)
ClusterFactory = Callable[..., Awaitable[list[App]]]


@pytest.fixture
async def make_cluster(backend: str, tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    """Factory of started instances of one app (auth, data-source and async-tasks plugins),
    on the chosen backend, each with its own engine on one shared SQLite file. Everything
    is stopped and disposed after the test."""
    name = unique_app()
    hub = MemoryHub()
    url = default_url(tmp_path)
    apps: list[App] = []
    databases: list[Database] = []

    async def make(
        count: int = 3, *, auth: dict[str, Any] | None = None, **settings: Any
    ) -> list[App]:
        made: list[App] = []
        for _ in range(count):
            options = fast_settings(**{"storage_dir": tmp_path / "queues", **settings})
            if backend == "amqp":
                app = App(name, amqp_url=AMQP_URL, settings=options)
            else:
                app = App(name, hub=hub, settings=options)
            database = Database(url)
            databases.append(database)
            app.add(AuthPlugin, database=database, **(auth or {}))
            app.add(DataSourcePlugin, database=database)
            app.add(AsyncTasksPlugin, concurrency=2, max_retries=1)
            apps.append(app)
            made.append(app)
        # started together: creating the tables is serialised by a cluster lock
        await asyncio.gather(*(app.start() for app in made))
        return made

    yield make
    await asyncio.gather(*(app.stop() for app in apps), return_exceptions=True)
    for database in databases:
        await database.dispose()


def plugins(apps: list[App], plugin_class: type[P]) -> list[P]:
    """The ``plugin_class`` plugin of each app, in order."""
    return [app.get(plugin_class) for app in apps]


async def eventually_async(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = ""
) -> None:
    """Like :func:`eventually`, for a check that must be awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {what or check}")
        await asyncio.sleep(0.01)


# --- auth: cache.wrap over the database, invalidated on every instance by a delete ---------


async def test_auth_policy_is_read_once_then_cached_and_invalidated_everywhere(
    make_cluster: ClusterFactory,
) -> None:
    a, b, c = plugins(await make_cluster(), AuthPlugin)
    for _ in range(4):
        assert await a.token_policy() == {"expires_in": 3600}  # the default row, created once
    assert a.db_reads == 1
    assert await b.token_policy() == {"expires_in": 3600}  # memory store: B reads for itself
    assert b.db_reads == 1

    await b.set_policy(7200)

    async def a_sees_new_policy() -> bool:
        return await a.token_policy() == {"expires_in": 7200}

    await eventually_async(a_sees_new_policy, what="A returns the policy B stored")
    assert a.db_reads == 2  # one read after the invalidation, then hits again
    assert await a.token_policy() == {"expires_in": 7200}
    assert a.db_reads == 2
    assert await c.token_policy() == {"expires_in": 7200}
    assert c.db_reads == 1


async def test_auth_with_a_redis_store_shares_one_cached_policy(
    make_cluster: ClusterFactory, redis_url: str
) -> None:
    a, b = plugins(await make_cluster(2, auth={"store": "redis"}, redis_url=redis_url), AuthPlugin)
    try:
        assert a.cache.store_kind == "redis"
        assert await a.token_policy() == {"expires_in": 3600}
        assert await b.token_policy() == {"expires_in": 3600}
        assert (a.db_reads, b.db_reads) == (1, 0)  # B hit the value A cached in Redis
        await b.set_policy(60)
        assert await a.token_policy() == {"expires_in": 60}  # shared store: no lag at all
        assert (a.db_reads, b.db_reads) == (2, 0)
    finally:
        await a.cache.reset()  # leave nothing behind in the shared Redis


def test_auth_rejects_an_unknown_store() -> None:
    app = App(unique_app(), hub=MemoryHub())
    with pytest.raises(ValueError, match="option store"):
        app.add(AuthPlugin, database=Database("sqlite+aiosqlite://"), store="disk")


# --- data source: sync messages after commit, nothing after a rollback, a lock per collection


async def test_added_field_reaches_the_other_instances_only(make_cluster: ClusterFactory) -> None:
    a, b, c = plugins(await make_cluster(), DataSourcePlugin)
    assert await a.add_field("users", "email")
    assert a.collections == {"users": ["email"]}  # reloaded locally at once
    await eventually(
        lambda: all(p.collections.get("users") == ["email"] for p in (b, c)),
        what="B and C know users.email",
    )
    assert b.reloads == c.reloads == ["users"]
    assert a.reloads == []  # sync messages skip their sender


async def test_rolled_back_add_sends_no_sync_message(make_cluster: ClusterFactory) -> None:
    a, b, c = plugins(await make_cluster(), DataSourcePlugin)
    assert not await a.add_field("orders", "bad", fail=True)
    async with a.db.session() as session:
        rows = (await session.scalars(select(Field).where(Field.collection == "orders"))).all()
    assert rows == []
    assert "orders" not in a.collections
    # a later commit's message comes after the one a rollback would have sent, on the same
    # channel, so once it is handled the other one would have been handled too
    assert await a.add_field("audit", "at")
    await eventually(
        lambda: all("audit" in p.reloads for p in (b, c)), what="B and C reloaded audit"
    )
    assert b.reloads == c.reloads == ["audit"]
    assert all("orders" not in p.collections for p in (a, b, c))
    assert a.reloads == []


async def test_a_duplicate_field_is_refused(make_cluster: ClusterFactory) -> None:
    a, b, _ = plugins(await make_cluster(), DataSourcePlugin)
    assert await a.add_field("users", "email")
    assert not await b.add_field("users", "email")  # the unique constraint rolls it back
    await eventually(lambda: b.collections.get("users") == ["email"], what="B knows users")


async def test_concurrent_removals_on_two_instances_are_serialised(
    make_cluster: ClusterFactory,
) -> None:
    a, b, c = plugins(await make_cluster(), DataSourcePlugin)
    for field in ("a", "b", "keep"):
        assert await a.add_field("users", field)
    await eventually(
        lambda: all(p.collections.get("users") == ["a", "b", "keep"] for p in (b, c)),
        what="every instance knows users.a, users.b, users.keep",
    )

    removed = await asyncio.gather(a.remove_field("users", "a"), b.remove_field("users", "b"))

    assert list(removed) == [True, True]
    log = sorted(a.lock_log + b.lock_log, key=lambda entry: entry[2])
    assert [what for _, what, _ in log] == ["enter", "exit", "enter", "exit"]  # no overlap
    assert log[0][0] == log[1][0] != log[2][0] == log[3][0]  # one instance, then the other
    assert {log[0][0], log[2][0]} == {a.bus.instance_id, b.bus.instance_id}
    await eventually(
        lambda: all(p.collections.get("users") == ["keep"] for p in (a, b, c)),
        what="every instance lost users.a and users.b",
    )
    assert not await c.remove_field("users", "a")  # gone already


# --- async tasks: a queue shared by the instances, cancelled by broadcast ----------------


async def test_tasks_spread_over_instances_and_run_once(make_cluster: ClusterFactory) -> None:
    tasks = plugins(await make_cluster(), AsyncTasksPlugin)
    a = tasks[0]
    ids = [await a.submit("sleep", seconds=0.2) for _ in range(6)]
    await eventually(
        lambda: sorted(i for t in tasks for i in t.done) == sorted(ids), what="6 tasks done"
    )
    started = [i for t in tasks for i in t.started]
    assert sorted(started) == sorted(ids)  # each ran exactly once
    assert sum(1 for t in tasks if t.started) >= 2  # the work was shared
    assert all(t.cancelled == [] and t.running == {} for t in tasks)


async def test_a_failing_task_is_retried(make_cluster: ClusterFactory) -> None:
    tasks = plugins(await make_cluster(), AsyncTasksPlugin)
    task_id = await tasks[0].submit("fail-once")
    await eventually(lambda: any(task_id in t.done for t in tasks), what="fail-once done")
    assert Counter(i for t in tasks for i in t.started)[task_id] == 2  # attempt 0, then 1
    assert [i for t in tasks for i in t.done] == [task_id]


async def test_a_task_is_cancelled_from_another_instance(make_cluster: ClusterFactory) -> None:
    tasks = plugins(await make_cluster(), AsyncTasksPlugin)
    a, b, _ = tasks
    task_id = await a.submit("sleep", seconds=30)
    await eventually(lambda: any(task_id in t.running for t in tasks), what="the task runs")

    await b.cancel(task_id)

    await eventually(
        lambda: any(task_id in t.cancelled for t in tasks), timeout=10, what="task cancelled"
    )
    [runner] = [t for t in tasks if task_id in t.started]
    assert runner.cancelled == [task_id]
    assert runner.running == {}
    await asyncio.sleep(0.3)  # room for a retry (retry_delay 0.05 s), if it were retried
    assert [i for t in tasks for i in t.started] == [task_id]
    assert all(t.done == [] for t in tasks)


async def test_a_task_cancelled_on_its_own_instance(make_cluster: ClusterFactory) -> None:
    (a,) = plugins(await make_cluster(1), AsyncTasksPlugin)
    task_id = await a.submit("sleep", seconds=30)
    await eventually(lambda: task_id in a.running, what="the task runs")
    await a.cancel(task_id)  # skip_self=False: the sender hears its own cancel
    await eventually(lambda: a.cancelled == [task_id], timeout=10, what="task cancelled")
    assert a.done == []


async def test_a_queued_task_cancelled_before_it_starts_never_runs(
    make_cluster: ClusterFactory,
) -> None:
    (a,) = plugins(await make_cluster(1), AsyncTasksPlugin)  # concurrency 2
    first, second = [await a.submit("sleep", seconds=30) for _ in range(2)]
    await eventually(lambda: len(a.running) == 2, what="two tasks run")
    queued = await a.submit("sleep", seconds=30)
    await a.cancel(queued)  # heard while the task waits in the queue
    await a.cancel(first)  # frees a slot: the queued task starts and stops at once
    await eventually(lambda: a.cancelled == [first, queued], what="both cancelled")
    assert list(a.running) == [second]
    await a.cancel(second)
    await eventually(lambda: a.cancelled == [first, queued, second], what="all cancelled")
    assert a.done == []


async def test_unknown_task_kind_is_refused(make_cluster: ClusterFactory) -> None:
    (a,) = plugins(await make_cluster(1), AsyncTasksPlugin)
    with pytest.raises(ValueError, match="unknown task kind"):
        await a.submit("dance")


# --- the database URL ------------------------------------------------------------------


def test_database_url_comes_from_option_then_environment_then_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    assert resolve_url(None, tmp_path) == f"sqlite+aiosqlite:///{tmp_path}/clusterbus-demo.db"
    monkeypatch.setenv(URL_ENV, "postgresql+psycopg://postgres@127.0.0.1/test")
    assert resolve_url(None, tmp_path) == "postgresql+psycopg://postgres@127.0.0.1/test"
    assert resolve_url("sqlite+aiosqlite:///x.db", tmp_path) == "sqlite+aiosqlite:///x.db"


async def test_plugins_open_and_close_their_own_database(tmp_path: Path) -> None:
    app = App(unique_app(), hub=MemoryHub(), settings=fast_settings(storage_dir=tmp_path))
    url = default_url(tmp_path / "own")
    source = app.add(DataSourcePlugin, database_url=url)
    async with app:
        assert await source.add_field("users", "email")
    assert (tmp_path / "own" / "clusterbus-demo.db").exists()
