"""The library never configures logging: its events reach stdlib ``logging`` under
``clusterbus.*`` when the application uses only stdlib logging, and the application's
structlog pipeline when it configured structlog (SPEC, "Inside someone else's service")."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from bus import Bus, MemoryHub, Settings
from bus.logs import configure_logging, get_logger
from tests.conftest import TEST_APP_PREFIX
from tests.log_records import Records, foreign_structlog


@pytest.fixture
def stdlib_only() -> Iterator[Records]:
    """structlog not configured; a handler on the ``clusterbus`` logger."""
    structlog.reset_defaults()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    for handler in saved_handlers:
        root.removeHandler(handler)
    records = Records()
    parent = logging.getLogger("clusterbus")
    parent.addHandler(records)
    parent.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        parent.removeHandler(records)
        parent.setLevel(logging.NOTSET)
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        configure_logging(format="console", level="WARNING")


def _app(name: str) -> str:
    return f"{TEST_APP_PREFIX}{name}"


async def test_a_bus_leaves_logging_and_structlog_alone(stdlib_only: Records) -> None:
    root = logging.getLogger()
    handlers = root.handlers[:]
    async with Bus(_app("quiet"), hub=MemoryHub()):
        pass
    assert not structlog.is_configured()
    assert root.handlers == handlers


async def test_events_reach_stdlib_under_clusterbus_names(stdlib_only: Records) -> None:
    async with Bus(_app("stdlib"), hub=MemoryHub()) as bus:
        await bus.pubsub.subscribe("news", _ignore)
        await bus.pubsub.publish("news", {"n": 1}, skip_self=False)
    started = [r for r in stdlib_only.records if r.__dict__.get("event") == "bus.started"]
    assert started, [r.getMessage() for r in stdlib_only.records]
    record = started[0]
    assert record.name == "clusterbus.bus"
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith("bus.started ")
    assert "mode=memory" in record.getMessage()
    assert record.__dict__["app"] == _app("stdlib")
    names = {r.name for r in stdlib_only.records}
    assert all(name.startswith("clusterbus.") for name in names)
    assert "clusterbus.pubsub" in names  # per-message events are DEBUG, under their part


async def test_the_stdlib_level_filters_our_events(stdlib_only: Records) -> None:
    logging.getLogger("clusterbus").setLevel(logging.WARNING)
    async with Bus(_app("filtered"), hub=MemoryHub()):
        pass
    assert all(r.levelno >= logging.WARNING for r in stdlib_only.records)


async def test_events_go_through_the_applications_structlog_pipeline() -> None:
    with foreign_structlog() as seen:
        async with Bus(_app("structlog"), hub=MemoryHub()):
            pass
    started = [e for e in seen if e["event"] == "bus.started"]
    assert started and started[0]["app"] == _app("structlog")


def test_exceptions_never_carry_frame_locals_into_a_foreign_pipeline() -> None:
    secret = "".join(["hunter", "2-local"])
    with foreign_structlog() as seen:
        try:
            _refuse(secret)
        except ValueError:
            get_logger("clusterbus.queue").exception("queue.failed", channel="c")
    (event,) = seen
    assert "exc_info" not in event  # a live exception would let a renderer show locals
    assert "ValueError: refused 1" in event["exception"]
    assert secret not in json.dumps(event)


def test_stdlib_exception_lines_have_the_traceback_and_no_locals(
    stdlib_only: Records,
) -> None:
    secret = "".join(["hunter", "2-local"])
    try:
        _refuse(secret)
    except ValueError:
        get_logger("clusterbus.queue").exception("queue.failed", url="amqp://u:pw@h:5672/")
    (record,) = stdlib_only.records
    assert record.exc_info is None
    text = logging.Formatter().format(record)
    assert "ValueError: refused 1" in text and "Traceback" in text
    assert secret not in text
    assert "pw@" not in text and "u:***@h" in text


def test_configure_logging_renders_stdlib_records_in_our_format() -> None:
    out = io.StringIO()
    configure_logging(format="json", level="INFO", file=out)
    try:
        logging.getLogger("aio_pika.robust_connection").warning("Connection attempt failed")
        get_logger("clusterbus.bus").info("bus.started", mode="amqp")
    finally:
        configure_logging(format="console", level="WARNING")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["Connection attempt failed", "bus.started"]
    assert all(line["level"] in {"warning", "info"} and "timestamp" in line for line in lines)
    configured = [h for h in logging.getLogger().handlers if h.get_name()]
    assert len(configured) == 1  # called twice: replaced, not stacked


async def test_auto_memory_mode_warns_once_at_start(stdlib_only: Records) -> None:
    async with Bus(_app("auto"), settings=Settings(storage_dir=_tmp_storage())):
        pass
    warnings = [r for r in stdlib_only.records if getattr(r, "event", None) == "bus.memory_mode"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "process" in warnings[0].getMessage()


async def test_memory_chosen_explicitly_does_not_warn(stdlib_only: Records) -> None:
    settings = Settings(mode="memory", storage_dir=_tmp_storage())
    async with Bus(_app("explicit"), settings=settings) as bus:
        assert bus.mode == "memory"
    async with Bus(_app("hub"), hub=MemoryHub()):
        pass
    assert not [r for r in stdlib_only.records if getattr(r, "event", None) == "bus.memory_mode"]


def _tmp_storage() -> Any:
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="clusterbus-logs-"))


async def _ignore(_message: object) -> None:
    return None


def _refuse(secret: str) -> None:
    token = {"password": secret}  # a local only, as in a real handler
    raise ValueError(f"refused {len(token)}")


def test_passwords_never_reach_a_foreign_pipeline() -> None:
    with foreign_structlog() as seen:
        get_logger("clusterbus.amqp").warning(
            "connect to amqp://u:pw1@h:5672/", url="amqp://u:pw2@h:5672/", urls=["amqp://u:pw3@h/"]
        )
    text = json.dumps(seen)
    assert seen and "pw1" not in text and "pw2" not in text and "pw3" not in text
    assert "u:***@h" in text
