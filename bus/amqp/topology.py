"""Names of the exchanges and queues clusterbus declares on RabbitMQ (see SPEC's wire names)."""

from __future__ import annotations

import hashlib
import re

from managers.names import (
    DEAD_SUFFIX,
    INSTANCE_SEGMENT,
    PUBSUB_SEGMENT,
    pubsub_name,
    tier_suffix,
)

_PLAIN = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def pubsub_exchange(app: str, channel: str) -> str:
    """Fanout exchange of pub/sub channel ``channel``: ``<app>.pubsub.<channel>`` (its length
    is checked at subscribe and publish: :func:`managers.names.check_pubsub_channel`)."""
    return pubsub_name(app, channel)


def pubsub_prefix(app: str) -> str:
    """The common prefix of every pub/sub exchange of ``app``."""
    return f"{app}{PUBSUB_SEGMENT}"


def instance_queue(app: str, instance_id: str) -> str:
    """The exclusive, auto-delete queue that receives every channel an instance subscribes to:
    ``<app>.instance.<id>``, within 255 bytes for any valid app (an instance id is at most
    :data:`~managers.names.MAX_INSTANCE_ID_LENGTH` characters; ``bus.instance``)."""
    return f"{app}{INSTANCE_SEGMENT}{instance_id}"


def dead_queue(queue: str) -> str:
    """The dead queue of work queue ``queue``: ``<queue>.dead`` (no queue channel ends with
    ``.dead``: see :mod:`managers.names`)."""
    return f"{queue}{DEAD_SUFFIX}"


def delay_queue(queue: str, delay: float) -> str:
    """The delay tier of ``queue`` holding messages ``delay`` seconds: ``<queue>.retry.<ms>``
    (no queue channel ends with ``.retry.<digits>``: see :mod:`managers.names`)."""
    return f"{queue}{tier_suffix(delay)}"


def lock_queue(app: str, key: str) -> str:
    """The single-active-consumer queue of lock ``key``: ``<app>.lock.<key>``. A key that is
    long or holds characters outside letters, digits, ``.``, ``_``, ``-`` is hashed:
    ``<app>.lock-h.<readable part>.<sha256 prefix>``."""
    if len(key) <= 120 and _PLAIN.fullmatch(key):
        return f"{app}.lock.{key}"
    readable = _UNSAFE.sub("_", key)[:60]
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{app}.lock-h.{readable}.{digest}"  # "lock-h": never equal to a plain key's name
