"""URL passwords never leak: not through a ValidationError (its text, repr, ``errors()``,
``json()``, chained exceptions), the ``clusterbus`` output, nor the logs; malformed URLs and
``;`` lists included (issue 10, finding 10)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bus import Bus, Settings
from bus.logs import LogFormat, configure_logging, get_logger
from bus.settings import redact_text, redact_url
from plugins.cli import main

SECRET = "S3CRET"

MALFORMED = [
    "amqp:/guest:S3CRET@host/",
    "guest:S3CRET@host:5672",
    "amqp://u:S3CRET@h1/;amqp://u:S3CRET@h2:0/",
    "amqp://u:S3CRET@[::1/",
    "amqp://u:S3CRET@host:99999/",
    "amqp://u:S3CRET@host:abc/",
    "amqp://u:S3CRET@/",
    "http://u:S3CRET@host/",
    "amqp:guest:S3CRET@host",
]
REDIS_MALFORMED = [
    "redis:/u:S3CRET@host/0",
    "u:S3CRET@host:6379",
    "redis://u:S3CRET@h1/0;redis://u:S3CRET@h2/0",
    "redis://:S3CRET@host:70000/0",
    "redis://u:S3CRET@[::1/0",
]

# Templates that never make a valid URL, whatever the password: the CLI fails before any
# connection attempt.
ALWAYS_INVALID = [
    "amqp:/user:{pw}@host/",
    "user:{pw}@host:5672",
    "amqp://u:{pw}@h1/;http://u:{pw}@h2/",
]
TEMPLATES = [
    *ALWAYS_INVALID,
    "amqp://user:{pw}@host:5672/vh",
    "amqp://user:{pw}@host:99999/",
    "amqps://admin:{pw}@host/",
    "amqp://u:{pw}@h1:5672/;amqp://v:{pw}@h2:5673/",
    "redis://:{pw}@host:6379/0",
]
_CHARS = st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc")), max_size=15)
# Any printable characters around a marker that no fixed text of the output holds, so a
# password found in the output was leaked, not made up of the output's own words.
PASSWORDS = st.builds(lambda head, tail: f"{head}Pw{tail}", _CHARS, _CHARS)


@pytest.fixture(autouse=True)
def _no_env_urls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("CLUSTERBUS_")]:
        monkeypatch.delenv(name)
    yield
    configure_logging(format="console", level="WARNING")


def _leaks(exc: ValidationError, secret: str) -> list[str]:
    """Every place of ``exc`` that shows ``secret``."""
    places = {
        "str": str(exc),
        "repr": repr(exc),
        "json": exc.json(),
        "errors": repr(exc.errors()),
    }
    for number, error in enumerate(exc.errors()):
        cause: BaseException | None = (error.get("ctx") or {}).get("error")
        while cause is not None:
            places[f"ctx[{number}] {type(cause).__name__}"] = repr(cause) + str(cause)
            cause = cause.__cause__ or cause.__context__
    places["chain"] = repr(exc.__cause__) + repr(exc.__context__)
    return [where for where, text in places.items() if secret in text]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_amqp_url_fails_without_the_password(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(amqp_url=url)
    assert "amqp_url" in str(info.value)
    assert _leaks(info.value, SECRET) == []


@pytest.mark.parametrize("url", REDIS_MALFORMED)
def test_a_malformed_redis_url_fails_without_the_password(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(redis_url=url)
    assert "redis_url" in str(info.value)
    assert _leaks(info.value, SECRET) == []


@pytest.mark.parametrize("url", MALFORMED[:4])
def test_a_malformed_url_given_to_bus_fails_without_the_password(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        Bus("crm", amqp_url=url)
    assert "amqp_url" in str(info.value)
    assert _leaks(info.value, SECRET) == []


@pytest.mark.parametrize("url", MALFORMED[:4])
def test_a_malformed_url_from_the_environment_fails_without_the_password(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", url)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert _leaks(info.value, SECRET) == []


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://guest:S3CRET@host:5672/vh", "amqp://guest:***@host:5672/vh"),
        ("amqp://guest@host/", "amqp://guest@host/"),
        ("amqp://host:5672/", "amqp://host:5672/"),
        ("amqp://u:S3%40CRET@host/", "amqp://u:***@host/"),
        ("amqp://u:S3C@R:ET@host/", "amqp://u:***@host/"),
        ("amqp://u:S3/CRET@host/", "amqp://u:***@host/"),
        ("amqp://u:S3;CRET@host/", "amqp://u:***@host/"),
        ("amqp://u:a;b;c@host/", "amqp://u:***@host/"),
        ("amqp://u:S3CRET@h1/;amqp://v:S3CRET@h2/", "amqp://u:***@h1/;amqp://v:***@h2/"),
        ("amqp:/guest:S3CRET@host/", "amqp:/guest:***@host/"),
        ("guest:S3CRET@host:5672", "guest:***@host:5672"),
        ("S3CRET@host", "***@host"),
        ("amqp://u@S3CRET@host/", "amqp://***@host/"),
        ("amqp://guest:S3CRET", "amqp://guest:***"),
        ("amqp://guest:S3CRET/vh", "amqp://guest:***/vh"),
        ("amqp://[::1]:5672/", "amqp://[::1]:5672/"),
        ("redis://:S3CRET@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://host/0?password=S3CRET&db=1", "redis://host/0?password=***&db=1"),
        ("", ""),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert redact_url(redacted) == redacted  # idempotent


def test_redact_text_leaves_plain_addresses_alone() -> None:
    text = "mail alice@example.com; broker 'amqp://u:S3CRET@h/' (guest:S3CRET@h2)"
    assert redact_text(text) == "mail alice@example.com; broker 'amqp://u:***@h/' (guest:***@h2)"


def test_cli_settings_never_shows_a_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLUSTERBUS_AMQP_URL", "amqp://guest:S3CRET@broker:5672/vh")
    monkeypatch.setenv("CLUSTERBUS_REDIS_URL", "redis://:S3CRET@cache:6379/0")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "amqp_url = amqp://guest:***@broker:5672/vh" in out
    assert "redis_url = redis://:***@cache:6379/0" in out


@pytest.mark.parametrize("url", MALFORMED[:4] + REDIS_MALFORMED[:3])
def test_cli_settings_with_a_malformed_url_names_it_without_the_password(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "REDIS_URL" if url.startswith(("redis", "u:")) else "AMQP_URL"
    monkeypatch.setenv(f"CLUSTERBUS_{name}", url)
    assert main(["settings"]) == 2
    captured = capsys.readouterr()
    assert f"CLUSTERBUS_{name}" in captured.out
    assert SECRET not in captured.out + captured.err


@pytest.mark.parametrize("url", MALFORMED[:6])
def test_cli_dlq_with_a_malformed_url_prints_one_line_without_the_password(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "list", "jobs", "--app", "crm", "--amqp-url", url]) == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and "amqp_url" in lines[0] and "dlq failed" in lines[0]


@settings(max_examples=300, deadline=None)
@given(password=PASSWORDS, template=st.sampled_from(TEMPLATES))
def test_a_random_password_never_shows_in_settings_errors(password: str, template: str) -> None:
    url = template.format(pw=password)
    assert password not in redact_url(url)
    if not any(c.isspace() for c in password):  # in free text, a URL ends at white space
        assert password not in redact_text(f"connecting to {url!r} failed")
        assert password not in redact_text(f"connecting to {url} failed")
    field = "redis_url" if template.startswith("redis") else "amqp_url"
    try:
        valid = Settings.model_validate({field: url})
    except ValidationError as exc:
        assert _leaks(exc, password) == []
    else:
        assert password not in repr(valid)
        assert password not in str(valid.model_dump())
        assert password not in (valid.amqp_url_redacted() or "")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(password=PASSWORDS, template=st.sampled_from(ALWAYS_INVALID))
def test_a_random_password_never_shows_in_the_cli(password: str, template: str) -> None:
    url = template.format(pw=password)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setenv("CLUSTERBUS_AMQP_URL", url)
        assert main(["settings"]) == 2
        patch.delenv("CLUSTERBUS_AMQP_URL")
        assert main(["dlq", "list", "jobs", "--app", "crm", "--amqp-url", url]) == 2
    assert password not in out.getvalue()


@settings(max_examples=100, deadline=None)
@given(password=PASSWORDS, fmt=st.sampled_from(["json", "console"]))
def test_a_random_password_never_shows_in_the_logs(password: str, fmt: LogFormat) -> None:
    template = "amqp://user:{pw}@host:5672/"
    assume(not any(c.isspace() for c in password))  # in free text, a URL ends at white space
    url = template.format(pw=password)
    out = io.StringIO()
    configure_logging(format=fmt, level="INFO", file=out)
    failure = ConnectionError(f"cannot reach {url}")
    get_logger(app="crm").error("amqp.failed", url=url, detail=[f"at {url}"], exc_info=failure)
    text = out.getvalue()
    if fmt == "json":  # JSON escapes non-ASCII text: look at the decoded line
        text = json.dumps(json.loads(text), ensure_ascii=False)
    assert "amqp.failed" in text
    assert password not in text
