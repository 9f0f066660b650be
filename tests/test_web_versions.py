"""Which version of a model made a batch's results: recorded at upload, named on every page,
CSV and the API, and a model replaced under the same name is neither added to nor drawn with."""

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from hematovision.predictor import Predictor, model_version
from hematovision.release import app_version, commit
from tests.conftest import CLASSES
from tests.web_helpers import (csrf_token, csv_of, image_bytes, make_app, make_models_root,
                               page, prose, stored_json, text, upload)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def models_root(tmp_path, trusted_model_dir):
    return make_models_root(tmp_path / "models", trusted_model_dir, names=("tiny",))


@pytest.fixture
def batch_id(client):
    images = [(f"{i}.jpg", image_bytes(color)) for i, color in
              enumerate([(200, 60, 60), (60, 60, 200), (120, 60, 160)])]
    return upload(client, "tiny", *images).rsplit("/", 1)[1]


def version_of(models_root) -> str:
    return Predictor(models_root / "tiny").version


def replace_model(models_root, temperature: float = 3.0) -> None:
    """The model calibrated again under its name: another temperature, another version."""
    path = models_root / "tiny" / "model_card.json"
    card = json.loads(path.read_text())
    card["trust"]["temperature"] = temperature
    path.write_text(json.dumps(card))


def test_the_version_is_a_digest_of_what_decides_an_answer(models_root, tmp_path):
    folder = models_root / "tiny"
    card = json.loads((folder / "model_card.json").read_text())
    version = model_version(folder, card)
    assert re.fullmatch(r"[0-9a-f]{12}", version) and version == version_of(models_root)
    # Figures recorded, a description edited: the same model.
    assert model_version(folder, {**card, "metrics": {"test": {"accuracy": 0.5}},
                                  "description": "edited"}) == version
    # Calibrated again, other classes, another preprocessing: another one.
    for changed in ({"trust": {**card["trust"], "temperature": 9.0}},
                    {"classes": CLASSES[::-1]},
                    {"preprocessing": {"crop": "nucleus"}}):
        assert model_version(folder, {**card, **changed}) != version
    # Another serving file, or another trust layer's file.
    for name in ("model.tflite", "trust.npz"):
        copy = make_models_root(tmp_path / name, folder, names=("tiny",))
        with open(copy / "tiny" / name, "ab") as f:
            f.write(b"\0")
        assert model_version(copy / "tiny", card) != version


def test_the_same_trust_layer_saved_again_is_the_same_version(models_root, tmp_path):
    """The version digests the files' bytes (an upgrade of the app must not make a served
    model another version): the same arrays saved again by the calibration are the same
    bytes, whenever they are saved."""
    import time

    from hematovision.trust import Trust, save_trust_arrays

    folder = models_root / "tiny"
    card = json.loads((folder / "model_card.json").read_text())
    version = model_version(folder, card)
    trust = Trust.load(folder, card)
    copy = make_models_root(tmp_path / "again", folder, names=("tiny",)) / "tiny"
    time.sleep(1.1)  # a zip may record when each member was written
    save_trust_arrays(copy, list(trust.layers), trust.head_kernel, trust.head_bias,
                      *trust.held_out)
    assert model_version(copy, card) == version


def test_a_batch_names_the_version_that_made_it_everywhere(client, batch_id, models_root):
    version = version_of(models_root)
    target = Predictor(models_root / "tiny").trust.target_accuracy
    record = stored_json(client, batch_id)["made_by"]
    assert record["version"] == version and record["app"] == app_version()
    assert record["app"] == (f"0.1.0+{commit()}" if commit() else "0.1.0")  # a git checkout's
    assert record["accuracy_target"] == target
    batch = text(page(client, f"/batch/{batch_id}"))
    assert f"Results of HematoVision {app_version()}, model tiny, model version {version}" \
        in batch
    assert f"accuracy target of {100 * target:g} %" in batch
    assert f"version {version}" in text(page(client, f"/batch/{batch_id}/0"))
    report = page(client, f"/batch/{batch_id}/report")
    assert f"model tiny, model version {version}" in text(report)
    assert re.search(r'Report written by the server <time datetime="[^"]+">', report)
    for address in (f"/batch/{batch_id}.csv", f"/batch/{batch_id}/differential.csv"):
        rows = list(csv.DictReader(csv_of(client.get(address).get_data(as_text=True))))
        assert rows and {(r["model"], r["model_version"]) for r in rows} == {("tiny", version)}
    assert f"<code>{version}</code>" in page(client, "/models/tiny")
    health = client.get("/api/health").get_json()
    assert health["model_versions"] == {"tiny": version}


def test_a_model_replaced_under_its_name_adds_nothing_and_draws_no_heat_map(
        tmp_path, client, batch_id, models_root):
    made = version_of(models_root)
    assert client.get(f"/batch/{batch_id}/0/heat-map.png").status_code == 200
    replace_model(models_root)
    now = version_of(models_root)
    restarted = make_app(tmp_path, models_root).test_client()  # the same upload folder

    batch = prose(page(restarted, f"/batch/{batch_id}"))
    said = (f"The results of this batch were made by tiny, model version {made}")
    assert said in batch and f"the app now serves tiny, model version {now}" in batch
    assert "No images can be added to this batch" in batch
    assert 'id="add-form"' not in page(restarted, f"/batch/{batch_id}")

    response = restarted.post(f"/batch/{batch_id}/add", data={
        "csrf_token": csrf_token(restarted), "file": [(io.BytesIO(
            image_bytes((60, 200, 60))), "new.jpg")]})
    assert response.status_code == 409
    assert said in text(response.get_data(as_text=True))
    assert len(stored_json(restarted, batch_id)["results"]) == 3  # nothing added
    assert len(list((tmp_path / "uploads").glob("*.jpg"))) == 3  # nor its image kept

    heat_map = restarted.get(f"/batch/{batch_id}/0/heat-map.png")
    assert heat_map.status_code == 404 and said in text(heat_map.get_data(as_text=True))
    result = page(restarted, f"/batch/{batch_id}/0")
    assert "heat-map.png" not in result and "so none is drawn" in prose(result)
    assert "for the version that made this result is not shown" in prose(result)
    # What it was made by stays named where the results go.
    rows = list(csv.DictReader(csv_of(restarted.get(f"/batch/{batch_id}.csv")
                                      .get_data(as_text=True))))
    assert {r["model_version"] for r in rows} == {made}


def test_serving_at_another_accuracy_target_is_another_model_for_a_batch(
        tmp_path, client, batch_id, models_root):
    restarted = make_app(tmp_path, models_root, ACCURACY_TARGET=0.5).test_client()
    assert "accuracy target of 50 %" in prose(page(restarted, f"/batch/{batch_id}"))
    assert restarted.post(f"/batch/{batch_id}/add", data={
        "csrf_token": csrf_token(restarted), "file": [(io.BytesIO(
            image_bytes((60, 200, 60))), "new.jpg")]}).status_code == 409


def test_a_batch_from_before_versions_were_recorded_says_so_and_takes_images(
        tmp_path, client, batch_id):
    path = tmp_path / "uploads" / f"{batch_id}.json"
    stored = json.loads(path.read_text())
    del stored["made_by"]
    path.write_text(json.dumps(stored))
    assert "version not recorded" in text(page(client, f"/batch/{batch_id}/report"))
    rows = list(csv.DictReader(csv_of(client.get(f"/batch/{batch_id}/differential.csv")
                                      .get_data(as_text=True))))
    assert {r["model_version"] for r in rows} == {""}
    response = client.post(f"/batch/{batch_id}/add", data={
        "csrf_token": csrf_token(client), "file": [(io.BytesIO(
            image_bytes((60, 200, 60))), "new.jpg")]})
    assert response.status_code == 303


def test_a_heat_map_is_drawn_when_only_the_threshold_changed(tmp_path, client, batch_id,
                                                             models_root):
    """A heat map does not depend on the threshold: the same model draws the same map."""
    restarted = make_app(tmp_path, models_root, ACCURACY_TARGET=0.5).test_client()
    assert restarted.get(f"/batch/{batch_id}/0/heat-map.png").status_code == 200
    target = Predictor(models_root / "tiny").trust.target_accuracy
    same = make_app(tmp_path, models_root, ACCURACY_TARGET=target).test_client()
    assert "No images can be added" not in prose(page(same, f"/batch/{batch_id}"))


def test_a_target_giving_the_same_threshold_adds_images_to_earlier_batches(tmp_path):
    """pbc8 serves one threshold at every target: served at 0.95 it answers as at 0.99."""
    root = tmp_path / "models"
    shutil.copytree(ROOT / "saved_model" / "pbc8", root / "pbc8")
    first = make_app(tmp_path, root, DEFAULT_MODEL="pbc8").test_client()
    batch_id = upload(first, "pbc8", ("a.jpg", image_bytes(size=(360, 360)))).rsplit("/", 1)[1]
    client = make_app(tmp_path, root, DEFAULT_MODEL="pbc8", ACCURACY_TARGET=0.95).test_client()
    response = client.post(f"/batch/{batch_id}/add", data={
        "csrf_token": csrf_token(client),
        "file": [(io.BytesIO(image_bytes((60, 60, 200), size=(360, 360))), "b.jpg")]})
    assert response.status_code == 303


def test_recording_figures_or_rewording_the_card_keeps_the_version():
    folder = ROOT / "saved_model" / "wbc4"
    card = json.loads((folder / "model_card.json").read_text())
    again = json.loads(json.dumps(card))
    # training.magnification --record on another test folder, the training data moved since.
    again["magnification"]["check"] = {**card["magnification"]["check"], "data": "other"}
    again["magnification"]["reference"]["data"] = "/moved/train (splits.json:train)"
    again["trust"]["rule"] = card["trust"]["rule"] + " (reworded)"
    assert model_version(folder, again) == model_version(folder, card)
    again["magnification"]["red_cell_scale"] *= 1.1  # what the check compares against
    assert model_version(folder, again) != model_version(folder, card)


@pytest.mark.parametrize("record", [
    {"version": "abcdefabcdef", "exported": "0001-01-01T00:00:00+0100"},
    {"version": "abcdefabcdef", "exported": "9999-12-31T23:59:59-0100"},
    {"version": "abcdefabcdef", "accuracy_target": 10 ** 400},
    {"version": "abcdefabcdef", "accuracy_target": "0.99"}, ["not", "a", "record"],
])
def test_a_damaged_record_of_the_model_is_no_500(tmp_path, client, batch_id, record):
    path = tmp_path / "uploads" / f"{batch_id}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "made_by": record}))
    for address in ("", "/0", "/report", "/review", "/0/heat-map.png", ".csv",
                    "/differential.csv"):
        assert client.get(f"/batch/{batch_id}{address}").status_code < 500, address


def test_a_card_with_an_export_time_out_of_range_serves_its_batches(tmp_path, models_root):
    path = models_root / "tiny" / "model_card.json"
    path.write_text(json.dumps({**json.loads(path.read_text()),
                                "exported": "0001-01-01T00:00:00+0100"}))
    client = make_app(tmp_path, models_root).test_client()
    batch_id = upload(client, "tiny", ("a.jpg", image_bytes())).rsplit("/", 1)[1]
    assert stored_json(client, batch_id)["made_by"]["exported"] is None
    assert client.get(f"/batch/{batch_id}").status_code == 200


def test_the_differential_csv_makes_a_damaged_version_inert(tmp_path, client, batch_id):
    path = tmp_path / "uploads" / f"{batch_id}.json"
    stored = json.loads(path.read_text())
    stored["made_by"]["version"] = '=HYPERLINK("http://x")'
    path.write_text(json.dumps(stored))
    rows = list(csv.DictReader(csv_of(client.get(f"/batch/{batch_id}/differential.csv")
                                      .get_data(as_text=True))))
    assert rows[0]["model_version"].startswith("'=")


def test_each_batch_page_and_report_says_which_cells_its_model_cannot_name(client, batch_id):
    for address in (f"/batch/{batch_id}", f"/batch/{batch_id}/report"):
        said = text(page(client, address))
        assert ("tiny knows only the 4 classes it names. A cell of any other kind (a blast, a "
                "reactive or atypical lymphocyte, an immature granulocyte, a nucleated red cell, "
                "a plasma cell, a basophil, a smudge cell) is given one of them") in said
