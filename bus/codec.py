"""The wire codec: msgpack bodies, pydantic models as payloads and as receive-side models.

No pickle, ever: what msgpack cannot carry raises :class:`~bus.errors.PayloadError`.
"""

from __future__ import annotations

from typing import TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from managers.errors import PayloadError

CONTENT_TYPE = "application/msgpack"

ModelT = TypeVar("ModelT", bound=BaseModel)


def _default(value: object) -> object:
    """msgpack fallback: pydantic models travel as their JSON-mode dump."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, int):
        raise TypeError(f"integer {value} does not fit in 64 bits")
    if isinstance(value, (set, frozenset)):
        raise TypeError(f"can not serialize {type(value).__name__!r} object (use a list)")
    raise TypeError(f"can not serialize {type(value).__name__!r} object")


class MsgpackCodec:
    """Encodes payloads to msgpack and back, enforcing ``max_message_bytes`` both ways."""

    def __init__(self, max_message_bytes: int) -> None:
        self._max = max_message_bytes
        self._packer = msgpack.Packer(default=_default, use_bin_type=True)

    @property
    def max_message_bytes(self) -> int:
        """The largest body accepted on either side."""
        return self._max

    def encode(self, payload: object, *, channel: str) -> bytes:
        """msgpack bytes of ``payload``; :class:`PayloadError` naming ``channel`` otherwise."""
        try:
            body: bytes = self._packer.pack(payload)
        except (TypeError, ValueError, OverflowError) as exc:
            raise PayloadError(
                f"channel {channel!r}: payload of type {type(payload).__name__} cannot be "
                f"sent as msgpack: {exc}"
            ) from exc
        if len(body) > self._max:
            raise PayloadError(
                f"channel {channel!r}: payload is {len(body)} bytes, over max_message_bytes "
                f"({self._max})"
            )
        return body

    def decode(self, body: bytes) -> object:
        """The value in ``body``; :class:`PayloadError` when it is too large or malformed."""
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
