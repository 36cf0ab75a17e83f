"""Commit/rollback hooks of the transactions ``bus.sync.publish(..., transaction=)`` takes:
SQLAlchemy ``Session``, ``AsyncSession``, ``Connection``, ``AsyncConnection``, and any
object with ``after_commit(callback)`` / ``after_rollback(callback)``."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from bus.logs import get_logger
from managers.sync import TransactionHooks

SUPPORTED = (
    "a SQLAlchemy Session, AsyncSession, Connection or AsyncConnection, or an object with "
    "after_commit(callback) and after_rollback(callback)"
)


class _Entry:
    """One message's callbacks and the (innermost) transaction it was sent in: a session
    transaction, or a Core connection's savepoint (None: the connection's root)."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.on_commit: list[Callable[[], object]] = []
        self.on_rollback: list[Callable[[], object]] = []

    def within(self, transaction: Any, parent: str = "parent") -> bool:
        """Whether the entry was sent inside ``transaction`` (or a transaction nested in it);
        ``parent`` names the attribute that leads from a transaction to its enclosing one."""
        owner = self.owner
        while owner is not None:
            if owner is transaction:
                return True
            owner = getattr(owner, parent, None)
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


class _ConnectionPending:
    """The messages waiting on a Core connection (``Connection``/``AsyncConnection``).

    SQLAlchemy's ``commit`` connection event fires *before* the DBAPI commit, and Core has no
    after-commit event (the maintainers declined one: sqlalchemy/sqlalchemy#4943). So the
    ``commit`` event only hands the messages to a :class:`_Commit` parked on the DBAPI
    connection, and a wrapper around the dialect's ``do_commit`` (see
    :func:`_install_commit_probe`) settles it once the DBAPI commit returned (sent) or raised
    (discarded: a COMMIT the server refuses, e.g. a deferred constraint, sends nothing).
    A root ``rollback`` discards everything; ``rollback_savepoint`` discards what was sent
    inside that savepoint (or one nested in it); a released savepoint's messages wait for the
    enclosing transaction."""

    def __init__(self) -> None:
        self.entries: list[_Entry] = []

    def commit(self, connection: Any) -> None:
        entries, self.entries = self.entries, []
        if not entries:
            return
        try:
            fairy = connection.connection  # the object the dialect's do_commit receives
            fairy.info[_COMMITTING] = (fairy, _Commit(entries))
        except Exception:  # no usable DBAPI connection: this commit cannot succeed
            _run_quietly(c for e in entries for c in e.on_rollback)

    def rollback(self, _connection: Any) -> None:
        entries, self.entries = self.entries, []
        _run(c for e in entries for c in e.on_rollback)

    def rollback_savepoint(self, connection: Any, name: str, _context: Any = None) -> None:
        savepoint = _savepoint_named(connection, name)
        if savepoint is None:
            return
        dropped = [e for e in self.entries if e.within(savepoint, "_previous_nested")]
        if dropped:
            self.entries = [e for e in self.entries if e not in dropped]
            _run(c for e in dropped for c in e.on_rollback)


class _Commit:
    """Messages of a root transaction whose COMMIT is under way."""

    def __init__(self, entries: list[_Entry]) -> None:
        self.entries = entries

    def settle(self, committed: bool) -> None:
        entries, self.entries = self.entries, []
        _run_quietly(c for e in entries for c in (e.on_commit if committed else e.on_rollback))


_COMMITTING = "clusterbus.sync.committing"
_PROBE = "_clusterbus_commit_probe"


def _install_commit_probe(dialect: Any) -> None:
    """Wrap ``dialect.do_commit`` (once per dialect, i.e. per engine) so that the
    :class:`_Commit` parked on a DBAPI connection by the ``commit`` event is settled by the
    outcome of the DBAPI commit itself: sent when it returned, discarded when it raised
    (including a cancellation while an async driver awaited the server). Connections that
    never carried a message only pay a dict lookup."""
    original = dialect.do_commit
    if getattr(original, _PROBE, False):
        return

    def do_commit(dbapi_connection: Any) -> None:
        parked = _take_parked(dbapi_connection)
        try:
            original(dbapi_connection)
        except BaseException:
            if parked is not None:
                parked.settle(committed=False)
            raise
        if parked is not None:
            parked.settle(committed=True)

    setattr(do_commit, _PROBE, True)
    dialect.do_commit = do_commit


def _take_parked(dbapi_connection: Any) -> _Commit | None:
    info = getattr(dbapi_connection, "info", None)
    if not isinstance(info, dict):
        return None
    parked = info.pop(_COMMITTING, None)
    if parked is None or parked[0] is not dbapi_connection:
        return None  # parked by an earlier checkout whose commit never reached the DBAPI
    commit: _Commit = parked[1]
    return commit


def _savepoint_named(connection: Any, name: str) -> Any:
    """The connection's active savepoint called ``name`` (the event passes the name only;
    the innermost one if SQLAlchemy's ``NestedTransaction`` ever stops exposing its name),
    or None."""
    nested = connection.get_nested_transaction()
    while nested is not None:
        if getattr(nested, "_savepoint", name) == name:
            return nested
        nested = getattr(nested, "_previous_nested", None)
    return None


def _run(callbacks: Iterable[Callable[[], object]]) -> None:
    for callback in list(callbacks):
        callback()


def _run_quietly(callbacks: Iterable[Callable[[], object]]) -> None:
    """Run ``callbacks`` from inside the DBAPI commit wrapper, where a callback's exception
    must not pass for a failed commit: it is logged instead."""
    for callback in list(callbacks):
        try:
            callback()
        except Exception:
            get_logger("clusterbus.sync").exception("sync.commit_callback_failed")


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
        _install_commit_probe(connection.engine.dialect)
        pending = _pending[connection] = _ConnectionPending()
        event.listen(connection, "commit", pending.commit)
        event.listen(connection, "rollback", pending.rollback)
        event.listen(connection, "rollback_savepoint", pending.rollback_savepoint)
    entry = _Entry(connection.get_nested_transaction())
    pending.entries.append(entry)
    return _Hooks(entry.on_commit, entry.on_rollback)


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
    discarded). Connections settle when the DBAPI commit of their root transaction returned
    (sent) or failed (discarded), or when it rolls back. On both, a rolled-back savepoint
    discards what was sent inside it. The send itself runs on the event loop.
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
