"""Settings of a RabbitMQ cluster: URL lists, failover order, lock queue type."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bus import Settings


def test_a_url_list_is_accepted_and_split() -> None:
    settings = Settings(amqp_url=" amqp://u:p1@n1:5672/ ; amqp://u:p2@n2:5673/;amqp://n3/ ")
    assert settings.amqp_urls() == ["amqp://u:p1@n1:5672/", "amqp://u:p2@n2:5673/", "amqp://n3/"]
    redacted = settings.amqp_url_redacted()
    assert redacted == "amqp://u:***@n1:5672/;amqp://u:***@n2:5673/;amqp://n3/"


def test_one_url_is_a_list_of_one() -> None:
    assert Settings(amqp_url="amqp://guest:guest@h/").amqp_urls() == ["amqp://guest:guest@h/"]
    assert Settings().amqp_urls() == []


@pytest.mark.parametrize(
    ("url", "where", "why"),
    [
        ("amqp://u:secret1@n1/;http://u:secret2@n2/", "URL 2 of 2", "must start with amqp://"),
        ("amqp://u:secret1@n1/;amqp://u:secret2@n2:99999/;amqp://n3/", "URL 2 of 3", "port"),
        ("amqp://u:secret1@n1/;;amqp://n3/", "URL 2 of 3", "empty"),
        ("amqp://u:secret1@n1/;amqp://u:secret2@n2/;", "URL 3 of 3", "empty"),
        ("amqp://u:secret1@n1/;amqp:/u:secret2@n2:5672/", "URL 2 of 2", "amqp://"),
    ],
)
def test_a_bad_entry_is_named_by_position_without_its_password(
    url: str, where: str, why: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(amqp_url=url)
    text = str(caught.value)
    assert "amqp_url" in text and where in text and why in text
    assert "secret1" not in text and "secret2" not in text


def test_a_password_holding_a_semicolon_is_one_url() -> None:
    settings = Settings(amqp_url="amqp://u:pa;ss@n1/")
    assert settings.amqp_urls() == ["amqp://u:pa;ss@n1/"]
    assert "pa;ss" not in (settings.amqp_url_redacted() or "")


def test_failover_order_is_a_setting() -> None:
    assert Settings().amqp_failover == "shuffle"
    assert Settings(amqp_failover="in_order").amqp_failover == "in_order"
    with pytest.raises(ValidationError, match="amqp_failover"):
        Settings(amqp_failover="random")


def test_failover_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", "amqp://a/;amqp://b/")
    monkeypatch.setenv("CLUSTERBUS_AMQP_FAILOVER", "in_order")
    settings = Settings()
    assert settings.amqp_urls() == ["amqp://a/", "amqp://b/"]
    assert settings.amqp_failover == "in_order"


def test_lock_queue_type_follows_queue_type_unless_set() -> None:
    assert Settings().lock_queue_type == "classic"
    assert Settings(queue_type="quorum").lock_queue_type == "quorum"
    assert Settings(queue_type="quorum", lock_queue_type="classic").lock_queue_type == "classic"
    assert Settings(lock_queue_type="quorum").queue_type == "classic"
    with pytest.raises(ValidationError, match="lock_queue_type"):
        Settings(lock_queue_type="stream")
