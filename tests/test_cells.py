import json
from pathlib import Path

import pytest

from hematovision.cells import (CELL_TYPES, display_name, is_nucleated_red_cell, is_white_cell,
                               other_white_cells)
from hematovision.predictor import MODELS_ROOT

FOUR = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
EIGHT = FOUR + ["basophil", "erythroblast", "ig", "platelet"]


def test_every_class_of_the_committed_models_is_in_the_catalog():
    classes = {c for card in Path(MODELS_ROOT).glob("*/model_card.json")
               for c in json.loads(card.read_text())["classes"]}
    assert classes == set(EIGHT)
    assert set(CELL_TYPES) >= classes


@pytest.mark.parametrize("name", EIGHT)
def test_every_entry_says_what_the_cell_looks_like_and_what_changes_it(name):
    cell = CELL_TYPES[name]
    assert cell.name == name and cell.display_name.lower().startswith(name.replace("ig", "imm"))
    # Whole sentences, not placeholders ("Not applicable." is a fair answer for lowered_in).
    for text in (cell.morphology, cell.raised_in):
        assert text.endswith(".") and len(text.split()) >= 4
    assert cell.lowered_in.endswith(".")


def test_white_cell_shares_are_stated_as_percentages():
    for name in FOUR:
        assert "%" in CELL_TYPES[name].normal_share


def test_only_white_cells_count_in_the_differential():
    assert [name for name in EIGHT if not is_white_cell(name)] == ["erythroblast", "platelet"]
    assert is_white_cell("blast")  # a researcher's own class: a white-cell model's


def test_only_erythroblasts_are_nucleated_cells_that_are_not_white_cells():
    # What an analyzer that does not count them apart adds to its white-cell count; platelets
    # have no nucleus, and a class the catalog does not know is a white cell.
    assert [name for name in EIGHT if is_nucleated_red_cell(name)] == ["erythroblast"]
    assert not is_nucleated_red_cell("blast")


def test_a_class_the_catalog_does_not_know_is_named_as_its_folder_reads():
    assert display_name("neutrophil") == "Neutrophil"
    assert display_name("blast") == "Blast"
    assert display_name("smudge_cell") == "Smudge cell"
    assert display_name("variant-lymphocyte") == "Variant lymphocyte"
    assert display_name("NRBC") == "NRBC"


def test_examples_of_other_white_cells_leave_out_those_the_model_names():
    assert other_white_cells(["eosinophil", "lymphocyte", "monocyte", "neutrophil"]) == [
        "blast", "basophil"]
    assert other_white_cells(["basophil", "blast", "neutrophil"], plural=True) == [
        "variant lymphocytes"]
    assert other_white_cells(["Blasts", "basophils", "neutrophil"]) == ["variant lymphocyte"]
