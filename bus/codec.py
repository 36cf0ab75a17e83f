"""The wire codec: msgpack bodies, pydantic models as payloads and as receive-side models.

No pickle, ever: what msgpack cannot carry raises :class:`~bus.errors.PayloadError`, and so
does what msgpack packs but cannot decode back (a map key that is a tuple, a model or a
dict comes back as a list or a dict, which cannot be a key): refused at the door, never
found undecodable by every consumer.
"""

from __future__ import annotations

from typing import TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from managers.errors import PayloadError

CONTENT_TYPE = "application/msgpack"

ModelT = TypeVar("ModelT", bound=BaseModel)

_INT_RANGE = range(-(2**63), 2**64)


class MalformedBody(bytes):
    """A body whose message arrived with malformed AMQP properties (see
    :mod:`bus.amqp.tolerant_decoding`): the same bytes, but :meth:`MsgpackCodec.decode`
    refuses it with ``reason``, so that the consumer drops or parks it as it does any other
    undecodable body (logged with its id; parked in the dead queue with the reason)."""

    reason: str

    def __new__(cls, body: bytes, reason: str) -> MalformedBody:
        """``body``, marked malformed for ``reason``."""
        self = super().__new__(cls, body)
        self.reason = reason
        return self


class MsgpackCodec:
    """Encodes payloads to msgpack and back, enforcing ``max_message_bytes`` both ways.

    The packer runs with ``strict_types``: the exact built-in types are packed in C, and
    everything else reaches :meth:`_default` in Python (tuples, subclasses such as enums,
    pydantic models). Only those can make a map key that does not decode back, so only an
    encode that converted a container there pays for a decode check (one ``unpackb``); the
    plain-dict hot path costs nothing more (and ``strict_types`` packs it faster).

    One gap is left on purpose: a value nested exactly 1,025 containers deep packs (the
    packer stops at 1,026) but does not unpack (the unpacker's stack holds 1,024), so such a
    body is refused at the consumer, not at publish. Checking every body's depth would cost a
    full decode of every large body.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self._max = max_message_bytes
        self._containers = 0  # containers _default made: their keys need the decode check
        self._packer = msgpack.Packer(default=self._default, use_bin_type=True, strict_types=True)

    @property
    def max_message_bytes(self) -> int:
        """The largest body accepted on either side."""
        return self._max

    def _default(self, value: object) -> object:
        """msgpack fallback: pydantic models travel as their JSON-mode dump, tuples as arrays,
        subclasses of the built-in types (enums...) as their base type."""
        if isinstance(value, (tuple, list)):
            self._containers += 1
            return list(value)
        if isinstance(value, dict):
            self._containers += 1
            return dict(value)
        if isinstance(value, BaseModel):
            self._containers += 1
            return value.model_dump(mode="json")
        if isinstance(value, str):
            return str.__str__(value)  # the characters, never an enum's __str__
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, int):
            if type(value) is not int and int(value) in _INT_RANGE:
                return int(value)
            raise TypeError(f"integer {value} does not fit in 64 bits")
        if isinstance(value, (set, frozenset)):
            raise TypeError(f"can not serialize {type(value).__name__!r} object (use a list)")
        raise TypeError(f"can not serialize {type(value).__name__!r} object")

    def encode(self, payload: object, *, channel: str) -> bytes:
        """msgpack bytes of ``payload``; :class:`PayloadError` naming ``channel`` when msgpack
        cannot carry it, cannot decode it back, or it is over ``max_message_bytes``."""
        containers = self._containers
        try:
            body: bytes = self._packer.pack(payload)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _refused(channel, payload, exc) from exc
        if len(body) > self._max:
            raise PayloadError(
                f"channel {channel!r}: payload is {len(body)} bytes, over max_message_bytes "
                f"({self._max})"
            )
        if self._containers != containers:
            try:
                _check_keys(body)
            except TypeError as exc:
                raise _refused(channel, payload, exc) from exc
        return body

    def decode(self, body: bytes) -> object:
        """The value in ``body``; :class:`PayloadError` when it is too large or malformed (or
        arrived with malformed properties: a :class:`MalformedBody`)."""
        if type(body) is MalformedBody:
            raise PayloadError(f"malformed AMQP properties: {body.reason}")
        if len(body) > self._max:
            raise PayloadError(f"body of {len(body)} bytes is over max_message_bytes ({self._max})")
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises a family of unrelated errors
            raise PayloadError(f"body is not valid msgpack: {type(exc).__name__}: {exc}") from exc

    def validate(self, value: object, model: type[ModelT]) -> ModelT:
        """``value`` validated into ``model``; :class:`PayloadError` when it does not fit."""
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            raise PayloadError(
                f"payload does not validate as {model.__name__}: "
                f"{exc.error_count()} error(s): {exc.errors(include_url=False)[:3]}"
            ) from exc


def _check_keys(body: bytes) -> None:
    """Raise ``TypeError`` when ``body`` does not decode (a map key that comes back as a list
    or a dict, which cannot be a key)."""
    try:
        msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        hint = (
            ": a dict key that is a tuple, list, dict or model arrives as a list or dict, which "
            "cannot be a key (use str, int, float, bytes, bool or None keys)"
            if isinstance(exc, TypeError)
            else ""
        )
        raise TypeError(f"it does not decode back{hint} ({type(exc).__name__}: {exc})") from exc


def _refused(channel: str, payload: object, exc: Exception) -> PayloadError:
    return PayloadError(
        f"channel {channel!r}: payload of type {type(payload).__name__} cannot be sent as "
        f"msgpack: {exc}"
    )
