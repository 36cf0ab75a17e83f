"""Names of the exchanges and queues clusterbus declares on RabbitMQ (see SPEC's wire names)."""

from __future__ import annotations


def pubsub_exchange(app: str, channel: str) -> str:
    """Fanout exchange of pub/sub channel ``channel``: ``<app>.pubsub.<channel>``."""
    return f"{app}.pubsub.{channel}"


def pubsub_prefix(app: str) -> str:
    """The common prefix of every pub/sub exchange of ``app``."""
    return f"{app}.pubsub."


def instance_queue(app: str, instance_id: str) -> str:
    """The exclusive, auto-delete queue that receives every channel an instance subscribes to."""
    return f"{app}.instance.{instance_id}"


def dead_queue(queue: str) -> str:
    """The dead queue of work queue ``queue``: ``<queue>.dead``."""
    return f"{queue}.dead"


def delay_queue(queue: str, delay: float) -> str:
    """The delay tier of ``queue`` holding messages ``delay`` seconds: ``<queue>.retry.<ms>``."""
    return f"{queue}.retry.{round(delay * 1000)}"
