"""The magnification check in the app: each image's red-cell ratio on its result page, in the
API and the CSV; the batch page's verdict on the median; the model page's recorded figures; and
nothing of it for a model whose card records no reference."""

from __future__ import annotations

import csv
import io
import re
from html import unescape
from pathlib import Path

import pytest

from hematovision.magnification import red_cell_scale
from tests.conftest import make_smear
from tests.web_helpers import csv_of, make_models_root, page, text, upload

CHECK = {"data": "test", "n": 40, "batch_draws": 2000, "rows": [
    {"name": "as recorded", "description": "d", "median_ratio": 1.01, "measured": 1.0,
     "single_outside": 0.02, "batches_checked": 1.0, "batches_outside": 0.0},
    {"name": "zoom 1.5x", "description": "d", "median_ratio": 1.47, "measured": 0.99,
     "single_outside": 0.61, "batches_checked": 1.0, "batches_outside": 0.987}]}


def film(diameter: float, seed: int = 0) -> bytes:
    out = io.BytesIO()
    make_smear(diameter, seed=seed).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def models_root(tmp_path, trusted_model_dir):
    """'measuring' records a reference: the red cells of a 30-pixel film; 'plain' none."""
    root = tmp_path / "models"
    scale = red_cell_scale(make_smear(30))
    reference = {"red_cell_scale": scale, "single_image_range": [0.8, 1.3],
                 "batch_range": [0.8333, 1.25], "min_batch_images": 5,
                 "reference": {"data": "train", "images": 100}, "check": CHECK}
    make_models_root(root, trusted_model_dir, names=("measuring",),
                     card={"magnification": reference})
    make_models_root(root, trusted_model_dir, names=("plain", "tiny"))
    return root


def films(diameter: float, count: int = 6) -> list[tuple[str, bytes]]:
    return [(f"film{i}.png", film(diameter, seed=i)) for i in range(count)]


def test_a_batch_at_another_magnification_is_flagged_on_its_page(client):
    html = page(client, upload(client, "measuring", *films(45)))
    check = re.search(
        r'id="magnification-check"\s+data-outside="(\w+)" data-median-ratio="([\d.]+)"', html)
    assert check and check.group(1) == "true"
    assert float(check.group(2)) == pytest.approx(1.5, abs=0.08)
    assert "Check the magnification" in html and "6 images measured" in html


def test_a_batch_at_the_training_magnification_is_within(client):
    html = page(client, upload(client, "measuring", *films(30)))
    assert re.search(r'id="magnification-check"\s+data-outside="false"', html)
    assert "Check the magnification" not in html and "within the 0.83-1.25" in html


def test_too_few_measured_images_give_no_batch_verdict(client):
    blank = io.BytesIO()
    make_smear(30).point(lambda _: 230).save(blank, "PNG")  # no cells to measure
    html = page(client, upload(client, "measuring", *films(45, count=4),
                               ("blank.png", blank.getvalue())))
    assert 'id="magnification-check"' not in html


def test_one_image_shows_its_ratio_and_a_caution_only_outside_its_range(client):
    large = page(client, upload(client, "measuring", ("large.png", film(45))))
    row = re.search(r'id="why-magnification" data-outside="(\w+)"', large)
    assert row and row.group(1) == "true"
    assert 'id="magnification-note"' in large and "0.80-1.30x" in large
    usual = page(client, upload(client, "measuring", ("usual.png", film(30))))
    assert re.search(r'id="why-magnification" data-outside="false"', usual)
    assert 'id="magnification-note"' not in usual


def test_the_api_and_the_csv_carry_the_ratios_and_the_batch_verdict(client):
    response = client.post("/api/predict", data={
        "model": "measuring", "file": [(io.BytesIO(d), n) for n, d in films(45)]})
    body = response.get_json()
    assert response.status_code == 200
    assert all(r["red_cell_ratio"] == pytest.approx(1.5, abs=0.1) for r in body["results"])
    assert body["magnification"]["outside"] is True and body["magnification"]["measured"] == 6
    assert body["magnification"]["batch_range"] == [0.8333, 1.25]

    location = upload(client, "measuring", *films(45))
    rows = list(csv.DictReader(csv_of(page(client, location + ".csv"))))
    assert [float(r["red_cell_ratio"]) for r in rows] == pytest.approx(
        [r["red_cell_ratio"] for r in body["results"]], abs=0.001)


def test_a_model_without_a_reference_shows_no_check(client):
    html = page(client, upload(client, "plain", *films(45)))
    assert 'id="magnification-check"' not in html
    body = client.post("/api/predict", data={
        "model": "plain", "file": [(io.BytesIO(d), n) for n, d in films(45)]}).get_json()
    assert "magnification" not in body and "red_cell_ratio" not in body["results"][0]
    assert 'id="magnification"' not in page(client, "/models/plain")


def test_the_model_page_shows_how_the_check_read_the_test_images(client):
    html = page(client, "/models/measuring")
    assert 'id="magnification-table"' in html
    assert re.search(r'data-change="zoom 1.5x">.*?1\.47.*?61\.0 %.*?98\.7 %', html, re.S)
    assert 'id="training-resolution"' not in html  # a reference recorded before it was measured


def test_an_image_of_a_flagged_batch_says_so_even_when_within_on_its_own(client):
    """An image enlarged 1.1 times is within the single-image range, but its batch of images
    enlarged 1.5 times is not: its page cautions with the batch's median."""
    location = upload(client, "measuring", ("mild.png", film(33)), *films(45))
    html = unescape(page(client, location + "/0"))
    assert re.search(r'id="why-magnification" data-outside="false"', html)
    assert re.search(r"within\s+\(its batch: 1\.[45]\dx, outside: check the magnification\)",
                     html)
    assert re.search(r"of this image's batch are a median\s+1\.[45]\d times", html)


def test_one_image_outside_in_a_batch_within_is_not_called_another_magnification(client):
    """A genuine image's red cells may measure outside one image's range (0.80 against
    0.84-1.93): where its batch's median lies within, the page had still said "the image was
    probably taken at another magnification" and "check the magnification"."""
    location = upload(client, "measuring", ("large.png", film(45)), *films(30))
    html = unescape(page(client, location + "/0"))
    assert re.search(r'id="why-magnification" data-outside="true"', html)
    assert re.search(r"outside\s+\(its batch: (0\.9|1\.0)\dx, within\)", html)
    assert "check the magnification" not in html
    assert re.search(r"its batch's median, (0\.9|1\.0)\d, lies within the range,\s+so this image "
                     r"alone may have been taken at another magnification", html)


def test_a_batch_unlike_the_training_images_but_of_their_red_cells_size_points_to_exposure(
        client):
    """Most of a batch called not a blood-cell image, its red cells at the training images'
    size: the model's kind of image, most likely, taken at another exposure; the page had led
    with "classify them with" another model, a dead end."""
    from hematovision.web import uploads

    batch_id = upload(client, "measuring", *films(30)).rsplit("/", 1)[1]
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda b: [r.update(status="not_a_cell") for r in b["results"]])
    banner = text(re.search(r'id="wrong-model">(.*?)</div>',
                            page(client, f"/batch/{batch_id}"), re.S).group(1))
    assert re.search(r"Their red cells measure the size of its training images' \(a median "
                     r"(0\.9|1\.0)\d times in the 6 of them measured\), so they are likely the "
                     r"kind of image measuring expects, taken at another exposure", banner)
    assert banner.index("another exposure") < banner.index("classify them with plain")
    # At another magnification, the other models come first, as before.
    batch_id = upload(client, "measuring", *films(45)).rsplit("/", 1)[1]
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda b: [r.update(status="not_a_cell") for r in b["results"]])
    banner = text(re.search(r'id="wrong-model">(.*?)</div>',
                            page(client, f"/batch/{batch_id}"), re.S).group(1))
    assert banner.index("classify them with plain") < banner.index("If they are the kind")


def test_only_the_images_unlike_the_training_images_are_measured_for_their_kind(client):
    """A walker's batch: five films accepted at the training images' size and five images
    called not a blood-cell image whose red cells could not be measured (a screenshot, noise):
    the page had said these were "likely the kind of image" the model expects, from the
    accepted films' red cells."""
    from hematovision.web import uploads

    batch_id = upload(client, "measuring", *films(30, count=10)).rsplit("/", 1)[1]

    def half_unlike(batch):
        for result in batch["results"][:5]:
            result.update(status="not_a_cell", red_cell_ratio=None)
        for result in batch["results"][5:]:
            result.update(status="accepted", label="neutrophil", confidence=0.99)

    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         half_unlike)
    banner = text(re.search(r'id="wrong-model">(.*?)</div>',
                            page(client, f"/batch/{batch_id}"), re.S).group(1))
    assert "likely the kind of image" not in banner and "red cells measure" not in banner
    assert "Eosinophil, Lymphocyte, Monocyte, Neutrophil" in banner  # as the pages name them
    assert banner.index("classify them with plain") < banner.index("If they are the kind")
