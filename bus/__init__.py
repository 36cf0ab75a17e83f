"""clusterbus: cache, pub/sub, sync messages, event queues and locks for a cluster of
instances of one service, on RabbitMQ or in memory.

>>> from bus import Bus
>>> async with Bus("crm") as bus:  # doctest: +SKIP
...     await bus.pubsub.publish("greetings", {"hello": "world"})
"""

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
from bus.memory import MemoryHub
from bus.settings import Settings
from managers.queue_messages import DeadLetter, QueueContext

__all__ = [
    "Bus",
    "BusError",
    "BusUnavailable",
    "DeadLetter",
    "InvalidName",
    "LockAcquireError",
    "LockLost",
    "LockReentryError",
    "MemoryHub",
    "PayloadError",
    "QueueContext",
    "Settings",
]
__version__ = "0.1.0"
