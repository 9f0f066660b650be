"""Which version of a model made a batch's results: recorded at upload, named on every page,
CSV and the API, and a model replaced under the same name is neither added to nor drawn with."""

import csv
import io
import json
import re

import pytest

from hematovision.predictor import Predictor, model_version
from tests.conftest import CLASSES
from tests.web_helpers import (csrf_token, csv_of, image_bytes, make_app, make_models_root,
                               page, prose, stored_json, text, upload)


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


def test_a_batch_names_the_version_that_made_it_everywhere(client, batch_id, models_root):
    version = version_of(models_root)
    target = Predictor(models_root / "tiny").trust.target_accuracy
    record = stored_json(client, batch_id)["made_by"]
    assert record["version"] == version and record["app"] == "0.1.0"
    assert record["accuracy_target"] == target
    batch = text(page(client, f"/batch/{batch_id}"))
    assert f"Results of HematoVision 0.1.0, model tiny version {version}" in batch
    assert f"accuracy target of {100 * target:g} %" in batch
    assert f"version {version}" in text(page(client, f"/batch/{batch_id}/0"))
    report = page(client, f"/batch/{batch_id}/report")
    assert f"model tiny version {version}" in text(report)
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
    said = (f"The results of this batch were made by tiny version {made}")
    assert said in batch and f"the app now serves tiny version {now}" in batch
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
