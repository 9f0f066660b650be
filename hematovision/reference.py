"""Reference intervals of the differential, and where a counted share lies against them.

A lab reads a differential against its adult reference intervals and flags a share outside
one (an eosinophil share above 4 % reads "eosinophilia"). A count of 100 cells samples the film,
so a share just outside its interval may come from a film inside it: a flag is called beyond
counting error only when the share's whole 95 % counting range (`counting.share_range`) lies
outside the interval, and otherwise "within counting error". Neither covers the model's own
mistakes: `training.flags` measures how often the flags are right on films drawn from a
model's test images.

The intervals default to the cell-type catalog's (`cells.CellType.reference_percent`); a lab
sets its own with the REFERENCE_INTERVALS setting, a mapping of class to [low, high] in percent
that replaces the catalog's for the classes it names. Given the film's total white-cell count
from the analyzer, each share is also an absolute count (x 10^9/L), read against the catalog's
absolute intervals (`reference_absolute`) or the lab's ABSOLUTE_REFERENCE_INTERVALS: labs and
ICSH prefer absolute counts, since a share can be raised only because another class fell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from hematovision.cells import CELL_TYPES
from hematovision.counting import share_range
from hematovision.output import quoted

ABOVE, BELOW = "above", "below"
# The settings that give a lab's own intervals, by whether they are absolute counts: keys of the
# web app's configuration, also read from the environment as HEMATOVISION_<key> by the app and
# the predict command; and the unit of each.
SETTINGS = {False: "REFERENCE_INTERVALS", True: "ABSOLUTE_REFERENCE_INTERVALS"}
UNITS = {False: "% of white cells", True: "x 10^9/L"}
# The largest total white-cell count taken, x 10^9/L: above the highest counts of leukaemias
# (several hundred), far below a typing slip of a unit (cells per microlitre: thousands).
MAX_WHITE_CELL_COUNT = 1000.0


@dataclass(frozen=True)
class Flag:
    direction: str  # ABOVE or BELOW the reference interval
    beyond_counting_error: bool  # the whole 95 % counting range lies on that side


def catalog_intervals(absolute: bool = False) -> dict[str, tuple[float, float]]:
    """The catalog's adult reference intervals by class: in percent of the white cells, or
    with `absolute` as counts, x 10^9/L."""
    attribute = "reference_absolute" if absolute else "reference_percent"
    return {name: getattr(cell, attribute) for name, cell in CELL_TYPES.items()
            if getattr(cell, attribute) is not None}


def intervals(overrides: Mapping | None = None, absolute: bool = False
              ) -> dict[str, tuple[float, float]]:
    """The catalog's intervals (`catalog_intervals`) with a lab's `overrides` ({class: [low,
    high]}, in the same unit) in place of those it names; ValueError naming the entry when one
    is not a valid interval. A class the catalog does not know may be given one (a
    researcher's own model's class)."""
    found = catalog_intervals(absolute)
    if overrides is None or overrides == "":
        return found
    unit, example, top = (("x 10^9/L", '{"neutrophil": [1.8, 7.5]}', MAX_WHITE_CELL_COUNT)
                          if absolute else ("percent", '{"neutrophil": [40, 75]}', 100.0))
    if not isinstance(overrides, Mapping):
        raise ValueError(f"it must map class names to [low, high] in {unit}, such as {example}, "
                         f"not {quoted(overrides)}")
    for name, value in overrides.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{quoted(name)} is not a class name")
        try:
            # A list of two numbers: a mapping or a string would unpack into its keys or
            # characters, and a boolean is a number to Python.
            if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) for v in value):
                raise TypeError
            low, high = (float(v) for v in value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{name!r}: {quoted(value)} is not [low, high] in {unit}") from None
        if not 0 <= low <= high <= top:
            raise ValueError(f"{name!r}: [{low:g}, {high:g}] is not an interval within "
                             f"0-{top:g} {'%' if not absolute else unit}")
        found[str(name)] = (low, high)
    return found


def white_cell_count(value) -> float | None:
    """A film's total white-cell count (x 10^9/L, from the analyzer) as a user typed it; None
    when empty; ValueError with a message for the user when it is not a count."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        count = float(str(value).strip().replace(",", "."))  # a decimal comma, as many labs write
    except (TypeError, ValueError):
        count = float("nan")
    if not 0 < count <= MAX_WHITE_CELL_COUNT:  # also refuses nan and inf
        raise ValueError(f"The white-cell count must be a number of 10^9 cells per litre above 0 "
                         f"and at most {MAX_WHITE_CELL_COUNT:g}, such as 6.5 (6,500 per "
                         f"microlitre); {str(value)[:40]!r} is not.")
    return count


def corrected_count(white_cells_per_litre: float, white_cells: int,
                    nucleated_red_cells: int) -> float:
    """An analyzer's white-cell count that included the film's nucleated red cells (an analyzer
    that does not count them apart), corrected for them as labs do (ICSH, CLSI H20): times
    100 / (100 + nucleated red cells per 100 white cells), that is times the white cells'
    share of the nucleated cells counted. Unchanged when no white cell was counted."""
    if not white_cells:
        return white_cells_per_litre
    return white_cells_per_litre * white_cells / (white_cells + nucleated_red_cells)


def measure(count: int, total: int, white_cells_per_litre: float | None = None
            ) -> tuple[float, float, float]:
    """The figure `count` of `total` counted white cells gives, as the pages show it (a
    percent to one decimal, or given the film's total count, `white_cells_per_litre`, cells
    x 10^9/L to two; 0 when nothing was counted), and its 95 % counting range in that unit
    (`counting.share_range`, unrounded)."""
    scale, digits = (100, 1) if white_cells_per_litre is None else (white_cells_per_litre, 2)
    low, high = share_range(count, total)
    return (round(scale * count / total, digits) if total > 0 else 0.0), scale * low, scale * high


def measure_beside(count: int, white_cells: int) -> tuple[float, float, float]:
    """A class counted beside the differential (nucleated red cells) per 100 counted white
    cells, as the pages show it (one decimal; 0 when no white cell was counted), and its 95 %
    counting range per 100 white cells: from the range of its share of all the cells counted
    (`count` of `count + white_cells`), as 100 p / (1 - p)."""
    low, high = share_range(count, count + white_cells)
    value = round(100 * count / white_cells, 1) if white_cells > 0 else 0.0
    return value, _per_100_white(low), _per_100_white(high)


def _per_100_white(share: float) -> float:
    return math.inf if share >= 1 else 100 * share / (1 - share)


def flag(count: int, total: int, interval: tuple[float, float] | None,
         white_cells_per_litre: float | None = None) -> Flag | None:
    """Where `count` of `total` counted white cells lies against `interval`: in percent, or
    given the film's total count (`white_cells_per_litre`, x 10^9/L) as an absolute count
    against an interval in x 10^9/L. None when within it, when nothing was counted, or with no
    interval. Judged on the figure as shown (`measure`), so a flag never contradicts it."""
    if interval is None or total <= 0:
        return None
    return _flag_of(interval, *measure(count, total, white_cells_per_litre))


def flag_beside(count: int, white_cells: int,
                interval: tuple[float, float] | None) -> Flag | None:
    """Where a class counted beside the differential lies against its `interval` per 100 white
    cells (`measure_beside`): nucleated red cells, absent from an adult's blood (0-0), are
    flagged above beyond counting error as soon as one is counted. None as `flag`."""
    if interval is None or white_cells <= 0:
        return None
    return _flag_of(interval, *measure_beside(count, white_cells))


def _flag_of(interval: tuple[float, float], value: float, range_low: float,
             range_high: float) -> Flag | None:
    """Where a figure as shown, with its counting range, lies against `interval` (`flag`)."""
    low, high = interval
    if low <= value <= high:
        return None
    if value > high:
        return Flag(ABOVE, range_low > high)
    return Flag(BELOW, range_high < low)
