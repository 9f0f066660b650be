"""CSV cells that a spreadsheet shows as text, never runs; and a count as a person types it.

A spreadsheet runs a cell that starts with one of FORMULA_START as a formula; file names and
sample IDs come from clients, so such cells are written with a quote before them (OWASP "CSV
injection"), and read back without it.
"""

from __future__ import annotations

import re

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def inert(cell: str) -> str:
    """A cell as written: quoted where a spreadsheet would run it."""
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def as_written(cell: str) -> str:
    """A cell as `inert` was given it."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_START) else cell


def whole_number(text: str) -> int | None:
    """A non-negative whole number written in ASCII digits (at most 9 of them), as typed in a
    cell, a form field or an address, else None: `str.isdigit` also passes "²", which `int`
    refuses, `int` takes "+3" and "1_000", and it refuses 4,301 digits."""
    return int(text) if re.fullmatch(r"[0-9]{1,9}", text) else None
