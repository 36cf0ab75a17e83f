"""A bus's health: whether it is connected and every subscription and consumer receives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "degraded", "down"]


@dataclass(frozen=True, slots=True)
class Health:
    """What :meth:`bus.Bus.health` found.

    ``status`` is ``down`` when the bus is not started or the broker does not answer within
    ``heartbeat`` seconds, ``degraded`` when it answers but a pub/sub subscription or a queue
    consumer is not receiving (after a reconnection, until every one is back), else ``ok``.
    A consumer paused by its ``idle`` predicate counts as receiving.
    """

    status: Status
    mode: str
    connected: bool
    node: str | None
    """The broker node connected to (its URL without the password), ``memory``, or None."""
    subscriptions: Mapping[str, str] = field(default_factory=dict)
    """Pub/sub and sync channels (``sync.<name>``): ``ok`` or ``down``."""
    consumers: Mapping[str, str] = field(default_factory=dict)
    """Queue channels: ``ok``, ``paused`` or ``down``."""
    reason: str = ""
    """Why the status is not ``ok`` (empty when it is)."""

    @property
    def ok(self) -> bool:
        """True when ``status`` is ``ok``."""
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        """The health as JSON-ready data."""
        data = asdict(self)
        data["subscriptions"] = dict(self.subscriptions)
        data["consumers"] = dict(self.consumers)
        return data


def assess(
    *,
    started: bool,
    mode: str,
    answered: bool,
    node: str | None,
    subscriptions: Mapping[str, str],
    consumers: Mapping[str, str],
) -> Health:
    """The :class:`Health` of these facts."""

    def health(status: Status, connected: bool, node: str | None, reason: str = "") -> Health:
        return Health(status, mode, connected, node, subscriptions, consumers, reason)

    if not started:
        return health("down", False, None, "not started")
    if not answered:
        reason = "the broker did not answer" if node else "not connected to the broker"
        return health("down", False, node, reason)
    missing = [f"pub/sub {c}" for c, state in subscriptions.items() if state != "ok"]
    missing += [f"queue {c}" for c, state in consumers.items() if state not in {"ok", "paused"}]
    if missing:
        return health("degraded", True, node, "not receiving: " + ", ".join(sorted(missing)[:10]))
    return health("ok", True, node)
