"""training.fields_check on a generated BCCD-like folder with known boxes, and on the shared data
against the figures committed beside the served model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from hematovision.predictor import MODELS_ROOT, Predictor
from tests.test_crop_check import OBJECT, VOC
from tests.web_helpers import make_models_root
from training import fields_check
from training.crop_check import BCCD


def smear(folder: Path, name: str, nuclei: list[tuple[int, int]], boxes: list[tuple]) -> None:
    image = Image.new("RGB", (640, 480), (230, 190, 200))  # pale pink, no nucleus colour
    for x, y in nuclei:
        ImageDraw.Draw(image).ellipse((x - 40, y - 40, x + 40, y + 40), fill=(90, 60, 170))
    for sub in ("JPEGImages", "Annotations"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    image.save(folder / "JPEGImages" / f"{name}.jpg", quality=95)
    objects = "".join(OBJECT.format(*b, kind="WBC") for b in boxes)
    (folder / "Annotations" / f"{name}.xml").write_text(VOC.format(name=name, objects=objects))


@pytest.fixture
def bccd(tmp_path) -> Path:
    folder = tmp_path / "bccd"
    two = [(150, 240), (480, 240)]
    smear(folder, "pair", two, [(100, 190, 200, 290), (430, 190, 530, 290)])
    smear(folder, "missed", [(320, 240)], [(270, 190, 370, 290), (0, 0, 60, 60)])
    smear(folder, "extra", two, [(100, 190, 200, 290)])
    (folder / "bccd_image_notes.csv").write_text(
        "image,labels_csv_category,kaggle_split_of_derived_crops,same_field_of_view_as\n"
        'pair.jpg,"NEUTROPHIL, EOSINOPHIL",not_matched,seen\n'
        "missed.jpg,MONOCYTE,train,\n"
        'extra.jpg,"LYMPHOCYTE,BASOPHIL",not_matched,\n'  # a basophil: not a class of the model
        "seen.jpg,NEUTROPHIL,train,pair\n")
    return folder


@pytest.fixture
def cropping_model(tmp_path, tiny_model_dir) -> Path:
    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    root = make_models_root(tmp_path / "models", tiny_model_dir, names=("cropping",),
                            card={"preprocessing": {**card["preprocessing"], "crop": "nucleus"}})
    return root / "cropping"


def test_cells_found_are_matched_to_the_boxes(bccd):
    found = fields_check.finding(fields_check.boxed_fields(bccd))
    assert {k: found[k] for k in ("smears", "boxes", "found", "missed", "extra")} == {
        "smears": 3, "boxes": 5, "found": 4, "missed": 1, "extra": 1}
    assert found["by_count"] == {"1 boxed, 2 found": 1, "2 boxed, 1 found": 1,
                                 "2 boxed, 2 found": 1}
    assert found["missed_boxes"] == [{"image": "missed.jpg", "box_side": 30.0, "white_cells": 2}]
    assert found["extra_in"] == ["extra.jpg"]


def test_a_two_cell_field_is_read_cell_by_cell_and_as_one_crop(bccd, cropping_model):
    predictor = Predictor(cropping_model)
    result = fields_check.reading(bccd, predictor)
    [row] = result["per_field"]
    assert (row["image"], row["labels"]) == ("pair.jpg", ["neutrophil", "eosinophil"])
    assert result["same_view_in_kaggle_train"] == ["pair.jpg"]
    assert (result["fields"], result["cells"], result["split_in_two"]) == (1, 2, 1)
    named = [cell["label"] for cell in row["cells"]]
    assert row["right_by_cell"] == fields_check._right(row["labels"], named)
    assert row["right_whole"] == fields_check._right(row["labels"], [row["whole"]["label"]])


def test_smears_as_recorded_are_read_as_served_and_at_full_resolution(bccd, tiny_model_dir,
                                                                      tmp_path):
    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    reference = {"red_cell_scale": 0.1, "single_image_range": [0.5, 2.0],
                 "batch_range": [0.8, 1.25], "max_short_side": 240}
    root = make_models_root(tmp_path / "fine", tiny_model_dir, names=("fine",), card={
        "preprocessing": {**card["preprocessing"], "crop": "nucleus"},
        "magnification": reference})
    result = fields_check.resolution(bccd, Predictor(root / "fine"))
    assert (result["smears"], result["sizes"], result["short_side"]) == (3, {"640x480": 3}, 240)
    for way in ("served", "full_resolution"):  # two smears of two cells, one of one
        counts = result[way]
        assert counts["cells"] == 5 == sum(counts[s] for s in ("accepted", "unidentified",
                                                               "not_a_cell"))

def test_fields_of_red_cells_only_are_made_from_the_half_without_the_white_cell(
        bccd, cropping_model):
    """Only smears with one box count; "extra" has its one box in the left half, and its right
    half holds the other disc (a white cell the box missed), which the finder then sees."""
    result = fields_check.red_cells_only(bccd, Predictor(cropping_model))
    assert (result["fields"], result["with_a_white_cell_found"]) == (1, 1)
    assert result["accepted"] + result["unidentified"] + result["not_a_cell"] == 1
    assert sum(result["accepted_without_white_cell_rule_as"].values()) == result[
        "accepted_without_white_cell_rule"]
    smear(bccd, "clear", [(150, 240)], [(100, 190, 200, 290)])
    assert fields_check.red_cells_only(bccd, Predictor(cropping_model))[
        "with_a_white_cell_found"] == 1  # "clear": its free half holds none


def test_labels_are_counted_as_multisets():
    assert fields_check._right(["neutrophil", "eosinophil"], ["eosinophil", "neutrophil"]) == 2
    assert fields_check._right(["neutrophil", "neutrophil"], ["neutrophil"]) == 1
    assert fields_check._right(["neutrophil", "neutrophil"], ["neutrophil", "monocyte"]) == 1
    assert fields_check._right(["lymphocyte", "monocyte"], []) == 0


def test_cli_counts_kaggle_images_and_refuses_a_model_that_reads_whole_images(
        bccd, cropping_model, tiny_model_dir, tmp_path, capsys):
    kaggle = tmp_path / "kaggle"
    (kaggle / "test" / "neutrophil").mkdir(parents=True)
    (bccd / "JPEGImages" / "pair.jpg").rename(kaggle / "test" / "neutrophil" / "two.jpg")
    Image.new("RGB", (320, 240), (230, 190, 200)).save(kaggle / "test" / "neutrophil" / "none.jpg")
    out = tmp_path / "check.json"
    fields_check.main(["--models-root", str(cropping_model.parent), "--model", "cropping",
                       "--bccd", str(bccd), "--kaggle", str(kaggle), "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["kaggle"] == {"test": {"images": 2, "none": 1, "one": 0, "several": 1}}
    printed = capsys.readouterr().out
    changed = result["finding_changed"]
    assert list(changed) == fields_check.KEEP_GEOMETRY and "zoom 1.5x" not in changed
    assert changed["blur 1 px"] == {"found": 2, "missed": 1, "extra": 1}  # as unchanged
    assert "  blur 1 px: 2 found, 1 in no box" in printed
    assert result["reading"]["fields"] == 0  # the pair's smear was moved away
    assert "Kaggle test: 2 images, one cell found in 0, none in 1, several in 1" in printed
    with pytest.raises(SystemExit, match="reads whole images"):
        fields_check.main(["--models-root", str(tiny_model_dir.parent), "--model",
                           tiny_model_dir.name, "--bccd", str(bccd), "--kaggle", str(kaggle)])


def test_the_committed_figures_are_those_of_the_served_model_on_the_shared_data():
    recorded = MODELS_ROOT / "wbc4" / "fields_check.json"
    if not (BCCD / "Annotations").is_dir() or not fields_check.KAGGLE.is_dir():
        pytest.skip(f"{BCCD} or {fields_check.KAGGLE} is absent: the check needs both")
    assert json.loads(recorded.read_text()) == json.loads(
        json.dumps(fields_check.check(MODELS_ROOT / "wbc4")))
