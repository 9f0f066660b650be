"""A smear field holding several white cells, uploaded to a model that crops to the nucleus:
one result per cell, each shown on the field, mapped, counted and exported on its own."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hematovision.fields import cell_inputs
from hematovision.predictor import Predictor
from hematovision.web import heatmap, uploads
from tests.conftest import make_smear, with_nuclei
from tests.web_helpers import (csrf_token, csv_of, image_bytes, make_models_root, page, text,
                               upload)


def nucleus_card(model_dir: Path) -> dict:
    """The trusted tiny model's card, cropping to the nucleus, and familiar with any image (its
    trust layer was fitted on discs, not smears: here every cell gets a class and a map)."""
    card = json.loads((model_dir / "model_card.json").read_text())
    trust = card["trust"]
    trust["ood"]["threshold"] = 1e9
    return {"preprocessing": {**card["preprocessing"], "crop": "nucleus"}, "trust": trust}


@pytest.fixture
def models_root(tmp_path, trusted_model_dir):
    root = make_models_root(tmp_path / "models", trusted_model_dir, names=("tiny",),
                            card=nucleus_card(trusted_model_dir))
    return make_models_root(root, trusted_model_dir, names=("whole",))  # crops nothing


@pytest.fixture
def client(app):
    return app.test_client()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


FIELD = with_nuclei(make_smear(30, seed=1), [(240, 110, 22), (80, 120, 22)])


def folder(client) -> Path:
    return Path(client.application.config["UPLOAD_FOLDER"])


@pytest.fixture
def batch_id(client) -> str:
    location = upload(client, "tiny", ("field.png", png(FIELD)),
                      ("cell.png", image_bytes(fmt="PNG")))
    return location.rsplit("/", 1)[1]


def test_each_white_cell_of_a_field_is_a_result_of_its_own(client, batch_id):
    stored = uploads.load_batch(folder(client), batch_id)
    results = stored["results"]
    assert [(r["file"], (r.get("cell") or {}).get("number")) for r in results] == [
        ("field.png", 1), ("field.png", 2), ("cell.png", None)]
    assert results[0]["image"] == results[1]["image"] != results[2]["image"]  # stored once
    assert [r["cell"]["of"] for r in results[:2]] == [2, 2]
    assert [r["white_cells"] for r in results] == [2, 2, 0]  # the plain disc holds no nucleus
    predictor = Predictor(Path(client.application.config["MODELS_ROOT"]) / "tiny")
    inputs, _ = cell_inputs(FIELD, predictor.input_size, predictor.crop)
    expected = predictor.predict_images_arrays([array for array, _ in inputs])
    for result, prediction, (_, place) in zip(results, expected, inputs):
        assert result["cell"] == place
        assert result["probabilities"] == pytest.approx(prediction.to_dict()["probabilities"])

    html = page(client, f"/batch/{batch_id}")
    assert "Batch of 2 images, 3 results" in text(html)
    assert "field.png, cell 1 of 2" in text(html) and "field.png, cell 2 of 2" in text(html)
    assert f'src="/batch/{batch_id}/1/view.jpg"' in html  # the thumbnail: the cell itself
    assert f'src="/uploads/{results[2]["image"]}.jpg"' in html


def test_a_cell_page_shows_the_field_with_that_cell_outlined(client, batch_id):
    html = page(client, f"/batch/{batch_id}/1")
    assert f'src="/batch/{batch_id}/1/field.jpg"' in html
    assert "This field holds 2 white cells, each classified on its own: this result is for cell 2" \
        in text(html)
    assert "centred on the stained nucleus of cell 2" in text(html)
    response = client.get(f"/batch/{batch_id}/1/field.jpg")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert "no-store" in response.headers["Cache-Control"]
    drawn = np.asarray(Image.open(io.BytesIO(response.data)).convert("RGB"), dtype=int)
    assert drawn.shape[:2] == (240, 320)
    stored = uploads.load_batch(folder(client), batch_id)["results"]
    left, top, right, _ = stored[1]["cell"]["square"]
    edge = drawn[int(top * 240) + 8, int(right * 320) - 1]  # on this cell's square: amber
    assert edge[0] > 200 and edge[0] - edge[2] > 100  # amber, softened by the JPEG
    other_left = stored[0]["cell"]["square"][0]
    other = drawn[int(top * 240) + 30, max(round(other_left * 320), 0) + 1]
    assert other.min() > 200  # the other cell's square: white

    assert 'id="field-note"' not in page(client, f"/batch/{batch_id}/2")  # an image read whole
    whole = client.get(f"/batch/{batch_id}/2/field.jpg")
    assert whole.status_code == 404
    assert "a whole image, not one white cell" in whole.get_data(as_text=True)


def test_a_cells_heat_map_is_of_the_crop_on_that_cell(client, batch_id):
    stored = uploads.load_batch(folder(client), batch_id)
    predictor = Predictor(Path(client.application.config["MODELS_ROOT"]) / "tiny")
    path = uploads.image_path(folder(client), stored["results"][0]["image"])
    maps = []
    for index in (0, 1):
        response = client.get(f"/batch/{batch_id}/{index}/heat-map.png")
        assert response.status_code == 200
        result = stored["results"][index]
        assert response.data == heatmap.stored_overlay(predictor, path, result["label"],
                                                       result["cell"])
        maps.append(response.data)
    assert maps[0] != maps[1]
    assert heatmap.stored_overlay(predictor, path, stored["results"][0]["label"]) not in maps


def test_the_csv_names_each_cell(client, batch_id):
    rows = list(csv.DictReader(csv_of(
        client.get(f"/batch/{batch_id}.csv").get_data(as_text=True))))
    assert [(r["file"], r["cell"], r["white_cells"]) for r in rows] == [
        ("field.png", "1/2", "2"), ("field.png", "2/2", "2"), ("cell.png", "", "0")]


def test_an_image_with_no_white_cell_found_says_so_and_waits_for_review(client, batch_id):
    stored = uploads.load_batch(folder(client), batch_id)
    assert stored["results"][2]["status"] == "unidentified"
    html = page(client, f"/batch/{batch_id}")
    assert ("No white cell was found in 1 image not reviewed yet: its answer is about whatever "
            "lies at the centre of the crop, so it waits for review.") in text(html)
    assert f'href="/batch/{batch_id}/2" id="first-no-white-cell">cell.png</a>' in html
    assert html.count('class="badge text-bg-light border no-white-cell"') == 1
    single = page(client, f"/batch/{batch_id}/2")
    assert 'id="no-white-cell"' in single
    assert "White cells found in the image 0 at least 1 none found: unidentified" in text(single)
    assert 'id="no-white-cell"' not in page(client, f"/batch/{batch_id}/0")
    first = text(page(client, f"/batch/{batch_id}/0"))
    assert "White cells found in the image 2 at least 1 passed" in first
    # A model that reads images whole looks for no white cell, and says nothing of it.
    location = upload(client, "whole", ("cell.png", image_bytes(fmt="PNG")))
    assert 'id="no-white-cell"' not in page(client, location)
    assert 'id="why-white-cells"' not in page(client, location)
    stored = uploads.load_batch(folder(client), location.rsplit("/", 1)[1])
    assert "white_cells" not in stored["results"][0]


def review(client, batch_id: str, index: int, verdict: str):
    response = client.post(f"/batch/{batch_id}/{index}/review",
                           data={"csrf_token": csrf_token(client), "verdict": verdict})
    assert response.status_code == 303


def test_reviewed_cells_of_a_field_stay_out_of_the_training_folder(client, batch_id):
    review(client, batch_id, 0, "eosinophil")
    assert client.get(f"/batch/{batch_id}/reviewed.zip").status_code == 404
    assert 'id="reviewed-zip-link"' not in page(client, f"/batch/{batch_id}")
    review(client, batch_id, 2, "lymphocyte")
    html = page(client, f"/batch/{batch_id}")
    assert "not the 1 of fields holding several white cells" in html
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/batch/{batch_id}/reviewed.zip").data))
    images = [n for n in archive.namelist() if n.endswith(".jpg")]
    assert images == [f"lymphocyte/{batch_id[:8]}-002-cell.jpg"]
    # The differential counts both reviewed cells, the field's one among them.
    rows = list(csv.DictReader(csv_of(
        client.get(f"/batch/{batch_id}.csv").get_data(as_text=True))))
    assert [r["differential_class"] for r in rows][::2] == ["eosinophil", "lymphocyte"]


def test_a_batch_deletion_counts_a_fields_shared_image_once(client, batch_id):
    assert uploads.delete_batch(folder(client), batch_id) == 2  # field.png and cell.png


def test_deleting_the_batch_deletes_the_shared_field_once(client, batch_id):
    assert 'data-confirm="Delete the results of all 2 images of this batch' in page(
        client, f"/batch/{batch_id}")
    response = client.post(f"/batch/{batch_id}/delete", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 303
    assert "the results of 2 images and their stored copies" in text(
        page(client, response.headers["Location"]))
    assert sorted(p.name for p in folder(client).iterdir() if not p.name.startswith(".")) == []


def test_the_api_reads_a_field_cell_by_cell_and_a_whole_image_model_reads_it_whole(client):
    body = client.post("/api/predict", data={"file": [(io.BytesIO(png(FIELD)), "f.png")]}
                       ).get_json()
    assert [(r["file"], r["cell"]["number"]) for r in body["results"]] == [("f.png", 1),
                                                                          ("f.png", 2)]
    assert list(body["results"][0])[:3] == ["file", "cell", "label"]
    body = client.post("/api/predict", data={"model": "whole",
                                             "file": [(io.BytesIO(png(FIELD)), "f.png")]}
                       ).get_json()
    [result] = body["results"]
    assert "cell" not in result


def test_the_model_page_says_how_fields_are_read_and_shows_the_check(client, models_root):
    html = page(client, "/models/tiny")
    assert "Fields with several white cells" in html and 'id="fields-table"' not in html
    assert ("no white cell Unidentified, whatever its confidence, where no white cell is found "
            "in the image") in text(html)
    whole = page(client, "/models/whole")  # reads images whole
    assert 'id="fields"' not in whole and 'id="white-cell-rule"' not in whole
    check = {"field_size": [320, 240],
             "finding": {"boxes": 372, "smears": 358, "found": 370, "extra": 0},
             "reading": {"fields": 14, "cells": 28, "right_by_cell": 21, "right_whole": 12,
                         "accepted_by_cell": 8, "accepted_right_by_cell": 8,
                         "accepted_whole": 4, "accepted_right_whole": 4}}
    (models_root / "tiny" / "fields_check.json").write_text(json.dumps(check))
    html = page(client, "/models/tiny")
    assert ("of 372 hand-drawn white-cell boxes in 358 smears, 370 held a cell found and 0 "
            "cells were found outside every box") in text(html)
    assert "named 21 right cell by cell against 12 read as one crop" in text(html)
    (models_root / "tiny" / "fields_check.json").write_text("{not json")
    html = page(client, "/models/tiny")
    assert "Fields with several white cells" in html and 'id="fields-table"' not in html


def test_a_fields_cells_count_once_in_the_batchs_magnification_check():
    from hematovision.magnification import Reference
    from hematovision.web.results import magnification_check

    reference = Reference(0.15, (0.8, 1.3), (0.8333, 1.25))
    cell = {"number": 1, "of": 3}
    field = [{"red_cell_ratio": 2.0, "cell": {**cell, "number": n}} for n in (1, 2, 3)]
    whole = [{"red_cell_ratio": 1.0} for _ in range(4)] + [{"red_cell_ratio": None}]
    assert magnification_check(whole + field, reference).measured == 5  # not 7
    # Counted once per cell, two such fields would outnumber three whole images.
    check = magnification_check(whole[:3] + field + field, reference)
    assert (check.measured, check.median_ratio, check.outside) == (5, 1.0, False)


def test_the_batch_limit_counts_a_field_as_one_image(client, batch_id):
    client.application.config["MAX_BATCH_IMAGES"] = 3  # the batch: 2 images, 3 results

    def add(*names):  # each a file of its own: a copy of one would be left out
        return client.post(f"/batch/{batch_id}/add", data={
            "csrf_token": csrf_token(client),
            "file": [(io.BytesIO(image_bytes((90, 160, 90 + ord(name[0])), fmt="PNG")), name)
                     for name in names]})

    assert add("a.png", "b.png").status_code == 400
    assert add("a.png").status_code == 303
    assert len(uploads.load_batch(folder(client), batch_id)["results"]) == 4
    client.application.config["MAX_BATCH_IMAGES"] = 10
    response = client.post(f"/batch/{batch_id}/add", data={
        "csrf_token": csrf_token(client),
        # Another field, mirrored (the same file again would be left out as a copy).
        "file": [(io.BytesIO(png(FIELD.transpose(Image.Transpose.FLIP_LEFT_RIGHT))),
                  "f2.png")]})
    assert "Added 1 image" in text(page(client, response.headers["Location"]))
    assert len(uploads.load_batch(folder(client), batch_id)["results"]) == 6


def test_images_with_no_white_cell_are_listed_on_the_review_page_to_exclude(client, batch_id):
    html = page(client, f"/batch/{batch_id}")
    assert f'href="/batch/{batch_id}/review?show=no-white-cell" id="no-white-cell-review"' in html
    listed = page(client, f"/batch/{batch_id}/review?show=no-white-cell")
    assert "1 image in which no white cell was found, not reviewed yet" in text(listed)
    assert 'data-index="2"' in listed and 'data-index="0"' not in listed
    # Shown whole, to tell whether it holds a white cell after all; a cell as the model read it.
    stored = uploads.load_batch(folder(client), batch_id)
    assert f'src="/uploads/{stored["results"][2]["image"]}.jpg"' in listed
    assert "The whole image: no white cell was found in it." in text(listed)
    every = page(client, f"/batch/{batch_id}/review?show=all")
    assert f'src="/batch/{batch_id}/0/view.jpg"' in every
    assert every.count('class="small text-warning-emphasis mb-1 whole-image-note"') == 1
    assert 'action="/batch/%s/review?show=no-white-cell"' % batch_id in listed
    unknown = page(client, f"/batch/{batch_id}/review?show=nonsense")  # the default list
    assert "Cells to review" in unknown and "Images with no white cell found" not in unknown
    response = client.post(f"/batch/{batch_id}/review?show=no-white-cell", data={
        "csrf_token": csrf_token(client), "verdict-2": "excluded"})
    assert response.headers["Location"].endswith(f"/batch/{batch_id}")  # the list is done
    html = page(client, f"/batch/{batch_id}")
    assert 'id="no-white-cell-summary"' not in html  # reviewed: nothing left to check
    assert "No image in which no white cell was found is waiting" in text(
        page(client, f"/batch/{batch_id}/review?show=no-white-cell"))
