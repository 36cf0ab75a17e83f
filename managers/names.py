"""Every name that reaches the wire: how each is built and validated (app names, channel
names, exchanges, queues, lock queues, cache keys): the one module that knows them.

Internal names live where user names cannot reach (SPEC, "Names never collide with internal
ones"):

* The dead queue of work queue ``Q`` is ``Q.dead`` and its delay tiers are
  ``Q.retry.<milliseconds>``. So an event-queue channel may not end with ``.dead`` nor with
  ``.retry.<digits>`` (:data:`RESERVED_QUEUE_SUFFIX`): no user queue name then equals an
  internal one, and no internal name of one queue equals one of another queue.
* Shared queues are ``queue.<channel>`` and the names of app ``A`` start with ``A.``, so the
  app name ``queue`` is reserved (its queues, locks and instance queues would be reachable
  as shared channels).
* Locks (``A.lock.<key>``, ``A.lock-h.<...>``), instance queues (``A.instance.<id>``) and
  event queues (``A.queue.<channel>``) differ by their second segment; pub/sub channels are
  exchanges, a namespace of their own on RabbitMQ.

Every queue name is checked against RabbitMQ's 255-byte limit, with room for the longest
internal suffix, when it is built (at subscribe, publish and the dead-queue tools), and so is
every pub/sub exchange name (at subscribe and publish, against AMQP's 127-byte limit on
exchange names, which the client enforces), so an over-long name raises
:class:`InvalidName` at the call in both modes. Instance ids are at most
:data:`MAX_INSTANCE_ID_LENGTH` characters, so an instance queue always fits.
"""

from __future__ import annotations

import hashlib
import re

from managers.errors import InvalidName

_APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_APP_LENGTH = 64
# A channel's own bound; the whole wire name is checked against MAX_NAME_BYTES as well.
MAX_CHANNEL_LENGTH = 200
MAX_NAME_BYTES = 255
"""RabbitMQ's limit on queue and exchange names (bytes of UTF-8)."""
MAX_EXCHANGE_BYTES = 127
"""The limit on exchange names in AMQP 0-9-1 (its ``exchange-name`` domain), which the client
(pamqp) enforces before anything reaches RabbitMQ: pub/sub exchanges must fit it."""
RESERVED_APP_NAMES = frozenset({"queue"})
"""App names whose wire names would overlap the shared queues ``queue.<channel>``."""

MAX_DELAY = 30 * 24 * 3600.0
"""The longest delay (seconds, 30 days) of a message and of a delay tier (so of
``retry_delay_max``): a tier's TTL must stay under RabbitMQ's ``x-message-ttl`` limit
(2**32-1 ms, about 49.7 days) and its name ``.retry.<ms>`` within :data:`DEFAULT_SUFFIX_ROOM`."""
MIN_DELAY = 0.001
"""The shortest delay tier (seconds, so the smallest ``retry_delay``): tiers are named and
timed in whole milliseconds, and a tier of 0 ms would send a message straight back."""

PUBSUB_SEGMENT = ".pubsub."
INVALIDATION_CHANNEL = "cache.invalidate"
"""The pub/sub channel of cache invalidations (exchange ``<app>.pubsub.cache.invalidate``)."""
INSTANCE_SEGMENT = ".instance."
MAX_INSTANCE_ID_LENGTH = MAX_NAME_BYTES - MAX_APP_LENGTH - len(INSTANCE_SEGMENT)
"""The longest instance id: its queue ``<app>.instance.<id>`` fits 255 bytes for any app."""

DEAD_SUFFIX = ".dead"
RETRY_SEGMENT = ".retry."
RESERVED_QUEUE_SUFFIX = re.compile(r"(\.dead|\.retry\.[0-9]+)\Z")
"""Channel endings an event queue may not have: they name its dead queue and delay tiers."""
# Room kept after a queue name for its internal suffixes when the longest delay tier is not
# known: ".retry." and 12 digits of milliseconds (over 30 years), longer than ".dead".
DEFAULT_SUFFIX_ROOM = len(RETRY_SEGMENT) + 12


def validate_app_name(name: object) -> str:
    """Return ``name`` if it is a valid app name (``[a-z0-9][a-z0-9_-]*``, at most 64
    characters, not the reserved ``queue``), else raise :class:`InvalidName`."""
    if not isinstance(name, str) or not _APP_NAME.fullmatch(name) or len(name) > MAX_APP_LENGTH:
        raise InvalidName(
            f"invalid app name {name!r}: use lowercase letters, digits, '_' and '-', "
            f"starting with a letter or digit, at most {MAX_APP_LENGTH} characters"
        )
    if name in RESERVED_APP_NAMES:
        raise InvalidName(
            f"invalid app name {name!r}: it is reserved (shared queues are named "
            f"'{name}.<channel>', so this app's names would collide with them)"
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


def validate_queue_channel(channel: object) -> str:
    """:func:`validate_channel`, and not ending with ``.dead`` or ``.retry.<digits>`` (the
    names of a queue's dead queue and delay tiers)."""
    validate_channel(channel)
    assert isinstance(channel, str)
    if RESERVED_QUEUE_SUFFIX.search(channel):
        raise InvalidName(
            f"invalid queue channel name {channel!r}: a queue channel may not end with "
            f"'{DEAD_SUFFIX}' or '{RETRY_SEGMENT}<digits>' (those name the dead queue and "
            "the delay tiers of another channel)"
        )
    return channel


def check_wire_name(
    name: str, *, room: int = 0, what: str = "name", limit: int = MAX_NAME_BYTES
) -> str:
    """Return ``name`` if it (plus ``room`` bytes of internal suffixes) fits ``limit`` bytes
    (RabbitMQ's 255 for queues), else raise :class:`InvalidName` naming both."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size + room > limit:
        extra = f" plus {room} bytes for its internal suffixes" if room else ""
        allows = (
            f"RabbitMQ allows at most {limit}"
            if limit == MAX_NAME_BYTES
            else f"AMQP 0-9-1 (and so the client) allows at most {limit} for an exchange"
        )
        raise InvalidName(
            f"{what} {name!r} is too long: {size} bytes{extra}, and {allows}; use a shorter "
            "channel (or app) name"
        )
    return name


def pubsub_name(app: str, channel: str) -> str:
    """The exchange of pub/sub channel ``channel`` of ``app``: ``<app>.pubsub.<channel>``
    (sync channel ``P`` is the pub/sub channel ``sync.P``)."""
    return f"{app}{PUBSUB_SEGMENT}{channel}"


def check_pubsub_channel(app: str | None, channel: object) -> str:
    """Return ``channel`` if it is a valid channel name (:func:`validate_channel`) whose
    exchange ``<app>.pubsub.<channel>`` fits :data:`MAX_EXCHANGE_BYTES`, else raise
    :class:`InvalidName`. With ``app`` None (not known), the longest app name is assumed."""
    validate_channel(channel)
    assert isinstance(channel, str)
    check_wire_name(
        pubsub_name(app if app is not None else "a" * MAX_APP_LENGTH, channel),
        what="pub/sub exchange name",
        limit=MAX_EXCHANGE_BYTES,
    )
    return channel


def tier_suffix(delay: float) -> str:
    """The suffix of the delay tier holding messages ``delay`` seconds: ``.retry.<ms>``."""
    return f"{RETRY_SEGMENT}{round(delay * 1000)}"


def queue_name(
    app: str, channel: str, *, shared: bool = False, room: int = DEFAULT_SUFFIX_ROOM
) -> str:
    """The event queue of ``channel``: ``<app>.queue.<channel>``, or ``queue.<channel>`` when
    ``shared`` (one queue for every app on the broker).

    Raises :class:`InvalidName` when ``channel`` is not a valid queue channel (see
    :func:`validate_queue_channel`) or when the name plus ``room`` bytes (its longest internal
    suffix) exceeds 255 bytes.
    """
    validate_queue_channel(channel)
    name = f"queue.{channel}" if shared else f"{app}.queue.{channel}"
    return check_wire_name(name, room=room, what="queue name")


MAX_MESSAGE_ID_LENGTH = 128
_MESSAGE_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_MESSAGE_ID_LENGTH}}}")


def check_message_id(message_id: object) -> str:
    """Return ``message_id`` if it can be a caller-supplied message id (letters, digits,
    ``-``, ``_``, 1 to 128 characters), else raise :class:`InvalidName` saying why."""
    if not isinstance(message_id, str) or _MESSAGE_ID.fullmatch(message_id) is None:
        shown = repr(message_id) if len(repr(message_id)) <= 80 else repr(message_id)[:77] + "..."
        raise InvalidName(
            f"invalid message_id {shown}: a message id is a str of 1 to "
            f"{MAX_MESSAGE_ID_LENGTH} letters, digits, '-' or '_'"
        )
    return message_id


# building the names ----------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def pubsub_exchange(app: str, channel: str) -> str:
    """Fanout exchange of pub/sub channel ``channel``: ``<app>.pubsub.<channel>`` (its length
    is checked at subscribe and publish: :func:`check_pubsub_channel`)."""
    return pubsub_name(app, channel)


def pubsub_prefix(app: str) -> str:
    """The common prefix of every pub/sub exchange of ``app``."""
    return f"{app}{PUBSUB_SEGMENT}"


def instance_queue(app: str, instance_id: str) -> str:
    """The exclusive, auto-delete queue that receives every channel an instance subscribes to:
    ``<app>.instance.<id>``, within 255 bytes for any valid app (an instance id is at most
    :data:`MAX_INSTANCE_ID_LENGTH` characters; ``bus.instance``)."""
    return f"{app}{INSTANCE_SEGMENT}{instance_id}"


def dead_queue(queue: str) -> str:
    """The dead queue of work queue ``queue``: ``<queue>.dead`` (no queue channel ends with
    ``.dead``: see this module's docstring)."""
    return f"{queue}{DEAD_SUFFIX}"


def delay_queue(queue: str, delay: float) -> str:
    """The delay tier of ``queue`` holding messages ``delay`` seconds: ``<queue>.retry.<ms>``
    (no queue channel ends with ``.retry.<digits>``: see this module's docstring)."""
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


def app_queue_prefix(app: str) -> str:
    """The common prefix of the event queues of ``app`` (not the shared ones)."""
    return f"{app}.queue."


def cache_key_prefix(app: str, prefix: str) -> str:
    """Keys of cache ``prefix`` of ``app`` in a store: ``<app>:<prefix>:<key>``."""
    return f"{app}:{prefix}:"
