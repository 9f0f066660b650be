"""Reviewing many cells on one page (GET/POST /batch/<id>/review): each shown as the model read
it, every verdict saved at once, a bad form saving none."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from hematovision.cells import CELL_TYPES
from hematovision.preprocess import crop_to_nucleus, load_image
from hematovision.web import uploads
from tests.conftest import CELL_COLORS, CLASSES, make_smear, with_nuclei
from tests.web_helpers import csv_of, csrf_token, image_bytes, make_models_root, page, text, upload


def unsure_card(model_dir: Path, crop: str = "none") -> dict:
    """The trusted tiny model's card, familiar with every image and sure of none: every image
    it classifies is unidentified, so every one waits for review."""
    card = json.loads((model_dir / "model_card.json").read_text())
    trust = card["trust"]
    trust["ood"]["threshold"] = 1e9
    trust["confidence_threshold"] = 1.0
    return {"trust": trust, "preprocessing": {**card["preprocessing"], "crop": crop}}


@pytest.fixture
def models_root(tmp_path, trusted_model_dir):
    root = make_models_root(tmp_path / "models", trusted_model_dir, names=("tiny",),
                            card=unsure_card(trusted_model_dir))
    return make_models_root(root, trusted_model_dir, names=("cropping",),
                            card=unsure_card(trusted_model_dir, "nucleus"))


def folder(client) -> Path:
    return Path(client.application.config["UPLOAD_FOLDER"])


@pytest.fixture
def batch_id(client) -> str:
    files = [(f"{i}.png", image_bytes(color, fmt="PNG")) for i, color in enumerate(CELL_COLORS)]
    location = upload(client, "tiny", *files, ("broken.png", b"not an image"))
    return location.rsplit("/", 1)[1]


def post(client, batch_id: str, query: str = "", token: bool = True, **verdicts):
    data = {f"verdict-{k.removeprefix('n')}": v for k, v in verdicts.items()}
    if token:
        data["csrf_token"] = csrf_token(client)
    return client.post(f"/batch/{batch_id}/review{query}", data=data)


def stored(client, batch_id: str) -> list[dict]:
    return uploads.load_batch(folder(client), batch_id)["results"]


def test_the_page_shows_each_cell_to_review_as_the_model_read_it(client, batch_id):
    html = page(client, f"/batch/{batch_id}/review")
    assert "4 cells the model set aside, not reviewed yet" in text(html)
    assert [f'data-index="{i}"' in html for i in range(5)] == [True] * 4 + [False]  # not broken
    assert f'src="/batch/{batch_id}/2/view.jpg"' in html
    assert html.count('value="" checked') == 4  # "No change" until a class is chosen
    guide = re.search(r'id="class-guide".*?</details>', html, re.S).group(0)
    assert re.findall(r'<dt data-label="(\w+)">', guide) == CLASSES  # each class's morphology
    assert CELL_TYPES["monocyte"].morphology in guide
    batch_page = page(client, f"/batch/{batch_id}")
    assert f'href="/batch/{batch_id}/review" id="review-all-link"' in batch_page
    assert f'href="/batch/{batch_id}/review?show=all" id="review-every-link"' in batch_page


def test_the_chosen_verdicts_are_saved_at_once_and_counted(client, batch_id):
    response = post(client, batch_id, n0="eosinophil", n1="", n2="excluded", n3="lymphocyte")
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/review")  # one still left
    results = stored(client, batch_id)
    assert [(r.get("review") or {}).get("label") for r in results[:4]] == [
        "eosinophil", None, "excluded", "lymphocyte"]
    assert results[0]["review"]["at"] == results[3]["review"]["at"]
    html = page(client, f"/batch/{batch_id}/review")
    assert "Saved your review of 3 cells." in text(html)
    assert "1 cell the model set aside, not reviewed yet" in text(html)
    rows = list(csv.DictReader(csv_of(
        client.get(f"/batch/{batch_id}.csv").get_data(as_text=True))))
    assert [r["differential_class"] for r in rows] == ["eosinophil", "", "", "lymphocyte", ""]

    response = post(client, batch_id, n1="monocyte")
    assert response.headers["Location"].endswith(f"/batch/{batch_id}")  # none left: the batch
    assert "No unidentified cell is waiting for review." in text(page(
        client, f"/batch/{batch_id}/review"))


def test_every_cell_can_be_checked_and_a_verdict_changed(client, batch_id):
    post(client, batch_id, n0="eosinophil")
    html = page(client, f"/batch/{batch_id}/review?show=all")
    assert "4 cells classified in this batch" in text(html)
    assert "reviewed as Eosinophil" in text(html)
    response = post(client, batch_id, "?show=all", n0="neutrophil")
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/review?show=all")
    assert stored(client, batch_id)[0]["review"]["label"] == "neutrophil"


@pytest.mark.parametrize("verdicts, message", [
    ({"n0": "eosinophil", "n1": "basophil"}, "Choose one of the model's classes"),
    ({"n0": "eosinophil", "n4": "monocyte"}, "no classified image 4"),  # the unreadable file
    ({"n0": "eosinophil", "n9": "monocyte"}, "no classified image 9"),
    ({"n0": "eosinophil", "nx": "monocyte"}, "no classified image x"),
    ({"n0": "eosinophil", "n²": "monocyte"}, "no classified image ²"),  # isdigit, not int
    ({"n0": "eosinophil", "n" + "1" * 5000: "monocyte"}, "no classified image 111111111111"),
])
def test_a_bad_verdict_refuses_the_whole_form(client, batch_id, verdicts, message):
    before = (folder(client) / f"{batch_id}.json").read_bytes()
    response = post(client, batch_id, **verdicts)
    assert response.status_code == 400
    assert message in text(response.get_data(as_text=True))
    assert (folder(client) / f"{batch_id}.json").read_bytes() == before


def test_no_choice_or_no_token_saves_nothing(client, batch_id):
    before = (folder(client) / f"{batch_id}.json").read_bytes()
    response = post(client, batch_id, n0="", n1="")
    assert response.status_code == 303
    assert "No class was chosen for any cell" in text(page(client, response.headers["Location"]))
    assert post(client, batch_id, token=False, n0="eosinophil").status_code == 400
    assert (folder(client) / f"{batch_id}.json").read_bytes() == before
    assert client.get("/batch/" + "0" * 32 + "/review").status_code == 404


def test_the_model_view_is_the_nucleus_square_for_a_model_that_crops(client):
    smear = with_nuclei(make_smear(30, seed=1), [(100, 120, 22)])
    out = io.BytesIO()
    smear.save(out, "PNG")
    batch_id = upload(client, "cropping", ("smear.png", out.getvalue()),
                      ("other.png", image_bytes(fmt="PNG"))).rsplit("/", 1)[1]
    results = stored(client, batch_id)
    view = Image.open(io.BytesIO(client.get(f"/batch/{batch_id}/0/view.jpg").data))
    square = crop_to_nucleus(load_image(uploads.image_path(folder(client), results[0]["image"])),
                             0.55)
    assert view.size == square.size == (132, 132)
    whole = upload(client, "tiny", ("smear.png", out.getvalue()),
                   ("other.png", image_bytes(fmt="PNG"))).rsplit("/", 1)[1]
    assert Image.open(io.BytesIO(client.get(f"/batch/{whole}/0/view.jpg").data)).size == (320, 240)


def test_a_long_batch_is_reviewed_a_page_of_cells_at_a_time(client, batch_id, monkeypatch):
    from hematovision.web import review_pages

    monkeypatch.setattr(review_pages, "REVIEW_PAGE_CELLS", 3)
    html = page(client, f"/batch/{batch_id}/review")
    assert "4 cells the model set aside, not reviewed yet: 1 to 3 shown here" in text(html)
    assert "Save these to see the next ones." in text(html)
    post(client, batch_id, n0="eosinophil", n1="lymphocyte", n2="monocyte")
    html = page(client, f"/batch/{batch_id}/review")
    assert 'data-index="3"' in html and "shown here" not in html
    every = page(client, f"/batch/{batch_id}/review?show=all&start=3")
    assert "4 cells classified in this batch: 4 to 4 shown here" in text(every)
    assert f'href="/batch/{batch_id}/review?show=all&amp;start=0" id="review-previous"' in every
    response = post(client, batch_id, "?show=all&start=3", n3="neutrophil")
    assert response.headers["Location"].endswith(f"/batch/{batch_id}")  # none left to review
    for start in ("x", "²", "9" * 5000, "-1"):
        assert page(client, f"/batch/{batch_id}/review?show=all&start={start}").count(
            "data-index=") == 3


def order_figures(threshold: float) -> dict:
    """training.review_order's figures, as recorded in a card, measured at `threshold`."""
    return {"data": "test", "n": 400, "cells": 100, "draws": 2000,
            "confidence_threshold": threshold, "composition": {"neutrophil": 1.0},
            "accepted_per_film": 54.8, "wrong_per_film": 0.44,
            "fractions": [{"fraction": f, "checked_per_film": checked,
                           "found_least_sure": found, "found_upload_order": upload,
                           "by_class": {"checked_per_film": 7.5, "found": 0.619}}
                          for f, checked, found, upload in ((0.1, 5.5, 0.513, 0.101),
                                                            (0.2, 11.0, 0.867, 0.201))]}


@pytest.mark.parametrize("elsewhere, quoted", [(0.0, True), (0.001, False)])
def test_every_cell_is_listed_least_sure_first_and_stays_in_place_after_a_review(
        tmp_path, tiny_model_dir, elsewhere, quoted):
    from hematovision.predictor import Predictor
    from tests.test_differential import WBC4, result
    from tests.test_web_results import stored_batch
    from tests.web_helpers import make_app

    served = Predictor(tiny_model_dir).trust.confidence_threshold
    root = make_models_root(tmp_path / "models", tiny_model_dir, card={
        "metrics": {"review_order": order_figures(served + elsewhere)}})
    client = make_app(tmp_path, root).test_client()
    cells = [result(label, status, WBC4) for label, status in (
        ("neutrophil", "accepted"), ("monocyte", "accepted"), ("lymphocyte", "unidentified"),
        ("eosinophil", "not_a_cell"), ("neutrophil", "accepted"))]
    for cell, confidence in zip(cells, (0.99, 0.71, 0.48, 0.9, 0.85)):
        cell["confidence"] = confidence
    batch_id = stored_batch(client, [*cells, {"file": "broken.jpg", "error": "not an image"}],
                            WBC4)

    def listed() -> list[int]:
        return [int(i) for i in re.findall(r'data-index="(\d+)"',
                                           page(client, f"/batch/{batch_id}/review?show=all"))]

    # Not a blood-cell image first, then by confidence; the unreadable file left out.
    assert listed() == [3, 2, 1, 4, 0]
    html = page(client, f"/batch/{batch_id}/review?show=all")
    assert re.search(r'<select class="form-select form-select-sm" name="verdict-1"', html)
    said = ("0.44 of a film's 54.8 accepted cells were wrong: the least sure 20 % of them, "
            "11.0 cells, held 86.7 % of those; as many cells in upload order, 20.1 %")
    assert (said in text(html)) == quoted
    post(client, batch_id, "?show=all", n1="neutrophil", n4="excluded")
    assert listed() == [3, 2, 1, 4, 0]  # reviews move no cell
    said = text(re.search(r'id="least-sure-first">(.*?)</p>', html, re.S).group(1))
    assert said.startswith("Least sure first: the images called not a blood-cell image, the "
                           "unidentified cells, then the accepted ones from the least sure up")
    # The list of cells still to review keeps its radio buttons and upload order.
    assert 'type="radio"' in page(client, f"/batch/{batch_id}/review")
    rows = re.findall(r'<tr data-fraction="([\d.]+)">(.*?)</tr>', page(client, "/models/tiny"),
                      re.S)
    assert [(f, text(row).split()) for f, row in rows] == [
        ("0.1", ["10", "%", "5.5", "51.3", "%", "10.1", "%", "61.9", "%", "(7.5)"]),
        ("0.2", ["20", "%", "11.0", "86.7", "%", "20.1", "%", "61.9", "%", "(7.5)"])]


def test_an_unidentified_cell_is_listed_before_the_accepted_ones_whatever_its_confidence():
    """A field in which no white cell was found is unidentified however sure the model is: at
    0.99 it had sorted after an accepted cell at 0.9, last on the list."""
    from hematovision.web.results import least_sure_first

    found = [{"label": "neutrophil", "status": "accepted", "confidence": 0.9},
             {"label": "neutrophil", "status": "unidentified", "confidence": 0.99,
              "white_cells": 0},
             {"label": "neutrophil", "status": "not_a_cell", "confidence": 0.5}]
    assert least_sure_first(found) == [2, 1, 0]
