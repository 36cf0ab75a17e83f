"""compose/'s "cluster" profile: three RabbitMQ nodes and the demo service spread over them,
validated by the real Docker Compose binary (no engine needed) and checked against
compose/README.md. The default stack is checked by test_compose.py."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from bus import Settings
from tests.unit.compose_runner import RunCompose, compose_model, compose_runner
from tests.unit.test_compose import (
    NOT_A_SETTING,
    RABBITMQ_IMAGE,
    README,
    REQUIRED_VARIABLE,
    env_example,
)

NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
CLUSTER_VARIABLES_HEADING = "### Variables of `app-cluster`"


@pytest.fixture(scope="module")
def run_compose(tmp_path_factory: pytest.TempPathFactory) -> RunCompose:
    """Docker Compose on compose/docker-compose.yml with the cluster profile (and the
    variables of compose/.env.example)."""
    run = compose_runner(tmp_path_factory.mktemp("docker-config"))
    return lambda *args: run("--profile", "cluster", *args)


@pytest.fixture(scope="module")
def model(run_compose: RunCompose) -> dict[str, Any]:
    return compose_model(run_compose)


def settings_of(environment: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {
        name.removeprefix("CLUSTERBUS_").lower(): value
        for name, value in environment.items()
        if name.startswith("CLUSTERBUS_") and name not in NOT_A_SETTING
    }
    return Settings(**values)


def test_cluster_profile_is_valid(run_compose: RunCompose) -> None:
    result = run_compose("config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_cluster_services(model: dict[str, Any]) -> None:
    services = model["services"]
    assert {*NODES, "app-cluster"} <= set(services)
    cookies = set()
    lines = {RABBITMQ_IMAGE.fullmatch(services["rabbitmq"]["image"])}
    for name in NODES:
        node = services[name]
        assert node["profiles"] == ["cluster"]
        assert node["hostname"] == name  # the node name is rabbit@<hostname>
        lines.add(RABBITMQ_IMAGE.fullmatch(node["image"]))
        assert node["healthcheck"]["test"][0] == "CMD"
        cookies.add(node["environment"]["RABBITMQ_ERLANG_COOKIE"])
    assert None not in lines
    # the same release line as the single broker
    assert len({line.group(1) for line in lines if line is not None}) == 1
    # one cookie, from compose/.env: the nodes can talk to each other
    assert cookies == {env_example()["RABBITMQ_ERLANG_COOKIE"]}
    app = services["app-cluster"]
    assert app["profiles"] == ["cluster"]
    assert app["deploy"]["replicas"] == 3
    assert {
        name: dependency["condition"] for name, dependency in app["depends_on"].items()
    } == dict.fromkeys((*NODES, "redis", "postgres"), "service_healthy")


def test_cluster_formation_and_definitions(model: dict[str, Any]) -> None:
    node = model["services"]["rabbitmq-1"]
    mounts = {config["source"]: config["target"] for config in node["configs"]}
    cluster_conf = model["configs"]["rabbitmq-cluster"]["content"]
    assert "cluster_formation.peer_discovery_backend = classic_config" in cluster_conf
    node_line = r"^cluster_formation\.classic_config\.nodes\.\d+ = (\S+)$"
    listed = re.findall(node_line, cluster_conf, re.M)
    assert listed == [f"rabbit@{name}" for name in NODES]
    loaded = re.search(r"^load_definitions = (\S+)$", cluster_conf, re.M)
    assert loaded is not None and loaded.group(1) == mounts["rabbitmq-definitions"]

    definitions = json.loads(model["configs"]["rabbitmq-definitions"]["content"])
    [vhost] = definitions["vhosts"]
    assert vhost["name"] == "/"
    assert vhost["metadata"]["default_queue_type"] == "quorum"  # read from metadata (3.13)
    # the user and password of compose/.env, the ones in every one of the app's URLs
    # (RabbitMQ hashes a plain "password" when it imports the definitions)
    settings = settings_of(model["services"]["app-cluster"]["environment"])
    example = env_example()
    [user] = definitions["users"]
    assert (user["name"], user["password"]) == (
        example["RABBITMQ_DEFAULT_USER"],
        example["RABBITMQ_DEFAULT_PASS"],
    )
    assert "password_hash" not in user
    for url in settings.amqp_urls():
        assert (urlsplit(url).username, urlsplit(url).password) == (
            user["name"],
            user["password"],
        )
    [permission] = definitions["permissions"]
    assert (permission["user"], permission["vhost"]) == (user["name"], "/")


def test_app_cluster_settings(model: dict[str, Any]) -> None:
    settings = settings_of(model["services"]["app-cluster"]["environment"])
    hosts = [urlsplit(url).hostname for url in settings.amqp_urls()]
    assert hosts == list(NODES)
    assert settings.mode == "amqp"
    assert settings.queue_type == "quorum"
    assert settings.lock_queue_type == "quorum"
    content = model["configs"]["rabbitmq-clusterbus"]["content"]
    broker = re.search(r"^consumer_timeout\s*=\s*(\d+)$", content, re.MULTILINE)
    assert broker is not None
    assert int(broker.group(1)) == round(settings.consumer_timeout * 1000)


def test_readme_lists_what_app_cluster_changes(run_compose: RunCompose) -> None:
    """As written in the file, secrets shown as ``${NAME}``."""
    result = run_compose("config", "--no-interpolate", "--format", "json")
    assert result.returncode == 0, result.stderr
    raw = json.loads(result.stdout)["services"]
    text = README.read_text(encoding="utf-8")
    assert CLUSTER_VARIABLES_HEADING in text
    section = text.split(CLUSTER_VARIABLES_HEADING, 1)[1].split("\n#", 1)[0]
    listed: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`(CLUSTERBUS_[A-Z0-9_]+)`", cells[0]) if cells else None
        if line.lstrip().startswith("|") and name is not None:
            listed[name.group(1)] = cells[1].strip("`")
    app = raw["app"]["environment"]
    cluster = raw["app-cluster"]["environment"]
    changed = {
        name: REQUIRED_VARIABLE.sub(r"${\1}", value)
        for name, value in cluster.items()
        if name.startswith("CLUSTERBUS_") and app.get(name) != value
    }
    assert listed == changed
