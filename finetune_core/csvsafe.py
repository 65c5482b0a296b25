"""The one writer and reader for every CSV the product writes for people.

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, in some, a
tab or carriage return before one of them) as a formula: a class or file name such as
``=1+2.png`` or ``@SUM(1+1)*cmd|' /C calc'!A0`` would run when someone opens
``predictions.csv`` or ``manifest.csv``. :func:`escape_cell` prefixes such cells with a
single quote (OWASP's advice), which spreadsheets show as text; :func:`unescape_cell`
removes exactly that quote, so the product reads its own files back as they were.

The rule is a bijection: a cell is "risky" when, after any leading quotes, spaces and
newlines, it starts with a trigger character (plain numbers such as ``-0.5`` are data,
not formulas, and pass through). The writer adds one quote to every risky cell; the
reader removes one quote from a risky cell that starts with a quote. A name that really
starts with ``'=`` is written ``''=`` and read back as ``'=``.

CSV files people give the product (CSV imports) are user data, read with :mod:`csv`
directly: they are never unescaped.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Iterator
from typing import IO, Any

# OWASP's list, plus the full-width forms some spreadsheets also treat as formula starts.
TRIGGERS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
QUOTE = "'"
_LEAD = "' \n"  # looked past when deciding (so the rule holds for already-quoted cells)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_FIRST = TRIGGERS | frozenset(_LEAD)  # a cell starting with anything else is plain data


def is_risky(cell: str) -> bool:
    """Whether a spreadsheet could read ``cell`` (or ``cell`` behind quotes) as a formula."""
    if not cell or cell[0] not in _FIRST:  # nearly every cell: one set lookup
        return False
    core = cell.lstrip(_LEAD)
    return bool(core) and core[0] in TRIGGERS and not _NUMBER.fullmatch(core)


def escape_cell(value: Any) -> str:
    """The text to write for ``value``: a risky cell gets one leading quote."""
    cell = value if isinstance(value, str) else "" if value is None else str(value)
    return QUOTE + cell if is_risky(cell) else cell


def unescape_cell(cell: str) -> str:
    """The value :func:`escape_cell` was given: one quote off a risky cell, nothing else."""
    return cell[1:] if cell.startswith(QUOTE) and is_risky(cell) else cell


class SafeWriter:
    """``csv.writer`` with every cell escaped."""

    def __init__(self, handle: IO[str], **fmt: Any) -> None:
        self._writer = csv.writer(handle, **fmt)

    def writerow(self, row: Iterable[Any]) -> None:
        # finite numbers go to csv as they are (never a formula); the check inline, as a manifest
        # is a dozen cells a row and 100k rows a dataset
        self._writer.writerow(
            [
                v
                if isinstance(v, int)
                or (isinstance(v, float) and math.isfinite(v))
                or (isinstance(v, str) and v[:1] not in _FIRST)
                else escape_cell(v)
                for v in row
            ]
        )

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(handle: IO[str], **fmt: Any) -> SafeWriter:
    """A CSV writer for files people open; ``fmt`` as for :func:`csv.writer`."""
    return SafeWriter(handle, **fmt)


def to_text(header: Iterable[Any], rows: Iterable[Iterable[Any]], **fmt: Any) -> str:
    """A whole CSV (header, then rows) as text, every cell escaped."""
    buffer = io.StringIO()
    out = writer(buffer, **fmt)
    out.writerow(header)
    out.writerows(rows)
    return buffer.getvalue()


def reader(handle: Iterable[str], **fmt: Any) -> Iterator[list[str]]:
    """Rows of a CSV this module wrote, each cell as it was before escaping."""
    for row in csv.reader(handle, **fmt):
        yield [c[1:] if c and c[0] == QUOTE and is_risky(c) else c for c in row]


def dict_reader(handle: Iterable[str], **fmt: Any) -> Iterator[dict[str, str]]:
    """Like :class:`csv.DictReader` over :func:`reader`: the header row gives the keys;
    missing cells are ``""``, extra cells are dropped."""
    rows = reader(handle, **fmt)
    header = next(rows, None)
    if header is None:
        return
    width = len(header)
    for row in rows:
        if not row:
            continue  # DictReader skips blank lines too
        if len(row) < width:
            row += [""] * (width - len(row))
        yield dict(zip(header, row, strict=False))
