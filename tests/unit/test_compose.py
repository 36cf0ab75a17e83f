"""compose/: the compose file validated by the real Docker Compose binary (no engine needed),
its model checked against compose/README.md, and the Dockerfile's install and command."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bus import Settings
from tests.unit.compose_runner import ROOT, RunCompose, compose_runner

COMPOSE_DIR = ROOT / "compose"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
README = COMPOSE_DIR / "README.md"
BACKING = ("rabbitmq", "redis", "postgres")
VARIABLES_HEADING = "## Variables of the app"
NOT_A_SETTING = {"CLUSTERBUS_DEMO_DATABASE_URL"}  # read by the demo's plugins, not the bus


@pytest.fixture(scope="module")
def run_compose(tmp_path_factory: pytest.TempPathFactory) -> RunCompose:
    """Docker Compose on compose/docker-compose.yml, with an empty configuration."""
    return compose_runner(tmp_path_factory.mktemp("docker-config"))


@pytest.fixture(scope="module")
def model(run_compose: RunCompose) -> dict[str, Any]:
    """The resolved compose model (``config --format json``)."""
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


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
    assert services["rabbitmq"]["image"].endswith("-management")


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
    """The replicas serve their health on 8080 (``clusterbus node --http-port``) and the
    healthcheck asks that, not the broker's port."""
    result = run_compose("--profile", "cluster", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    app = json.loads(result.stdout)["services"][service]
    command = app["command"]
    assert command[:2] == ["clusterbus", "node"]
    assert command[command.index("--http-port") + 1] == "8080"
    assert command[command.index("--http-host") + 1] == "0.0.0.0"
    test = app["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert HEALTH_URL in test[3] and "5672" not in test[3]
    compile(test[3], "healthcheck", "exec")
    # the image installs uvicorn, which serves it (the demo extra)
    installs = " ".join(a for k, a in dockerfile_instructions() if k == "RUN")
    extras = re.search(r"""\.\[([a-z0-9_,-]+)\]""", installs)
    assert extras is not None and "demo" in extras.group(1).split(",")


def test_readme_table_matches_app_environment(model: dict[str, Any]) -> None:
    environment = {
        name: value
        for name, value in model["services"]["app"]["environment"].items()
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
    assert settings.amqp_url is not None
    assert settings.amqp_url.get_secret_value().startswith("amqp://")
    assert settings.queue_type == "classic"
    # the broker's consumer_timeout (ms) mounted into the rabbitmq service agrees
    content = model["configs"]["rabbitmq-clusterbus"]["content"]
    broker = re.search(r"^consumer_timeout\s*=\s*(\d+)$", content, re.MULTILINE)
    assert broker is not None
    assert int(broker.group(1)) == round(settings.consumer_timeout * 1000)


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    commands = [arguments for keyword, arguments in instructions if keyword == "CMD"]
    assert commands, "the Dockerfile has no CMD"
    assert json.loads(commands[-1]) == ["clusterbus", "node"]
    installs = [
        arguments
        for keyword, arguments in instructions
        if keyword == "RUN" and "pip install" in arguments
    ]
    extras = re.search(r"""["']?\.\[([a-z0-9_,-]+)\]["']?""", " ".join(installs))
    assert extras is not None, "the Dockerfile does not pip install the project"
    assert {"sqlalchemy", "postgres"} <= set(extras.group(1).split(","))
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image runs as root"
