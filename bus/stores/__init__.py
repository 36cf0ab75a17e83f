"""Cache stores: ``memory`` (per instance, bounded LRU with ttl) and ``redis`` (shared)."""

from bus.stores.memory import MemoryStore

__all__ = ["MemoryStore"]
