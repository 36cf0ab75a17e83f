"""compose/: the compose file validated by the real Docker Compose binary (no engine needed),
its model checked against compose/README.md, its hardening (secrets from compose/.env, ports
on 127.0.0.1, named volumes, a supported RabbitMQ line), the Dockerfile's install and command,
and the root .dockerignore. The entry command itself runs in test_compose_entry.py, the pins in
test_compose_lock.py."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bus import Settings
from tests.unit.compose_runner import (
    ENV_EXAMPLE,
    ROOT,
    RunCompose,
    compose_model,
    compose_runner,
)

COMPOSE_DIR = ROOT / "compose"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = COMPOSE_DIR / "README.md"
BACKING = ("rabbitmq", "redis", "postgres")
VARIABLES_HEADING = "## Variables of the app"
NOT_A_SETTING = {"CLUSTERBUS_DEMO_DATABASE_URL"}  # read by the demo's plugins, not the bus
ENTRY = ["clusterbus", "run", "clusterbus.demo:app"]
SECRETS = {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS", "RABBITMQ_ERLANG_COOKIE"}
SECRETS |= {"POSTGRES_PASSWORD"}
RABBITMQ_IMAGE = re.compile(r"rabbitmq:(4\.\d+)-management")  # a 4.x line, with the UI
REQUIRED_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+):\?[^}]*\}")  # ${NAME:?message}


@pytest.fixture(scope="module")
def run_compose(tmp_path_factory: pytest.TempPathFactory) -> RunCompose:
    """Docker Compose on compose/docker-compose.yml, with an empty configuration and the
    variables of compose/.env.example."""
    return compose_runner(tmp_path_factory.mktemp("docker-config"))


@pytest.fixture(scope="module")
def model(run_compose: RunCompose) -> dict[str, Any]:
    """The resolved compose model (``config --format json``)."""
    return compose_model(run_compose)


@pytest.fixture(scope="module")
def raw_model(run_compose: RunCompose) -> dict[str, Any]:
    """The model as written: ``${NAME:?...}`` not interpolated (``--no-interpolate``)."""
    result = run_compose("--profile", "cluster", "config", "--no-interpolate", "--format", "json")
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def env_example() -> dict[str, str]:
    """NAME -> value of compose/.env.example (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{ENV_EXAMPLE}: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def readme_variables() -> dict[str, str]:
    """Variable -> value from the variables table of compose/README.md."""
    text = README.read_text(encoding="utf-8")
    assert VARIABLES_HEADING in text, f"{README} has no {VARIABLES_HEADING!r} section"
    section = text.split(VARIABLES_HEADING, 1)[1].split("\n#", 1)[0]
    variables: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) < 2:
            continue
        name = re.fullmatch(r"`(CLUSTERBUS_[A-Z0-9_]+)`", cells[0])
        if name is not None:
            assert name.group(1) not in variables, f"{name.group(1)} listed twice"
            variables[name.group(1)] = cells[1].strip("`")
    assert variables, "the README's variables table lists no CLUSTERBUS_* variable"
    return variables


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of compose/Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def test_compose_file_is_valid(run_compose: RunCompose) -> None:
    result = run_compose("config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warnings either


def test_services(model: dict[str, Any]) -> None:
    services = model["services"]
    assert set(services) == {*BACKING, "app"}
    for name in (*BACKING, "app"):
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    published = {port["target"] for port in services["rabbitmq"]["ports"]}
    assert {5672, 15672} <= published
    assert RABBITMQ_IMAGE.fullmatch(services["rabbitmq"]["image"])


def test_secrets_come_from_the_env_file(
    run_compose: RunCompose, raw_model: dict[str, Any], tmp_path: Path
) -> None:
    """Every variable the file interpolates is a required one (``${NAME:?...}``: no default
    password), the example file gives each a value, and without them Compose refuses."""
    text = (COMPOSE_DIR / "docker-compose.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Za-z0-9_]+)", text))
    assert used == set(REQUIRED_VARIABLE.findall(text)) == SECRETS
    example = env_example()
    assert set(example) == SECRETS
    for name, value in example.items():
        # they go into URLs and JSON unescaped
        assert re.fullmatch(r"[A-Za-z0-9._-]+", value), f"{name}={value!r} in {ENV_EXAMPLE}"
    services = raw_model["services"]
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"].startswith("${")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    missing = compose_runner(tmp_path, env_file=empty)("config", "-q")
    assert missing.returncode != 0
    assert "required variable" in missing.stderr and "compose/.env" in missing.stderr
    # the real file stays out of git
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "compose/.env"], cwd=ROOT, check=False, timeout=30
    )
    assert ignored.returncode == 0, "compose/.env is not ignored by git"


def test_published_ports_are_on_loopback(run_compose: RunCompose) -> None:
    services = compose_model(run_compose, "--profile", "cluster")["services"]
    published = 0
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published += 1
    assert published >= 8


def test_state_lives_in_named_volumes(run_compose: RunCompose) -> None:
    full = compose_model(run_compose, "--profile", "cluster")
    declared = set(full.get("volumes", {}))
    targets = {"rabbitmq": "/var/lib/rabbitmq", "postgres": "/var/lib/postgresql/data"}
    targets |= {f"rabbitmq-{n}": "/var/lib/rabbitmq" for n in (1, 2, 3)}
    sources = []
    for name, target in targets.items():
        mounts = {volume["target"]: volume for volume in full["services"][name].get("volumes", [])}
        assert target in mounts, f"{name} keeps {target} in no volume"
        assert mounts[target]["type"] == "volume" and mounts[target]["source"] in declared
        sources.append(mounts[target]["source"])
    assert len(set(sources)) == len(sources)  # one volume per node and database


def test_app_replicas_and_dependencies(model: dict[str, Any]) -> None:
    app = model["services"]["app"]
    assert app["deploy"]["replicas"] == 3
    assert {
        name: dependency["condition"] for name, dependency in app["depends_on"].items()
    } == dict.fromkeys(BACKING, "service_healthy")
    assert Path(app["build"]["context"]) == ROOT
    assert (ROOT / app["build"]["context"] / app["build"]["dockerfile"]) == DOCKERFILE
    grace = re.fullmatch(r"(\d+)s", app["stop_grace_period"])
    assert grace is not None and int(grace.group(1)) > Settings.model_fields["stop_timeout"].default


HEALTH_URL = "http://127.0.0.1:8080/health/ready"


@pytest.mark.parametrize("service", ["app", "app-cluster"])
def test_app_healthcheck_asks_the_app(run_compose: RunCompose, service: str) -> None:
    """The replicas serve their health on 8080 (``clusterbus run --http-port``) and the
    healthcheck asks that, not the broker's port."""
    app = compose_model(run_compose, "--profile", "cluster")["services"][service]
    command = app["command"]
    assert command[:3] == ENTRY
    assert command[command.index("--http-port") + 1] == "8080"
    assert command[command.index("--http-host") + 1] == "0.0.0.0"
    assert command[command.index("--log-format") + 1] == "json"
    test = app["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert HEALTH_URL in test[3] and "5672" not in test[3]
    compile(test[3], "healthcheck", "exec")
    # the image installs uvicorn, which serves it (the demo extra)
    installs = " ".join(a for k, a in dockerfile_instructions() if k == "RUN")
    extras = re.search(r"""\.\[([a-z0-9_,-]+)\]""", installs)
    assert extras is not None and "demo" in extras.group(1).split(",")


def as_written(value: str) -> str:
    """``value`` of the raw model with ``${NAME:?message}`` shown as ``${NAME}``."""
    return REQUIRED_VARIABLE.sub(r"${\1}", value)


def test_readme_table_matches_app_environment(raw_model: dict[str, Any]) -> None:
    """The README shows the values as written, secrets as ``${NAME}``."""
    environment = {
        name: as_written(value)
        for name, value in raw_model["services"]["app"]["environment"].items()
        if name.startswith("CLUSTERBUS_")
    }
    assert readme_variables() == environment


def test_app_environment_is_valid_settings(model: dict[str, Any]) -> None:
    environment = model["services"]["app"]["environment"]
    values = {
        name.removeprefix("CLUSTERBUS_").lower(): value
        for name, value in environment.items()
        if name.startswith("CLUSTERBUS_") and name not in NOT_A_SETTING
    }
    settings = Settings(**values)
    assert settings.mode == "amqp"  # a missing URL fails at start, never runs in memory
    assert settings.amqp_url is not None
    url = urlsplit(settings.amqp_url.get_secret_value())
    assert url.scheme == "amqp"
    example = env_example()
    assert (url.username, url.password) == (
        example["RABBITMQ_DEFAULT_USER"],
        example["RABBITMQ_DEFAULT_PASS"],
    )
    rabbitmq = model["services"]["rabbitmq"]["environment"]
    assert (url.username, url.password) == (
        rabbitmq["RABBITMQ_DEFAULT_USER"],
        rabbitmq["RABBITMQ_DEFAULT_PASS"],
    )
    database = urlsplit(environment["CLUSTERBUS_DEMO_DATABASE_URL"])
    assert database.password == model["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert settings.queue_type == "classic"
    # the broker's consumer_timeout (ms) mounted into the rabbitmq service agrees
    content = model["configs"]["rabbitmq-clusterbus"]["content"]
    broker = re.search(r"^consumer_timeout\s*=\s*(\d+)$", content, re.MULTILINE)
    assert broker is not None
    assert int(broker.group(1)) == round(settings.consumer_timeout * 1000)


def test_dockerfile(model: dict[str, Any]) -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    commands = [arguments for keyword, arguments in instructions if keyword == "CMD"]
    assert commands, "the Dockerfile has no CMD"
    # the image's own command is the one compose runs
    assert json.loads(commands[-1]) == model["services"]["app"]["command"]
    installs = [
        arguments
        for keyword, arguments in instructions
        if keyword == "RUN" and "pip install" in arguments
    ]
    extras = re.search(r"""["']?\.\[([a-z0-9_,-]+)\]["']?""", " ".join(installs))
    assert extras is not None, "the Dockerfile does not pip install the project"
    assert {"demo", "postgres", "prometheus", "redis"} <= set(extras.group(1).split(","))
    # at the versions of compose/constraints.txt, copied in before the install
    assert re.search(r"(--constraint|-c)[ =]constraints\.txt\b", " ".join(installs))
    copies = [arguments.split() for keyword, arguments in instructions if keyword == "COPY"]
    assert ["compose/constraints.txt", "./constraints.txt"] in copies
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image runs as root"


def copied_sources() -> set[str]:
    """The sources of the Dockerfile's COPY instructions (paths of the build context)."""
    sources: set[str] = set()
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY":
            words = [word for word in arguments.split() if not word.startswith("--")]
            sources.update(word.rstrip("/") for word in words[:-1])
    return sources


def wheel_sources() -> set[str]:
    """What the wheel is built from, as pyproject.toml and the build hook name it."""
    from hatch_build import FACADE, PACKAGES

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    hook = project["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]["path"]
    return {
        "pyproject.toml",
        project["project"]["readme"],
        *project["project"]["license-files"],
        hook,
        FACADE,
        *PACKAGES,
    }


def test_dockerfile_copies_what_the_wheel_is_built_from() -> None:
    assert wheel_sources() <= copied_sources()


def ignored_by_docker(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (of the build context) out, by ``patterns`` of a
    .dockerignore: the last pattern matching the path or one of its parent directories wins;
    ``*``, ``?`` and ``[...]`` stay within a path segment, ``**`` spans any number of them."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")  # [abc] stays a class
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_the_context_to_the_image_sources(model: dict[str, Any]) -> None:
    """The build context is the repository root: its .dockerignore lets in what the COPY
    instructions need and nothing of a local venv, git, caches, tests or secrets."""
    assert Path(model["services"]["app"]["build"]["context"]) == DOCKERIGNORE.parent
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for source in copied_sources():
        assert not ignored_by_docker(source, patterns), f"COPY {source}: left out of the context"
    for kept in ("bus/__init__.py", "plugins/demo/app.py", "clusterbus/demo.py"):
        assert not ignored_by_docker(kept, patterns), kept
    for left_out in (
        "compose/.env",
        ".env",
        ".venv/bin/python",
        ".venv-ci/lib/x.py",
        ".git/HEAD",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".pytest_cache/v/x",
        ".hypothesis/examples/x",
        ".clusterbus/app.queues.msgpack",
        "bus/__pycache__/bus.cpython-311.pyc",
        "plugins/stray.pyc",
        "tests/unit/test_compose.py",
        "clusterbus-demo.log",
        "dist/clusterbus-1.0.whl",
        "build/lib/x.py",
        "clusterbus.egg-info/PKG-INFO",
        "compose/docker-compose.yml",
        "docs/index.md",
    ):
        assert ignored_by_docker(left_out, patterns), f"{left_out} reaches the build context"
