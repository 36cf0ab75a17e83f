"""Settings of a bus, read from ``CLUSTERBUS_*`` environment variables or given explicitly."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from managers.names import MAX_DELAY, MIN_DELAY

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


MASK = "***"
"""What stands in for a password (or anything that may be one) in redacted text."""

# ``scheme:`` followed by at least one slash: ``amqp://``, ``amqp:/`` (malformed), ``unix:///``.
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:/+")
# After one of these, a user-info without ':' is a user name (``amqp://guest@host``); after
# anything else (``user:/pw@host`` is no scheme) it may be a password.
_KNOWN_PREFIX = re.compile(r"(?i)(amqps?|rediss?)://")
# Where one URL of a ``;`` list starts.
_URL_START = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.\-]*:/")
# A user name shown as is: nothing that could be (part of) a password or a delimiter.
_CLEAN_USER = re.compile(r"[^\s@/;?#\[\]:]*")
# ``host``, ``host:5672``, ``[::1]:5672``: an authority whose "port" is really a port.
_HOST_PORT = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(:\d{0,5})?")
_AUTHORITY_END = re.compile(r"[/?#]")
# Query parameters that carry secrets (``redis://host/0?password=...``).
_SECRET_PARAM = re.compile(r"(?i)([?&;][^=&#;]*(?:pass|pwd|secret|token)[^=&#;]*=)[^&#;]*")
# A run of text without white space: one candidate URL of a free text, and what may open it.
_TOKEN = re.compile(r"\S+")
_OPENERS = "'\"<([{`"


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to log and to show).

    Works on malformed input too, and errs on the side of hiding: every URL of a ``;`` list
    is redacted, the password is everything between the user name and the *last* ``@`` (so a
    password holding ``@``, ``:``, ``/`` or percent escapes is hidden whole), a user-info
    without a scheme (``guest:pw@host``) or with a single slash (``amqp:/guest:pw@host``)
    loses its password too, a user name is shown only when it cannot be a password (after
    ``amqp://``/``redis://``, or before a ``:``), a ``;`` that is not followed by a new
    ``scheme://`` is taken as part of the password, a "port" that is not a number
    (``amqp://guest:pw``) is hidden, and so are query parameters named like a password.
    A password that itself holds ``@`` followed by ``;scheme://`` cannot be told from a list
    and may show in part.
    """
    return ";".join(_redact_one(chunk) for chunk in _url_chunks(url))


def redact_text(text: str) -> str:
    """``text`` (an error message, a log line) with every URL password in it replaced.

    A URL ends at white space here (a password holding white space is only hidden in part).
    Only runs of text that look like credentials are touched: a ``scheme://`` or a
    ``name:secret@`` before an ``@``; a plain ``someone@example.com`` stays as it is.
    """
    if "@" not in text and "://" not in text:
        return text
    return _TOKEN.sub(_redact_token, text)


def _redact_token(match: re.Match[str]) -> str:
    token = match.group()
    url = token.lstrip(_OPENERS)  # 'amqp://...', (guest:pw@host): the URL after the quote
    at = url.rfind("@")
    if "://" in url or ":" in url[: max(at, 0)]:
        return token[: len(token) - len(url)] + redact_url(url)
    return token


def _url_chunks(text: str) -> list[str]:
    """``text`` split at its ``;`` separators, keeping together what may be one password."""
    parts = text.split(";")
    chunks: list[str] = []
    for index, part in enumerate(parts):
        # no new URL starts here, or the previous chunk may be a password cut at a ';'
        if chunks and (
            not _URL_START.match(part)
            or ("@" not in chunks[-1] and any("@" in later for later in parts[index:]))
        ):
            chunks[-1] += ";" + part
        else:
            chunks.append(part)
    return chunks


def _redact_one(url: str) -> str:
    body = url.lstrip()
    head = url[: len(url) - len(body)]
    prefix_match = _PREFIX.match(body)
    prefix = prefix_match.group() if prefix_match else ""
    rest = body[len(prefix) :]
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        clean = _CLEAN_USER.fullmatch(user) is not None
        if colon and clean:
            userinfo = f"{user}:{MASK}"
        elif not colon and clean and _KNOWN_PREFIX.fullmatch(prefix):  # a user name alone
            userinfo = user
        else:
            userinfo = MASK
        return head + prefix + userinfo + "@" + _SECRET_PARAM.sub(rf"\1{MASK}", rest[at + 1 :])
    end = _AUTHORITY_END.search(rest)
    host, tail = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    if _HOST_PORT.fullmatch(host) is None:  # "host:secret", "[::1": hide after the first ':'
        host = host.split(":", 1)[0] + ":" + MASK
    return head + prefix + host + _SECRET_PARAM.sub(rf"\1{MASK}", tail)


def split_urls(raw: str) -> list[str]:
    """The URLs of a ``;``-separated list (kombu's convention), stripped. In the user-info, a
    ``;`` that is not followed by a new ``scheme:/`` stays in the URL (it may be part of a
    password); past it, every ``;`` separates URLs (an empty entry is refused later)."""
    urls: list[str] = []
    for chunk in _url_chunks(raw):
        # past the user-info a ';' separates URLs even when no URL follows: "a;;b", "a;"
        start = chunk.rfind("@") + 1 or (chunk.find("://") + 3 if "://" in chunk else 0)
        head, *extra = chunk[start:].split(";")
        urls.append((chunk[:start] + head).strip())
        urls.extend(part.strip() for part in extra)
    return urls


def _url_problem(raw: str, schemes: tuple[str, ...]) -> str | None:
    """Why ``raw`` is not one usable URL of ``schemes`` (never quoting it), or None.

    The errors of :func:`urllib.parse.urlsplit` may quote the URL: they are never passed on
    (nor chained, since the caller raises outside this function's ``except`` blocks).
    """
    if not raw:
        return "it is empty (two ';' in a row, or a ';' at the end)"
    if any(_URL_START.match(part) for part in raw.split(";")[1:]):
        return "several URLs separated by ';' are not supported here; give one"
    try:
        parts = urlsplit(raw)
    except ValueError:
        return "it cannot be parsed (an unbalanced '[' or ']', or characters a URL cannot hold)"
    if parts.scheme.lower() not in schemes or not raw[len(parts.scheme) :].startswith("://"):
        return f"it must start with {' or '.join(s + '://' for s in schemes)}"
    if parts.scheme.lower() == "unix":
        return None if parts.path else "a unix:// URL needs the socket's path"
    if not parts.hostname:
        return "it has no host"
    try:
        port = parts.port
    except ValueError:
        port = 0
    return "its port is not a number from 1 to 65535" if port == 0 else None


def _check_url(
    value: SecretStr | None, schemes: tuple[str, ...], name: str, *, several: bool = False
) -> SecretStr | None:
    if value is None:
        return None
    raw = value.get_secret_value().strip()
    if not raw:
        raise ValueError(
            f"{name} is set but empty or blank; unset it (memory mode) or give a URL"
            if name == "amqp_url"
            else f"{name} is set but empty or blank; unset it or give a URL"
        )
    urls = split_urls(raw) if several else [raw]
    for position, url in enumerate(urls, start=1):
        problem = _url_problem(url, schemes)
        if problem is None:
            continue
        where = f" (URL {position} of {len(urls)})" if len(urls) > 1 else ""
        # raised outside any except block: no chained exception
        raise ValueError(
            f"{name}{where} must look like {schemes[0]}://user:password@host:port/... "
            f"({problem}), got {redact_url(url)!r}"
        )
    return SecretStr(";".join(urls))


_SECRET_URLS = ("amqp_url", "redis_url")


class Settings(BaseSettings):
    """Every knob of a bus. Seconds are floats. A bad value fails at construction, naming it.

    Secrets (the AMQP and Redis URLs) are :class:`~pydantic.SecretStr`: they never appear in
    a repr, a validation error or a log line; :func:`redact_url` shows them without the
    password. An explicitly empty or blank URL is an error (it never means memory mode).
    """

    model_config = SettingsConfigDict(
        env_prefix="CLUSTERBUS_",
        extra="forbid",
        validate_default=True,
        frozen=True,
        hide_input_in_errors=True,
    )

    mode: Literal["auto", "memory", "amqp"] = Field(
        default="auto",
        description=(
            "auto: amqp when amqp_url is set, else memory (with a warning at start); memory: "
            "in process even when a URL is set; amqp: amqp_url must be set."
        ),
    )
    amqp_url: SecretStr | None = Field(
        default=None,
        description=(
            "RabbitMQ URL, or several separated by ';' (the nodes of a cluster); unset means "
            "memory mode."
        ),
    )
    amqp_failover: Literal["shuffle", "in_order"] = Field(
        default="shuffle",
        description=(
            "Order in which the URLs of amqp_url are tried: shuffled per instance (spreads "
            "the instances over the nodes) or as written. Either way a lost connection is "
            "retried on the next URL."
        ),
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
    retry_delay: float = Field(
        default=0.5,
        ge=MIN_DELAY,
        le=MAX_DELAY,
        allow_inf_nan=False,
        description="First retry backoff of queues (s), from 0.001 to 2592000 (30 days).",
    )
    retry_delay_max: float = Field(
        default=60.0,
        ge=MIN_DELAY,
        le=MAX_DELAY,
        allow_inf_nan=False,
        description=(
            "Cap of the retry backoff (s), at most 2592000 (30 days): the longest delay tier, "
            "whose queue name and TTL must stay valid on RabbitMQ."
        ),
    )
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
        default="auto",
        description=(
            "json, console, or auto (console on a terminal), for the CLI and the runner: "
            "a Bus never configures logging."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO",
        description="Lowest level the CLI and the runner log; per-message events are DEBUG.",
    )
    telemetry: bool = Field(
        default=True,
        description=(
            "OpenTelemetry spans, trace context in headers and metrics, when the otel extra "
            "is installed (the SDK and exporters are the application's)."
        ),
    )
    max_message_bytes: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        le=128 * 1024 * 1024,
        description="Largest encoded body sent or accepted.",
    )
    queue_type: Literal["classic", "quorum"] = Field(
        default="classic",
        description="RabbitMQ queue type of event queues, their delay tiers and dead queues.",
    )
    lock_queue_type: Literal["classic", "quorum"] | None = Field(
        default=None,
        description="RabbitMQ queue type of lock queues; unset means the same as queue_type.",
    )
    queue_leader_locator: Literal["balanced", "client-local", "none"] = Field(
        default="balanced",
        description=(
            "Where RabbitMQ puts the leader of each new quorum queue: balanced spreads them "
            "over the nodes; none sends no x-queue-leader-locator (for quorum queues created "
            "by clusterbus 0.1, which RabbitMQ would otherwise refuse to redeclare)."
        ),
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

    @model_validator(mode="before")
    @classmethod
    def _hide_urls(cls, data: Any) -> Any:
        """URLs given as text become secrets before validation, so an error's ``input``
        (``ValidationError.errors()``) shows ``**********``, never the password."""
        if isinstance(data, dict) and any(isinstance(data.get(k), str) for k in _SECRET_URLS):
            data = {
                key: SecretStr(value) if key in _SECRET_URLS and isinstance(value, str) else value
                for key, value in data.items()
            }
        return data

    @field_validator("amqp_url", mode="after")
    @classmethod
    def _amqp_url(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_url(value, ("amqp", "amqps"), "amqp_url", several=True)

    @field_validator("redis_url", mode="after")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_url(value, ("redis", "rediss", "unix"), "redis_url")

    @model_validator(mode="after")
    def _url_for_amqp_mode(self) -> Settings:
        if self.mode == "amqp" and self.amqp_url is None:
            raise ValueError(
                "mode is 'amqp' but amqp_url is not set (env CLUSTERBUS_AMQP_URL); set it, or "
                "set mode to 'memory' or 'auto'"
            )
        return self

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

    @model_validator(mode="after")
    def _lock_queue_type(self) -> Settings:
        if self.lock_queue_type is None:  # frozen model: set once, while validating
            object.__setattr__(self, "lock_queue_type", self.queue_type)
        return self

    def resolved_mode(self) -> Literal["memory", "amqp"]:
        """The mode a bus with these settings runs in: ``mode``, with ``auto`` resolved
        (amqp when ``amqp_url`` is set)."""
        if self.mode == "auto":
            return "memory" if self.amqp_url is None else "amqp"
        return self.mode

    def amqp_urls(self) -> list[str]:
        """The URLs of ``amqp_url`` (secret: never log them; empty in memory mode)."""
        return [] if self.amqp_url is None else split_urls(self.amqp_url.get_secret_value())

    def amqp_url_redacted(self) -> str | None:
        """The AMQP URL without its password, for logs and messages."""
        return None if self.amqp_url is None else redact_url(self.amqp_url.get_secret_value())
