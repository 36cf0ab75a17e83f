"""Settings of a bus, read from ``CLUSTERBUS_*`` environment variables or given explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _check_url(value: SecretStr | None, schemes: tuple[str, ...], name: str) -> SecretStr | None:
    if value is None:
        return None
    raw = value.get_secret_value().strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(
            f"{name} must look like {schemes[0]}://user:password@host:port/..., "
            f"got {redact_url(raw)!r}"
        )
    return SecretStr(raw)


class Settings(BaseSettings):
    """Every knob of a bus. Seconds are floats. A bad value fails at construction, naming it.

    Secrets (the AMQP and Redis URLs) are :class:`~pydantic.SecretStr`: they never appear in
    a repr or a log line; :func:`redact_url` shows them without the password.
    """

    model_config = SettingsConfigDict(
        env_prefix="CLUSTERBUS_",
        extra="forbid",
        validate_default=True,
        frozen=True,
        hide_input_in_errors=True,
    )

    amqp_url: SecretStr | None = Field(
        default=None, description="RabbitMQ URL; unset means memory mode."
    )
    heartbeat: Seconds = Field(
        default=10.0, description="AMQP heartbeat (s); a dead peer is noticed within ~2x this."
    )
    connect_timeout: Seconds = Field(default=5.0, description="Bound on start()'s connect (s).")
    reconnect_interval: Seconds = Field(
        default=1.0, description="Pause between reconnect attempts after a connection loss (s)."
    )
    publish_timeout: Seconds = Field(
        default=5.0, description="Bound on a publish, confirm included (s); then BusUnavailable."
    )
    sync_debounce: NonNegativeSeconds = Field(
        default=1.0, description="Debounce of every sync-message subscription (s)."
    )
    retry_delay: Seconds = Field(default=0.5, description="First retry backoff of queues (s).")
    retry_delay_max: Seconds = Field(default=60.0, description="Cap of the retry backoff (s).")
    stop_timeout: NonNegativeSeconds = Field(
        default=10.0, description="How long stop() waits for running handlers (s)."
    )
    storage_dir: Path = Field(
        default=Path(".clusterbus"), description="Where memory mode saves queued messages."
    )
    redis_url: SecretStr | None = Field(default=None, description="Redis URL of redis stores.")
    cache_store: Literal["memory", "redis"] = Field(
        default="memory", description="Store of caches created without store= (and bus.cache)."
    )
    cache_max_size: int = Field(default=10_000, gt=0, description="Default LRU size of caches.")
    log_format: Literal["json", "console", "auto"] = Field(
        default="auto", description="json, console, or auto (console on a terminal)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Lowest level logged; per-message events are DEBUG."
    )
    max_message_bytes: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        le=128 * 1024 * 1024,
        description="Largest encoded body sent or accepted.",
    )
    queue_type: Literal["classic", "quorum"] = Field(
        default="classic", description="RabbitMQ queue type of event queues."
    )
    consumer_timeout: Seconds = Field(
        default=1800.0, description="The broker's consumer_timeout (s); queue timeouts stay under."
    )
    pubsub_prefetch: int = Field(
        default=256,
        gt=0,
        le=65535,
        description="Pub/sub deliveries in flight per instance (AMQP prefetch, memory window).",
    )
    pubsub_max_backlog: int = Field(
        default=100_000,
        gt=0,
        description="Pub/sub messages an instance's queue holds before the oldest are dropped.",
    )

    @field_validator("amqp_url", mode="after")
    @classmethod
    def _amqp_url(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_url(value, ("amqp", "amqps"), "amqp_url")

    @field_validator("redis_url", mode="after")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_url(value, ("redis", "rediss", "unix"), "redis_url")

    @model_validator(mode="after")
    def _redis_for_redis_store(self) -> Settings:
        if self.cache_store == "redis" and self.redis_url is None:
            raise ValueError("cache_store is 'redis' but redis_url is not set")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _retry_cap(self) -> Settings:
        if self.retry_delay_max < self.retry_delay:
            raise ValueError(
                f"retry_delay_max ({self.retry_delay_max}) must be >= retry_delay "
                f"({self.retry_delay})"
            )
        return self

    def amqp_url_redacted(self) -> str | None:
        """The AMQP URL without its password, for logs and messages."""
        return None if self.amqp_url is None else redact_url(self.amqp_url.get_secret_value())
