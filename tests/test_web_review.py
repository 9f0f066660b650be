"""A technologist's review on the result page (POST /batch/<id>/<n>/review): the verdict is
stored with the result, the batch's differential and CSV count it instead of the model's
answer, the form walks through the cells that need review, the reviewed cells download as a
folder to train on, and a bad request changes nothing."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from hematovision.web import uploads
from tests.conftest import CLASSES
from tests.web_helpers import csv_of, csrf_token, make_app, make_models_root, page, text


@pytest.fixture
def client(tmp_path, tiny_model_dir):
    app = make_app(tmp_path, make_models_root(tmp_path / "models", tiny_model_dir))
    return app.test_client()


def folder(client) -> Path:
    return Path(client.application.config["UPLOAD_FOLDER"])


def result(client, name: str, label: str, status: str) -> dict:
    others = (1.0 - 0.7) / (len(CLASSES) - 1)
    return {"file": name, "label": label, "status": status, "confidence": 0.7,
            "probabilities": {c: 0.7 if c == label else others for c in CLASSES},
            "candidates": [{"label": label, "probability": 0.7},
                           {"label": "monocyte" if label != "monocyte" else "eosinophil",
                            "probability": others}],
            "image": uploads.save_image(folder(client), Image.new("RGB", (32, 24), "purple"))}


@pytest.fixture
def batch_id(client) -> str:
    """A neutrophil and a lymphocyte accepted, two cells unidentified, one unfamiliar image, and
    a file that could not be read."""
    items = [result(client, "n.jpg", "neutrophil", "accepted"),
             result(client, "u1.jpg", "eosinophil", "unidentified"),
             result(client, "l.jpg", "lymphocyte", "accepted"),
             result(client, "u2.jpg", "neutrophil", "unidentified"),
             result(client, "odd.jpg", "monocyte", "not_a_cell"),
             {"file": "broken.jpg", "error": "The file is empty."}]
    return uploads.save_batch(folder(client), {"model": "tiny", "classes": CLASSES,
                                               "results": items})


def review(client, batch_id: str, index: int, verdict: str, token: str | None = None):
    return client.post(f"/batch/{batch_id}/{index}/review",
                       data={"csrf_token": token or csrf_token(client), "verdict": verdict})


def shares(html: str) -> dict[str, int]:
    table = html.split('id="differential"')[1].split("</table>")[0]
    return {name: int(count) for name, count in re.findall(
        r'<tr data-class="(\w+)">.*?<td class="text-end">(\d+)</td>', table, re.S) if count != "0"}


def csv_rows(client, batch_id: str) -> dict[str, dict]:
    data = client.get(f"/batch/{batch_id}.csv").get_data(as_text=True)
    return {row["file"]: row for row in csv.DictReader(csv_of(data))}


def test_reviewing_the_unidentified_cells_walks_through_them_and_counts_them(client, batch_id):
    html = page(client, f"/batch/{batch_id}")
    assert shares(html) == {"lymphocyte": 1, "neutrophil": 1}
    assert "2 unidentified cells still to review: review them" in text(html)
    assert re.search(r'id="start-review"', html) and f'/batch/{batch_id}/1"' in html
    assert " 2 unidentified (needs review) · " in status_line(html)
    # Printed before review, the report says it is preliminary.
    assert "Preliminary: 2 unidentified cells are not reviewed yet" in text(html)

    response = review(client, batch_id, 1, "monocyte")
    # On to the next cell that needs review, which says what was saved.
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/3?saved=1")
    html = page(client, response.headers["Location"])
    assert "Saved your review of u1.jpg: Monocyte." in text(html)
    # A mis-keyed verdict is one link away.
    assert "Just saved: u1.jpg as Monocyte. Change it if that key was not the one you meant." \
        in text(html)
    assert f'href="/batch/{batch_id}/1">Change it</a>' in html
    batch = page(client, f"/batch/{batch_id}")
    assert " 2 unidentified (1 still to review) · " in status_line(batch)
    assert "Preliminary: 1 unidentified cell is not reviewed yet, and the shares lean without " \
           "it." in text(batch)
    assert "Save, then back to the batch" in html  # u2.jpg is the last one left

    response = review(client, batch_id, 3, "excluded")
    assert response.headers["Location"].endswith(f"/batch/{batch_id}")
    html = page(client, response.headers["Location"])
    assert shares(html) == {"lymphocyte": 1, "monocyte": 1, "neutrophil": 1}
    assert "Share of the 3 white cells counted: accepted by the model, or given a class on " \
           "review (1; your class counts, not the model's)" in text(html)
    assert "2 reviewed · 0 unidentified cells still to review" in text(html)
    # The model's statuses stay, without asking for the review that is done.
    assert " 2 unidentified (all reviewed) · " in status_line(html)
    # Reviewed; only the image called not a cell, where the finder saw a white cell, waits.
    assert "Preliminary: 1 image called not a blood-cell image is not looked at yet" in text(
        re.search(r'id="print-preliminary">.*?</strong>', html, re.S).group(0))
    assert 'id="start-review"' not in html
    left_out = dict(re.findall(r'<tr data-status="(\w+)">\s*<th[^>]*>[^<]*</th>\s*'
                               r'<td class="text-end">(\d+)</td>', html))
    assert left_out == {"unidentified": "0", "not_a_cell": "1", "excluded": "1"}
    assert re.findall(r'<li data-status="(\w+)"><a[^>]*>([^<]+)</a>', html) == [
        ("excluded", "u2.jpg"), ("not_a_cell", "odd.jpg")]
    agreement = html.split('id="agreement"')[1].split("</table>")[0]
    assert [(v, [int(n) for n in re.findall(r'<td class="text-end">(\d+)</td>', row)])
            for v, row in re.findall(r'<tr data-verdict="(\w+)">(.*?)</tr>', agreement, re.S)] == [
        ("monocyte", [0, 0, 1, 0]), ("excluded", [0, 1, 0])]
    # The model's answer stays beside the verdict.
    assert re.search(r'data-verdict="monocyte">.*?Monocyte <span class="badge[^"]*">reviewed'
                     r'.*?model: unidentified: needs review', html, re.S)
    rows = csv_rows(client, batch_id)
    assert [(rows[f]["status"], rows[f]["differential_class"], rows[f]["reviewed_class"])
            for f in ("u1.jpg", "u2.jpg", "n.jpg")] == [
        ("unidentified", "monocyte", "monocyte"), ("unidentified", "", "excluded"),
        ("accepted", "neutrophil", "")]


def test_a_review_overrules_an_accepted_answer_until_it_is_cleared(client, batch_id):
    response = review(client, batch_id, 0, "eosinophil")
    # The first to review.
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/1?saved=0")
    html = page(client, f"/batch/{batch_id}/0")
    assert re.search(r'id="review-verdict" data-verdict="eosinophil">Reviewed: <strong>'
                     r'Eosinophil</strong>', html)
    assert re.search(r'<option value="eosinophil" data-model-class selected>', html)
    assert 'id="review-clear-form"' in html
    html = page(client, f"/batch/{batch_id}")
    assert shares(html) == {"eosinophil": 1, "lymphocyte": 1}
    assert "1 reviewed (of the 1 accepted result reviewed, 0 were given the model's class)" in \
        text(html)
    assert csv_rows(client, batch_id)["n.jpg"]["differential_class"] == "eosinophil"

    response = review(client, batch_id, 0, "")
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/0")  # stays to check
    html = page(client, response.headers["Location"])
    assert "Cleared the review of n.jpg: the model's result counts again." in text(html)
    assert 'id="review-verdict"' not in html and 'id="review-clear-form"' not in html
    assert shares(page(client, f"/batch/{batch_id}")) == {"lymphocyte": 1, "neutrophil": 1}
    assert csv_rows(client, batch_id)["n.jpg"]["reviewed_class"] == ""


def test_an_unfamiliar_image_can_be_counted_once_reviewed(client, batch_id):
    html = page(client, f"/batch/{batch_id}/4")
    assert "If this is a cell after all, give its class" in text(html)
    review(client, batch_id, 4, "monocyte")
    assert shares(page(client, f"/batch/{batch_id}"))["monocyte"] == 1


def test_the_form_offers_every_class_another_white_cell_and_exclusion(client, batch_id):
    html = page(client, f"/batch/{batch_id}/1")
    form = html.split('id="review-form"')[1].split("</form>")[0]
    assert re.findall(r'<option value="([\w-]*)"', form) == [
        "", *CLASSES, "other-white-cell", "excluded"]
    # Only the model's classes have a digit key (app.js); the reviewer's own verdicts, none.
    assert re.findall(r'<option value="([\w-]*)" data-model-class', form) == CLASSES
    assert "Look at the cell and give its class" in text(html)
    assert "Save, then the next cell to review" in form
    assert re.search(rf'id="next-to-review" href="[^"]*/batch/{batch_id}/3"|'
                     rf'href="[^"]*/batch/{batch_id}/3" id="next-to-review"', html)
    # A file that could not be read has nothing to review.
    assert 'id="review-form"' not in page(client, f"/batch/{batch_id}/5")


def test_a_single_image_stays_on_its_page(client):
    one = uploads.save_batch(folder(client), {"model": "tiny", "classes": CLASSES, "results": [
        result(client, "only.jpg", "monocyte", "unidentified")]})
    html = page(client, f"/batch/{one}")
    assert "Save review" in html and 'id="next-to-review"' not in html
    response = review(client, one, 0, "monocyte")
    assert response.headers["Location"].endswith(f"/batch/{one}/0")
    assert "Reviewed:" in text(page(client, response.headers["Location"]))


@pytest.mark.parametrize("index, verdict, status, message", [
    (1, "blast", 400, "Choose one of the model's classes, another white cell, or exclude the "
                      "image: eosinophil, lymphocyte, monocyte, neutrophil, other-white-cell, "
                      "excluded."),
    (1, "<script>", 400, "Choose one of the model's classes"),
    (5, "monocyte", 400, "This file could not be read, so there is no cell to review."),
    (6, "monocyte", 404, "no image or cell numbered 6"),
])
def test_a_bad_review_is_refused_and_changes_nothing(client, batch_id, index, verdict, status,
                                                     message):
    before = (folder(client) / f"{batch_id}.json").read_bytes()
    response = review(client, batch_id, index, verdict)
    assert response.status_code == status
    assert message in text(response.get_data(as_text=True))
    assert "<script>" not in response.get_data(as_text=True)
    assert (folder(client) / f"{batch_id}.json").read_bytes() == before


def test_a_review_needs_the_form_token_and_a_stored_batch(client, batch_id):
    before = (folder(client) / f"{batch_id}.json").read_bytes()
    response = review(client, batch_id, 1, "monocyte", token="forged")
    assert response.status_code == 400 and "The form has expired" in text(
        response.get_data(as_text=True))
    assert (folder(client) / f"{batch_id}.json").read_bytes() == before

    uploads.delete_batch(folder(client), batch_id)
    response = review(client, batch_id, 1, "monocyte")
    assert response.status_code == 404 and "so what you sent was not saved" in text(
        response.get_data(as_text=True))
    assert not (folder(client) / f"{batch_id}.json").exists()
    assert review(client, "0" * 32, 0, "monocyte").status_code == 404
    assert review(client, "not-an-id", 0, "monocyte").status_code == 404


def test_the_reviewed_cells_download_as_a_folder_to_train_on(client, batch_id, tmp_path):
    from training.data import list_image_folder

    html = page(client, f"/batch/{batch_id}")
    assert 'id="reviewed-zip-link"' not in html
    response = client.get(f"/batch/{batch_id}/reviewed.zip")
    assert response.status_code == 404 and "nothing to export" in text(
        response.get_data(as_text=True))

    review(client, batch_id, 1, "monocyte")
    review(client, batch_id, 0, "eosinophil")
    review(client, batch_id, 3, "excluded")  # no class: not in the archive
    assert 'id="reviewed-zip-link"' in page(client, f"/batch/{batch_id}")
    response = client.get(f"/batch/{batch_id}/reviewed.zip")
    assert response.status_code == 200 and response.mimetype == "application/zip"
    assert response.headers["Cache-Control"] == "no-store"
    prefix = batch_id[:8]
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="hematovision-{prefix}-reviewed.zip"')  # no sample ID given
    with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
        assert sorted(archive.namelist()) == [
            f"eosinophil/{prefix}-000-n.jpg", f"monocyte/{prefix}-001-u1.jpg",
            f"reviewed-{prefix}.csv"]
        stored = uploads.load_batch(folder(client), batch_id)["results"]
        assert archive.read(f"monocyte/{prefix}-001-u1.jpg") == (
            folder(client) / f"{stored[1]['image']}.jpg").read_bytes()
        rows = list(csv.DictReader(csv_of(archive.read(f"reviewed-{prefix}.csv").decode())))
        archive.extractall(tmp_path / "train")
    assert [(r["file"], r["batch"], r["reviewed_class"], r["original_file"], r["model_label"],
             r["model_status"]) for r in rows] == [
        (f"eosinophil/{prefix}-000-n.jpg", batch_id, "eosinophil", "n.jpg", "neutrophil",
         "accepted"),
        (f"monocyte/{prefix}-001-u1.jpg", batch_id, "monocyte", "u1.jpg", "eosinophil",
         "unidentified")]
    assert all(r["reviewed_at"].endswith("+00:00") for r in rows)
    # Its file,group columns are a source map: the batch, or its sample where one was named.
    assert {r["group"] for r in rows} == {f"batch:{batch_id}"}
    # training.train reads the unpacked archive as its data; the CSV names its images.
    dataset = list_image_folder(tmp_path / "train")
    assert dataset.classes == ["eosinophil", "monocyte"] and len(dataset.files) == 2
    assert {r["file"] for r in rows} == set(dataset.files)


def test_archive_names_are_plain_whatever_the_client_sent(client):
    item = result(client, "../../x/évil name;rm -rf.png", "monocyte", "unidentified")
    item["review"] = {"label": "monocyte", "at": 0.0}
    one = uploads.save_batch(folder(client), {"model": "tiny", "classes": CLASSES,
                                              "results": [item]})
    with zipfile.ZipFile(io.BytesIO(client.get(f"/batch/{one}/reviewed.zip").data)) as archive:
        names = archive.namelist()
    assert names[0] == f"monocyte/{one[:8]}-000-vil_name_rm_-rf.jpg"
    assert all(re.fullmatch(r"[A-Za-z0-9._/-]+", n) and ".." not in n for n in names)


def differential_figures(accepted_error: float, served_threshold: float) -> dict:
    """training.differential's card entry, made up for the page: at the served threshold, the
    accepted cells alone off by `accepted_error` points on a normal film, reviewed ones by 0.2;
    at another threshold, by 5 and 0.5."""
    ways = {"accepted only": {"bias_points": {"eosinophil": 0.5, "lymphocyte": 20.0,
                                              "monocyte": 1.0, "neutrophil": -21.5},
                              "mean_abs_error_points": accepted_error},
            "no trust layer": {"bias_points": {c: 0.0 for c in CLASSES},
                               "mean_abs_error_points": 3.0},
            "unidentified reviewed": {"bias_points": {c: 0.0 for c in CLASSES},
                                      "mean_abs_error_points": 0.2}}
    points = [{"target_accuracy": 0.95, "confidence_threshold": 0.78,
               "unidentified_per_batch": 30.0, "accepted_only_error": 5.0, "reviewed_error": 0.5,
               "accepted_only_bias_points": {c: 0.0 for c in CLASSES}},
              {"target_accuracy": 0.99, "confidence_threshold": served_threshold,
               "unidentified_per_batch": 45.0, "accepted_only_error": accepted_error,
               "reviewed_error": 0.2, "accepted_only_bias_points": ways["accepted only"][
                   "bias_points"]}]
    return {"data": "test", "n": 400, "cells": 100, "draws": 2000, "compositions": {
        "normal adult": {"composition": {"eosinophil": 0.03, "lymphocyte": 0.3,
                                         "monocyte": 0.06, "neutrophil": 0.61},
                         "unidentified_per_batch": 45.0, "ways": ways,
                         "operating_points": points}}}


# Measured at the served threshold and material; not material; measured only at thresholds
# other than the one served (a server's own ACCURACY_TARGET): figures that are not its own.
@pytest.mark.parametrize("accepted_error, elsewhere, warned", [
    (11.0, 0.0, True), (1.1, 0.0, False), (11.0, 0.001, False)])
def test_the_batch_page_says_how_unreviewed_cells_skew_the_shares(tmp_path, tiny_model_dir,
                                                                  accepted_error, elsewhere,
                                                                  warned):
    from hematovision.predictor import Predictor

    served = Predictor(tiny_model_dir).trust.confidence_threshold
    root = make_models_root(tmp_path / "models", tiny_model_dir, card={
        "metrics": {"differential": differential_figures(accepted_error, served + elsewhere)}})
    client = make_app(tmp_path, root).test_client()
    batch_id = uploads.save_batch(folder(client), {"model": "tiny", "classes": CLASSES,
                                                   "results": [
        result(client, "a.jpg", "neutrophil", "accepted"),
        result(client, "b.jpg", "eosinophil", "unidentified")]})
    html = page(client, f"/batch/{batch_id}")
    assert ('id="review-bias"' in html) == warned
    if warned:
        assert ("Until the 1 unidentified cell is reviewed, these shares lean towards the classes "
                "the model is sure of: on batches of 100 cells drawn from its test images as a "
                "normal adult differential, the accepted cells alone read neutrophil 21.5 points "
                "low and lymphocyte 20.0 points high on average (each share 11.0 points off), and "
                "once the unidentified cells were reviewed, 0.2 points") in text(html)
        review(client, batch_id, 1, "eosinophil")
        assert 'id="review-bias"' not in page(client, f"/batch/{batch_id}")
    model_page = page(client, "/models/tiny")
    assert 'id="differential-table"' in model_page
    rows = re.findall(r'<tr data-composition="([^"]+)" data-way="([^"]+)">', model_page)
    assert rows == [("normal adult", way) for way in
                    ("accepted only", "no trust layer", "unidentified reviewed")]
    targets = re.findall(r'<tr data-target="([\d.]+)">.*?<td class="text-end">([\d.]+)</td>\s*'
                         r'<td class="text-end">([\d.]+)</td>', model_page, re.S)
    assert targets == [("0.95", "0.780", "30.0"),
                       ("0.99", f"{served + elsewhere:.3f}", "45.0")]


def status_line(html: str) -> str:
    return text(re.search(r'id="status-summary">(.*?)</p>', html, re.S).group(1))


def test_the_cell_description_follows_the_class_the_result_counts_as(client, batch_id):
    def described(index):
        html = page(client, f"/batch/{batch_id}/{index}")
        match = re.search(r'id="cell-title">About the (\w+)<', html)
        return match and match.group(1)

    assert described(0) == "neutrophil" and described(1) is None  # accepted; unidentified
    review(client, batch_id, 1, "monocyte")
    review(client, batch_id, 0, "excluded")
    assert described(1) == "monocyte" and described(0) is None


def test_an_unidentified_cell_shows_how_to_tell_its_two_candidates_apart(client, batch_id):
    """What the reviewer needs to decide: each candidate's morphology, in the model's order;
    not for an accepted cell, nor once the cell is reviewed."""
    from hematovision.cells import CELL_TYPES

    def telling_apart(index):
        html = page(client, f"/batch/{batch_id}/{index}")
        block = re.search(r'id="telling-apart".*?</dl>', html, re.S)
        return block and re.findall(r'<dt data-label="(\w+)">', block.group(0)), html

    named, html = telling_apart(1)  # unidentified: eosinophil, then monocyte
    assert "1 other cell of this batch waits for review too." in text(html)
    assert named == ["eosinophil", "monocyte"]
    assert CELL_TYPES["eosinophil"].morphology in html and CELL_TYPES["monocyte"].morphology in html
    assert telling_apart(0)[0] is None  # accepted
    review(client, batch_id, 1, "monocyte")
    assert telling_apart(1)[0] is None


def test_a_reviewed_result_says_so_above_the_models_answer(client, batch_id):
    assert 'id="reviewed-as"' not in page(client, f"/batch/{batch_id}/1")
    review(client, batch_id, 1, "monocyte")
    html = page(client, f"/batch/{batch_id}/1")
    top = html.split('id="status"')[1].split('id="review"')[0]
    # What counts heads the page, the model's answer under it.
    assert re.search(r'<h1 [^>]*id="reviewed-as" data-verdict="monocyte">Monocyte</h1>', top)
    assert "reviewed counted as Monocyte ( review ); the model's result:" in text(top)
    assert re.search(r'<h2 [^>]*id="status-title">Unidentified: needs review</h2>', top)
    assert html.count("<h1") == 1


def test_archives_of_two_batches_unpacked_together_train_a_model(client, tmp_path):
    """The promise of the archive: unpacked into one folder, the reviewed cells of two
    batches are a training folder, each image under its reviewer's class."""
    import zipfile as zf

    from training import train
    from training.config import TrainConfig

    data, batches = tmp_path / "reviewed", []
    for b in range(2):
        items = [result(client, f"{c}{i}.jpg", "neutrophil", "unidentified") for c in CLASSES
                 for i in range(2)]
        for k, item in enumerate(items):  # the reviewer's class: the one in the file name
            label = CLASSES[k // 2]
            image = Image.new("RGB", (32, 24), (60 * CLASSES.index(label), 90 + 10 * b, 140 + k))
            image.save(folder(client) / f"{item['image']}.jpg")
            item["review"] = {"label": label, "at": 0.0}
        one = uploads.save_batch(folder(client), {"model": "tiny", "classes": CLASSES,
                                                  "results": items})
        with zf.ZipFile(io.BytesIO(client.get(f"/batch/{one}/reviewed.zip").data)) as archive:
            archive.extractall(data)
        batches.append(one)
    assert sorted(p.name for p in data.glob("*.csv")) == sorted(
        f"reviewed-{b[:8]}.csv" for b in batches)

    run = train.train(TrainConfig(
        data=str(data), out=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
        views=1, epochs=1, batch_size=8, val_fraction=0.25, seed=3, weights="none"))
    split = json.loads((run / "splits.json").read_text())
    trained = split["train"] + split["val"]
    assert len(trained) == 16 and split["val"]
    # Each image under its reviewer's class: eosinophil/<batch>-000-eosinophil0.jpg, ...
    assert all(re.fullmatch(r"(\w+)/[0-9a-f]{8}-\d{3}-\1\d\.jpg", f) for f in trained)
    # The archives' tables were its source map: each batch's cells on one side.
    assert {f.split("/")[1][:8] for f in split["val"]}.isdisjoint(
        {f.split("/")[1][:8] for f in split["train"]})
