"""The errors clusterbus raises; every one derives from :class:`BusError`."""

from bus.errors import (
    BusError,
    BusUnavailable,
    InvalidName,
    LockAcquireError,
    LockLost,
    LockReentryError,
    PayloadError,
)

__all__ = [
    "BusError",
    "BusUnavailable",
    "InvalidName",
    "LockAcquireError",
    "LockLost",
    "LockReentryError",
    "PayloadError",
]
