"""How often the held-out images were right that the model was as sure of as a result: the band
each result stores when classified (trust.Trust.band), the result page's sentence, the mark
"below target" on accepted cells whose band does not show the accuracy target, the batch
page's, review page's and report's count of them, the model page's table and the API's field."""

import csv
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hematovision.counting import share_range
from hematovision.predictor import Predictor
from hematovision.trust import BAND, CONFIDENCE_BANDS, HELD_OUT_CONFIDENCE, HELD_OUT_CORRECT
from hematovision.web import uploads
from tests.conftest import CELL_COLORS
from tests.web_helpers import (csv_of, image_bytes, make_app, make_models_root, page, prose,
                               review_cells, stored_json, text, upload)

# One held-out image inside each band: too few to show any accuracy target.
MIDDLES = [(low + high) / 2 for low, high in zip(CONFIDENCE_BANDS[:-1], CONFIDENCE_BANDS[1:])]
IMAGES = [(f"{i}.png", image_bytes(CELL_COLORS[i % 4], size=(64 + i, 48), fmt="PNG"))
          for i in range(3)]


def with_held_out(folder: Path, confidence, correct, **trust) -> None:
    """Give a copy of the trusted tiny model these held-out predictions, and its card's trust
    section these values."""
    path = folder / "trust.npz"
    with np.load(path) as arrays:
        saved = {k: arrays[k] for k in arrays.files}
    np.savez(path, **{**saved, HELD_OUT_CONFIDENCE: np.asarray(confidence, dtype=np.float64),
                      HELD_OUT_CORRECT: np.asarray(correct, dtype=bool)})
    card = json.loads((folder / "model_card.json").read_text())
    card["trust"].update(trust)
    (folder / "model_card.json").write_text(json.dumps(card))


@pytest.fixture
def models_root(tmp_path, tiny_model_dir, trusted_model_dir):
    """'few': every band holds one held-out image, right; 'many': 2000, all right (every band
    shows 99 %); 'unsure': as 'few', with every cell set aside; 'tiny': no trust layer."""
    root = make_models_root(tmp_path / "models", tiny_model_dir)
    accept_all = {"confidence_threshold": 0.0, "target_accuracy": 0.99}
    for name, copies, extra in [("few", 1, accept_all), ("many", 2000, accept_all),
                                ("unsure", 1, {"confidence_threshold": 1.0})]:
        make_models_root(root, trusted_model_dir, names=(name,))
        card = json.loads((root / name / "model_card.json").read_text())
        card["trust"]["ood"]["threshold"] = 1e12  # nothing is unfamiliar
        (root / name / "model_card.json").write_text(json.dumps(card))
        with_held_out(root / name, np.repeat(MIDDLES, copies), [True] * copies * len(MIDDLES),
                      **extra)
    return root


def band_of(models_root: Path, model: str, confidence: float) -> dict:
    return Predictor(models_root / model).trust.band(confidence)


def sure(band: dict) -> str:
    """How the pages name a band: "under 50 %", "95 % to 99 %"."""
    high = f"{band['high'] * 100:g} %"
    return f"under {high}" if band["low"] == 0 else f"{band['low'] * 100:g} % to {high}"


def test_band_counts_the_held_out_images_of_the_band_holding_the_confidence():
    from hematovision.trust import Trust

    confidence = np.array([0.3, 0.5, 0.55, 0.6, 0.95, 0.99, 0.999, 1.0])
    correct = np.array([True, False, True, True, True, False, True, True])
    trust = Trust(target_accuracy=0.9, held_out=(confidence, correct))
    # A band holds its lower edge; the last holds 1 too.
    assert trust.band(0.5) == {"low": 0.5, "high": 0.6, "images": 2, "right": 1,
                               "target": 0.9, "below_target": True}
    assert trust.band(0.2)["images"] == 1 and trust.band(0.2)["low"] == 0.0
    assert trust.band(1.0) == {"low": 0.999, "high": 1.0, "images": 2, "right": 2,
                               "target": 0.9, "below_target": True}  # too few to show it
    assert trust.band(0.9899)["low"] == 0.95 and trust.band(0.9899)["images"] == 1
    bands = trust.bands()
    assert [b["low"] for b in bands] == list(CONFIDENCE_BANDS[:-1])
    assert sum(b["images"] for b in bands) == len(confidence)
    assert sum(b["right"] for b in bands) == correct.sum()


def test_a_model_without_held_out_predictions_stores_no_band():
    from hematovision.trust import Trust

    trust = Trust(confidence_threshold=0.5, target_accuracy=0.9)
    assert trust.band(0.7) is None and trust.bands() == []
    assert BAND not in trust.scores(1.0, 0.7)
    assert BAND in Trust(held_out=(np.array([0.7]), np.array([True]))).scores(1.0, 0.7)


def test_short_of_target_reads_the_lower_end_of_the_exact_range():
    from hematovision.trust import short_of_target

    def band(right, images, target=0.99):
        return {"low": 0.9, "high": 0.95, "images": images, "right": right, "target": target}

    assert short_of_target(band(3, 3))  # all right, too few to show 99 %
    assert short_of_target(band(701, 711))  # 98.6 % right
    assert short_of_target(band(0, 0))  # none held out at all
    assert not short_of_target(band(571, 571))  # 99.4 % to 100 %
    assert share_range(571, 571)[0] > 0.99 > share_range(300, 300)[0]
    assert short_of_target(band(300, 300)) and not short_of_target(band(300, 300, 0.95))
    assert not short_of_target(band(3, 3, None))  # no target: nothing to fall short of
    assert not short_of_target(None)


@pytest.mark.parametrize("damaged", [
    "0.9", [0.9, 0.95], {"low": 0.9, "high": 0.95, "images": 3},
    {"low": 0.9, "high": 0.95, "images": 3, "right": 4, "target": 0.99},
    {"low": 0.9, "high": 0.95, "images": True, "right": True, "target": 0.99},
    {"low": 0.95, "high": 0.9, "images": 3, "right": 3, "target": 0.99},
    {"low": -1, "high": 0.9, "images": 3, "right": 3, "target": 0.99},
    {"low": 0.9, "high": 0.95, "images": 3.0, "right": 3, "target": 0.99},
    # More images than any held-out set: its range would take an array that long to compute.
    {"low": 0.9, "high": 0.95, "images": 10**12, "right": 10**12, "target": 0.99},
])
def test_a_damaged_stored_band_is_none(damaged):
    from hematovision.trust import stored_band

    assert stored_band({BAND: damaged}) is None
    assert stored_band(None) is None and stored_band({"temperature": 1.0}) is None


def test_a_damaged_target_is_no_target():
    from hematovision.trust import short_of_target, stored_band

    stored = stored_band({BAND: {"low": 0.9, "high": 0.95, "images": 3, "right": 3,
                                 "target": 1e400}})
    assert stored["target"] is None and not short_of_target(stored)


def test_accepted_cell_in_a_band_too_small_is_marked_on_its_page(client, models_root):
    location = upload(client, "few", IMAGES[0])
    batch_id = location.split("/")[2]
    result = stored_json(client, batch_id)["results"][0]
    assert result["status"] == "accepted"
    band = band_of(models_root, "few", result["confidence"])
    assert result["scores"][BAND] == band and band["images"] == 1
    shown = text(page(client, location))
    low, high = share_range(1, 1)
    assert "Below target: look at this cell before counting it." in shown
    assert (f"Of the 1 held-out image the model was {sure(band)} sure of, 1 was right (100.0 %; "
            f"95 % range {low * 100:.1f} % to 100.0 %: too few to say how often cells this "
            "sure are right): not enough to show that cells this sure are right 99.0 % of the "
            "time") in shown
    second = result["candidates"][1]
    assert second["label"] != result["label"]
    assert re.search(r"Its second choice: [^,]+, " + re.escape(
        f"{second['probability'] * 100:.1f} %."), shown)


def test_accepted_cell_in_a_band_that_shows_the_target_is_not_marked(client, models_root):
    location = upload(client, "many", *IMAGES)
    batch_id = location.split("/")[2]
    result = stored_json(client, batch_id)["results"][0]
    html = page(client, f"/batch/{batch_id}/0")
    assert 'id="near-threshold"' not in html
    band = band_of(models_root, "many", result["confidence"])
    assert (f"Of the 2000 held-out images the model was {sure(band)} sure of, 2000 were right "
            "(100.0 %; 95 % range 99.8 % to 100.0 %).") in text(html)
    batch = page(client, f"/batch/{batch_id}")
    assert 'id="near-threshold-summary"' not in batch and "near-threshold-badge" not in page(
        client, f"/batch/{batch_id}/review?show=all")


def test_near_threshold_cells_are_counted_listed_and_reported_until_reviewed(client):
    batch_id = upload(client, "few", *IMAGES).split("/")[2]
    assert "3 accepted cells lie below target: held-out cells as sure were not " \
        "shown to be right 99.0 % of the time: they are counted, but look at them first." \
        in prose(page(client, f"/batch/{batch_id}"))
    batch = page(client, f"/batch/{batch_id}")
    assert batch.count("near-threshold-badge") == 3  # in the list of images
    assert "3 below target" in text(batch) and "preliminary" not in text(batch)
    listed = page(client, f"/batch/{batch_id}/review?show=near-threshold")
    assert re.findall(r'data-index="(\d+)"', listed) == ["0", "1", "2"]
    assert "Accepted cells below target" in text(listed)
    every = page(client, f"/batch/{batch_id}/review?show=all")
    assert every.count("near-threshold-badge") == 3
    label = stored_json(client, batch_id)["results"][1]["label"]
    review_cells(client, batch_id, n1=label)  # confirmed as the model named it
    assert "2 accepted cells lie below target" in text(page(client, f"/batch/{batch_id}"))
    listed = page(client, f"/batch/{batch_id}/review?show=near-threshold")
    assert re.findall(r'data-index="(\d+)"', listed) == ["0", "2"]
    assert ("2 accepted cells below target are not looked at: held-out cells as sure were not "
            "shown to be right 99.0 % of the time.") in text(
        page(client, f"/batch/{batch_id}/report"))
    review_cells(client, batch_id, n0=label, n2="excluded")
    assert "No accepted cell below target is waiting for review." in text(
        page(client, f"/batch/{batch_id}/review?show=near-threshold"))
    assert 'id="report-status-near"' not in page(client, f"/batch/{batch_id}/report")


def test_an_unidentified_cell_quotes_its_band_and_is_not_marked(client, models_root):
    location = upload(client, "unsure", IMAGES[0])
    batch_id = location.split("/")[2]
    html = page(client, location)
    assert 'data-status="unidentified"' in html and 'id="held-out-band"' in html
    assert 'id="near-threshold"' not in html
    assert page(client, f"/batch/{batch_id}/review?show=near-threshold").count(
        "data-index=") == 0


@pytest.mark.parametrize("stored", ["missing", "damaged"])
def test_results_without_a_whole_band_show_none_and_never_fail(client, stored):
    batch_id = upload(client, "few", *IMAGES).split("/")[2]

    def change(batch: dict) -> None:
        for result in batch["results"]:
            if stored == "missing":  # a batch from before bands were stored
                del result["scores"][BAND]
            else:
                result["scores"][BAND] = {"low": "x", "images": -1}

    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id, change)
    for address in [f"/batch/{batch_id}/0", f"/batch/{batch_id}",
                    f"/batch/{batch_id}/review?show=near-threshold",
                    f"/batch/{batch_id}/review?show=all", f"/batch/{batch_id}/report"]:
        html = page(client, address)
        assert 'id="held-out-band"' not in html and 'id="near-threshold"' not in html
        assert "near-threshold-badge" not in html and "Of the " not in text(html)
    assert 'id="near-threshold-summary"' not in page(client, f"/batch/{batch_id}")


def test_model_page_lists_every_band_as_the_served_trust_counts_it(client, models_root):
    html = page(client, "/models/few")
    rows = re.findall(r'<tr data-low="([\d.]+)">(.*?)</tr>', html, re.S)
    assert [float(low) for low, _ in rows] == list(CONFIDENCE_BANDS[:-1])
    for _, row in rows:
        cells = [text(c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
        assert cells[1:4] == ["1", "1", "100.0 %"]
        assert cells[-1] == "below target"  # the served threshold accepts every band
    many = page(client, "/models/many")
    assert many.count("<td>yes</td>") == len(MIDDLES)
    assert "held-out images the confidence threshold was chosen on" in text(many)
    assert 'id="held-out-bands"' not in page(client, "/models/tiny")


def test_api_results_carry_their_band(client, models_root):
    response = client.post("/api/predict", data={
        "model": "few", "file": [(io.BytesIO(data), name) for name, data in IMAGES[:2]]})
    assert response.status_code == 200
    for result in response.get_json()["results"]:
        assert result["scores"][BAND] == band_of(models_root, "few", result["confidence"])
    assert client.get("/docs/api").status_code == 200


def record_review_order(folder: Path, threshold: float) -> None:
    """A review-order entry (training.review_order --record) measured at `threshold`."""
    card = json.loads((folder / "model_card.json").read_text())
    card.setdefault("metrics", {})["review_order"] = {
        "data": "test", "n": 400, "cells": 100, "draws": 2000,
        "confidence_threshold": threshold, "accepted_per_film": 54.8, "wrong_per_film": 0.44,
        "fractions": [{"fraction": 0.2, "checked_per_film": 11.0, "found_least_sure": 0.7,
                       "found_upload_order": 0.2,
                       "by_class": {"checked_per_film": 12.0, "found": 0.6}}],
        "near_threshold": {"checked_per_film": 8.1, "found": 0.62}}
    (folder / "model_card.json").write_text(json.dumps(card))


def test_batch_and_model_pages_quote_what_the_mark_found_where_measured(tmp_path, models_root):
    record_review_order(models_root / "few", 0.0)  # the served threshold
    client = make_app(tmp_path, models_root).test_client()  # reads the card as it starts
    batch_id = upload(client, "few", *IMAGES).split("/")[2]
    measured = ("On normal films of 100 white cells drawn from its test images, 8.1 of a "
                "film's 54.8 accepted cells were marked so, and held 62.0 % of the wrongly "
                "accepted ones")
    assert measured in prose(page(client, f"/batch/{batch_id}"))
    assert ("The accepted cells a batch marks below target: 8.1 a film, holding 62.0 % "
            "of the wrongly accepted ones.") in prose(page(client, "/models/few"))


def test_a_figure_measured_at_another_threshold_is_not_quoted(tmp_path, models_root):
    record_review_order(models_root / "few", 0.5)
    client = make_app(tmp_path, models_root).test_client()
    batch_id = upload(client, "few", *IMAGES).split("/")[2]
    html = page(client, f"/batch/{batch_id}")
    assert 'id="near-threshold-summary"' in html and 'id="near-threshold-measured"' not in html


def test_both_csvs_carry_the_bands_and_the_cells_near_the_threshold(client, models_root):
    batch_id = upload(client, "few", *IMAGES).split("/")[2]
    label = stored_json(client, batch_id)["results"][0]["label"]
    review_cells(client, batch_id, n0=label)
    rows = list(csv.DictReader(csv_of(page(client, f"/batch/{batch_id}.csv"))))
    stored = stored_json(client, batch_id)["results"]
    for row, result in zip(rows, stored):
        band = result["scores"][BAND]
        assert (float(row["band_low"]), float(row["band_high"]), int(row["band_images"]),
                int(row["band_right"])) == (band["low"], band["high"], 1, 1)
    assert [r["near_threshold"] for r in rows] == ["", "yes", "yes"]  # the first looked at
    counted = list(csv.DictReader(csv_of(page(client, f"/batch/{batch_id}/differential.csv"))))
    near = Counter(r["label"] for r in stored[1:])  # by the class each is counted as
    assert {r["class"]: int(r["near_threshold_unreviewed"]) for r in counted} == {
        r["class"]: near.get(r["class"], 0) for r in counted}
    assert sum(int(r["near_threshold_unreviewed"]) for r in counted) == 2


def test_a_band_short_of_every_image_right_never_reads_100_percent():
    from hematovision.web.filters import share_pct

    assert share_pct(19_999 / 20_000) == "99.995 %" and share_pct(1.0) == "100.0 %"
    assert share_pct(0.5) == "50.0 %" and share_pct(0.00004) == "0.004 %"
    assert share_pct(0.0) == "0.0 %"


def test_the_model_page_says_no_cell_is_accepted_below_a_threshold_on_a_band_edge(
        tmp_path, trusted_model_dir):
    """A threshold of exactly 50 %: the band under it holds no accepted cell."""
    root = make_models_root(tmp_path / "models", trusted_model_dir, names=("edge",))
    with_held_out(root / "edge", MIDDLES, [True] * len(MIDDLES), confidence_threshold=0.5,
                  target_accuracy=0.99)
    html = page(make_app(tmp_path, root, DEFAULT_MODEL="edge").test_client(), "/models/edge")
    rows = dict(re.findall(r'<tr data-low="([\d.]+)">.*?<td>([^<]*)</td>\s*</tr>', html, re.S))
    assert rows["0.0"] == "no" and rows["0.5"] == "below target"


def test_a_count_signed_with_cells_near_the_threshold_is_not_called_preliminary(client):
    from tests.web_helpers import sign_off

    batch_id = upload(client, "few", *IMAGES).split("/")[2]
    before = text(page(client, f"/batch/{batch_id}"))
    assert ("3 accepted cells below target are not looked at: a count signed now says so "
            "on its report") in before
    assert sign_off(client, batch_id).status_code == 303
    shown = text(page(client, f"/batch/{batch_id}"))
    assert "Signed off by" in shown and "preliminary" not in shown
    assert "3 below target" in shown and "3 of them below target, not looked at" in shown
    report = text(page(client, f"/batch/{batch_id}/report"))
    assert "The classes marked * hold them; their shares and flags may change" in report
    assert page(client, f"/batch/{batch_id}/report").count('class="near-in-class"') == len(
        Counter(r["label"] for r in stored_json(client, batch_id)["results"]))
    assert "3 of them below target, not looked at." in prose(
        page(client, f"/batch/{batch_id}/report"))
    labels = Counter(r["label"] for r in stored_json(client, batch_id)["results"])
    html = page(client, f"/batch/{batch_id}")
    for label, cells in labels.items():
        assert re.search(rf'<tr data-class="{label}">.*?· {cells} below target', html, re.S)


def test_a_confidence_prints_apart_from_its_bands_edges():
    from hematovision.web.filters import confidence_digits

    def result(confidence, low, high):
        return {"label": "neutrophil", "status": "accepted", "confidence": confidence,
                "scores": {BAND: {"low": low, "high": high, "images": 82, "right": 76,
                                  "target": 0.99}}}

    assert confidence_digits(result(0.9896, 0.95, 0.99)) == 2  # "98.96 %", not "99.0 %"
    assert confidence_digits(result(0.9904, 0.99, 0.999)) == 2  # "99.04 %"
    assert confidence_digits(result(0.97, 0.95, 0.99)) == 1
    assert confidence_digits(result(0.99997, 0.999, 1.0)) == 1  # 1 is no edge between bands
    assert confidence_digits({"confidence": 0.9896}) == 1  # no band: as before


def test_a_review_card_below_target_names_the_second_choice(client):
    batch_id = upload(client, "few", IMAGES[0], IMAGES[1]).split("/")[2]
    second = stored_json(client, batch_id)["results"][0]["candidates"][1]
    card = re.search(r'id="cell-0-model">(.*?)</p>', page(
        client, f"/batch/{batch_id}/review?show=near-threshold"), re.S).group(1)
    assert "below target" in text(card) and f"or {second['label'].title()}" in text(card)
