"""clusterbus's bus: the :class:`Bus` facade and everything an application touches.

Cache, pub/sub, sync messages, event queues and locks for a cluster of instances of one
service, on RabbitMQ or in memory. Installed from the wheel, the same names import from
``clusterbus`` (which adds :class:`~plugins.App` and :class:`~plugins.Plugin`).

>>> from bus import Bus
>>> async with Bus("crm") as bus:  # doctest: +SKIP
...     await bus.pubsub.publish("greetings", {"hello": "world"})
"""

from bus.backend import Backend, Mode
from bus.errors import (
    BusError,
    BusUnavailable,
    InvalidName,
    LockAcquireError,
    LockLost,
    LockReentryError,
    PayloadError,
)
from bus.facade import Bus
from bus.health import Health
from bus.logs import BusLogger, configure_logging, get_logger
from bus.memory.hub import MemoryHub
from bus.settings import Settings
from managers.cache import Cache
from managers.cache_manager import StoreKind
from managers.locks import Lease
from managers.pubsub import Subscription
from managers.queue_messages import DeadLetter, QueueContext

__all__ = [
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
    "QueueContext",
    "Settings",
    "StoreKind",
    "Subscription",
    "configure_logging",
    "get_logger",
]
__version__ = "0.1.0"
