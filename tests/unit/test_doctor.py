"""``clusterbus doctor`` without a broker: memory mode, the decisions on the broker's data
(consumer_timeout, clock skew, feature flags, leftovers, versions, capabilities), the JSON
shape, literal printing, and the management API client against a local HTTP fixture that
serves canned JSON (it is no broker: only what the client sends and parses is tested)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bus.doctor import check_redis, report
from bus.doctor_checks import (
    Check,
    Management,
    capabilities_verdict,
    clock_skew,
    consumer_timeout_check,
    consumer_timeout_verdict,
    feature_flags_verdict,
    leftovers,
    leftovers_verdict,
    management_checks,
    skew_verdict,
    version_verdict,
    vhost_of,
)
from bus.logs import configure_logging
from bus.settings import Settings
from bus.terminal import Terminal
from plugins.cli import main
from tests.unit.test_cli_without_extras import run_cli, run_python

SECRET = "s3cret"


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CLUSTERBUS_* variable of the caller; wide tables; logging restored after."""
    for name in [n for n in os.environ if n.startswith("CLUSTERBUS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLUSTERBUS_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("COLUMNS", "250")
    yield
    configure_logging(format="console", level="WARNING")


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["doctor", *argv])
    out, err = capsys.readouterr()
    return code, out + err


def test_memory_mode_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = doctor(capsys)
    assert code == 0, out
    assert "memory mode is process-local" in out
    for name in ("broker reachable", "broker quorum queues", "clock skew", "leftover topology"):
        line = next(line for line in out.splitlines() if name in line)
        assert "skip" in line and "memory mode: no amqp_url" in line
    assert "0 failed, 1 warning(s)" in out


def test_memory_mode_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--json"])
    out, _ = capsys.readouterr()
    document = json.loads(out)  # one JSON object and nothing else on stdout
    assert code == 0
    assert document["ok"] is True
    assert all(set(check) == {"name", "status", "detail"} for check in document["checks"])
    statuses = {check["name"]: check["status"] for check in document["checks"]}
    assert statuses["mode"] == "warn"
    assert statuses["broker reachable"] == statuses["management api"] == "skip"
    assert statuses["redis"] == "skip"


def test_plain_without_extras(tmp_path: Path) -> None:
    """No rich: a plain table; redis_url set without the redis package: a failure."""
    proc = run_cli(tmp_path, "doctor", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    proc = run_cli(tmp_path, "doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[1].split() == ["check", "status", "detail"]
    code = (
        f"import os\nos.environ['CLUSTERBUS_REDIS_URL'] = 'redis://:{SECRET}@127.0.0.1:1/0'\n"
        "from plugins.cli import main\nsys.exit(main(['doctor']))\n"
    )
    proc = run_python(tmp_path, code)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pip install 'clusterbus[redis]'" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--timeout", "0"], ["--timeout", "nan"], ["--app", "Bad Name"]):
        with pytest.raises(SystemExit) as exited:
            main(["doctor", *argv])
        assert exited.value.code == 2
    capsys.readouterr()


def test_consumer_timeout_comparison() -> None:
    assert consumer_timeout_verdict(1_800_000, 1800)[0] == "ok"
    assert consumer_timeout_verdict(3_600_000, 1800)[0] == "ok"  # ours lower: safe
    status, detail = consumer_timeout_verdict(900_000, 1800)
    assert status == "fail"
    assert "900s" in detail and "1800s" in detail and "CLUSTERBUS_CONSUMER_TIMEOUT=900" in detail
    assert consumer_timeout_verdict(None, 1800)[0] == "ok"  # disabled on the broker
    assert consumer_timeout_verdict(1_799_999, 1800)[0] == "fail"
    status, detail = consumer_timeout_check([{"name": "cluster_name", "value": "x"}], 1800)
    assert status == "skip"
    assert "consumer_timeout >= 1800s" in detail and "1800000 ms" in detail
    stated = [{"name": "consumer_timeout", "value": 60_000}]
    assert consumer_timeout_check(stated, 1800)[0] == "fail"


def test_clock_skew_bounds() -> None:
    now = 1_700_000_000.0
    date = formatdate(now, usegmt=True)
    assert clock_skew(date, now + 0.2, now + 0.4) == 0.0  # whole seconds: within [date, +1)
    assert clock_skew(date, now + 0.9, now + 1.2) == 0.0
    assert clock_skew(date, now - 0.3, now - 0.1) == pytest.approx(0.1)  # read before "now"
    assert clock_skew(date, now + 1.5, now + 1.6) == pytest.approx(-0.5)
    assert clock_skew(formatdate(now + 5, usegmt=True), now, now + 0.5) == pytest.approx(4.5)
    assert clock_skew(formatdate(now - 60, usegmt=True), now, now + 0.1) == pytest.approx(-59)
    assert clock_skew(None, now, now) is None
    assert clock_skew("yesterday", now, now) is None
    assert skew_verdict(0.0)[0] == "ok"
    assert skew_verdict(1.0)[0] == "ok"
    assert skew_verdict(1.5) == ("warn", skew_verdict(1.5)[1])
    assert "ahead of" in skew_verdict(1.5)[1]
    assert skew_verdict(-30.0)[0] == "warn"
    assert skew_verdict(-31.0)[0] == "fail"
    assert "behind" in skew_verdict(-31.0)[1]
    assert skew_verdict(None)[0] == "warn"


def test_leftovers_from_management_lists() -> None:
    app = "t-app"
    exchanges = [
        {"name": ""},
        {"name": "amq.direct"},
        {"name": "t-app.pubsub.news"},  # bound: in use
        {"name": "t-app.pubsub.old"},  # bound to nothing
        {"name": "t-apple.pubsub.x"},  # another app whose name starts alike
    ]
    queues: list[dict[str, Any]] = [
        {"name": "t-app.queue.jobs", "consumers": 2},
        {"name": "t-app.queue.jobs.dead", "consumers": 0},  # dead queue of a live queue
        {"name": "t-app.queue.jobs.retry.500", "consumers": 0},  # its delay tier
        {"name": "t-app.queue.gone.dead", "consumers": 0},  # its work queue is gone
        {"name": "t-app.queue.stale", "consumers": 0},
        {"name": "t-app.lock.k", "consumers": 0},  # expires by itself
        {"name": "t-app.instance.abc", "consumers": 1},
        {"name": "t-app.queue.nostats"},  # no statistics: not judged
        {"name": "queue.shared", "consumers": 0},  # shared: no one app's
        {"name": "t-apple.queue.x", "consumers": 0},
    ]
    bindings = [{"source": ""}, {"source": "t-app.pubsub.news"}]
    found = leftovers(app, exchanges, queues, bindings)
    assert found == [
        "exchange t-app.pubsub.old",
        "queue t-app.queue.gone.dead",
        "queue t-app.queue.stale",
    ]
    assert leftovers_verdict(app, [])[0] == "ok"
    status, detail = leftovers_verdict(app, [f"queue t-app.q{n}" for n in range(13)])
    assert status == "warn"
    assert "t-app.q9" in detail and "t-app.q10" not in detail and "(+3 more)" in detail


def test_feature_flags() -> None:
    flags = [
        {"name": "quorum_queue", "state": "enabled", "stability": "stable"},
        {"name": "stream_queue", "state": "disabled", "stability": "stable"},
        {"name": "khepri_db", "state": "disabled", "stability": "experimental"},
    ]
    status, detail = feature_flags_verdict(flags)
    assert status == "warn"
    assert "stream_queue" in detail and "khepri_db" not in detail
    assert feature_flags_verdict([flags[0], flags[2]]) == (
        "ok",
        "1 of 2 enabled (the others are experimental)",
    )
    assert feature_flags_verdict([flags[0]]) == ("ok", "all 1 enabled")


def test_versions_and_capabilities() -> None:
    classic, quorum = Settings(), Settings(lock_queue_type="quorum")
    assert version_verdict(classic, "RabbitMQ", "3.10.8", "rabbit@a")[0] == "ok"
    assert version_verdict(classic, "RabbitMQ", "3.9.29", "")[0] == "warn"
    status, detail = version_verdict(quorum, "RabbitMQ", "3.9.29", "")
    assert status == "fail" and "lock_queue_type" in detail
    assert version_verdict(quorum, "RabbitMQ", "4.0.5", "")[0] == "ok"
    assert version_verdict(classic, "LavinMQ", "1.2.3", "")[0] == "warn"
    assert version_verdict(classic, "RabbitMQ", "", "")[0] == "warn"
    full = dict.fromkeys(
        [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "per_consumer_qos",
            "connection.blocked",
            "authentication_failure_close",
        ],
        True,
    )
    assert capabilities_verdict(full)[0] == "ok"
    assert capabilities_verdict({**full, "publisher_confirms": False})[0] == "fail"
    assert capabilities_verdict({k: v for k, v in full.items() if k != "basic.nack"})[0] == "fail"
    assert capabilities_verdict({**full, "per_consumer_qos": False})[0] == "warn"
    assert capabilities_verdict({})[0] == "fail"


def test_details_printed_literally() -> None:
    checks = [
        Check("markup", "warn", "[bold red]not markup[/] :smile: \x1b[31m\nsecond line"),
        Check("url", "fail", f"amqp://guest:{SECRET}@host:5672/ refused"),
    ]
    assert checks[0].detail == "[bold red]not markup[/] :smile: \\x1b[31m second line"
    assert SECRET not in checks[1].detail
    for use_rich in (True, False):
        out = io.StringIO()
        report(Terminal(out, use_rich=use_rich), checks, as_json=False)
        text = out.getvalue()
        assert "[bold red]not markup[/] :smile: \\x1b[31m second line" in text
        assert "\x1b" not in text and SECRET not in text
        assert "1 failed, 1 warning(s)" in text
    out = io.StringIO()
    report(Terminal(out), checks, as_json=True)
    document = json.loads(out.getvalue())
    assert document == {"ok": False, "checks": [check.as_dict() for check in checks]}


def test_redis_extra_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    settings = Settings(redis_url=f"redis://:{SECRET}@127.0.0.1:6379/0")
    [check] = asyncio.run(check_redis(settings, 1.0))
    assert check.status == "fail"
    assert "pip install 'clusterbus[redis]'" in check.detail


def test_vhost_of() -> None:
    assert vhost_of("amqp://h/") == vhost_of("amqp://h") == "/"
    assert vhost_of("amqp://h/prod") == "prod"
    assert vhost_of("amqp://h/%2Fprod") == "/prod"


class _Api(BaseHTTPRequestHandler):
    """Canned answers of the management API; 401 without the expected basic auth."""

    routes: ClassVar[dict[str, Any]] = {}
    authorization = ""
    shift = 0.0  # seconds added to the Date header

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.authorization:
            self.send_error(401, "Unauthorized")
            return
        body = json.dumps(self.routes.get(self.path, [])).encode()
        self.send_response(200 if self.path in self.routes else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(time.time() + self.shift, usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    """The fixture's base URL (no credentials); routes as the leftover test expects."""
    _Api.authorization = "Basic " + base64.b64encode(f"guest:{SECRET}".encode()).decode()
    _Api.shift = 0.0
    _Api.routes = {
        "/api/overview": {"rabbitmq_version": "3.13.7", "cluster_name": "rabbit@x"},
        "/api/feature-flags": [{"name": "stream_queue", "state": "enabled"}],
        "/api/global-parameters": [],
        "/api/exchanges/prod?columns=name": [{"name": "t-app.pubsub.old"}],
        "/api/queues/prod?columns=name,consumers": [{"name": "t-app.queue.a", "consumers": 0}],
        "/api/bindings/prod?columns=source": [],
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run(
    url: str, app: str | None = "t-app", amqp: str = "amqp://guest:x@h/prod"
) -> dict[str, Check]:
    checks = asyncio.run(management_checks(Settings(), [amqp], url, app, 5.0))
    return {check.name: check for check in checks}


def test_management_api_through_http(api: str) -> None:
    checks = _run(f"http://guest:{SECRET}@{api}")
    assert checks["management api"].status == "ok"
    assert checks["management api"].detail == (
        f"RabbitMQ 3.13.7, cluster rabbit@x; management API http://guest:***@{api}"
    )
    assert checks["feature flags"].status == "ok"
    assert checks["consumer_timeout"].status == "skip"
    assert checks["clock skew"].status == "ok"
    leftover = checks["leftover topology"]
    assert leftover.status == "warn"
    assert (
        "exchange t-app.pubsub.old" in leftover.detail and "queue t-app.queue.a" in leftover.detail
    )
    assert all(SECRET not in check.detail for check in checks.values())
    assert _run(f"http://guest:{SECRET}@{api}", app=None)["leftover topology"].status == "skip"


def test_management_api_credentials_skew_and_errors(api: str) -> None:
    # no credentials in the management URL: those of the AMQP URL
    checks = _run(f"http://{api}/", amqp=f"amqp://guest:{SECRET}@h/prod")
    assert checks["management api"].status == "ok"
    _Api.shift = 120.0
    assert _run(f"http://guest:{SECRET}@{api}")["clock skew"].status == "fail"
    _Api.shift = 0.0
    del _Api.routes["/api/feature-flags"]  # an older broker: 404
    assert "HTTP 404" in _run(f"http://guest:{SECRET}@{api}")["feature flags"].detail
    refused = _run(f"http://guest:wrong@{api}")
    assert refused["management api"].status == "fail"
    assert refused["management api"].detail == (
        f"GET /api/overview: HTTP 401 Unauthorized; management API http://guest:***@{api}"
    )
    assert refused["clock skew"].status == "skip"
    bad = _run(f"ftp://guest:{SECRET}@{api}")
    assert bad["management api"].status == "fail"
    assert SECRET not in bad["management api"].detail
    assert Management.from_url(f"http://u:{SECRET}@[::1]:15672/", 1.0).base == "http://[::1]:15672"
