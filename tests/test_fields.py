"""hematovision.fields: finding each white cell of a smear field, and the model inputs it makes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hematovision import fields
from hematovision.fields import cell_inputs, centre_in, white_cells
from hematovision.preprocess import NUCLEUS_CROP_FRACTION, to_input
from tests.conftest import make_smear, with_nuclei

SMEAR = make_smear(30, seed=1)


def test_two_white_cells_are_found_each_at_its_nucleus_left_to_right():
    field = with_nuclei(SMEAR, [(240, 110, 22), (80, 120, 22)])
    found = white_cells(field)
    assert [(round(c.centre[0]), round(c.centre[1])) for c in found] == [(80, 120), (240, 110)]
    left, top, right, bottom = found[0].box
    assert (left, top, right, bottom) == pytest.approx((58, 98, 102, 142), abs=2)


def test_the_lobes_of_one_segmented_nucleus_are_one_cell():
    field = with_nuclei(SMEAR, [(160, 120, 36)], lobes=3)
    mask = fields.nucleus_mask(field)[0]
    assert len(fields._pieces(mask)) == 3  # apart in the mask: joined only by their distance
    [cell] = white_cells(field)
    assert cell.centre == pytest.approx((160.5, 120.5), abs=1)


def test_nuclei_closer_than_the_lobe_distance_are_taken_for_one_cell():
    """The rule's known limit: two white cells nearer than LOBE_DISTANCE of the short side (on
    BCCD, none were: the closest pair lay 0.29 apart) are read as one."""
    gap = fields.LOBE_DISTANCE * 240
    assert len(white_cells(with_nuclei(SMEAR, [(120, 120, 20), (120 + gap - 5, 120, 20)]))) == 1
    assert len(white_cells(with_nuclei(SMEAR, [(100, 120, 20), (100 + gap + 5, 120, 20)]))) == 2


def test_at_a_scale_the_lobe_distance_and_the_smallest_nucleus_scale_with_it():
    """Cells shown twice their training size: nuclei twice the lobe distance apart are lobes of
    one cell, and a nucleus must cover four times the area to count."""
    gap = fields.LOBE_DISTANCE * 240
    two = with_nuclei(SMEAR, [(80, 120, 28), (80 + 1.5 * gap, 120, 28)])
    assert len(white_cells(two)) == 2 and len(white_cells(two, scale=2.0)) == 1
    radius = 1.2 * np.sqrt(fields.MIN_CELL_SHARE * 240 ** 2 / np.pi)  # just above the minimum
    small = with_nuclei(SMEAR, [(160, 120, radius)])
    assert len(white_cells(small)) == 1 and white_cells(small, scale=2.0) == []


def test_platelet_sized_specks_are_not_white_cells():
    specks = [(40, 40, 5), (200, 200, 5), (100, 60, 4)]
    assert white_cells(with_nuclei(SMEAR, specks)) == []
    [cell] = white_cells(with_nuclei(SMEAR, [(160, 120, 22), *specks]))
    assert cell.centre == pytest.approx((160.5, 120.5), abs=1)
    assert white_cells(SMEAR) == []  # red cells and background only
    assert white_cells(Image.new("RGB", (3, 2), "white")) == []  # smaller than one grid cell


def test_a_field_is_read_the_same_at_twice_the_size():
    field = with_nuclei(SMEAR, [(80, 120, 22), (240, 110, 22)])
    large = field.resize((640, 480), Image.Resampling.NEAREST)
    found = [v for c in white_cells(large) for v in c.centre]
    assert found == pytest.approx([2 * v for c in white_cells(field) for v in c.centre], abs=2)


def test_cell_inputs_give_each_cell_of_a_field_its_own_crop():
    field = with_nuclei(SMEAR, [(80, 120, 22), (240, 110, 22)])
    inputs, found = cell_inputs(field, 64, "nucleus")
    assert found == 2
    assert [place["number"] for _, place in inputs] == [1, 2]
    assert {place["of"] for _, place in inputs} == {2}
    for (array, place), cell in zip(inputs, white_cells(field), strict=True):
        np.testing.assert_array_equal(array, to_input(field, 64, "nucleus", cell.centre))
        assert place["centre"] == [round(cell.centre[0] / 320, 4), round(cell.centre[1] / 240, 4)]
        side = NUCLEUS_CROP_FRACTION * 240
        left, top, right, bottom = place["square"]
        assert ((right - left) * 320, (bottom - top) * 240) == pytest.approx((side, side), abs=0.1)
    # The two crops differ: each holds its own cell; the whole-field crop lies between them.
    assert not np.array_equal(inputs[0][0], inputs[1][0])
    [(whole, place)], found = cell_inputs(field, 64, "nucleus", each_cell=False)
    assert place is None and found == 2  # counted, read whole
    np.testing.assert_array_equal(whole, to_input(field, 64, "nucleus"))


def test_one_cell_none_found_or_no_crop_keep_the_served_input_unchanged():
    one = with_nuclei(SMEAR, [(160, 120, 22), (40, 40, 5)])
    for image, crop, found in ((one, "nucleus", 1), (SMEAR, "nucleus", 0),
                               (one, "nucleus:0.4", 1),
                               (with_nuclei(SMEAR, [(80, 120, 22), (240, 110, 22)]), "none", None)):
        [(array, place)], counted = cell_inputs(image, 64, crop)
        assert place is None and counted == found  # a model without a crop looks for none
        np.testing.assert_array_equal(array, to_input(image, 64, crop))


def test_a_field_with_more_cells_than_a_smear_field_holds_is_read_whole(monkeypatch):
    field = with_nuclei(SMEAR, [(60, 60, 20), (200, 60, 20), (60, 190, 20), (200, 190, 20)])
    assert len(cell_inputs(field, 32, "nucleus")[0]) == 4
    monkeypatch.setattr(fields, "MAX_CELLS", 3)
    [(array, place)], found = cell_inputs(field, 32, "nucleus")
    assert place is None and found == 4
    np.testing.assert_array_equal(array, to_input(field, 32, "nucleus"))


def test_a_place_finds_its_cell_in_a_resized_copy():
    field = with_nuclei(SMEAR, [(80, 120, 22), (240, 110, 22)])
    [(_, first), _], _ = cell_inputs(field, 32, "nucleus")
    assert centre_in(first, (1024, 768)) == pytest.approx((80.5 * 3.2, 120.5 * 3.2), abs=0.5)
    assert centre_in(None, (1024, 768)) is None
