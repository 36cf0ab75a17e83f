"""``clusterbus doctor``: check what a deployment gets wrong, print a table (or JSON).

Each node of ``amqp_url`` gets a short-lived connection of its own: reachable, version,
capabilities, permissions on the virtual host (a probe queue and exchange declared, used and
deleted) and, when ``queue_type`` or ``lock_queue_type`` is ``quorum``, a probe quorum queue.
With ``--management-url`` the management API adds feature flags, ``consumer_timeout``, the
clock skew and (``--app``) leftover topology. Redis is pinged when ``redis_url`` is set.
The decisions themselves are in :mod:`bus.doctor_checks`. Exit status: 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from bus.amqp.transport import quietly
from bus.doctor_checks import (
    MANAGEMENT_CHECKS,
    Check,
    Verdict,
    capabilities_verdict,
    management_checks,
    version_verdict,
    vhost_of,
)
from bus.logs import configure_logging
from bus.settings import Settings, redact_url
from bus.terminal import Terminal
from managers.errors import BusError, InvalidName
from managers.names import validate_app_name

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

MANAGEMENT_ENV = "CLUSTERBUS_MANAGEMENT_URL"
"""Where ``--management-url`` comes from when it is not given (read by this command only)."""
PROBE_PREFIX = "clusterbus.doctor."
"""The names of the probe queues and exchanges (each with a random suffix)."""
PROBE_EXPIRES_MS = 60_000
"""The probe quorum queue deletes itself after this long should its delete not happen."""
HEADERS = ["check", "status", "detail"]
NODE_CHECKS = ("reachable", "version", "capabilities", "permissions", "quorum queues")
MEMORY = "memory mode: no amqp_url"
REDIS_EXTRA = (
    "redis_url is set but the redis extra is not installed: pip install 'clusterbus[redis]'"
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``doctor`` subcommand."""
    doctor = commands.add_parser(
        "doctor", help="check the broker, the settings and Redis; exit 1 if a check fails"
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON object, no table")
    doctor.add_argument(
        "--app",
        type=_app_name,
        default=None,
        help="look for this app's leftover exchanges and queues (needs --management-url)",
    )
    doctor.add_argument(
        "--management-url",
        default=None,
        help="RabbitMQ management API, e.g. http://user:password@host:15672 "
        f"(default: {MANAGEMENT_ENV}; without it those checks are skipped)",
    )
    doctor.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        help="bound on each connection, probe and request, in seconds "
        "(default: the setting connect_timeout)",
    )


def _app_name(text: str) -> str:
    try:
        return validate_app_name(text)
    except InvalidName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def run(terminal: Terminal, args: argparse.Namespace, settings: Settings) -> int:
    """Carry out ``clusterbus doctor``: print the results; 1 if a check failed, else 0."""
    configure_logging(format="console", level="CRITICAL")  # the table says what went wrong
    checks = asyncio.run(
        examine(
            settings,
            app=args.app,
            management_url=args.management_url or os.environ.get(MANAGEMENT_ENV) or None,
            timeout=args.timeout or settings.connect_timeout,
        )
    )
    report(terminal, checks, as_json=args.json)
    return 1 if any(check.status == "fail" for check in checks) else 0


def report(terminal: Terminal, checks: list[Check], *, as_json: bool) -> None:
    """Print ``checks``: one JSON object (``{"ok", "checks"}``), or a table and a summary."""
    failed = sum(check.status == "fail" for check in checks)
    if as_json:
        document = {"ok": not failed, "checks": [check.as_dict() for check in checks]}
        print(json.dumps(document), file=terminal.file, flush=True)
        return
    rows = [[check.name, check.status, check.detail] for check in checks]
    terminal.table("clusterbus doctor", HEADERS, rows)
    warned = sum(check.status == "warn" for check in checks)
    summary = f"{failed} failed, {warned} warning(s)"
    style = "red" if failed else "yellow" if warned else "green"
    terminal.print(summary if failed or warned else "no problem found", style=style)


async def examine(
    settings: Settings, *, app: str | None, management_url: str | None, timeout: float
) -> list[Check]:
    """Every check, in the table's order."""
    urls = settings.amqp_urls() if settings.resolved_mode() == "amqp" else []
    redis = _guarded(["redis"], check_redis(settings, timeout))
    if not urls:
        why = MEMORY if settings.amqp_url is None else "memory mode (mode='memory'): no broker"
        return [
            Check(
                "mode",
                "warn",
                "memory mode is process-local: the instances of a service do not see each "
                "other (set CLUSTERBUS_AMQP_URL)",
            ),
            *(Check(f"broker {what}", "skip", why) for what in NODE_CHECKS),
            *(Check(name, "skip", why) for name in MANAGEMENT_CHECKS),
            *await redis,
        ]
    count = len(urls)
    parts = await asyncio.gather(
        *(
            _guarded(
                [f"broker {index} {what}" for what in NODE_CHECKS],
                probe_node(url, index, count, settings, timeout),
            )
            for index, url in enumerate(urls, start=1)
        ),
        _guarded(
            list(MANAGEMENT_CHECKS), management_checks(settings, urls, management_url, app, timeout)
        ),
        redis,
    )
    return [mode_check(settings, count), *(check for part in parts for check in part)]


async def _guarded(names: list[str], checks: Awaitable[list[Check]]) -> list[Check]:
    """``checks``, or a failure of the first and skips of the others should it raise."""
    try:
        return await checks
    except Exception as exc:
        first, *others = names
        return [
            Check(first, "fail", f"{type(exc).__name__}: {exc}"),
            *(Check(name, "skip", f"{first} failed") for name in others),
        ]


def mode_check(settings: Settings, count: int) -> Check:
    """amqp mode; a warning when several nodes hold classic queues (lost with their node)."""
    classic = [
        name for name in ("queue_type", "lock_queue_type") if getattr(settings, name) == "classic"
    ]
    if count > 1 and classic:
        return Check(
            "mode",
            "warn",
            f"amqp, {count} nodes, but {' and '.join(classic)} classic: a classic queue lives "
            "on one node and is gone while it is down; use quorum "
            "(docs/deploy-rabbitmq-cluster.md)",
        )
    return Check(
        "mode",
        "ok",
        f"amqp, {count} node(s); queue_type={settings.queue_type}, "
        f"lock_queue_type={settings.lock_queue_type}",
    )


async def probe_node(
    url: str, index: int, count: int, settings: Settings, timeout: float
) -> list[Check]:
    """The checks of one node, on a connection of its own (closed before returning)."""
    import aio_pika

    from bus.amqp.queue_arguments import parse_version

    label = f"broker {index}"
    where = f"{redact_url(url)} (node {index} of {count})"
    try:
        async with asyncio.timeout(timeout):
            connection = await aio_pika.connect(
                url, timeout=timeout, client_properties={"connection_name": "clusterbus doctor"}
            )
    except Exception as exc:
        return [
            Check(f"{label} reachable", "fail", f"{where}: {connect_error(exc, url, timeout)}"),
            *(Check(f"{label} {what}", "skip", "not connected") for what in NODE_CHECKS[1:]),
        ]
    try:
        transport = connection.transport
        properties = dict(transport.connection.server_properties or {}) if transport else {}
        version = _text(properties.get("version"))
        capabilities = properties.get("capabilities")
        return [
            Check(f"{label} reachable", "ok", where),
            Check(
                f"{label} version",
                *version_verdict(
                    settings,
                    _text(properties.get("product")),
                    version,
                    _text(properties.get("cluster_name")),
                ),
            ),
            Check(
                f"{label} capabilities",
                *capabilities_verdict(capabilities if isinstance(capabilities, dict) else {}),
            ),
            Check(
                f"{label} permissions",
                *await _bounded(timeout, probe_permissions(connection, vhost_of(url))),
            ),
            Check(
                f"{label} quorum queues",
                *await _bounded(
                    timeout, probe_quorum(connection, settings, parse_version(version))
                ),
            ),
        ]
    finally:
        await quietly(connection.close, timeout)


def connect_error(exc: BaseException, url: str, timeout: float) -> str:
    """Why a connection failed, in words (redacted by :class:`Check`)."""
    import aiormq

    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(
        exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError
    ):
        return f"access refused (wrong user name or password?): {exc}"
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        return (
            f"the broker closed the connection at open: virtual host {vhost_of(url)!r} does "
            "not exist or the user may not use it"
        )
    return f"{type(exc).__name__}: {exc}"


async def _bounded(timeout: float, probe: Awaitable[Verdict]) -> Verdict:
    """``probe``'s verdict, or a failure if it raises or takes longer than ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            return await probe
    except TimeoutError:
        return "fail", f"no answer within {timeout:g}s"
    except Exception as exc:
        return "fail", f"{type(exc).__name__}: {exc}"


async def probe_permissions(connection: AbstractConnection, vhost: str) -> Verdict:
    """Declare a probe queue (exclusive) and exchange, bind, publish, get, delete both: the
    configure, write and read permissions clusterbus needs on ``vhost``."""
    import aio_pika
    from aiormq.exceptions import AMQPError

    name = f"{PROBE_PREFIX}{secrets.token_hex(6)}"
    channel = await connection.channel(publisher_confirms=True)
    exchange = None
    step = "declaring a queue (configure)"
    try:
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
        step = "declaring an exchange (configure)"
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT)
        step = "binding (write on the queue, read on the exchange)"
        await queue.bind(exchange)
        step = "publishing (write)"
        await exchange.publish(aio_pika.Message(b"clusterbus doctor"), routing_key="")
        step = "getting (read)"
        received = await queue.get(no_ack=True, fail=False)
        step = "deleting (configure)"
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        exchange = None
    except AMQPError as exc:
        return "fail", f"vhost {vhost!r}: {step} was refused: {exc}"
    finally:
        await _clean_up(connection, channel, exchange=name if exchange is not None else None)
    if received is None:
        return "warn", f"vhost {vhost!r}: the probe message published was not received back"
    return "ok", (
        f"configure, write and read on vhost {vhost!r} (a probe queue and exchange "
        "declared, used and deleted)"
    )


async def probe_quorum(
    connection: AbstractConnection, settings: Settings, version: tuple[int, int, int]
) -> Verdict:
    """When a queue type setting is ``quorum``: declare a probe quorum queue, delete it."""
    from aiormq.exceptions import AMQPError

    from bus.amqp.queue_arguments import check_broker

    wanted = [n for n in ("queue_type", "lock_queue_type") if getattr(settings, n) == "quorum"]
    if not wanted:
        return "skip", "queue_type and lock_queue_type are classic"
    why = f"{' and '.join(wanted)} = 'quorum'"
    try:
        check_broker(settings, version)
    except BusError as exc:
        return "fail", str(exc)
    name = f"{PROBE_PREFIX}{secrets.token_hex(6)}.quorum"
    channel = await connection.channel()
    declared = False
    try:
        arguments: dict[str, Any] = {"x-queue-type": "quorum", "x-expires": PROBE_EXPIRES_MS}
        await channel.declare_queue(name, durable=True, arguments=arguments)
        declared = True
        await channel.queue_delete(name)
        declared = False
    except AMQPError as exc:
        return "fail", f"declaring a quorum queue was refused ({why}): {exc}"
    finally:
        await _clean_up(connection, channel, queue=name if declared else None)
    return "ok", f"a quorum queue was declared and deleted ({why})"


async def _clean_up(
    connection: AbstractConnection,
    channel: Any,
    *,
    exchange: str | None = None,
    queue: str | None = None,
) -> None:
    """Close ``channel``; delete what a failed probe left, on a channel of its own."""
    await quietly(channel.close, 5)
    if exchange is None and queue is None:
        return

    async def delete() -> None:
        spare = await connection.channel()
        try:
            if exchange is not None:
                await spare.exchange_delete(exchange)
            if queue is not None:
                await spare.queue_delete(queue)
        finally:
            await spare.close()

    await quietly(delete, 5)


async def check_redis(settings: Settings, timeout: float) -> list[Check]:
    """PING the Redis of ``redis_url`` when it is set."""
    if settings.redis_url is None:
        return [Check("redis", "skip", "no redis_url: no Redis store configured")]
    url = settings.redis_url.get_secret_value()
    try:
        from redis.asyncio import Redis
    except ImportError:
        return [Check("redis", "fail", REDIS_EXTRA)]
    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
    except Exception as exc:
        detail = f"no answer within {timeout:g}s" if isinstance(exc, TimeoutError) else exc
        failed = f"PING failed, {type(exc).__name__}: {detail}; Redis {redact_url(url)}"
        return [Check("redis", "fail", failed)]
    finally:
        await quietly(client.aclose, timeout)
    return [Check("redis", "ok", f"PING answered by {redact_url(url)}")]


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
