"""clusterbus: many instances of one service behaving as one cluster.

Cache, pub/sub, sync messages, event queues and locks, on RabbitMQ (aio-pika) or in memory,
plus the plugin model. This is the public API: everything an application imports is here
(and the errors in :mod:`clusterbus.errors`).

>>> from clusterbus import Bus
>>> async with Bus("crm") as bus:  # doctest: +SKIP
...     await bus.pubsub.publish("greetings", {"hello": "world"})

In the repository and editable installs this package re-exports the card's packages
(``bus``, ``plugins``); the built wheel holds them inside it (docs/design/packaging.md).
"""

from bus import (
    Backend,
    Bus,
    BusError,
    BusLogger,
    BusUnavailable,
    Cache,
    DeadLetter,
    Health,
    InvalidName,
    Lease,
    LockAcquireError,
    LockLost,
    LockReentryError,
    MemoryHub,
    Mode,
    PayloadError,
    QueueContext,
    Settings,
    StoreKind,
    Subscription,
    __version__,
    configure_logging,
    get_logger,
)
from clusterbus import errors
from plugins import App, Plugin

__all__ = [
    "App",
    "Backend",
    "Bus",
    "BusError",
    "BusLogger",
    "BusUnavailable",
    "Cache",
    "DeadLetter",
    "Health",
    "InvalidName",
    "Lease",
    "LockAcquireError",
    "LockLost",
    "LockReentryError",
    "MemoryHub",
    "Mode",
    "PayloadError",
    "Plugin",
    "QueueContext",
    "Settings",
    "StoreKind",
    "Subscription",
    "__version__",
    "configure_logging",
    "errors",
    "get_logger",
]
