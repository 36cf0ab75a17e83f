"""The database the example plugins share: a SQLAlchemy async engine and two models.

Every instance of the app opens the same database (a SQLite file for the demo, PostgreSQL
or any SQLAlchemy async URL otherwise): that shared state is what the instances keep their
in-memory copies, caches and work coherent with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import String, UniqueConstraint, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

URL_ENV = "CLUSTERBUS_DEMO_DATABASE_URL"
"""Environment variable naming the database when no ``database_url`` option is given."""

DEFAULT_DIRECTORY = Path(".clusterbus")
"""Where the default SQLite file lives when no ``directory`` option is given."""


class Base(DeclarativeBase):
    """Declarative base of the example models."""


class TokenPolicy(Base):
    """The auth plugin's token policy (one row, id 1)."""

    __tablename__ = "token_policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    expires_in: Mapped[int]


class Field(Base):
    """A field of a collection, as the data-source plugin keeps them."""

    __tablename__ = "fields"
    __table_args__ = (UniqueConstraint("collection", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    collection: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))


def default_url(directory: Path) -> str:
    """The demo's SQLite database under ``directory``."""
    return f"sqlite+aiosqlite:///{directory / 'clusterbus-demo.db'}"


def resolve_url(database_url: str | None = None, directory: Path | str | None = None) -> str:
    """``database_url`` if given, else ``$CLUSTERBUS_DEMO_DATABASE_URL``, else the default
    SQLite file under ``directory`` (``.clusterbus`` when not given)."""
    if database_url:
        return database_url
    from_env = os.environ.get(URL_ENV)
    if from_env:
        return from_env
    return default_url(Path(directory) if directory is not None else DEFAULT_DIRECTORY)


class Database:
    """An async engine and its session factory. SQLite files get their directory created
    and WAL journaling, so several processes can share one file."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.url = url
        connect_args: dict[str, Any] = {}
        sqlite_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (
            None,
            "",
            ":memory:",
        )
        if sqlite_file:
            assert parsed.database is not None
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            connect_args["timeout"] = 30.0  # wait for another instance's write lock
        self.engine = create_async_engine(url, connect_args=connect_args)
        if sqlite_file:
            event.listen(self.engine.sync_engine, "connect", _sqlite_wal)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def create_all(self) -> None:
        """Create the tables that do not exist yet."""
        async with self.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)

    def session(self) -> AsyncSession:
        """A new session, to use as ``async with db.session() as session:``."""
        return self.sessions()

    async def dispose(self) -> None:
        """Close the engine's connections."""
        await self.engine.dispose()

    def __repr__(self) -> str:
        return f"<Database {self.engine.url!r}>"


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def database_option(options: Mapping[str, Any]) -> tuple[Database, bool]:
    """The database a plugin's options name, and whether the plugin owns it (and must
    dispose it): option ``database`` (a :class:`Database`, owned by the caller), else a new
    one from ``database_url`` / ``$CLUSTERBUS_DEMO_DATABASE_URL`` / ``directory``."""
    given = options.get("database")
    if given is not None:
        if not isinstance(given, Database):
            raise TypeError(f"option database must be a Database, not {type(given).__name__}")
        return given, False
    return Database(resolve_url(options.get("database_url"), options.get("directory"))), True


__all__ = [
    "DEFAULT_DIRECTORY",
    "URL_ENV",
    "Base",
    "Database",
    "Field",
    "TokenPolicy",
    "database_option",
    "default_url",
    "resolve_url",
]
