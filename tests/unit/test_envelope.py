"""Message ids and trace ids of the envelope."""

from __future__ import annotations

import uuid

import structlog

from managers.envelope import Envelope, current_trace_id, new_message_id


def test_message_ids_are_random_uuid4_hex() -> None:
    ids = [new_message_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:200]:
        parsed = uuid.UUID(hex=value)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, value)


def test_trace_id_comes_from_the_structlog_context_or_is_new() -> None:
    with structlog.contextvars.bound_contextvars(trace_id="abc"):
        assert current_trace_id() == "abc"
        assert Envelope.new(b"", sender="s").trace_id == "abc"
    fresh = {current_trace_id() for _ in range(100)}
    assert len(fresh) == 100 and all(len(t) == 32 for t in fresh)
