"""Every ```python example of README.md and docs/ runs, and every relative link resolves.

Each example runs in a fresh interpreter (the one running the suite), in a temporary working
directory, with ``CLUSTERBUS_STORAGE_DIR`` in a temporary directory and no other
``CLUSTERBUS_*`` variable of the caller's environment. An HTML comment on the line right
before an example's fence says how it is tested:

* no comment: a complete program, run in memory mode; it must exit with status 0;
* ``<!-- example: amqp -->``: a complete program that needs the broker, run with
  ``CLUSTERBUS_AMQP_URL`` set (test marker ``amqp``; app names start with ``t-docs-`` and are
  cleaned up with the session's test apps);
* ``<!-- example: fragment -->``: a piece of a program, only compiled.

A failing example is reported as ``page:line`` (the line of its opening fence), and the line
numbers of its traceback are those of the page.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import conftest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TIMEOUT = 60.0
KINDS = ("run", "amqp", "fragment")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*example:\s*(?P<kind>[^\s>]*)\s*-->\s*$")
_MARKER_LIKE = re.compile(r"<!--\s*example\b")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\((?P<target><[^>]*>|[^)\s]*)(?:\s+[^)]*)?\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(?P<target>\S+)", re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_CARD_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:bus|managers|plugins)\b", re.MULTILINE)
_TEST_APP = re.compile(r"\bt-docs-[a-z0-9_-]*[a-z0-9]")


@dataclass(frozen=True)
class Block:
    """A fenced block of a page: its language, the line of its opening fence (1-based), its
    text (dedented by the fence's indentation) and the marker comment right before it."""

    page: Path
    line: int
    language: str
    code: str
    kind: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = (opening["info"].split() or [""])[0].lower()
        end = index + 1
        while end < len(lines) and not _closes(lines[end], fence):
            end += 1
        body = [_dedent(line, indent) for line in lines[index + 1 : end]]
        marker = _MARKER.match(lines[index - 1]) if index > 0 else None
        found.append(
            Block(
                page=page,
                line=index + 1,
                language=language,
                code="\n".join(body) + "\n",
                kind=marker["kind"] if marker else None,
            )
        )
        index = end + 1
    return found


def _closes(line: str, fence: str) -> bool:
    text = line.strip()
    return len(text) >= len(fence) and set(text) == {fence[0]}


def _dedent(line: str, indent: int) -> str:
    width = len(line) - len(line.lstrip(" \t"))
    return line[min(width, indent) :]


def python_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page) if block.language == "python"]


def _params(kinds: tuple[str, ...]) -> list[object]:
    params: list[object] = []
    for block in python_blocks():
        kind = block.kind or "run"
        if kind in kinds:
            marks = [pytest.mark.amqp] if kind == "amqp" else []
            params.append(pytest.param(block, id=block.id, marks=marks))
    return params


def _environment(storage: Path, amqp_url: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLUSTERBUS_")}
    env["CLUSTERBUS_STORAGE_DIR"] = str(storage)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if amqp_url is not None:
        env["CLUSTERBUS_AMQP_URL"] = amqp_url
    return env


def _run(block: Block, tmp_path: Path, amqp_url: str | None) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # padded so that the traceback's line numbers are the page's
    script = tmp_path / "docs_example.py"
    script.write_text("\n" * block.line + block.code, encoding="utf-8")
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=work,
            env=_environment(tmp_path / "storage", amqp_url),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.id}: still running after {TIMEOUT} s\n{_output(exc)}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"{block.id}: exit status {done.returncode}\n"
            f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-8000:]}",
            pytrace=False,
        )


def _output(exc: subprocess.TimeoutExpired) -> str:
    parts = []
    for name, data in (("stdout", exc.stdout), ("stderr", exc.stderr)):
        text = data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
        parts.append(f"--- {name}\n{text[-4000:]}")
    return "\n".join(parts)


@pytest.mark.parametrize("block", _params(("run",)))
def test_example_runs(block: Block, tmp_path: Path) -> None:
    _run(block, tmp_path, amqp_url=None)


@pytest.mark.parametrize("block", _params(("amqp",)))
def test_example_runs_on_the_broker(block: Block, tmp_path: Path, amqp_url: str) -> None:
    apps = set(_TEST_APP.findall(block.code))
    assert apps, f"{block.id}: examples on the broker use app names starting with 't-docs-'"
    session_apps = getattr(conftest, "_SESSION_APPS", None)
    if isinstance(session_apps, set):  # the session's clean-up deletes their queues
        session_apps.update(apps)
    _run(block, tmp_path, amqp_url=amqp_url)


@pytest.mark.parametrize("block", _params(("fragment",)))
def test_fragment_compiles(block: Block) -> None:
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_examples_are_marked_with_known_kinds_right_before_a_python_fence() -> None:
    problems: list[str] = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        python_fences = {b.line for b in blocks(page) if b.language == "python"}
        for number, line in enumerate(lines, start=1):
            if not _MARKER_LIKE.search(_CODE_SPAN.sub("", line)):
                continue
            marker = _MARKER.match(line)
            where = f"{page.relative_to(ROOT).as_posix()}:{number}"
            if marker is None or marker["kind"] not in KINDS:
                problems.append(f"{where}: write <!-- example: {'|'.join(KINDS)} -->")
            elif number + 1 not in python_fences:
                problems.append(f"{where}: the marker must be right before a ```python fence")
    assert not problems, "\n".join(problems)


def test_examples_import_the_public_package() -> None:
    wrong = [block.id for block in python_blocks() if _CARD_IMPORT.search(block.code)]
    assert not wrong, f"use `from clusterbus import ...` in the examples of {wrong}"


def _links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of the links of ``page``, outside code blocks and code spans."""
    lines = page.read_text(encoding="utf-8").splitlines()
    for block in blocks(page):
        end = block.line + block.code.count("\n")
        for index in range(block.line - 1, min(end + 1, len(lines))):
            lines[index] = ""
    text = _CODE_SPAN.sub(lambda m: " " * len(m.group()), "\n".join(lines))
    found = []
    for pattern in (_LINK, _REFERENCE):
        for match in pattern.finditer(text):
            target = match["target"].strip("<>")
            found.append((text.count("\n", 0, match.start()) + 1, target))
    return found


def test_relative_links_point_to_files_of_the_repository() -> None:
    problems: list[str] = []
    for page in PAGES:
        for line, target in _links(page):
            path = target.split("#", 1)[0].split("?", 1)[0]
            if not path or _SCHEME.match(target) or target.startswith("//"):
                continue  # an anchor of the page itself, or an absolute URL
            where = f"{page.relative_to(ROOT).as_posix()}:{line}"
            resolved = (page.parent / path).resolve()
            if not resolved.is_relative_to(ROOT):
                problems.append(f"{where}: {target} is outside the repository")
            elif not resolved.exists():
                problems.append(f"{where}: {target} does not exist")
    assert not problems, "\n".join(problems)


def test_pages_are_found() -> None:
    assert (ROOT / "README.md") in PAGES
    assert len(python_blocks()) > 10
