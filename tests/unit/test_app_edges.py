"""App start failures: only plugins whose ``load`` completed get ``before_stop``, and the bus
is left stopped (issue 10, finding 22)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from bus import BusError, MemoryHub
from plugins import App, Plugin
from tests.conftest import fast_settings, unique_app


class Hooks(Plugin):
    """Records every hook into the app's shared journal; fails where it is told to."""

    name: ClassVar[str] = "hooks"

    def __init__(self, app: App, *, journal: list[str], fail_in: str = "") -> None:
        super().__init__(app)
        self.journal = journal
        self.fail_in = fail_in

    def _record(self, hook: str) -> None:
        self.journal.append(f"{self.name}.{hook}")
        if hook == self.fail_in:
            raise RuntimeError(f"{self.name} failed in {hook}")

    async def before_load(self) -> None:
        self._record("before_load")

    async def load(self) -> None:
        self._record("load")

    async def after_start(self) -> None:
        self._record("after_start")

    async def before_stop(self) -> None:
        self._record("before_stop")


class First(Hooks):
    name: ClassVar[str] = "first"


class Second(Hooks):
    name: ClassVar[str] = "second"


class Third(Hooks):
    name: ClassVar[str] = "third"


def make_app(journal: list[str], failing: str, hook: str, **settings: Any) -> App:
    app = App(unique_app(), hub=MemoryHub(), settings=fast_settings(**settings))
    for plugin in (First, Second, Third):
        app.add(plugin, journal=journal, fail_in=hook if plugin.name == failing else "")
    return app


async def test_a_failed_load_stops_only_the_plugins_that_loaded(tmp_path: Path) -> None:
    journal: list[str] = []
    app = make_app(journal, "second", "load", storage_dir=tmp_path)
    with pytest.raises(RuntimeError, match="second failed in load"):
        await app.start()
    stops = [entry for entry in journal if entry.endswith("before_stop")]
    assert stops == ["first.before_stop"]
    assert not app.bus.started and app.stopping


async def test_a_failed_before_load_stops_no_plugin(tmp_path: Path) -> None:
    journal: list[str] = []
    app = make_app(journal, "first", "before_load", storage_dir=tmp_path)
    with pytest.raises(RuntimeError, match="first failed in before_load"):
        await app.start()
    assert journal == ["first.before_load"]
    assert not app.bus.started


async def test_a_failed_bus_start_stops_every_loaded_plugin_and_leaves_nothing_bound(
    tmp_path: Path,
) -> None:
    journal: list[str] = []
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    app = make_app(journal, "", "", storage_dir=not_a_directory)
    with pytest.raises(BusError, match="file"):
        await app.start()
    assert [e for e in journal if e.endswith("before_stop")] == [
        "third.before_stop",
        "second.before_stop",
        "first.before_stop",
    ]
    assert not app.bus.started
    assert app.bus.hub is not None
    assert app.bus.hub.routes(app.name, "cache.invalidate") == ()


async def test_a_failed_after_start_stops_every_plugin_and_the_bus(tmp_path: Path) -> None:
    journal: list[str] = []
    app = make_app(journal, "third", "after_start", storage_dir=tmp_path)
    with pytest.raises(RuntimeError, match="third failed in after_start"):
        await app.start()
    assert [e for e in journal if e.endswith("before_stop")] == [
        "third.before_stop",
        "second.before_stop",
        "first.before_stop",
    ]
    assert not app.bus.started
    await app.stop()  # a second stop is a no-op
