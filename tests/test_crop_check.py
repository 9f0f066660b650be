"""The nucleus-crop check on a generated BCCD-like folder with known boxes."""

import json

import pytest
from PIL import Image, ImageDraw

from training import crop_check

VOC = """<annotation><filename>{name}</filename><size><width>640</width><height>480</height>
<depth>3</depth></size>{objects}</annotation>"""
OBJECT = ("<object><name>{kind}</name><bndbox><xmin>{0}</xmin><ymin>{1}</ymin><xmax>{2}</xmax>"
          "<ymax>{3}</ymax></bndbox></object>")


def smear(folder, name, nucleus_at, boxes, kind="WBC"):
    image = Image.new("RGB", (640, 480), (230, 190, 200))  # pale pink, no nucleus colour
    x, y = nucleus_at
    ImageDraw.Draw(image).ellipse((x - 40, y - 40, x + 40, y + 40), fill=(90, 60, 170))
    (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    image.save(folder / "JPEGImages" / f"{name}.jpg", quality=95)
    objects = "".join(OBJECT.format(*b, kind=kind) for b in boxes)
    (folder / "Annotations" / f"{name}.xml").write_text(VOC.format(name=name, objects=objects))


@pytest.fixture
def bccd(tmp_path):
    smear(tmp_path, "found", (400, 300), [(340, 240, 460, 360)])
    # The box is drawn far from the only nucleus-coloured disc: the square misses it.
    smear(tmp_path, "missed", (100, 100), [(480, 330, 600, 450)])
    smear(tmp_path, "no_white_cell", (300, 200), [(0, 0, 50, 50)], kind="RBC")  # skipped
    (tmp_path / "bccd_image_notes.csv").write_text(
        "image,labels_csv_category,kaggle_split_of_derived_crops\n"
        "found.jpg,NEUTROPHIL,test\nmissed.jpg,MONOCYTE,train\n")
    return tmp_path


def test_a_square_on_the_nucleus_covers_its_box_and_one_elsewhere_is_reported(bccd):
    result = crop_check.check(bccd, "nucleus")
    assert result["square_side"] == 132.0
    assert result["all"] == {"smears": 2, "centre_in_a_box": 1, "whole_box_inside": 1, "cut": 1,
                             "median_coverage": 0.5, "several_white_cells": 0,
                             "median_box_side": 60.0}
    assert result["by_kaggle_split"]["test"]["centre_in_a_box"] == 1
    assert result["by_kaggle_split"]["train"]["cut"] == 1
    worst, best = result["worst"]
    assert (worst["image"], worst["coverage"], worst["centre_in_a_box"]) == ("missed.jpg", 0.0,
                                                                             False)
    assert (best["image"], best["coverage"], best["label"]) == ("found.jpg", 1.0, "NEUTROPHIL")


def test_a_smaller_square_cuts_the_same_cell(bccd):
    # A 48 px square (0.2 of 240) round a 60 px box keeps less than 80 % of it.
    assert crop_check.check(bccd, "nucleus:0.2")["all"]["cut"] == 2


def test_cli_prints_the_summary_and_writes_json(bccd, tmp_path, capsys):
    out = tmp_path / "check.json"
    crop_check.main(["--bccd", str(bccd), "--json", str(out)])
    assert "of 2 smears, the centre lies in a white-cell box in 1" in capsys.readouterr().out
    assert json.loads(out.read_text())["all"]["smears"] == 2
    with pytest.raises(SystemExit):
        crop_check.main(["--bccd", str(bccd), "--crop", "none"])
    with pytest.raises(SystemExit):
        crop_check.main(["--bccd", str(tmp_path / "absent")])


def test_the_real_bccd_smears_keep_their_white_cell(request):
    """On the shared data: every smear behind a Kaggle train or test image is centred on a
    white cell (the figures the README quotes)."""
    if not (crop_check.BCCD / "Annotations").is_dir():
        pytest.skip(f"{crop_check.BCCD} is absent: BCCD's boxes are needed for this check")
    result = crop_check.check(crop_check.BCCD, "nucleus")
    for split in ("train", "test"):
        figures = result["by_kaggle_split"][split]
        assert figures["centre_in_a_box"] == figures["smears"], split
    assert result["by_kaggle_split"]["test"]["cut"] == 0
