"""Exception logs never contain frame local variables (issue 10, finding 18), in either
format, and URL passwords in a log line are redacted."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from bus.logs import LogFormat, configure_logging, get_logger

CARD = "4111" + "1111" + "1111" + "1111"  # never written out whole in this file's source
SECRET = "".join(["S3CRET", "-LOCAL"])


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    configure_logging(format="console", level="WARNING")


def _handler(payload: dict[str, str]) -> None:
    secret = "".join(["S3CRET", "-", "LOCAL"])  # a local only, as in a real handler
    token = {"api_key": secret, "card": payload["card"]}
    if token:
        raise ValueError("payment refused")


def _log_a_failure(fmt: LogFormat) -> str:
    out = io.StringIO()
    configure_logging(format=fmt, level="INFO", file=out)
    try:
        _handler({"card": CARD})
    except ValueError:
        get_logger(app="crm").exception("queue.failed", channel="payments")
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_exception_logs_never_show_locals(fmt: LogFormat) -> None:
    text = _log_a_failure(fmt)
    assert "payment refused" in text and "_handler" in text  # the traceback is there
    assert SECRET not in text
    assert CARD not in text
    assert "api_key" not in text


def test_json_exception_logs_are_structured_without_locals() -> None:
    line = json.loads(_log_a_failure("json"))
    (exception,) = line["exception"]
    assert exception["exc_type"] == "ValueError"
    assert [frame["name"] for frame in exception["frames"]][-1] == "_handler"
    assert all("locals" not in frame for frame in exception["frames"])


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_url_passwords_in_a_line_are_redacted(fmt: LogFormat) -> None:
    out = io.StringIO()
    configure_logging(format=fmt, level="INFO", file=out)
    url = "amqp://guest:S3CRET@broker:5672/"
    get_logger(app="crm").error(
        f"connect to {url}",
        url=url,
        urls=[url],
        nested={"u": (url,)},
        exc_info=ConnectionError(f"cannot reach {url}"),
    )
    text = out.getvalue()
    assert "S3CRET" not in text
    assert "guest:***@broker" in text
