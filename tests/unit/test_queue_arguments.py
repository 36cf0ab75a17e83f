"""Queue arguments by queue type and broker version, and the checks made at start."""

from __future__ import annotations

import pytest

from bus import BusError, Settings
from bus.amqp.queue_arguments import (
    LOCK_EXPIRES_MS,
    QueueArguments,
    check_broker,
    parse_version,
)


def test_versions_parse() -> None:
    assert parse_version("3.10.8") == (3, 10, 8)
    assert parse_version(b"4.0.2") == (4, 0, 2)
    assert parse_version("4.1") == (4, 1, 0)
    assert parse_version(None) == (0, 0, 0)


def test_classic_everything_by_default() -> None:
    arguments = QueueArguments(Settings(), (3, 10, 8))
    assert arguments.event() == {"x-queue-type": "classic"}
    assert arguments.lock() == {
        "x-queue-type": "classic",
        "x-single-active-consumer": True,
        "x-expires": LOCK_EXPIRES_MS,
    }
    tier = arguments.event(tier_of="crm.queue.jobs", ttl=0.5)
    assert tier["x-message-ttl"] == 500 and tier["x-dead-letter-routing-key"] == "crm.queue.jobs"
    assert "x-dead-letter-strategy" not in tier


def test_quorum_queues_tiers_dead_queues_and_locks_on_3_10() -> None:
    arguments = QueueArguments(Settings(queue_type="quorum"), (3, 10, 8))
    work = arguments.event()
    assert work == {"x-queue-type": "quorum", "x-queue-leader-locator": "balanced"}
    tier = arguments.event(tier_of="q", ttl=1)
    assert tier["x-queue-type"] == "quorum"
    assert tier["x-dead-letter-strategy"] == "at-least-once"
    assert tier["x-overflow"] == "reject-publish"
    lock = arguments.lock()
    assert lock["x-queue-type"] == "quorum" and lock["x-single-active-consumer"] is True
    # on 3.x -1 means "drop at the first return": never sent there (default is unlimited)
    assert "x-delivery-limit" not in work and "x-delivery-limit" not in lock


def test_unlimited_delivery_limit_from_rabbitmq_4() -> None:
    arguments = QueueArguments(Settings(lock_queue_type="quorum"), (4, 0, 5))
    assert arguments.lock()["x-delivery-limit"] == -1
    assert arguments.event() == {"x-queue-type": "classic"}  # queue_type stays classic


def test_no_leader_locator_when_asked() -> None:
    settings = Settings(queue_type="quorum", queue_leader_locator="none")
    assert "x-queue-leader-locator" not in QueueArguments(settings, (3, 10, 8)).event()


def test_quorum_on_an_old_broker_is_refused_at_start() -> None:
    with pytest.raises(BusError, match=r"lock_queue_type is 'quorum'.*3\.9\.13"):
        check_broker(Settings(lock_queue_type="quorum"), (3, 9, 13))
    check_broker(Settings(), (3, 9, 13))  # classic works anywhere
    check_broker(Settings(queue_type="quorum"), (3, 10, 0))
