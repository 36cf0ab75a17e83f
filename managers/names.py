"""Validation of the names that reach the wire (app names, channel names)."""

from __future__ import annotations

import re

from managers.errors import InvalidName

_APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9._-]+")
# RabbitMQ limits queue and exchange names to 255 bytes; leave room for the prefixes.
MAX_CHANNEL_LENGTH = 200


def validate_app_name(name: object) -> str:
    """Return ``name`` if it is a valid app name (``[a-z0-9][a-z0-9_-]*``), else raise."""
    if not isinstance(name, str) or not _APP_NAME.fullmatch(name) or len(name) > 64:
        raise InvalidName(
            f"invalid app name {name!r}: use lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit, at most 64 characters"
        )
    return name


def validate_channel(channel: object) -> str:
    """Return ``channel`` if it is a valid channel name (letters, digits, ``.``, ``_``, ``-``)."""
    if (
        not isinstance(channel, str)
        or not _CHANNEL_NAME.fullmatch(channel)
        or len(channel) > MAX_CHANNEL_LENGTH
    ):
        raise InvalidName(
            f"invalid channel name {channel!r}: use letters, digits, '.', '_' and '-' "
            f"(at most {MAX_CHANNEL_LENGTH} characters)"
        )
    return channel


def queue_name(app: str, channel: str, *, shared: bool = False) -> str:
    """The event queue of ``channel``: ``<app>.queue.<channel>``, or ``queue.<channel>`` when
    ``shared`` (one queue for every app on the broker)."""
    validate_channel(channel)
    return f"queue.{channel}" if shared else f"{app}.queue.{channel}"
