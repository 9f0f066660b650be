"""A manual count of the film a batch counts, as the technologist types it on the batch page, to
compare the batch's differential with (`hematovision.comparison`). Kept in the stored batch
like the sample's details: given once, kept through reviews and added images, deleted with it.

The form has one field per white-cell class of the batch's model and one for the white cells
of classes it does not name (a basophil or a blast a four-class model cannot count), so that
the manual shares are of every white cell counted by hand; and for a model that names nucleated
red cells, one for those met while counting, which labs report per 100 white cells. An empty
field counts none: a technologist types the classes seen. A form with every field empty clears
the count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hematovision.cells import is_nucleated_red_cell, is_white_cell
from hematovision.comparison import MAX_MANUAL_CELLS
from hematovision.spreadsheet import whole_number
from hematovision.web.forms import TypedForm

FIELD_PREFIX = "manual_"
OTHER = "other"  # the field of the white cells of classes the model does not name
BAD_COUNT = "A count of cells is a whole number from 0 to {top:,}; {typed!r} is not."
TOO_MANY = "A manual count of at most {top:,} cells is compared; these add up to {total:,}."
NO_WHITE_CELL = ("Nucleated red cells are counted per 100 white cells: give the white cells "
                 "counted too.")


@dataclass(frozen=True)
class ManualCount:
    counts: dict[str, int]  # by class, every white-cell class of the model, zeros included
    other: int = 0  # white cells of classes the model does not name
    # Nucleated red cells met while counting them, by class (those the model names).
    beside: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values()) + self.other


def field_names(classes: list[str]) -> list[str]:
    """The form's fields: one per white-cell class of the model, in its order, then OTHER,
    then one per nucleated red-cell class of the model."""
    return ([FIELD_PREFIX + c for c in classes if is_white_cell(c)] + [FIELD_PREFIX + OTHER]
            + [FIELD_PREFIX + c for c in classes if is_nucleated_red_cell(c)])


def read_form(form: Mapping[str, str], classes: list[str]
              ) -> tuple[ManualCount | None, TypedForm]:
    """The manual count a form gives (all fields empty: no count, which clears one given
    before), or None and the form with a message for each refused field."""
    names = field_names(classes)
    typed = {name: str(form.get(name, "")).strip()[:20] for name in names}
    errors, values = {}, {}
    for name, text in typed.items():
        value = _cells(text)
        if value is None:
            errors[name] = BAD_COUNT.format(top=MAX_MANUAL_CELLS, typed=text)
        values[name] = value or 0
    other = names.index(FIELD_PREFIX + OTHER)
    counted = ManualCount({_class(name): values[name] for name in names[:other]},
                          values[names[other]],
                          {_class(name): values[name] for name in names[other + 1:]})
    if not errors and sum(values.values()) > MAX_MANUAL_CELLS:
        errors[""] = TOO_MANY.format(top=MAX_MANUAL_CELLS, total=sum(values.values()))
    elif not errors and any(counted.beside.values()) and not counted.total:
        errors[""] = NO_WHITE_CELL
    if errors:
        return None, TypedForm(typed, errors)
    return counted, TypedForm(typed)


def _class(name: str) -> str:
    return name[len(FIELD_PREFIX):]


def _cells(text: str) -> int | None:
    """A field's count: 0 when empty, None when not a whole number from 0 to MAX_MANUAL_CELLS."""
    if not text:
        return 0
    found = whole_number(text)
    return found if found is not None and found <= MAX_MANUAL_CELLS else None


def of(batch: dict[str, Any]) -> ManualCount | None:
    """The manual count stored with a batch; None when none was given."""
    stored = batch.get("manual")
    if not stored:
        return None
    return ManualCount(dict(stored["counts"]), stored.get("other", 0),
                       dict(stored.get("beside", {})))


def store(batch: dict[str, Any], counted: ManualCount, at: float) -> None:
    """Record a manual count in a stored batch (in place), replacing any before; an empty one
    (no cell) removes it."""
    if counted.total:
        batch["manual"] = {"counts": counted.counts, "other": counted.other,
                           "beside": counted.beside, "at": at}
    else:
        batch.pop("manual", None)


def form_of(counted: ManualCount | None) -> TypedForm:
    """The form filled in with a stored count (zeros left empty, as typed)."""
    if counted is None:
        return TypedForm()
    return TypedForm({FIELD_PREFIX + c: str(n) if n else "" for c, n in
                       [*counted.counts.items(), (OTHER, counted.other),
                        *counted.beside.items()]})
