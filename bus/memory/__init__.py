"""The in-memory backend: a :class:`MemoryHub` stands for the broker inside one process."""

from bus.memory.broadcast import MemoryBroadcast
from bus.memory.hub import MemoryHub, default_hub
from bus.memory.queues import MemoryQueues

__all__ = ["MemoryBroadcast", "MemoryHub", "MemoryQueues", "default_hub"]
