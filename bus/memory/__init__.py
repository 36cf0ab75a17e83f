"""The in-memory backend: a :class:`MemoryHub` stands for the broker inside one process."""

from bus.memory.broadcast import MemoryBroadcast
from bus.memory.hub import MemoryHub, default_hub
from bus.memory.locks import MemoryLocks
from bus.memory.queues import MemoryQueues

__all__ = ["MemoryBroadcast", "MemoryHub", "MemoryLocks", "MemoryQueues", "default_hub"]
