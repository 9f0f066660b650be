"""CSV cells that a spreadsheet shows as text, never runs.

A spreadsheet runs a cell that starts with one of FORMULA_START as a formula; file names and
sample IDs come from clients, so such cells are written with a quote before them (OWASP "CSV
injection"), and read back without it.
"""

from __future__ import annotations

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def inert(cell: str) -> str:
    """A cell as written: quoted where a spreadsheet would run it."""
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def as_written(cell: str) -> str:
    """A cell as `inert` was given it."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_START) else cell
