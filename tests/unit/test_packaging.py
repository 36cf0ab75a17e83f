"""One import package: the build hook's rewrite of imports, its check, and the public surface
of ``clusterbus`` (the wheel itself is installed and exercised by tests/smoke/run.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest

import clusterbus
from hatch_build import PACKAGES, check, rewrite

ROOT = Path(__file__).resolve().parents[2]


def test_imports_of_the_cards_packages_move_under_clusterbus() -> None:
    source = (
        "from bus.errors import BusError\n"
        "from managers import names\n"
        "    from plugins.demo.app import run_demo  # lazy\n"
        ">>> from bus import Bus\n"
        "... from plugins import App\n"
        "from busy import thing\n"
        "from business.bus import x\n"
        'log.info("bus.started")\n'
        "import managers.names as names\n"
    )
    assert rewrite(source) == (
        "from clusterbus.bus.errors import BusError\n"
        "from clusterbus.managers import names\n"
        "    from clusterbus.plugins.demo.app import run_demo  # lazy\n"
        ">>> from clusterbus.bus import Bus\n"
        "... from clusterbus.plugins import App\n"
        "from busy import thing\n"
        "from business.bus import x\n"
        'log.info("bus.started")\n'
        "import clusterbus.managers.names as names\n"
    )


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("from bus.errors import BusError\n", "imports top-level 'bus.errors'"),
        ("def f():\n    import plugins\n", "imports top-level 'plugins'"),
        ("import clusterbus.bus.codec\n", "use 'from ... import'"),
    ],
)
def test_the_check_refuses_what_would_break_in_the_wheel(source: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check("x.py", source)


def test_every_module_of_the_repository_maps_cleanly() -> None:
    modules = [p for name in (*PACKAGES, "clusterbus") for p in (ROOT / name).rglob("*.py")]
    assert len(modules) > 50
    for path in modules:
        check(str(path), rewrite(path.read_text(encoding="utf-8")))


def test_clusterbus_exposes_the_public_api() -> None:
    for name in (
        "Bus",
        "MemoryHub",
        "Settings",
        "App",
        "Plugin",
        "QueueContext",
        "DeadLetter",
        "Lease",
        "Cache",
        "Subscription",
        "configure_logging",
        "BusError",
        "InvalidName",
        "PayloadError",
        "BusUnavailable",
        "LockAcquireError",
        "LockLost",
        "LockReentryError",
    ):
        assert name in clusterbus.__all__, name
        assert getattr(clusterbus, name) is not None
    for name in clusterbus.errors.__all__:
        error = getattr(clusterbus.errors, name)
        assert issubclass(error, clusterbus.errors.BusError)
        assert getattr(clusterbus, name) is error
    assert clusterbus.App.__module__.endswith("plugins.app")
    import bus

    assert set(bus.__all__) <= set(clusterbus.__all__)  # the two surfaces stay one


def test_plugins_and_the_facade_import_only_public_names() -> None:
    """plugins -> bus only (import-linter checks the layers; this checks the surface)."""
    for path in (ROOT / "plugins").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "from managers" not in text and "import managers" not in text, path
