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
that replaces the catalog's for the classes it names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hematovision.cells import CELL_TYPES
from hematovision.counting import share_range

ABOVE, BELOW = "above", "below"


@dataclass(frozen=True)
class Flag:
    direction: str  # ABOVE or BELOW the reference interval
    beyond_counting_error: bool  # the whole 95 % counting range lies on that side


def catalog_intervals() -> dict[str, tuple[float, float]]:
    """The catalog's adult reference intervals, in percent of the white cells, by class."""
    return {name: cell.reference_percent for name, cell in CELL_TYPES.items()
            if cell.reference_percent is not None}


def intervals(overrides: Mapping | None = None) -> dict[str, tuple[float, float]]:
    """The catalog's intervals with a lab's `overrides` ({class: [low, high]} in percent) in
    place of those it names; ValueError naming the entry when one is not a valid interval. A
    class the catalog does not know may be given one (a researcher's own model's class)."""
    found = catalog_intervals()
    if overrides is None or overrides == "":
        return found
    if not isinstance(overrides, Mapping):
        raise ValueError("it must map class names to [low, high] in percent, such as "
                         '{"neutrophil": [40, 75]}, not ' f"{overrides!r}")
    for name, value in overrides.items():
        try:
            if isinstance(value, (str, bytes)) or any(isinstance(v, bool) for v in value):
                raise TypeError
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name!r}: {value!r} is not [low, high] in percent") from None
        if not 0 <= low <= high <= 100:
            raise ValueError(f"{name!r}: [{low:g}, {high:g}] is not an interval within 0-100 %")
        found[str(name)] = (low, high)
    return found


def flag(count: int, total: int, interval: tuple[float, float] | None) -> Flag | None:
    """Where `count` of `total` counted white cells lies against `interval` (percent): None
    when within it, when nothing was counted, or with no interval."""
    if interval is None or total <= 0:
        return None
    low, high = interval
    percent = round(100 * count / total, 1)  # as the pages show it, so a flag never contradicts it
    if low <= percent <= high:
        return None
    range_low, range_high = (100 * x for x in share_range(count, total))
    if percent > high:
        return Flag(ABOVE, range_low > high)
    return Flag(BELOW, range_high < low)
