"""Settings: defaults, environment, and bad values that fail naming the setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bus import Settings
from plugins.cli import main


def test_defaults_follow_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("CLUSTERBUS_")]:
        monkeypatch.delenv(name)
    s = Settings()
    assert s.amqp_url is None
    assert s.heartbeat == 10.0
    assert s.publish_timeout == 5.0
    assert s.sync_debounce == 1.0
    assert s.retry_delay == 0.5
    assert s.consumer_timeout == 1800.0
    assert s.queue_type == "classic"
    assert s.log_format == "auto"


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", "amqp://u:pw@broker:5672/vh")
    monkeypatch.setenv("CLUSTERBUS_HEARTBEAT", "3.5")
    monkeypatch.setenv("CLUSTERBUS_LOG_LEVEL", "debug")
    s = Settings()
    assert s.amqp_url is not None
    assert s.amqp_url.get_secret_value() == "amqp://u:pw@broker:5672/vh"
    assert s.heartbeat == 3.5
    assert s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("heartbeat", -1),
        ("publish_timeout", 0),
        ("connect_timeout", "soon"),
        ("sync_debounce", -0.1),
        ("max_message_bytes", 0),
        ("queue_type", "stream"),
        ("log_format", "xml"),
        ("log_level", "LOUD"),
        ("amqp_url", "http://127.0.0.1:5672/"),
        ("redis_url", "amqp://127.0.0.1/"),
        ("cache_max_size", -5),
        ("consumer_timeout", float("nan")),
        ("no_such_setting", 1),
    ],
)
def test_bad_values_fail_at_construction_naming_the_setting(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.model_validate({field: value})
    assert field in str(info.value)


def test_retry_cap_below_first_delay_is_refused() -> None:
    with pytest.raises(ValidationError, match="retry_delay_max"):
        Settings(retry_delay=5, retry_delay_max=1)


def test_the_amqp_password_never_shows() -> None:
    s = Settings(amqp_url="amqp://guest:hunter2@127.0.0.1:5672/")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.model_dump())
    assert s.amqp_url_redacted() == "amqp://guest:***@127.0.0.1:5672/"
    with pytest.raises(ValidationError) as info:
        Settings(amqp_url="http://guest:hunter2@127.0.0.1/")
    assert "hunter2" not in str(info.value)
    assert "amqp_url" in str(info.value)


def test_cli_reports_a_bad_environment_setting_by_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLUSTERBUS_PUBLISH_TIMEOUT", "-3")
    assert main(["settings"]) == 2
    out = capsys.readouterr().out
    assert "publish_timeout" in out and "CLUSTERBUS_PUBLISH_TIMEOUT" in out
