"""Commit/rollback hooks of the transactions ``bus.sync.publish(..., transaction=)`` takes:
SQLAlchemy ``Session``, ``AsyncSession``, ``Connection``, ``AsyncConnection``, and any
object with ``after_commit(callback)`` / ``after_rollback(callback)``."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from managers.sync import TransactionHooks

SUPPORTED = (
    "a SQLAlchemy Session, AsyncSession, Connection or AsyncConnection, or an object with "
    "after_commit(callback) and after_rollback(callback)"
)


class _Pending:
    """The callbacks waiting for a Core connection's next commit or rollback (SQLAlchemy's
    ``commit``/``rollback`` connection events fire for the real transaction only; savepoints
    have events of their own). Whichever comes first settles them all."""

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


class _Entry:
    """One message's callbacks and the (innermost) session transaction it was sent in."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.on_commit: list[Callable[[], object]] = []
        self.on_rollback: list[Callable[[], object]] = []

    def within(self, transaction: Any) -> bool:
        owner = self.owner
        while owner is not None:
            if owner is transaction:
                return True
            owner = owner.parent
        return False


class _SessionPending:
    """The messages waiting on a session. SQLAlchemy fires ``after_commit`` and
    ``after_rollback`` for savepoints too, so the outcome is read when a transaction ends:
    the outermost one's commit sends everything left, its rollback discards everything; a
    savepoint's rollback discards only what was sent inside it (a released savepoint's
    messages wait for the enclosing transaction)."""

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self._committed = False

    def after_commit(self, _session: Any) -> None:
        self._committed = True

    def after_transaction_end(self, _session: Any, transaction: Any) -> None:
        committed, self._committed = self._committed, False
        if transaction.parent is not None:
            if not committed:
                dropped = [e for e in self.entries if e.within(transaction)]
                self.entries = [e for e in self.entries if e not in dropped]
                _run(c for e in dropped for c in e.on_rollback)
            return
        entries, self.entries = self.entries, []
        _run(c for e in entries for c in (e.on_commit if committed else e.on_rollback))


def _run(callbacks: Iterable[Callable[[], object]]) -> None:
    for callback in list(callbacks):
        callback()


_pending: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


class _Hooks:
    def __init__(
        self, on_commit: list[Callable[[], object]], on_rollback: list[Callable[[], object]]
    ):
        self._on_commit = on_commit
        self._on_rollback = on_rollback

    def after_commit(self, callback: Callable[[], object]) -> None:
        self._on_commit.append(callback)

    def after_rollback(self, callback: Callable[[], object]) -> None:
        self._on_rollback.append(callback)


def _connection_hooks(connection: Any) -> _Hooks:
    from sqlalchemy import event

    pending = _pending.get(connection)
    if pending is None:
        pending = _pending[connection] = _Pending()
        event.listen(connection, "commit", pending.commit)
        event.listen(connection, "rollback", pending.rollback)
    return _Hooks(pending.on_commit, pending.on_rollback)


def _session_hooks(session: Any) -> _Hooks:
    from sqlalchemy import event

    pending = _pending.get(session)
    if pending is None:
        pending = _pending[session] = _SessionPending()
        event.listen(session, "after_commit", pending.after_commit)
        event.listen(session, "after_transaction_end", pending.after_transaction_end)
    entry = _Entry(session.get_nested_transaction() or session.get_transaction())
    pending.entries.append(entry)
    return _Hooks(entry.on_commit, entry.on_rollback)


def hooks_for(transaction: object) -> TransactionHooks:
    """The commit/rollback hooks of ``transaction``; ``TypeError`` naming what is supported
    when it is none of them.

    Sessions settle when their outermost transaction ends (committed: sent; rolled back:
    discarded), and a rolled-back savepoint discards what was sent inside it. Connections
    are hooked on the ``commit``/``rollback`` events, which SQLAlchemy fires as the commit
    is issued: the message is sent from the event loop once the commit call has returned.
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
        return _session_hooks(transaction)
    if isinstance(transaction, AsyncConnection):
        transaction = transaction.sync_connection
    if isinstance(transaction, Connection):
        return _connection_hooks(transaction)
    raise TypeError(f"unsupported transaction {type(transaction).__name__}: use {SUPPORTED}")
