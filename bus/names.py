"""The rules of names on the wire, for the layers above the bus (plugins check theirs)."""

from managers.names import validate_app_name, validate_channel

__all__ = ["validate_app_name", "validate_channel"]
