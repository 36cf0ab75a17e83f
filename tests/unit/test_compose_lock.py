"""compose/constraints.txt: the versions the compose image installs (compose/Dockerfile,
``pip install --constraint constraints.txt ".[extras]"``), written by compose/lock.sh from
pyproject.toml. Every package that pyproject names for the image's extras is pinned there with
``==``, at a version pyproject accepts, and the file records the extras it was made for."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.unit.compose_runner import ROOT

COMPOSE_DIR = ROOT / "compose"
CONSTRAINTS = COMPOSE_DIR / "constraints.txt"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
LOCK_SCRIPT = COMPOSE_DIR / "lock.sh"
PROJECT = "clusterbus"
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def image_extras() -> list[str]:
    """The extras of the Dockerfile's ``pip install ".[...]"``."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    found: list[str] = re.findall(r"""["']\.\[([a-z0-9_,-]+)\]["']""", text)
    assert len(found) == 1, f"{DOCKERFILE}: expected one pip install of '.[extras]', got {found}"
    return found[0].split(",")


def image_python() -> str:
    """``3.11`` for ``FROM python:3.11-slim``."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    found = re.search(r"^FROM python:(\d+\.\d+)", text, re.MULTILINE)
    assert found is not None, f"{DOCKERFILE}: no FROM python:X.Y"
    return found.group(1)


def pins() -> dict[str, Version]:
    """Normalised name -> pinned version of compose/constraints.txt; every line that is not a
    comment must be one ``name==version``."""
    pinned: dict[str, Version] = {}
    for number, raw in enumerate(CONSTRAINTS.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.fullmatch(line)
        assert match is not None, f"{CONSTRAINTS.name}:{number}: not name==version: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pinned, f"{CONSTRAINTS.name}:{number}: {name} pinned twice"
        pinned[name] = Version(match.group(2))
    return pinned


def marker_environment(extra: str = "") -> dict[str, str]:
    """The image's interpreter for environment markers (its Python version, Linux)."""
    environment = {name: str(value) for name, value in default_environment().items()}
    version = image_python()
    environment.update(
        python_version=version,
        python_full_version=f"{version}.0",
        sys_platform="linux",
        platform_system="Linux",
        os_name="posix",
        extra=extra,
    )
    return environment


def applies(requirement: Requirement, extra: str = "") -> bool:
    marker = requirement.marker
    return marker is None or marker.evaluate(marker_environment(extra))


def project_requirements(extras: list[str]) -> list[Requirement]:
    """The runtime dependencies of pyproject.toml plus those of ``extras``, with the
    project's own extras (``clusterbus[otel]``) expanded, for the image's interpreter."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional: dict[str, list[str]] = project["optional-dependencies"]
    unknown = set(extras) - set(optional)
    assert not unknown, f"the Dockerfile installs extras pyproject.toml lacks: {sorted(unknown)}"
    found = [Requirement(text) for text in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == PROJECT:
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return [requirement for requirement in found if applies(requirement)]


def extras_brought(requirement: Requirement) -> list[Requirement]:
    """What ``requirement``'s own extras (``psycopg[binary]``) add, read from the installed
    distribution's metadata (none when it is not installed here)."""
    try:
        requires = metadata.requires(requirement.name) or []
    except metadata.PackageNotFoundError:
        return []
    brought = []
    for text in requires:
        dependency = Requirement(text)
        # only through an extra: its marker holds for one of the requested extras, not alone
        if not applies(dependency) and any(
            applies(dependency, extra) for extra in requirement.extras
        ):
            brought.append(dependency)
    return brought


def test_constraints_record_the_image_extras_and_python() -> None:
    """The header says which extras and Python the file was made for: a change to the
    Dockerfile's extras without running compose/lock.sh again shows here."""
    header = [line for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines() if line]
    header = [line for line in header if line.startswith("#")]
    text = "\n".join(header)
    assert f"{PROJECT}[{','.join(image_extras())}] on Python {image_python()}" in text, text
    assert "compose/lock.sh" in text
    assert re.search(r"\b\d{4}-\d{2}-\d{2}\b", text), "no generation date in the header"
    assert "pip freeze" in text and "pip install" in text


def test_every_dependency_of_the_image_is_pinned() -> None:
    pinned = pins()
    assert canonicalize_name(PROJECT) not in pinned, "the project itself is not a constraint"
    requirements = project_requirements(image_extras())
    assert requirements
    missing, rejected = [], []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name not in pinned:
            missing.append(str(requirement))
        elif not requirement.specifier.contains(pinned[name], prereleases=True):
            rejected.append(f"{name}=={pinned[name]} (pyproject: {requirement})")
    assert not missing, f"not pinned in {CONSTRAINTS.name} (run compose/lock.sh): {missing}"
    assert not rejected, f"pins pyproject.toml no longer accepts: {rejected}"


def test_what_the_extras_of_dependencies_bring_is_pinned() -> None:
    """``sqlalchemy[asyncio]`` brings greenlet, ``psycopg[binary]`` psycopg-binary: pinned
    too, so the image gets no unpinned compiled wheel."""
    pinned = pins()
    with_extras = [r for r in project_requirements(image_extras()) if r.extras]
    brought = [d for r in with_extras for d in extras_brought(r)]
    if not brought:
        pytest.skip("none of the dependencies with extras is installed here")
    missing = sorted({canonicalize_name(d.name) for d in brought} - set(pinned))
    assert not missing, f"not pinned in {CONSTRAINTS.name} (run compose/lock.sh): {missing}"


def test_lock_script_reads_the_dockerfile() -> None:
    """compose/lock.sh takes the extras and the Python version from the Dockerfile, so the
    two cannot drift apart, and writes the header the test above reads."""
    script = LOCK_SCRIPT.read_text(encoding="utf-8")
    assert LOCK_SCRIPT.stat().st_mode & 0o111, "compose/lock.sh is not executable"
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script
    assert "Dockerfile" in script and "freeze" in script and "--exclude clusterbus" in script
    assert f"{PROJECT}[$extras] on Python $image_python" in script
