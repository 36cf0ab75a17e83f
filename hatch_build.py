"""Build hook: the wheel holds one import package, ``clusterbus``.

The repository keeps the design card's layout: ``bus/``, ``managers/`` and ``plugins/`` at the
top, with ``clusterbus/`` as the public facade re-exporting them. Installed from a wheel, three
top-level names would collide with a user project's own ``bus``, ``managers`` or ``plugins``
(and with PyPI's unrelated ``bus``). So the wheel (not the editable install, which imports
the repository as it is) ships:

* ``clusterbus/*`` (the facade), and
* ``clusterbus/bus/``, ``clusterbus/managers/``, ``clusterbus/plugins/``: copies of the three
  packages,

with every import of ``bus``, ``managers`` or ``plugins`` rewritten to ``clusterbus.bus`` and
so on (``from bus.x import y`` becomes ``from clusterbus.bus.x import y``, in doctests too).
After rewriting, every module is parsed and the build fails if one still imports a top-level
``bus``, ``managers`` or ``plugins``, or uses ``import bus`` (whose binding would change).
See docs/design/packaging.md.
"""

from __future__ import annotations

import ast
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGES = ("bus", "managers", "plugins")
FACADE = "clusterbus"
_IMPORT = re.compile(
    r"^(?P<lead>[ \t]*(?:>>> |\.\.\. )?)(?P<kw>from|import)[ \t]+"
    r"(?P<pkg>bus|managers|plugins)(?=[. \t\n])",
    re.MULTILINE,
)
_SKIP = ("__pycache__",)


def rewrite(source: str) -> str:
    """``source`` with its imports of the card's packages moved under ``clusterbus``."""
    return _IMPORT.sub(lambda m: f"{m['lead']}{m['kw']} {FACADE}.{m['pkg']}", source)


def check(path: str, source: str) -> None:
    """Raise ``ValueError`` if ``source`` imports a top-level ``bus``/``managers``/``plugins``
    or uses a plain ``import`` of a package under ``clusterbus`` (its name would change)."""
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            for alias in node.names:
                if alias.name.startswith(f"{FACADE}.") and alias.asname is None:
                    raise ValueError(f"{path}:{node.lineno}: use 'from ... import', not 'import'")
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                raise ValueError(f"{path}:{node.lineno}: imports top-level {name!r}")


class OneImportPackage(BuildHookInterface[Any]):
    """Maps ``bus``, ``managers`` and ``plugins`` under ``clusterbus`` in the wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Write the rewritten tree to a temporary directory and force-include it."""
        if self.target_name != "wheel" or version == "editable":
            return
        root = Path(self.root)
        self._staging = Path(tempfile.mkdtemp(prefix="clusterbus-wheel-"))
        mapping = [(root / FACADE, FACADE)] + [
            (root / name, f"{FACADE}/{name}") for name in PACKAGES
        ]
        for source_dir, target in mapping:
            for path in sorted(source_dir.rglob("*")):
                if not path.is_file() or any(part in _SKIP for part in path.parts):
                    continue
                if path.suffix not in {".py", ".typed"}:
                    continue
                relative = f"{target}/{path.relative_to(source_dir).as_posix()}"
                staged = self._staging / relative
                staged.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".py":
                    text = rewrite(path.read_text(encoding="utf-8"))
                    check(relative, text)
                    staged.write_text(text, encoding="utf-8")
                else:
                    shutil.copyfile(path, staged)
                build_data["force_include"][str(staged)] = relative

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the temporary tree."""
        staging = getattr(self, "_staging", None)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
