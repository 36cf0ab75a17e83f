"""The in-memory backend: a :class:`MemoryHub` stands for the broker inside one process."""

from bus.memory.broadcast import MemoryBroadcast
from bus.memory.hub import MemoryHub, default_hub

__all__ = ["MemoryBroadcast", "MemoryHub", "default_hub"]
