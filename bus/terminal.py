"""What the ``clusterbus`` command line prints, with or without rich.

rich (the ``cli`` extra) draws colours and tables when it is installed; without it the
command line prints plain text and aligned columns. Either way text is printed literally:
never read as rich markup, emoji codes or highlighted, so what came from the wire (ids,
error texts) shows as it is. rich is imported when something is printed, never before, and
this module is imported by the command line only (``import bus`` does not load it).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console

COLUMN_GAP = "  "
"""Between two columns of a plain table."""

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escaped(text: object) -> str:
    """``text`` as it may be printed: control characters (terminal escapes a peer could
    forge) and lone surrogates become escapes; tabs, newlines and everything else stay (the
    terminal prints ``[/]`` or ``[bold]`` literally, never as markup)."""
    safe = str(text).encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", safe)


class Terminal:
    """The command line's output: lines and tables written to ``file``.

    ``file`` defaults to ``sys.stdout`` as it is when something is printed. ``use_rich``
    None (the default) uses rich when it can be imported; True requires it, False never
    uses it. With rich, styles take effect only when rich finds that ``file`` is a terminal
    taking colours (``NO_COLOR``, ``FORCE_COLOR`` and ``COLUMNS`` are honoured as rich does).
    """

    def __init__(self, file: TextIO | None = None, *, use_rich: bool | None = None) -> None:
        self._file = file
        self._use_rich = use_rich
        self._console: Console | None = None

    @property
    def file(self) -> TextIO:
        """Where the plain output goes: the given file, else the current ``sys.stdout``."""
        return self._file if self._file is not None else sys.stdout

    def print(self, text: str, *, style: str | None = None) -> None:
        """Print ``text`` as it is, on its own line(s), never wrapped nor read as markup.

        ``style`` (a rich style such as ``"red"`` or ``"bold"``) is applied only by rich,
        and only on a terminal; without rich it is ignored.
        """
        console = self._rich()
        if console is None:
            print(text, file=self.file, flush=True)
            return
        from rich.text import Text

        console.print(Text(text, style=style or ""), soft_wrap=True)

    def table(self, title: str, headers: list[str], rows: list[list[str]]) -> None:
        """Print a table: ``title``, then one column per header and one line per row.

        Titles, headers and cells are printed literally. With rich this is a rich table (the
        first column, the rows' key, is never wrapped so it can be copied whole); without
        it, the title on its own line, then the headers, a rule and the rows, left aligned.
        """
        console = self._rich()
        if console is None:
            self._plain_table(title, headers, rows)
            return
        from rich.table import Table
        from rich.text import Text

        view = Table(title=Text(title))
        for number, header in enumerate(headers):
            view.add_column(Text(header), no_wrap=number == 0)
        for row in rows:
            view.add_row(*(Text(cell) for cell in row))
        console.print(view)

    def _rich(self) -> Console | None:
        """rich's console on ``file``, or None when rich is not used (not importable)."""
        if self._console is None and self._use_rich is not False:
            try:
                from rich.console import Console
            except ImportError:
                if self._use_rich:
                    raise
                self._use_rich = False
                return None
            self._console = Console(file=self._file)  # None: sys.stdout when printing
        return self._console

    def _plain_table(self, title: str, headers: list[str], rows: list[list[str]]) -> None:
        """The table as aligned plain text (a cell's lines stay within its column)."""
        count = max([len(headers), *(len(row) for row in rows)])
        body = [_cells(row, count) for row in [headers, *rows]]
        widths = [max(_width(line) for row in body for line in row[i]) for i in range(count)]
        body.insert(1, [["-" * width] for width in widths])
        lines = [title]
        for row in body:
            for depth in range(max([1, *(len(cell) for cell in row)])):
                parts = [cell[depth] if depth < len(cell) else "" for cell in row]
                last = max((i for i, part in enumerate(parts) if part), default=0)
                padded = [part + " " * (widths[i] - _width(part)) for i, part in enumerate(parts)]
                lines.append(COLUMN_GAP.join([*padded[:last], *parts[last : last + 1]]))
        print("\n".join(lines), file=self.file, flush=True)


def _cells(row: list[str], count: int) -> list[list[str]]:
    """``row``'s cells as their lines, padded with empty cells to ``count`` columns."""
    return [cell.splitlines() or [""] for cell in [*row, *[""] * (count - len(row))]]


def _width(text: str) -> int:
    """How many columns ``text`` takes on a terminal (wide characters two, combining none)."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in text
    )
