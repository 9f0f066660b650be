"""The sample a batch's images come from, as the technologist describes it: its ID (the
laboratory's accession or specimen number, so a printed report and a downloaded file say whose
film they count) and the film's total white-cell count from the analyzer (for the absolute
counts). Kept in the stored batch, given once and kept through reviews and added images, and
deleted with it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hematovision.reference import white_cell_count
from hematovision.web.forms import TypedForm, plain_text

MAX_ID_LENGTH = 40
BAD_ID = (f"A sample ID is at most {MAX_ID_LENGTH} letters, digits, spaces and punctuation, "
          "with a letter or digit (such as an accession number: H-2026-01234); {typed!r} is "
          "not.")
# Form fields, as the batch page names them.
ID_FIELD = "sample_id"
COUNT_FIELD = "wbc"
NUCLEATED_FIELD = "wbc_includes_nrbc"  # a checkbox: present (any value) when ticked


@dataclass(frozen=True)
class Sample:
    id: str = ""
    white_cells_per_litre: float | None = None  # x 10^9/L; None when not given
    # The count is of all nucleated cells: the analyzer does not count nucleated red cells
    # apart, so the differential's are taken out of it (`reference.corrected_count`).
    includes_nucleated_red_cells: bool = False


def sample_id(text: str) -> str:
    """A sample ID as typed, made canonical (`forms.plain_text`); ValueError with a message for
    the user when it is longer than MAX_ID_LENGTH or holds other than plain text."""
    try:
        return plain_text(text, MAX_ID_LENGTH)
    except ValueError:
        raise ValueError(BAD_ID.format(typed=text[:MAX_ID_LENGTH + 10])) from None


def read_form(form: Mapping[str, str]) -> tuple[Sample | None, TypedForm]:
    """The sample a form gives (empty fields clear what was given before; the nucleated-red-cell
    box counts as ticked when sent at all, as browsers send a checkbox), or None and the form
    with a message for each refused field."""
    typed = {name: str(form.get(name, ""))[:200] for name in (ID_FIELD, COUNT_FIELD)}
    errors, values = {}, {}
    for name, read in ((ID_FIELD, sample_id), (COUNT_FIELD, white_cell_count)):
        try:
            values[name] = read(typed[name])
        except ValueError as exc:
            errors[name] = str(exc)
    typed[NUCLEATED_FIELD] = "on" if form.get(NUCLEATED_FIELD) else ""
    if errors:
        return None, TypedForm(typed, errors)
    return (Sample(values[ID_FIELD], values[COUNT_FIELD], bool(typed[NUCLEATED_FIELD])),
            TypedForm(typed))


def of(batch: dict[str, Any]) -> Sample:
    """The sample a stored batch was described as (empty when it never was)."""
    stored = batch.get("sample") or {}
    return Sample(stored.get("id", ""), stored.get("white_cells_per_litre"),
                  bool(stored.get("includes_nucleated_red_cells")))


def store(batch: dict[str, Any], sample: Sample, at: float) -> None:
    """Record `sample` in a stored batch (in place), replacing what was given before."""
    batch["sample"] = {"id": sample.id, "white_cells_per_litre": sample.white_cells_per_litre,
                       "includes_nucleated_red_cells": sample.includes_nucleated_red_cells,
                       "at": at}


def in_words(sample: Sample) -> str:
    """The sample's details as saved, for the batch's history."""
    if sample == Sample():
        return "cleared"
    count = sample.white_cells_per_litre
    return "; ".join([f"ID {sample.id}" if sample.id else "no ID",
                      f"white-cell count {count:g} × 10⁹/L" if count is not None
                      else "no white-cell count",
                      *(["the count includes nucleated red cells"]
                        if sample.includes_nucleated_red_cells else [])])


def form_of(sample: Sample) -> TypedForm:
    """The form filled in with a sample as stored."""
    count = sample.white_cells_per_litre
    return TypedForm({ID_FIELD: sample.id, COUNT_FIELD: "" if count is None else f"{count:g}",
                       NUCLEATED_FIELD: "on" if sample.includes_nucleated_red_cells else ""})


def source_group(batch: dict[str, Any]) -> str:
    """The source a batch's cells came from, as a training split groups them: its sample
    ("sample:<ID>", one group across the batches of one sample) or, without an ID, the batch
    ("batch:<id>"). Cells of one film look alike (one patient, one stain), so they never sit
    on both sides of a split."""
    described = of(batch)
    return f"sample:{described.id}" if described.id else f"batch:{batch['id']}"
