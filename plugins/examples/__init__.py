"""The guide's four examples as plugins: a cached auth policy (:mod:`.auth`), a schema kept
in step by sync messages and locks (:mod:`.data_source`), and queued, cancellable tasks
(:mod:`.async_tasks`), all on one shared database (:mod:`.db`).

Needs the ``sqlalchemy`` extra (SQLAlchemy with asyncio, aiosqlite; psycopg for PostgreSQL).
"""

from plugins.examples.async_tasks import AsyncTasksPlugin
from plugins.examples.auth import AuthPlugin
from plugins.examples.data_source import DataSourcePlugin
from plugins.examples.db import Database, default_url, resolve_url

__all__ = [
    "AsyncTasksPlugin",
    "AuthPlugin",
    "DataSourcePlugin",
    "Database",
    "default_url",
    "resolve_url",
]
