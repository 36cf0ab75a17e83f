"""The exception hierarchy of clusterbus (re-exported by :mod:`bus.errors`)."""

from __future__ import annotations


class BusError(Exception):
    """Base class of every error clusterbus raises."""


class InvalidName(BusError, ValueError):
    """An app, channel or other wire name that the broker would reject or that is malformed."""


class PayloadError(BusError, TypeError):
    """A payload that cannot be carried on the wire (not msgpack-able, too large, invalid)."""


class BusUnavailable(BusError, ConnectionError):
    """The broker cannot be reached (connect, publish or declare did not finish in time)."""


class LockAcquireError(BusError):
    """A lock could not be acquired (held by another holder, or the timeout passed)."""


class LockLost(BusError):
    """A held lock was lost (ttl passed or the connection died) and the section cancelled."""


class LockReentryError(BusError, RuntimeError):
    """A task tried to acquire a lock key it already holds through the same bus."""


__all__ = [
    "BusError",
    "BusUnavailable",
    "InvalidName",
    "LockAcquireError",
    "LockLost",
    "LockReentryError",
    "PayloadError",
]
