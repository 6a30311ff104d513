"""Shared output helpers of the ``tokenguard`` command: colour, durations, dates, token abbreviations.

Nothing here ever prints a whole token: ``abbreviate`` is the only way a token reaches the screen.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}


class CliError(Exception):
    """A failure the command reports as one line on stderr, with its exit code (2 by default)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def wants_color(stream: TextIO, no_color: bool) -> bool:
    """Colour only on a terminal, and never when ``--no-color`` or ``NO_COLOR`` (no-color.org) says so."""
    if no_color or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Printer:
    """Writes lines to one stream, with ANSI colour when enabled."""

    def __init__(self, stream: TextIO | None = None, *, color: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.color = color

    def style(self, text: str, *names: str) -> str:
        if not self.color or not names:
            return text
        codes = ";".join(_CODES[name] for name in names)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")

    def json(self, document: Any) -> None:
        self.stream.write(json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "  ") -> None:
        """A plain left-aligned table; colour is never used inside cells so widths stay right."""
        widths = [len(h) for h in headers]
        for row in rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        self.line(indent + self.style(_join(headers, widths), "bold"))
        for row in rows:
            self.line(indent + _join(row, widths))


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def abbreviate(token: str, keep: int = 7) -> str:
    """``eyJhbGc…(812 chars)``: enough to tell tokens apart, never enough to use one."""
    if len(token) <= keep:
        return f"…({len(token)} chars)"
    return f"{token[:keep]}…({len(token)} chars)"


def duration(seconds: float) -> str:
    """``42s``, ``4m 10s``, ``2h``, ``2h 5m``, ``3d 4h``: at most two units, zero units dropped."""
    total = int(abs(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    units = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    first = next((i for i, (value, _) in enumerate(units) if value), len(units) - 1)
    shown = [f"{value}{unit}" for value, unit in units[first : first + 2] if value]
    return " ".join(shown) or "0s"


def utc(timestamp: float) -> str:
    """A NumericDate as ``2027-01-15 08:00:00 UTC``; out-of-range values are shown as they are."""
    try:
        return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{timestamp!r} (out of range)"
