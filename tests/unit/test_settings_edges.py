"""Settings at their edges: an explicitly empty URL never means memory mode, a bad port fails
at construction (issue 10, findings 9 and 20)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from bus import Bus, Settings
from plugins.cli import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("CLUSTERBUS_")]:
        monkeypatch.delenv(name)
    yield


BLANK = ["", " ", "\t", "  \n "]


@pytest.mark.parametrize("value", BLANK)
@pytest.mark.parametrize("field", ["amqp_url", "redis_url"])
def test_an_explicitly_blank_url_fails_naming_the_setting(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.model_validate({field: value})
    assert [error["loc"] for error in info.value.errors()] == [(field,)]
    assert "empty or blank" in str(info.value)


@pytest.mark.parametrize("value", BLANK)
@pytest.mark.parametrize("field", ["amqp_url", "redis_url"])
def test_a_blank_url_in_the_environment_fails_naming_the_setting(
    field: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"CLUSTERBUS_{field.upper()}", value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert [error["loc"] for error in info.value.errors()] == [(field,)]


@pytest.mark.parametrize("value", BLANK)
def test_a_blank_url_given_to_bus_never_selects_memory_mode(value: str) -> None:
    with pytest.raises(ValidationError, match="amqp_url"):
        Bus("crm", amqp_url=value)


def test_a_blank_url_in_the_environment_stops_bus_and_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", "")
    with pytest.raises(ValidationError, match="amqp_url"):
        Bus("crm")
    assert main(["settings"]) == 2
    assert "CLUSTERBUS_AMQP_URL" in capsys.readouterr().out


def test_an_unset_url_still_means_memory_mode() -> None:
    assert Settings().amqp_url is None
    assert Settings(amqp_url=None).amqp_url is None
    assert Bus("crm").mode == "memory"


@pytest.mark.parametrize(
    "url",
    [
        "amqp://u:pw@host:99999/",
        "amqp://u:pw@host:65536/",
        "amqp://u:pw@host:0/",
        "amqp://u:pw@host:abc/",
        "amqp://u:pw@host:-1/",
        "amqp://u:pw@host:/",
        "amqp://u:pw@[::1]:70000/",
    ],
)
def test_a_bad_port_fails_at_construction(url: str) -> None:
    if url.endswith("host:/"):  # an empty port means the default one: valid
        assert Settings(amqp_url=url).amqp_url is not None
        return
    with pytest.raises(ValidationError) as info:
        Settings(amqp_url=url)
    text = str(info.value)
    assert "amqp_url" in text and "port" in text and "pw" not in text.replace("password", "")
    with pytest.raises(ValidationError, match="port"):
        Bus("crm", amqp_url=url)


def test_a_bad_redis_port_fails_at_construction() -> None:
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(redis_url="redis://:pw@host:123456/0")


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("amqp_url", "amqp://guest:guest@127.0.0.1:5672/"),
        ("amqp_url", "amqps://guest:guest@broker.example/vhost"),
        ("amqp_url", "AMQP://guest:guest@broker/"),
        ("amqp_url", "amqp://[::1]:5672/"),
        ("amqp_url", "  amqp://guest:guest@broker/  "),
        ("redis_url", "redis://127.0.0.1:6379/0"),
        ("redis_url", "rediss://:pw@cache:6380/1"),
        ("redis_url", "unix:///var/run/redis.sock"),
    ],
)
def test_good_urls_still_pass(field: str, url: str) -> None:
    value = getattr(Settings.model_validate({field: url}), field)
    assert value is not None and value.get_secret_value() == url.strip()


@pytest.mark.parametrize(
    ("field", "url", "why"),
    [
        ("amqp_url", "amqp:///vhost", "no host"),
        ("amqp_url", "amqp:/guest:pw@host/", "must start with amqp://"),
        ("redis_url", "unix://", "socket's path"),
        ("redis_url", "redis://a/;redis://b/", "several URLs"),
    ],
)
def test_each_malformed_url_says_why(field: str, url: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        Settings.model_validate({field: url})
