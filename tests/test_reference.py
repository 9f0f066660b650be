"""Reference intervals and where a counted share lies against them (hematovision.reference)."""

import re

import pytest

from hematovision.cells import CELL_TYPES, is_white_cell
from hematovision.reference import (ABOVE, BELOW, Flag, catalog_intervals, corrected_count, flag,
                                    flag_beside, intervals, measure_beside, white_cell_count)


def test_every_white_cell_of_the_catalog_has_the_interval_its_text_states():
    found = catalog_intervals()
    assert set(found) == {name for name in CELL_TYPES if is_white_cell(name)} | {"erythroblast"}
    for name, (low, high) in found.items():
        if is_white_cell(name):
            assert re.match(rf"{low:g}-{high:g} % of white cells", CELL_TYPES[name].normal_share)
    assert found["neutrophil"] == (40, 70) and found["eosinophil"] == (1, 4)
    # Beside the differential, per 100 white cells: nucleated red cells are absent.
    assert found["erythroblast"] == (0, 0)
    assert CELL_TYPES["erythroblast"].normal_share.startswith("Absent from normal adult blood")


@pytest.mark.parametrize("count, white_cells, shown, expected", [
    # 1 of 101 cells: 0.025-5.39 % of them (exact binomial), 0.03-5.7 per 100 white cells.
    (1, 100, (1.0, 0.03, 5.7), Flag(ABOVE, True)),  # one is enough: the film holds some
    (0, 100, (0.0, 0.0, 3.8), None),
    (150, 100, (150.0, 116.0, 195.0), Flag(ABOVE, True)),  # more than the white cells
    (3, 0, (0.0, 41.0, float("inf")), None),  # no white cell counted: nothing to read against
])
def test_nucleated_red_cells_are_read_per_100_white_cells_with_their_range(count, white_cells,
                                                                            shown, expected):
    value, low, high = measure_beside(count, white_cells)
    assert (value, round(low, 2 if low < 1 else 0), round(high, 1 if high < 100 else 0)) == (
        pytest.approx(shown[0]), pytest.approx(shown[1]), pytest.approx(shown[2]))
    assert flag_beside(count, white_cells, (0, 0)) == expected


@pytest.mark.parametrize("count, total, expected", [
    (12, 100, Flag(ABOVE, True)),    # 12 %: range 6.4-20.0 %, all above 4 %
    (6, 100, Flag(ABOVE, False)),    # 6 %: range 2.2-12.6 %, reaches into 1-4 %
    (4, 100, None),                  # on the upper limit: inside
    (1, 100, None),                  # on the lower limit: inside
    (0, 100, Flag(BELOW, False)),    # 0 %: range 0-3.6 %, reaches into 1-4 %
    (0, 400, Flag(BELOW, True)),     # 0 of 400: range 0-0.9 %, all below 1 %
    (0, 0, None),                    # nothing counted
])
def test_a_share_is_flagged_beyond_counting_error_only_when_its_whole_range_is_outside(
        count, total, expected):
    assert flag(count, total, (1, 4)) == expected


def test_a_share_is_judged_as_the_page_shows_it():
    # 701 of 1001 is 70.03 %, shown as 70.0: inside 40-70, as it reads.
    assert flag(701, 1001, (40, 70)) is None
    assert flag(702, 1001, (40, 70)) == Flag(ABOVE, False)  # 70.1 %


def test_no_interval_no_flag():
    assert flag(90, 100, None) is None


def test_a_lab_s_intervals_replace_only_the_classes_they_name():
    found = intervals({"neutrophil": [40, 75], "blast": [0, 0]})
    assert found["neutrophil"] == (40.0, 75.0) and found["blast"] == (0.0, 0.0)
    assert found["lymphocyte"] == catalog_intervals()["lymphocyte"]
    assert intervals(None) == intervals("") == catalog_intervals()


@pytest.mark.parametrize("setting, message", [
    ({"neutrophil": [75, 40]}, "'neutrophil': [75, 40] is not an interval within 0-100 %"),
    ({"neutrophil": [40, 170]}, "not an interval within 0-100 %"),
    ({"neutrophil": "40-70"}, "'neutrophil': '40-70' is not [low, high] in percent"),
    ({"neutrophil": [40]}, "is not [low, high]"),
    ({"neutrophil": [True, 70]}, "is not [low, high]"),
    ([40, 70], "it must map class names to [low, high]"),
    # A mapping would unpack into its keys, as 1-3.
    ({"neutrophil": {"1": 2, "3": 4}}, "'neutrophil': {'1': 2, '3': 4} is not [low, high]"),
    ({"neutrophil": [40, 10 ** 400]}, "is not [low, high] in percent"),  # beyond a float
    ({"": [1, 2]}, "'' is not a class name"),
    ({"neutrophil": list(range(10_000))}, "'neutrophil': [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, "),
])
def test_a_bad_interval_is_refused_naming_it(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        intervals(setting)
    assert len(str(refused.value)) < 200  # a long value is quoted cut short


def test_every_white_cell_with_an_absolute_interval_states_it_in_its_text():
    found = catalog_intervals(absolute=True)
    assert found["neutrophil"] == (2.0, 7.5) and "ig" not in found  # the catalog states none
    for name, (low, high) in found.items():
        assert f"about {low:.1f}-{high:.1f} x 10^9/L" in CELL_TYPES[name].normal_share


def test_an_absolute_count_is_flagged_against_its_interval_in_cells_per_litre():
    # 20 neutrophils of 100 at 5.0 x 10^9/L: 1.00 (range 0.63-1.46), below 2.0-7.5.
    assert flag(20, 100, (2.0, 7.5), white_cells_per_litre=5.0) == Flag(BELOW, True)
    # The same share at 12.0: 2.40 (range 1.52-3.50), inside.
    assert flag(20, 100, (2.0, 7.5), white_cells_per_litre=12.0) is None
    # 60 of 100 at 14.0: 8.40, above 7.5, but the range (6.96-9.75) reaches in.
    assert flag(60, 100, (2.0, 7.5), white_cells_per_litre=14.0) == Flag(ABOVE, False)


def test_a_lab_s_absolute_intervals_are_checked_in_their_own_unit():
    assert intervals({"neutrophil": [1.8, 7.7]}, absolute=True)["neutrophil"] == (1.8, 7.7)
    with pytest.raises(ValueError, match=re.escape("'neutrophil': '1.8-7.7' is not [low, high] "
                                                   "in x 10^9/L")):
        intervals({"neutrophil": "1.8-7.7"}, absolute=True)
    with pytest.raises(ValueError, match="not an interval within 0-1000"):
        intervals({"neutrophil": [1.8, 7700]}, absolute=True)


@pytest.mark.parametrize("typed, count", [("6.5", 6.5), (" 12 ", 12.0), ("6,5", 6.5), (7.25, 7.25),
                                          ("", None), (None, None)])
def test_a_typed_white_cell_count(typed, count):
    assert white_cell_count(typed) == count


@pytest.mark.parametrize("typed", ["abc", "0", "-3", "6500", "nan", "inf", "1e9", True])
def test_a_white_cell_count_that_is_not_one_is_refused_with_a_message(typed):
    with pytest.raises(ValueError, match=r"must be a number of 10\^9 cells per litre above 0 and "
                                         r"at most 1000, such as 6.5"):
        white_cell_count(typed)


def test_a_count_that_included_nucleated_red_cells_is_corrected_as_labs_do():
    # 10 nucleated red cells per 100 white cells: 11.0 x 100 / 110 (ICSH).
    assert corrected_count(11.0, 100, 10) == pytest.approx(10.0)
    assert corrected_count(6.5, 50, 0) == 6.5
    assert corrected_count(6.5, 0, 3) == 6.5  # no white cell counted: nothing to correct by
