import pytest

from hematovision.cells import CELL_TYPES, describe

FOUR = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
EIGHT = FOUR + ["basophil", "erythroblast", "ig", "platelet"]


@pytest.mark.parametrize("name", EIGHT)
def test_every_model_class_has_a_complete_entry(name):
    cell = describe(name)
    assert cell.name == name
    for text in (cell.display_name, cell.morphology, cell.normal_share, cell.raised_in):
        assert len(text) > 5


def test_white_cell_shares_are_stated_as_percentages():
    for name in FOUR:
        assert "%" in CELL_TYPES[name].normal_share


def test_unknown_class_is_an_error():
    with pytest.raises(KeyError, match="blast"):
        describe("blast")
