"""Commit/rollback hooks of the transactions ``bus.sync.publish(..., transaction=)`` takes:
SQLAlchemy ``Session``, ``AsyncSession``, ``Connection``, ``AsyncConnection``, and any
object with ``after_commit(callback)`` / ``after_rollback(callback)``."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from managers.sync import TransactionHooks

SUPPORTED = (
    "a SQLAlchemy Session, AsyncSession, Connection or AsyncConnection, or an object with "
    "after_commit(callback) and after_rollback(callback)"
)


class _Pending:
    """The callbacks waiting for a SQLAlchemy target's next commit or rollback. One pair of
    listeners per target, installed once: whichever event comes first settles them all."""

    def __init__(self) -> None:
        self.on_commit: list[Callable[[], object]] = []
        self.on_rollback: list[Callable[[], object]] = []

    def commit(self, *_args: Any) -> None:
        callbacks, self.on_commit, self.on_rollback = self.on_commit, [], []
        for callback in callbacks:
            callback()

    def rollback(self, *_args: Any) -> None:
        callbacks, self.on_commit, self.on_rollback = self.on_rollback, [], []
        for callback in callbacks:
            callback()


_pending: weakref.WeakKeyDictionary[Any, _Pending] = weakref.WeakKeyDictionary()


class _SqlAlchemyHooks:
    def __init__(self, pending: _Pending) -> None:
        self._pending = pending

    def after_commit(self, callback: Callable[[], object]) -> None:
        self._pending.on_commit.append(callback)

    def after_rollback(self, callback: Callable[[], object]) -> None:
        self._pending.on_rollback.append(callback)


def _hooks(target: Any, commit_event: str, rollback_event: str) -> _SqlAlchemyHooks:
    from sqlalchemy import event

    pending = _pending.get(target)
    if pending is None:
        pending = _pending[target] = _Pending()
        event.listen(target, commit_event, pending.commit)
        event.listen(target, rollback_event, pending.rollback)
    return _SqlAlchemyHooks(pending)


def hooks_for(transaction: object) -> TransactionHooks:
    """The commit/rollback hooks of ``transaction``; ``TypeError`` naming what is supported
    when it is none of them.

    Sessions are hooked on ``after_commit``/``after_rollback`` (fired once the database
    answered); connections on the ``commit``/``rollback`` events, which SQLAlchemy fires as
    the commit is issued: the message is sent from the event loop once the commit call has
    returned.
    """
    after_commit = getattr(transaction, "after_commit", None)
    after_rollback = getattr(transaction, "after_rollback", None)
    if callable(after_commit) and callable(after_rollback):
        return transaction  # type: ignore[return-value]  # duck-typed TransactionHooks
    try:
        from sqlalchemy.engine import Connection
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
        from sqlalchemy.orm import Session
    except ImportError:  # the sqlalchemy extra is not installed
        raise TypeError(f"unsupported transaction {transaction!r}: use {SUPPORTED}") from None
    if isinstance(transaction, AsyncSession):
        transaction = transaction.sync_session
    if isinstance(transaction, Session):
        return _hooks(transaction, "after_commit", "after_rollback")
    if isinstance(transaction, AsyncConnection):
        transaction = transaction.sync_connection
    if isinstance(transaction, Connection):
        return _hooks(transaction, "commit", "rollback")
    raise TypeError(f"unsupported transaction {type(transaction).__name__}: use {SUPPORTED}")
