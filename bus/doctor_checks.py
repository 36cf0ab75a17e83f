"""The decisions of ``clusterbus doctor``, on data: what a broker's answers mean.

The ``*_verdict`` functions, :func:`clock_skew` and :func:`leftovers` are pure functions of
what the broker said (AMQP handshake, management API). :class:`Management` is the small HTTP
client of RabbitMQ's management API (stdlib only, run in a thread) and
:func:`management_checks` the checks made through it. :mod:`bus.doctor` connects over AMQP,
pings Redis and prints the results.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from bus.settings import Settings, redact_text, redact_url
from bus.terminal import escaped
from managers.errors import BusError
from managers.names import RESERVED_QUEUE_SUFFIX

Status = Literal["ok", "warn", "fail", "skip"]
Verdict = tuple[Status, str]
"""A check's status and its one-line detail."""

REQUIRED_CAPABILITIES = ("publisher_confirms", "basic.nack")
"""Without these clusterbus cannot know that a publish reached the broker: a failure."""
RECOMMENDED_CAPABILITIES = (
    "consumer_cancel_notify",
    "per_consumer_qos",
    "connection.blocked",
    "authentication_failure_close",
)
"""Missing ones are a warning: a deleted queue, prefetch, a blocked broker or a refused login
would be noticed late or not at all."""

SKEW_WARN = 1.0
SKEW_FAIL = 30.0
"""Clock skew (s) from which ``clock skew`` warns, then fails: fencing tokens are wall-clock
microseconds, so instances whose clocks differ can hand out tokens out of order."""

MANAGEMENT_CHECKS = (
    "management api",
    "feature flags",
    "consumer_timeout",
    "clock skew",
    "leftover topology",
)
NEEDS_MANAGEMENT = "needs --management-url (RabbitMQ management plugin)"
MAX_LISTED = 10
"""How many leftover names a detail lists."""


def one_line(text: object) -> str:
    """``text`` as a detail: URL passwords redacted, white space runs made one space, other
    control characters (terminal escapes) and lone surrogates escaped; the rest as it is."""
    return escaped(" ".join(redact_text(str(text)).split()))


@dataclass(frozen=True)
class Check:
    """The result of one check: ``detail`` is made one redacted line at construction."""

    name: str
    status: Status
    detail: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", one_line(self.detail))

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def version_verdict(settings: Settings, product: str, version: str, cluster: str) -> Verdict:
    """What the broker said of itself at the handshake, by the rules of
    :func:`bus.amqp.queue_arguments.check_broker` (quorum queues need 3.10)."""
    from bus.amqp.queue_arguments import QUORUM_SINCE, check_broker, parse_version

    numbers = parse_version(version)
    shown = f"{product or 'broker'} {version or '?'}" + (f", cluster {cluster}" if cluster else "")
    try:
        check_broker(settings, numbers)
    except BusError as exc:
        return "fail", str(exc)
    if product != "RabbitMQ":
        return "warn", f"{shown}: not RabbitMQ, which clusterbus is made and tested for"
    if numbers == (0, 0, 0):
        return "warn", f"{shown}: the version cannot be read"
    if numbers[:2] < QUORUM_SINCE:
        since = ".".join(map(str, QUORUM_SINCE))
        return "warn", f"{shown}: quorum queues (what a cluster needs) need {since} or later"
    return "ok", shown


def capabilities_verdict(capabilities: Mapping[str, object]) -> Verdict:
    """The broker's ``capabilities`` (AMQP server properties): fail without publisher
    confirms, warn without the recommended ones."""
    missing = [name for name in REQUIRED_CAPABILITIES if capabilities.get(name) is not True]
    if missing:
        return "fail", (
            f"missing {', '.join(missing)}: clusterbus publishes with confirms and cannot run "
            "without them"
        )
    lacking = [name for name in RECOMMENDED_CAPABILITIES if capabilities.get(name) is not True]
    if lacking:
        return "warn", f"missing {', '.join(lacking)}"
    return "ok", ", ".join((*REQUIRED_CAPABILITIES, *RECOMMENDED_CAPABILITIES))


def consumer_timeout_verdict(broker_ms: float | None, ours: float) -> Verdict:
    """The broker's ``consumer_timeout`` (milliseconds; None: disabled) against the setting
    ``consumer_timeout`` (seconds), which must not exceed it: a queue handler allowed to run
    longer than the broker's value loses its message to a redelivery."""
    if broker_ms is None or broker_ms <= 0:
        return "ok", f"disabled on the broker; the setting caps queue timeouts at {ours:g}s"
    broker = broker_ms / 1000
    if broker < ours:
        return "fail", (
            f"the broker's consumer_timeout is {broker:g}s, below the setting {ours:g}s: a "
            "handler may run past the point where the broker takes its message back; set "
            f"CLUSTERBUS_CONSUMER_TIMEOUT={broker:g}"
        )
    if broker > ours:
        return "ok", f"broker {broker:g}s, setting {ours:g}s (lower: queue timeouts capped there)"
    return "ok", f"broker and setting agree: {ours:g}s"


def consumer_timeout_from(parameters: Iterable[Mapping[str, Any]]) -> float | None:
    """The broker's consumer_timeout (ms) if a global parameter states it, else None."""
    for parameter in parameters:
        if str(parameter.get("name", "")).replace("-", "_") == "consumer_timeout":
            value = parameter.get("value")
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    return None


def clock_skew(date_header: str | None, sent: float, received: float) -> float | None:
    """How far the broker's clock is ahead of ours (s; negative: behind), from the HTTP
    ``Date`` of an answer to a request sent at ``sent`` and answered at ``received`` (epoch
    seconds of this host). ``Date`` has whole seconds, so the broker read its clock in
    ``[date, date + 1)`` while ours went from ``sent`` to ``received``: the skew given is the
    smallest one consistent with both (0 when they overlap). None without a readable date."""
    if not date_header:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000": UTC by the RFC, naive here
        moment = moment.replace(tzinfo=UTC)
    broker = moment.timestamp()
    if broker > received:
        return broker - received
    if broker + 1 < sent:
        return broker + 1 - sent
    return 0.0


def skew_verdict(skew: float | None) -> Verdict:
    """The status of a clock skew (s): ok up to 1 s, warn up to 30 s, fail beyond."""
    if skew is None:
        return "warn", "the management API's answer has no readable HTTP Date header"
    size = abs(skew)
    if size <= SKEW_WARN:
        return "ok", f"the broker's clock is within {SKEW_WARN:g}s of this host's (HTTP Date)"
    where = "ahead of" if skew > 0 else "behind"
    detail = f"the broker's clock is {size:.0f}s {where} this host's"
    if size <= SKEW_FAIL:
        return "warn", f"{detail}: fencing tokens use wall clocks; sync the clocks (NTP)"
    return "fail", f"{detail}: fencing tokens use wall-clock microseconds; sync clocks (NTP)"


def feature_flags_verdict(flags: Iterable[Mapping[str, Any]]) -> Verdict:
    """Warn when a stable feature flag is not enabled (as after an upgrade that did not
    enable them); experimental ones may stay off."""
    flags = list(flags)
    off = [
        str(flag.get("name"))
        for flag in flags
        if flag.get("state") != "enabled" and flag.get("stability") != "experimental"
    ]
    if off:
        return "warn", (
            f"not enabled: {_listed(sorted(off))} (rabbitmqctl enable_feature_flag all, once "
            "every node runs the new version)"
        )
    enabled = sum(flag.get("state") == "enabled" for flag in flags)
    if enabled < len(flags):
        return "ok", f"{enabled} of {len(flags)} enabled (the others are experimental)"
    return "ok", f"all {enabled} enabled"


def leftovers(
    app: str,
    exchanges: Iterable[Mapping[str, Any]],
    queues: Iterable[Mapping[str, Any]],
    bindings: Iterable[Mapping[str, Any]],
) -> list[str]:
    """The app's exchanges bound to nothing and queues without a consumer, from the lists
    of the management API (``/api/exchanges``, ``/api/queues``, ``/api/bindings``).

    Only names starting with ``<app>.`` count (shared queues ``queue.<channel>`` are no one
    app's). Not leftovers: lock queues (they expire by themselves), and the dead queue and
    delay tiers of a queue that exists (nothing consumes them by design); a queue whose
    consumer count is not given (statistics off) is left out.
    """
    prefix = f"{app}."
    bound = {binding.get("source") for binding in bindings}
    mine = [queue for queue in queues if str(queue.get("name", "")).startswith(prefix)]
    names = {str(queue.get("name")) for queue in mine}
    found = [
        f"exchange {name}"
        for name in sorted(str(exchange.get("name", "")) for exchange in exchanges)
        if name.startswith(prefix) and name not in bound
    ]
    for queue in sorted(mine, key=lambda q: str(q.get("name"))):
        name = str(queue.get("name"))
        if queue.get("consumers") != 0 or name.startswith((f"{app}.lock.", f"{app}.lock-h.")):
            continue
        if RESERVED_QUEUE_SUFFIX.sub("", name) in names - {name}:
            continue  # the dead queue or a delay tier of a queue that is there
        found.append(f"queue {name}")
    return found


def leftovers_verdict(app: str, found: list[str]) -> Verdict:
    if not found:
        return "ok", f"every exchange of {app!r} is bound and every queue has a consumer"
    return "warn", (
        f"{len(found)} without consumers or bindings (old channels, or instances not running): "
        f"{_listed(found)}"
    )


def _listed(names: list[str]) -> str:
    more = len(names) - MAX_LISTED
    return ", ".join(names[:MAX_LISTED]) + (f" (+{more} more)" if more > 0 else "")


@dataclass(frozen=True)
class Reply:
    """A management API answer: its JSON, its ``Date`` header, and when (this host's epoch
    seconds) the request was sent and the answer received."""

    body: Any
    date: str | None
    sent: float
    received: float


class ManagementError(Exception):
    """The management API did not answer, or not with JSON (a redacted one-line reason)."""


@dataclass(frozen=True)
class Management:
    """RabbitMQ's management HTTP API at ``base`` (no credentials in it), with basic auth."""

    base: str
    shown: str
    authorization: str | None
    timeout: float

    @classmethod
    def from_url(cls, url: str, timeout: float, fallback: str | None = None) -> Management:
        """The API at ``url`` (``http(s)://user:password@host:port``). Without credentials in
        it, those of ``fallback`` (an AMQP URL) are used. ValueError (redacted) if unusable."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise ValueError(f"cannot parse the management URL {redact_url(url)!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"the management URL must be http(s)://user:password@host:port, got "
                f"{redact_url(url)!r}"
            )
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = host + (f":{port}" if port else "")
        base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        credentials = parts if parts.username is not None else None
        if credentials is None and fallback is not None:
            credentials = urlsplit(fallback)
        authorization = None
        if credentials is not None and credentials.username is not None:
            pair = f"{unquote(credentials.username)}:{unquote(credentials.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(base, redact_url(url.strip()), authorization, timeout)

    async def get(self, path: str) -> Reply:
        """GET ``base + path`` in a thread, within ``timeout``."""
        return await asyncio.to_thread(self._get, path)

    def _get(self, path: str) -> Reply:
        request = urllib.request.Request(self.base + path, headers={"Accept": "application/json"})
        if self.authorization is not None:
            request.add_unredirected_header("Authorization", self.authorization)
        sent = time.time()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read()
                received = time.time()
                date = response.headers.get("Date")
        except urllib.error.HTTPError as exc:
            raise ManagementError(f"GET {path}: HTTP {exc.code} {one_line(exc.reason)}") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ManagementError(f"GET {path}: {one_line(reason)}") from None
        try:
            body = json.loads(data)
        except ValueError:
            raise ManagementError(f"GET {path}: the answer is not JSON") from None
        return Reply(body, date, sent, received)


def vhost_of(amqp_url: str) -> str:
    """The virtual host of an AMQP URL, as aiormq reads it (``/`` when the path is empty)."""
    path = urlsplit(amqp_url).path
    return "/" if path in ("", "/") else unquote(path[1:])


def api_vhost(vhost: str) -> str:
    """``vhost`` as a path segment of the management API (``/`` is ``%2F``)."""
    return quote(vhost, safe="")


async def management_checks(
    settings: Settings,
    urls: list[str],
    management_url: str | None,
    app: str | None,
    timeout: float,
) -> list[Check]:
    """The checks made through the management API (all skipped without its URL), on the
    virtual host of the first AMQP URL."""
    if management_url is None:
        return [Check(name, "skip", NEEDS_MANAGEMENT) for name in MANAGEMENT_CHECKS]
    first, *others = MANAGEMENT_CHECKS
    try:
        api = Management.from_url(management_url, timeout, fallback=urls[0])
        overview = await api.get("/api/overview")
    except ValueError as exc:
        return [
            Check(first, "fail", str(exc)),
            *(Check(name, "skip", "no usable management URL") for name in others),
        ]
    except ManagementError as exc:  # URLs last in details: what follows one may be redacted
        return [
            Check(first, "fail", f"{exc}; management API {api.shown}"),
            *(Check(name, "skip", "the management API did not answer") for name in others),
        ]
    about = overview.body if isinstance(overview.body, dict) else {}
    vhost = api_vhost(vhost_of(urls[0]))
    paths = ["/api/feature-flags", "/api/global-parameters"]
    if app is not None:
        paths += [
            f"/api/{kind}/{vhost}?columns={columns}"
            for kind, columns in (
                ("exchanges", "name"),
                ("queues", "name,consumers"),
                ("bindings", "source"),
            )
        ]
    flags, parameters, *topology = await asyncio.gather(
        *(_listing(api, path) for path in paths), return_exceptions=True
    )
    ours = settings.consumer_timeout
    skew = clock_skew(overview.date, overview.sent, overview.received)
    return [
        Check(
            first,
            "ok",
            f"RabbitMQ {about.get('rabbitmq_version', '?')}, cluster "
            f"{about.get('cluster_name', '?')}; management API {api.shown}",
        ),
        _decided("feature flags", [flags], feature_flags_verdict),
        _decided("consumer_timeout", [parameters], lambda p: consumer_timeout_check(p, ours)),
        Check("clock skew", *skew_verdict(skew)),
        Check("leftover topology", "skip", "give --app NAME to look for an app's leftovers")
        if app is None
        else _decided(
            "leftover topology",
            topology,
            lambda *lists: leftovers_verdict(app, leftovers(app, *lists)),
        ),
    ]


def consumer_timeout_check(parameters: list[dict[str, Any]], ours: float) -> Verdict:
    """The consumer_timeout verdict when the global parameters state the broker's, else a
    skip saying what to check by hand."""
    broker = consumer_timeout_from(parameters)
    if broker is None:
        return "skip", (
            "not exposed by the management API; check rabbitmq.conf consumer_timeout >= "
            f"{ours:g}s ({round(ours * 1000)} ms, the setting consumer_timeout)"
        )
    return consumer_timeout_verdict(broker, ours)


def _decided(name: str, answers: list[Any], decide: Callable[..., Verdict]) -> Check:
    """``decide(*answers)``, or a warning saying why one of the answers is missing."""
    for answer in answers:
        if isinstance(answer, BaseException):
            return Check(name, "warn", f"{answer}")
    return Check(name, *decide(*answers))


async def _listing(api: Management, path: str) -> list[dict[str, Any]]:
    """The list of objects at ``path`` (ManagementError if there is none)."""
    reply = await api.get(path)
    if not isinstance(reply.body, list):
        raise ManagementError(f"GET {path}: not a list")
    return [item for item in reply.body if isinstance(item, dict)]
