"""The HTML pages: every route, the upload flow, CSV, model page, errors, headers, CSRF."""

import hashlib
import io
import json
import re
import socket
import struct
import subprocess
import sys
import threading
from csv import DictReader
from html import unescape
from pathlib import Path

import pytest
from PIL import Image

from hematovision.cells import CELL_TYPES
from hematovision.card import ModelLoadError
from hematovision.predictor import Predictor
from hematovision.release import app_version
from hematovision.web import create_app
from tests.conftest import CLASSES
from tests.web_helpers import (
    BAD_FILES,
    CRASHING_SIZE,
    crash_decoder_on,
    csrf_token,
    image_bytes,
    make_app,
    make_models_root,
    png_with_size,
    save_sample,
    text,
)

ROOT = Path(__file__).resolve().parent.parent
CARD = {
    "description": "Four white-cell types in smear crops.",
    "expects": "320x240 smear crops with the white cell near the centre.",
    "initialisation": "MobileNetV2 backbone from a dog-breed classifier",
    "training": {
        "best_epoch": 7,
        "run_folder": "20261123-mobilenetv2",
        "config": {"learning_rate": 0.0003, "views": 3, "class_balance": True},
    },
    "validation": {"accuracy": 0.8123, "balanced_accuracy": 0.8011},
    "metrics": {
        "test": {
            "n": 40,
            "accuracy": 0.875,
            "macro_f1": 0.8642,
            "balanced_accuracy": 0.87,
            "per_class": {
                c: {"precision": 0.9 - i / 10, "recall": 0.8, "f1": 0.85 - i / 100, "support": 10}
                for i, c in enumerate(CLASSES)
            },
            "confusion_matrix": [[10, 0, 0, 0]] * 4,
            "intervals": {"level": 0.95, "rounds": 1000, "resampled": "source smears",
                          "units": 12, "accuracy": [0.8011, 0.9321],
                          "macro_f1": [0.7902, 0.9288]},
        }
    },
}
PNG = image_bytes(fmt="PNG")


@pytest.fixture
def models_root(tmp_path, tiny_model_dir):
    return make_models_root(
        tmp_path / "models",
        tiny_model_dir,
        card=CARD,
        files={
            "curves.png": PNG,
            "confusion_test.png": PNG,
            "per_class_extra.png": PNG,
            "notes.txt": b"not served",
            "secret.PNG.bak": b"not served",
        },
    )


def submit(client, *files, **form):
    return client.post(
        "/upload",
        data={
            "csrf_token": csrf_token(client),
            **form,
            "file": [(io.BytesIO(data), name) for name, data in files],
        },
    )


def follow(client, response):
    assert response.status_code == 303, response.get_data(as_text=True)
    page = client.get(response.headers["Location"])
    assert page.status_code == 200
    return page.get_data(as_text=True)


PAGES = [
    "/",
    "/models",
    "/models/tiny",
    "/docs/api",
    "/models/tiny/files/curves.png",
    "/api/health",
    "/api/model",
]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_answers_with_security_headers(client, path):
    response = client.get(path)
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"


@pytest.mark.parametrize("path", ["/", "/models", "/models/tiny", "/docs/api", "/nope"])
def test_pages_have_no_inline_script_or_style(client, path):
    html = client.get(path).get_data(as_text=True)
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all('src="/static/' in s for s in scripts)
    assert "<style" not in html and " style=" not in html and "onclick" not in html.lower()


def test_static_bootstrap_is_vendored(client):
    for path in [
        "/static/vendor/bootstrap.min.css",
        "/static/vendor/bootstrap.bundle.min.js",
        "/static/app.css",
        "/static/app.js",
    ]:
        response = client.get(path)
        assert response.status_code == 200 and len(response.data) > 1000
        response.close()


def test_home_states_formats_limits_model_choice_and_expectations(client):
    html = client.get("/").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in html
    assert re.search(r'<input[^>]*type="file"[^>]*name="file"[^>]*multiple', html)
    assert '<label class="form-label fw-semibold" for="file">Images</label>' in html
    assert '<label class="form-label fw-semibold" for="model">Model</label>' in html
    assert '<option value="tiny" selected>' in html
    assert "Accepted formats: AVIF, BMP, GIF, HEIC, HEIF, JPG, PNG, TIF, WEBP" in html
    assert " ".join(text(html).split()).count(
        "Up to 100 files and 32 MB per upload in total; a larger selection, or a folder, is sent "
        "in parts into one batch of up to 1,000 images.") == 1
    # What upload.js splits a larger selection by: the same bounds, less the form's overhead.
    assert re.search(r'id="upload-form" data-max-files="100"\s+data-max-bytes="33386496" '
                     r'data-max-batch="1000"\s+data-suffixes="\.avif,\.bmp,', html)
    assert "PNG, TIFF or high-quality JPEG" in html  # what the robustness figures advise
    assert "Drag and drop images or a folder here" in html
    assert html.count(CARD["expects"]) == 2  # under the picker and in the side panel
    assert re.search(r'name="csrf_token" value="[\w-]{40,}"', html)


def test_without_a_byte_limit_the_home_page_states_the_file_limit_alone(tmp_path, models_root):
    """MAX_CONTENT_LENGTH may be null (no limit): the page once failed with a 500 dividing it."""
    client = make_app(tmp_path, models_root, MAX_CONTENT_LENGTH=None,
                      MAX_FORM_PARTS=5).test_client()
    html = client.get("/").get_data(as_text=True)
    assert "Up to 100 files per upload in total;" in " ".join(text(html).split())
    assert 'data-max-files="3"' in html  # the token and the model are parts of the form too
    assert 'data-max-bytes=""' in html  # upload.js reads no byte bound


def test_a_card_text_without_a_full_stop_does_not_run_into_the_next_sentence(tmp_path,
                                                                            tiny_model_dir):
    root = make_models_root(tmp_path / "models", tiny_model_dir,
                            card={"expects": "Smear crops (the model centres the nucleus)"})
    html = make_app(tmp_path, root).test_client().get("/").get_data(as_text=True)
    assert "Smear crops (the model centres the nucleus)." in html
    assert "nucleus).." not in html and "nucleus) " not in html


def test_one_image_gives_the_result_page(client, models_root):
    data = image_bytes((200, 60, 60))
    html = follow(client, submit(client, ("cell 1.jpg", data)))
    expected = Predictor(models_root / "tiny").predict(data)
    cell = CELL_TYPES[expected.label]
    assert f'data-label="{expected.label}">{cell.display_name}</h1>' in html
    assert f'<strong id="confidence">{expected.confidence * 100:.1f} %</strong>' in html
    bars = re.findall(r'data-value="([\d.]+)"', html)
    assert len(bars) == len(CLASSES)  # one probability bar per class, most likely first
    assert [float(b) for b in bars] == pytest.approx(
        sorted(expected.probabilities.values(), reverse=True), abs=1e-4
    )
    assert cell.morphology in html and cell.normal_share in html
    image = re.search(
        r'<img class="card-img-top result-image" src="(/uploads/[0-9a-f]{32}\.jpg)"\s+'
        r'alt="Uploaded image cell 1.jpg, classified as ' + cell.display_name,
        html,
    )
    assert image and client.get(image.group(1)).status_code == 200


def test_a_heic_photo_from_a_phone_is_classified_and_shown_as_jpeg(client):
    """Browsers other than Safari cannot show HEIC: the page shows the stored upright JPEG."""
    from tests.test_preprocess import TURNED_HEIC, red_on_top_blue_below

    html = follow(client, submit(client, ("IMG_0042.HEIC", TURNED_HEIC.read_bytes())))
    assert 'id="confidence"' in html
    stored = client.get(re.search(r'src="(/uploads/[0-9a-f]{32}\.jpg)"', html).group(1))
    assert stored.mimetype == "image/jpeg"
    image = Image.open(io.BytesIO(stored.data))
    assert image.size == (32, 64) and red_on_top_blue_below(image.convert("RGB"))

def test_an_upload_finer_than_the_training_images_is_read_at_their_resolution(tmp_path,
                                                                              tiny_model_dir):
    """BCCD's own 640x480 smears were "not a cell" read at full resolution: the app reads an
    upload as the predict command does, brought down to the model's training resolution."""
    from hematovision.preprocess import at_resolution
    from tests.conftest import make_smear

    reference = {"red_cell_scale": 0.1, "single_image_range": [0.5, 2.0],
                 "batch_range": [0.8, 1.25], "max_short_side": 48, "min_batch_images": 5,
                 "reference": {"data": "train", "images": 9},
                 "check": {"data": "test", "n": 0, "batch_draws": 0, "rows": []}}
    root = make_models_root(tmp_path / "m", tiny_model_dir, names=("fine",),
                            card={"magnification": reference})
    client = make_app(tmp_path, root, DEFAULT_MODEL="fine").test_client()
    field = make_smear(12, size=(128, 96), seed=3)
    encoded = {}
    for name, image in (("field", field), ("coarse", at_resolution(field, 48))):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        encoded[name] = buffer.getvalue()
    html = follow(client, submit(client, ("field.png", encoded["field"])))
    expected = Predictor(root / "fine").predict(encoded["coarse"])
    assert f'<strong id="confidence">{expected.confidence * 100:.1f} %</strong>' in html
    stored = re.search(r'src="(/uploads/[0-9a-f]{32}\.jpg)"', html).group(1)
    assert Image.open(io.BytesIO(client.get(stored).data)).size == (128, 96)  # shown as sent
    assert "The training images' largest short side is 48 px" in text(
        client.get("/models/fine").get_data(as_text=True))

def test_result_pages_and_their_files_are_not_cached(client):
    response = submit(client, ("a.jpg", image_bytes()))
    assert client.get(response.headers["Location"]).headers["Cache-Control"] == "no-store"
    batch = submit(client, ("a.jpg", image_bytes()), ("b.png", image_bytes(fmt="PNG")))
    location = batch.headers["Location"]
    html = client.get(location).get_data(as_text=True)
    stored_image = re.search(r'src="(/uploads/[0-9a-f]{32}\.jpg)"', html).group(1)
    for address in (location, f"{location}/1", f"{location}.csv", stored_image):
        response = client.get(address)
        assert response.status_code == 200, address
        assert response.headers["Cache-Control"] == "no-store", address


def test_many_images_give_the_batch_page_with_the_differential(client, models_root):
    colors = [(200, 60, 60), (60, 60, 200), (200, 60, 60), (120, 60, 160)]
    # Two cells of one colour, as two files of their own (a copy of one would be left out).
    files = [(f"{i}.png", image_bytes(c, fmt="PNG", compress_level=i)) for i, c in
             enumerate(colors)]
    response = submit(client, *files, ("broken.jpg", b"\xff\xd8 nope"))
    html = follow(client, response)
    labels = [Predictor(models_root / "tiny").predict(d).label for _, d in files]

    assert "Batch of 5 images" in html and "4 classified, 1 could not be read" in text(html)
    rows = re.findall(
        r'<tr data-class="(\w+)">.*?<td class="text-end">(\d+)</td>\s*'
        r'<td class="text-end">([\d.]+)</td>',
        html,
        re.S,
    )
    assert [r[0] for r in rows] == CLASSES
    assert {r[0]: int(r[1]) for r in rows} == {c: labels.count(c) for c in CLASSES}
    assert {r[0]: r[2] for r in rows} == {c: f"{100 * labels.count(c) / 4:.1f}" for c in CLASSES}
    assert len(re.findall(r'<img class="thumb rounded"', html)) == 4
    assert "The file is not an image in a format we can read." in html
    batch_id = response.headers["Location"].rsplit("/", 1)[1]
    assert f'href="/batch/{batch_id}.csv"' in html
    assert f'href="/batch/{batch_id}/1"' in html
    assert "0.png" in follow_single(client, batch_id, 0)


def follow_single(client, batch_id, index):
    response = client.get(f"/batch/{batch_id}/{index}")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_single_item_index_out_of_range_is_404(client):
    batch_id = (
        submit(client, ("a.jpg", image_bytes()), ("b.jpg", image_bytes()))
        .headers["Location"]
        .rsplit("/", 1)[1]
    )
    assert client.get(f"/batch/{batch_id}/2").status_code == 404


def test_csv_download_contents(client, models_root):
    good = image_bytes((60, 60, 200), fmt="PNG")
    # The same pixels in another file (a copy of the same file would be left out).
    same = image_bytes((60, 60, 200), fmt="PNG", compress_level=1)
    response = submit(client, ("=HYPERLINK(1).png", good), ("empty.jpg", b""), ("b,c.png", same))
    batch_id = response.headers["Location"].rsplit("/", 1)[1]
    csv = client.get(f"/batch/{batch_id}.csv")
    predictor = Predictor(models_root / "tiny")
    target = predictor.trust.target_accuracy
    p, made_by = predictor.predict(good), (f"tiny,{predictor.version},"
                                           f"{'' if target is None else f'{target:g}'},"
                                           f"{app_version()}")
    probs = ",".join(f"{p.probabilities[c]:.4f}" for c in CLASSES)
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    assert csv.headers["Content-Disposition"] == (
        f'attachment; filename="hematovision-{batch_id[:8]}.csv"'
    )
    assert csv.get_data(as_text=True) == (
        "\ufefffile,label,status,confidence,p_eosinophil,p_lymphocyte,p_monocyte,p_neutrophil,error,"
        "differential_class,red_cell_ratio,reviewed_class,cell,white_cells,reviewed_by,"
        "reviewed_at,model,model_version,accuracy_target,app_version,band_low,band_high,"
        "band_images,band_right,near_threshold,exposure_correction,sample\n"  # no band: the
        # tiny model keeps no held-out arrays; no exposure reference; no sample ID given
        f"'=HYPERLINK(1).png,{p.label},accepted,{p.confidence:.4f},{probs},,{p.label},,,,,,,"
        f"{made_by},,,,,,,\n"
        f"empty.jpg,,,,,,,,The file is empty.,,,,,,,,{made_by},,,,,,,\n"
        f'"b,c.png",{p.label},accepted,{p.confidence:.4f},{probs},,{p.label},,,,,,,{made_by}'
        ",,,,,,,\n"
    )
    # Each row names the sample, so a row pasted elsewhere is told from another patient's.
    assert save_sample(client, batch_id, "=S-1").status_code == 303
    rows = list(DictReader(io.StringIO(
        client.get(f"/batch/{batch_id}.csv").get_data(as_text=True).removeprefix("\ufeff"))))
    assert [row["sample"] for row in rows] == ["'=S-1"] * 3


def test_the_model_picker_chooses_the_model(tmp_path, tiny_model_dir):
    root = make_models_root(tmp_path / "m", tiny_model_dir, names=("tiny", "other"))
    client = make_app(tmp_path, root).test_client()
    html = follow(client, submit(client, ("a.jpg", image_bytes()), model="other"))
    assert 'model\n          <a href="/models/other">other</a>' in html


@pytest.mark.parametrize(
    "names, default",
    [
        (("alpha", "wbc4", "zeta"), "wbc4"),  # the project's default model when present
        (("beta", "alpha"), "alpha"),  # else the first by name
    ],
)
def test_default_model_choice(tmp_path, tiny_model_dir, names, default):
    root = make_models_root(tmp_path / "m", tiny_model_dir, names=names)
    app = make_app(tmp_path, root, DEFAULT_MODEL=None)
    assert app.config["DEFAULT_MODEL"] == default
    assert sorted(app.extensions["predictors"]) == sorted(names)
    assert f'<option value="{default}" selected>' in app.test_client().get("/").get_data(
        as_text=True
    )


def test_models_are_loaded_once_at_startup(app, monkeypatch):
    predictor = app.extensions["predictors"]["tiny"]
    loads = []
    real_init = Predictor.__init__
    monkeypatch.setattr(Predictor, "__init__",
                        lambda self, *a, **k: loads.append(a) or real_init(self, *a, **k))
    client = app.test_client()
    location = submit(client, ("a.jpg", image_bytes())).headers["Location"]
    assert client.get(location).status_code == 200
    client.post("/api/predict", data={"file": (io.BytesIO(image_bytes()), "a.jpg")})
    assert not loads  # no request builds a model of its own
    assert app.extensions["predictors"]["tiny"] is predictor


def test_no_model_is_one_clear_startup_error(tmp_path):
    with pytest.raises(ModelLoadError, match=f"No model found in {tmp_path / 'empty'}.*export"):
        make_app(tmp_path, tmp_path / "empty", DEFAULT_MODEL=None)


def test_missing_default_model_names_the_setting_and_the_models_there(tmp_path, models_root):
    with pytest.raises(ModelLoadError) as refused:
        make_app(tmp_path, models_root, DEFAULT_MODEL="wbc5")
    assert str(refused.value) == (
        "The setting DEFAULT_MODEL (environment variable HEMATOVISION_DEFAULT_MODEL) names "
        f"'wbc5', which is not a model folder in {models_root.resolve()}; the models there are "
        "tiny.")
    # A folder of that name that is not a whole model: what it lacks, where.
    (models_root / "wbc4").mkdir()
    with pytest.raises(ModelLoadError, match=str(models_root / "wbc4")):
        make_app(tmp_path, models_root, DEFAULT_MODEL="wbc4")


def test_corrupt_model_fails_at_startup(tmp_path, models_root):
    (models_root / "tiny" / "model.tflite").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="corrupt"):
        make_app(tmp_path, models_root)


@pytest.mark.parametrize("reserved", ["all", "no-white-cell", "not-a-cell", "excluded",
                                      "other-white-cell", "a,b", "a=b"])
def test_a_model_naming_a_class_as_a_review_list_fails_at_startup(tmp_path, tiny_model_dir,
                                                                   reserved):
    """Its cells would be listed under the review page's list of that name, or counted as
    excluded."""
    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    root = make_models_root(tmp_path / "m", tiny_model_dir,
                            card={"classes": [*card["classes"][:-1], reserved]})
    with pytest.raises(ModelLoadError, match=f"The model 'tiny' names a class '{reserved}', "
                                             "which the app keeps for its own use"):
        make_app(tmp_path, root)


@pytest.mark.parametrize("alike", [("smudge_cell", "smudge-cell"), ("other_white_cell",),
                                   ("Excluded",)])
def test_a_model_whose_classes_the_pages_would_name_alike_fails_at_startup(tmp_path,
                                                                          tiny_model_dir, alike):
    """A reviewer choosing "Smudge cell" could not tell which of two it is, nor a class
    "Other white cell" from the verdict of that name."""
    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    classes = [*card["classes"][:4 - len(alike)], *alike]
    root = make_models_root(tmp_path / "m", tiny_model_dir, card={"classes": classes})
    with pytest.raises(ModelLoadError, match="that the pages would show as one name"):
        make_app(tmp_path, root)


def test_the_reserved_class_names_are_the_review_lists_and_the_exclusion():
    from hematovision.cells import OTHER_WHITE_CELL
    from hematovision.differential import EXCLUDED
    from hematovision.web.models import RESERVED_CLASS_NAMES
    from hematovision.web.review_lists import REVIEW_LISTS

    assert set(RESERVED_CLASS_NAMES) == {*REVIEW_LISTS, OTHER_WHITE_CELL, EXCLUDED}


def test_python_app_py_reports_a_missing_model_without_a_traceback(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HEMATOVISION_MODELS_ROOT": str(tmp_path / "none"),
        "HEMATOVISION_SECRET_KEY": "x",
        "PYTHONPATH": str(ROOT),
    }
    run = subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: No model found in {tmp_path / 'none'}")
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("args, code, output", [
    (["--help"], 0, "usage: python app.py [-h] [--check] [--host HOST] [--port PORT]"),
    (["--port", "8080x"], 2, "argument --port: invalid int value: '8080x'"),
    (["--port", "70000"], 2, "--port must be from 0 to 65535, not 70000"),
    (["--chek"], 2, "unrecognized arguments: --chek"),
])
def test_python_app_py_answers_its_options_without_starting_a_server(args, code, output):
    """Once, any argument but --check started the server on port 5000 and printed nothing:
    `--help` waited for ever and a misspelt `--check` served instead of checking."""
    run = subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                      "PYTHONPATH": str(ROOT)})
    assert run.returncode == code
    assert output in (run.stdout if code == 0 else run.stderr)


@pytest.mark.parametrize("typed", ["null", "true", "1.50", '["Lab"]'])
def test_the_lab_s_name_is_taken_as_typed_not_as_json(tmp_path, models_root, monkeypatch, typed):
    from hematovision.web import create_app

    # create_app reads the environment only without a test config, as `python app.py` does.
    monkeypatch.setenv("HEMATOVISION_LAB_NAME", typed)
    monkeypatch.setenv("HEMATOVISION_SECRET_KEY", "x")
    monkeypatch.setenv("HEMATOVISION_MODELS_ROOT", str(models_root))
    monkeypatch.setenv("HEMATOVISION_UPLOAD_FOLDER", str(tmp_path / "up"))
    monkeypatch.chdir(tmp_path)
    app = create_app()
    assert app.config["LAB_NAME"] == typed


@pytest.mark.parametrize("setting, value, message", [
    ("LITERT_THREADS", "abc", "LITERT_THREADS (environment variable HEMATOVISION_LITERT_THREADS)"
                              " must be a whole number above 0, not 'abc'."),
    ("LITERT_THREADS", 0, "must be a whole number above 0, not 0."),  # once: a corrupt model
    ("LITERT_THREADS", [1], "must be a whole number above 0, not [1]."),
    ("MAX_FILES", 2.5, "MAX_FILES (environment variable HEMATOVISION_MAX_FILES) must be a whole"),
    ("MAX_FILES", True, "must be a whole number above 0, not True."),
    ("RETENTION_SECONDS", float("inf"), "must be a number of seconds, 0 or more, not inf."),
    ("PURGE_INTERVAL_SECONDS", -1, "must be a number of seconds, 0 or more, not -1."),
    ("MAX_FORM_PARTS", "many", "must be a whole number above 0 (or null: no limit), not"),
    ("UPLOAD_FOLDER", ["a"], "UPLOAD_FOLDER (environment variable HEMATOVISION_UPLOAD_FOLDER) "
                             "must be a path, not ['a']."),
    ("LAB_NAME", "Lab\nB", "LAB_NAME (environment variable HEMATOVISION_LAB_NAME) must be one "
                         "line of at most 80 letters"),
    ("LAB_NAME", "x" * 81, "must be one line of at most 80 letters"),
    ("SECRET_KEY_FILE", "/proc/none/secret_key",
     "SECRET_KEY_FILE (environment variable HEMATOVISION_SECRET_KEY_FILE): cannot read or "
     "create /proc/none/secret_key"),
])
def test_a_setting_of_the_wrong_kind_is_one_clear_startup_error(tmp_path, models_root, setting,
                                                                 value, message):
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        make_app(tmp_path, models_root, SECRET_KEY=None, **{setting: value})


def test_no_limit_is_a_setting_and_a_folder_named_by_a_number_is_that_folder(
        tmp_path, models_root, monkeypatch):
    from hematovision.web import check_settings

    app = make_app(tmp_path, models_root, MAX_CONTENT_LENGTH=None, MAX_FORM_PARTS=None)
    assert app.config["MAX_CONTENT_LENGTH"] is None
    monkeypatch.setenv("HEMATOVISION_UPLOAD_FOLDER", "2026")
    config = {**app.config, "UPLOAD_FOLDER": 2026}  # as from_prefixed_env parses it
    check_settings(config)
    assert config["UPLOAD_FOLDER"] == "2026"


def test_secret_key_is_created_once_and_shared(tmp_path, models_root):
    key_file = tmp_path / "instance" / "secret_key"
    first = make_app(tmp_path, models_root, SECRET_KEY=None, SECRET_KEY_FILE=str(key_file))
    second = make_app(tmp_path, models_root, SECRET_KEY=None, SECRET_KEY_FILE=str(key_file))
    assert len(first.config["SECRET_KEY"]) == 64
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_model_page_says_its_limitations_from_its_card(tmp_path, client, tiny_model_dir):
    html = client.get("/models/tiny").get_data(as_text=True)
    limits = text(re.search(r'id="limitations".*?</section>', html, re.S).group(0))
    assert "tiny knows only the 4 classes it names" in limits and "a basophil" in limits
    assert ("Its test images are views of a few dozen source smears (the 95 % intervals "
            "resample the 12 whose smear is known):") in limits
    assert "80.1 % to 93.2 %, resampling its 12 source smears" in text(html)
    by_image = {**CARD["metrics"]["test"], "intervals": {
        **CARD["metrics"]["test"]["intervals"], "resampled": "images", "units": 40}}
    root = make_models_root(tmp_path / "m", tiny_model_dir,
                            card={**CARD, "metrics": {"test": by_image}})
    html = make_app(tmp_path, root).test_client().get("/models/tiny").get_data(as_text=True)
    limits = text(re.search(r'id="limitations".*?</section>', html, re.S).group(0))
    assert "split by image" in limits and "source smears" not in limits


def test_model_page_shows_the_card(client):
    html = client.get("/models/tiny").get_data(as_text=True)
    page = text(html)
    assert CARD["description"] in page and CARD["expects"] in page
    assert CARD["initialisation"] in page
    assert "research and education" in page and "not a medical device" in page
    assert "best epoch 7" in page and "learning rate 0.0003" in page
    assert "class balance yes" in page
    assert "accuracy 0.8123" in page  # validation
    assert 'data-metric="test.accuracy">0.8750<' in html
    assert 'data-metric="test.macro_f1">0.8642<' in html
    interval = text(re.search(r'<dd[^>]*data-interval="test">(.*?)</dd>', html, re.S).group(1))
    assert interval.startswith("accuracy 0.801 to 0.932; macro-F1 0.790 to 0.929 (1000 resamples "
                               "of 12 source smears")
    row = re.search(r'<tr data-class="monocyte">(.*?)</tr>', html, re.S).group(1)
    assert re.findall(r">([\d.]+)</td>", row) == ["0.7000", "0.8000", "0.8300", "10"]


def test_model_page_shows_the_model_folder_images_known_ones_first(client):
    html = client.get("/models/tiny").get_data(as_text=True)
    sources = re.findall(r'src="(/models/tiny/files/[^"]+)"', html)
    assert sources == [
        "/models/tiny/files/confusion_test.png",
        "/models/tiny/files/curves.png",
        "/models/tiny/files/per_class_extra.png",
    ]
    assert 'alt="Confusion matrix on the test set' in html
    assert 'alt="Per class extra"' in html
    response = client.get(sources[0])
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data == PNG


def test_a_model_exported_again_while_the_app_runs_keeps_its_page_and_says_so(client,
                                                                               models_root):
    """The app serves the model it loaded until it restarts: its page must keep that model's
    card and plots, not mix in the new run's, and say that the folder changed."""
    folder = models_root / "tiny"
    assert "Restart the app" not in text(client.get("/models/tiny").get_data(as_text=True))
    card = json.loads((folder / "model_card.json").read_text())
    (folder / "model_card.json").write_text(json.dumps({**card, "description": "Retrained"}))
    (folder / "curves.png").write_bytes(PNG + b"new run")
    (folder / "confusion_test.png").unlink()  # export empties the metrics and their plots
    page = text(client.get("/models/tiny").get_data(as_text=True))
    assert CARD["description"] in page and "Retrained" not in page
    assert ("The files of this model changed after the app loaded it (exported again?): the app "
            "still serves the model it loaded, shown on this page. Restart the app to serve the "
            "new one.") in page
    assert client.get("/models/tiny/files/confusion_test.png").data == PNG
    plot = client.get("/models/tiny/files/curves.png")
    assert plot.data == PNG
    # Served from memory, a plot still revalidates: its ETag is that of the bytes served.
    assert plot.headers["ETag"] == f'"{hashlib.sha256(PNG).hexdigest()[:32]}"'
    again = client.get("/models/tiny/files/curves.png",
                       headers={"If-None-Match": plot.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""


@pytest.mark.parametrize(
    "file_name",
    [
        "model_card.json",
        "model.tflite",
        "notes.txt",
        "secret.PNG.bak",
        "missing.png",
        "..%2F..%2Fmodels%2Ftiny%2Fcurves.png",
        ".hidden.png",
    ],
)
def test_model_files_route_serves_only_listed_images(client, file_name):
    assert client.get(f"/models/tiny/files/{file_name}").status_code == 404


def test_model_page_without_metrics_says_so(tmp_path, tiny_model_dir):
    root = make_models_root(tmp_path / "m", tiny_model_dir)
    html = make_app(tmp_path, root).test_client().get("/models/tiny").get_data(as_text=True)
    assert "No test metrics are recorded in this model card yet." in html
    assert "tiny test model" in html


def test_model_page_shows_the_recorded_robustness_figures(tmp_path, tiny_model_dir):
    rows = [{"name": "as recorded", "description": "the images unchanged (baseline)",
             "accuracy": 0.9, "accepted_rate": 0.8, "unidentified_rate": 0.15,
             "not_a_cell_rate": 0.05, "accuracy_accepted": 0.97},
            {"name": "blur 2 px", "description": "out of focus", "accuracy": 0.6,
             "accepted_rate": 0.0, "unidentified_rate": 0.5, "not_a_cell_rate": 0.5,
             "accuracy_accepted": None}]
    root = make_models_root(tmp_path / "m", tiny_model_dir, card={"metrics": {"robustness": {
        "data": "test", "n": 20, "perturbations": rows}}})
    html = make_app(tmp_path, root).test_client().get("/models/tiny").get_data(as_text=True)
    table = html[html.index('id="robustness-table"'):]
    table = text(table[:table.index("</table>")])
    assert "as recorded the images unchanged (baseline) 90.0 % 80.0 % 97.0 % 15.0 % 5.0 %" in table
    assert "blur 2 px out of focus 60.0 % 0.0 % none accepted 50.0 % 50.0 %" in table
    # Without recorded figures the section is left out.
    plain = make_models_root(tmp_path / "p", tiny_model_dir)
    assert 'id="robustness"' not in make_app(tmp_path, plain).test_client().get(
        "/models/tiny").get_data(as_text=True)


def test_unknown_model_page_is_404(client):
    response = client.get("/models/nope")
    assert response.status_code == 404
    assert "Unknown model &#39;nope&#39;; available models: tiny." in response.get_data(
        as_text=True
    )


def test_models_list_links_every_model(client):
    html = client.get("/models").get_data(as_text=True)
    assert '<a href="/models/tiny">tiny</a>' in html and "default" in html
    # Classes by the names the pages give them, not their folder names ('ig').
    assert "4 classes: Eosinophil, Lymphocyte, Monocyte, Neutrophil" in text(html)


def test_api_docs_page_has_curl_examples(client):
    html = client.get("/docs/api").get_data(as_text=True)
    assert "curl -F file=@cell.jpg http://localhost/api/predict" in html
    assert "curl http://localhost/api/health" in html


@pytest.mark.parametrize("name, data, message", BAD_FILES)
def test_a_bad_file_alone_returns_the_form_with_its_reason(client, name, data, message):
    response = submit(client, (name, data))
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert 'id="upload-errors"' in html and message in html.replace("&#39;", "'")
    assert 'id="upload-form"' in html  # the user can try again right there


@pytest.mark.parametrize("name, data, message", BAD_FILES)
def test_a_bad_file_in_a_batch_is_listed_and_the_others_classified(client, name, data, message):
    html = follow(client, submit(client, ("good.jpg", image_bytes()), (name, data)))
    assert "1 classified, 1 could not be read" in text(html)
    assert message in html


def test_hostile_file_names_are_escaped_in_pages(client):
    html = follow(
        client,
        submit(
            client, ("<img src=x onerror=alert(1)>.png", image_bytes()), ("ok.jpg", image_bytes())
        ),
    )
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;.png" in html


@pytest.mark.parametrize(
    "form, message",
    [
        ({}, "No file was uploaded"),  # no file field
        ({"file": (io.BytesIO(b""), "")}, "No file was uploaded"),  # the form with no file chosen
        (
            {"model": "nope", "file": (io.BytesIO(image_bytes()), "a.jpg")},
            "Unknown model &#39;nope&#39;; available models: tiny.",
        ),
    ],
)
def test_form_requests_without_work_are_400(client, form, message):
    response = client.post("/upload", data={"csrf_token": csrf_token(client), **form})
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)


@pytest.mark.parametrize("token", [None, "", "forged", "forgé", "\U0001fa78", "{real}é"])
def test_csrf_token_is_required(client, tmp_path, token):
    real = csrf_token(client)  # the session has a token, the form does not send it
    data = {"file": (io.BytesIO(image_bytes()), "a.jpg")}
    if token is not None:
        data["csrf_token"] = token.format(real=real)
    response = client.post("/upload", data=data)
    assert response.status_code == 400
    assert "The form has expired or was not sent from this site" in response.get_data(as_text=True)
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())


def test_csrf_token_of_another_session_is_refused(app):
    other = csrf_token(app.test_client())
    response = app.test_client().post(
        "/upload", data={"csrf_token": other, "file": (io.BytesIO(image_bytes()), "a.jpg")}
    )
    assert response.status_code == 400


def test_every_page_form_refuses_a_forged_token(app, client):
    """The pages are served by several blueprints: each that takes a form runs the CSRF check,
    so a POST to any route but the API's is refused (400) with a token not this session's."""
    csrf_token(client)
    posts = [rule.rule for rule in app.url_map.iter_rules()
             if "POST" in rule.methods and not rule.rule.startswith("/api/")]
    assert len(posts) >= 10
    for path in posts:
        response = client.post(path.replace("<batch_id>", "0" * 32).replace("<int:index>", "0"),
                               data={"csrf_token": "forged"})
        assert response.status_code == 400, path
        assert "The form has expired" in response.get_data(as_text=True), path


@pytest.mark.parametrize("path", ["/upload", f"/batch/{'0' * 32}/delete", "/api/predict"])
def test_a_body_cut_short_mid_chunk_is_answered_at_once(app, path):
    """A form sent in chunks, one of them malformed: the body cannot be read. The answer is a
    400 at once, not a wait until the client hangs up (the error page once read the body
    again, which blocks on a socket with nothing more to give), on a real server."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         "Content-Type: application/x-www-form-urlencoded\r\n"
                         "Connection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".encode())
            status = sock.recv(64)  # socket.timeout: no answer while the client waits
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert status.startswith(b"HTTP/1.1 400 ")


class CutShortBody:
    """A request body as gunicorn reads a malformed chunk from the socket."""

    def read(self, *args):
        from gunicorn.http.errors import InvalidChunkSize

        raise InvalidChunkSize(b"zz")

    readline = readinto = read


@pytest.mark.parametrize("path", ["/upload", f"/batch/{'0' * 32}/delete", "/api/predict"])
def test_a_body_gunicorn_cannot_parse_is_a_400_saying_so(client, path):
    """gunicorn raises its own ParseException from the body: once a 500 wherever the form was
    first read (the CSRF check of every page form)."""
    response = client.post(path, content_type="application/x-www-form-urlencoded",
                           environ_overrides={"wsgi.input": CutShortBody(),
                                              "wsgi.input_terminated": True})
    assert response.status_code == 400
    assert "could not be read: it was cut short or malformed" in response.get_data(as_text=True)


def test_session_cookie_is_httponly_and_samesite(client):
    cookie = client.get("/").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_upload_over_the_size_limit_is_a_friendly_413(tmp_path, models_root):
    client = make_app(tmp_path, models_root, MAX_CONTENT_LENGTH=100_000).test_client()
    response = submit(client, ("big.png", bytes(150_000)))
    assert response.status_code == 413
    html = response.get_data(as_text=True)
    assert "Upload too large" in html and "larger than the limit of 0.0953674 MB" in html
    assert 'class="navbar' in html  # the site layout


@pytest.mark.parametrize("path, code", [("/predict", 404), ("/", 405)])
def test_an_oversized_post_to_a_wrong_address_is_its_4xx_not_a_500(tmp_path, models_root, path,
                                                                   code):
    # The error page reads the form for the chosen model; reading this body raises a 413.
    client = make_app(tmp_path, models_root, MAX_CONTENT_LENGTH=100_000).test_client()
    response = client.post(path, data={"file": (io.BytesIO(bytes(150_000)), "big.png"),
                                       "model": "wbc4"}, content_type="multipart/form-data")
    assert response.status_code == code
    assert 'class="navbar' in response.get_data(as_text=True)


@pytest.mark.parametrize("config, form, phrase", [
    # More parts than MAX_FORM_PARTS, each tiny: the request is far below the size limit.
    ({"MAX_FORM_PARTS": 5}, {f"field{i}": "x" for i in range(8)}, "too many parts"),
    # A text field over MAX_FORM_MEMORY_SIZE (files are not held in memory, fields are).
    ({"MAX_FORM_MEMORY_SIZE": 1_000}, {"model": "x" * 5_000}, "a text field over 1,000 bytes"),
])
def test_a_413_for_the_form_does_not_blame_the_upload_size(tmp_path, models_root, config, form,
                                                           phrase):
    client = make_app(tmp_path, models_root, **config).test_client()
    response = submit(client, ("a.jpg", image_bytes()), **form)
    assert response.status_code == 413
    page = text(response.get_data(as_text=True))
    assert phrase in page and "Form too large" in page
    assert "Upload too large" not in page and " MB" not in page


def test_a_decoder_crash_is_a_400_with_a_clear_reason(client, monkeypatch):
    """A Pillow decoder failing with something other than OSError is a bad file, not a 500."""
    crash_decoder_on(monkeypatch, struct.error("unpack requires a buffer of 4 bytes"))
    response = submit(client, ("odd.png", image_bytes(size=CRASHING_SIZE, fmt="PNG")))
    assert response.status_code == 400
    assert ("The image is damaged or truncated (unpack requires a buffer of 4 bytes)."
            in response.get_data(as_text=True))


def test_decompression_bomb_in_the_form_is_a_400(client):
    response = submit(client, ("bomb.png", png_with_size(100_000, 100_000)))
    assert response.status_code == 400 and "too large" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "path, status, phrase",
    [
        ("/no/such/page", 404, "Page not found"),
        ("/batch/" + "0" * 32, 404, "a batch is deleted 1 hour after its last change"),
        ("/upload", 405, "Method not allowed"),
    ],
)
def test_friendly_error_pages_in_the_layout(client, path, status, phrase):
    response = client.get(path)
    assert response.status_code == status
    html = response.get_data(as_text=True)
    assert phrase in html and 'class="navbar' in html and "Back to the upload page" in html


@pytest.mark.parametrize("path", ["/no/such/page", "/models/", "/api/nope"])
def test_an_unknown_address_does_not_blame_deleted_results(client, path):
    body = client.get(path).get_data(as_text=True)
    assert "There is nothing at this address." in body and "deleted after a while" not in body


@pytest.mark.parametrize("value, shown", [
    (1.0, "> 99.9 %"), (0.99996, "> 99.9 %"), (0.9994, "99.9 %"), (0.5, "50.0 %"),
    (0.0006, "0.1 %"), (0.00004, "< 0.1 %"), (0.0, "0.0 %"), (None, "—")])
def test_probabilities_are_never_shown_as_certain(value, shown):
    """A calibrated 0.99996 is not a certainty: the page must not round it to 100.0 %."""
    from hematovision.web.filters import probability_pct

    assert probability_pct(value) == shown


@pytest.mark.parametrize("value, digits, shown", [
    (0.99996, 2, "> 99.99 %"), (0.99994, 2, "99.99 %"), (0.00004, 2, "< 0.01 %"),
    (0.9989, 2, "99.89 %")])
def test_probabilities_keep_their_caps_at_more_decimals(value, digits, shown):
    from hematovision.web.filters import probability_pct

    assert probability_pct(value, digits) == shown


@pytest.mark.parametrize("value, threshold, scale, least, digits", [
    (0.969, 0.9991, 100, 1, 1),  # apart at one decimal
    (0.99895, 0.9991, 100, 1, 2),  # "99.9" both at one decimal
    (0.9991, 0.9991, 100, 1, 1),  # equal: nothing to tell apart
    (8.61879, 8.6188, 1, 2, 5),
    (None, 0.5, 100, 1, 1)])
def test_a_score_and_its_threshold_get_the_decimals_that_tell_them_apart(
        value, threshold, scale, least, digits):
    from hematovision.web.filters import decimals_apart

    assert decimals_apart(value, threshold, scale, least) == digits


def test_the_405_page_names_the_allowed_methods(client):
    response = client.get("/upload")
    assert response.status_code == 405 and response.mimetype == "text/html"
    assert "POST" in response.headers["Allow"].split(", ")


def test_unexpected_error_is_a_friendly_500_without_details(app):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internal detail")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    html = response.get_data(as_text=True)
    assert "Something went wrong on our side" in html
    assert "secret internal detail" not in html and "Traceback" not in html


def test_environment_configures_the_app(monkeypatch, tmp_path, models_root):
    monkeypatch.setenv("HEMATOVISION_MODELS_ROOT", str(models_root))
    monkeypatch.setenv("HEMATOVISION_SECRET_KEY", "from-env")
    monkeypatch.setenv("HEMATOVISION_RETENTION_SECONDS", "600")
    monkeypatch.setenv("HEMATOVISION_UPLOAD_FOLDER", str(tmp_path / "up"))
    app = create_app()
    assert app.config["RETENTION_SECONDS"] == 600 and app.config["SECRET_KEY"] == "from-env"
    assert "deleted 10 minutes after their batch" in app.test_client().get("/").get_data(as_text=True)


def api_docs_example(client) -> str:
    """The example response of the API page, as the reader sees it."""
    html = client.get("/docs/api").get_data(as_text=True)
    return unescape(re.search(r'id="api-example"><code>(.*?)</code>', html, re.S).group(1))


def test_api_docs_example_has_the_api_fields(client):
    """The example on the API page, its <placeholders> filled in, parses as JSON and has the
    fields the API returns, in order; without a trust layer the scores are as the API gives."""
    example = api_docs_example(client)
    body = json.loads(re.sub(r"<[^<>]+>", "0", example))
    assert list(body) == ["model", "model_version", "accuracy_target", "app_version", "results",
                          "differential"]
    assert [s["class"] for s in body["differential"]["shares"]] == CLASSES
    assert list(body["differential"]) == ["white_cells", "awaiting_review", "not_a_cell_unreviewed",
                                           "shares"]
    assert list(body["differential"]["shares"][0]) == [
        "class", "count", "percent", "range_95", "reference", "outside", "beyond_counting_error"]
    assert body["differential"]["shares"][0]["reference"] == [1, 4]  # eosinophil's, catalog
    assert list(body["results"][0]) == [
        "file", "label", "status", "confidence", "probabilities", "candidates", "scores"
    ]
    assert list(body["results"][1]) == ["file", "error"]
    assert list(body["results"][0]["probabilities"]) == CLASSES
    assert body["results"][0]["scores"] == {"unfamiliarity": None,
                                            "unfamiliarity_threshold": None,
                                            "confidence_threshold": 0.0, "temperature": 1.0}


def test_relative_folders_are_taken_from_the_working_directory(
    tmp_path, tiny_model_dir, monkeypatch
):
    make_models_root(tmp_path / "m", tiny_model_dir, files={"curves.png": PNG})
    monkeypatch.chdir(tmp_path)
    client = make_app(tmp_path, Path("m"), UPLOAD_FOLDER="up").test_client()
    assert client.get("/models/tiny/files/curves.png").data == PNG
    batch_id = submit(client, ("a.jpg", image_bytes())).headers["Location"].rsplit("/", 1)[1]
    assert (tmp_path / "up" / f"{batch_id}.json").is_file()


def test_the_api_page_says_platelets_are_a_count_alone(client):
    said = " ".join(text(client.get("/docs/api").get_data(as_text=True)).split())
    assert ("for platelets the count alone ( per_100_white and range_95 null : single cells say "
            "nothing of how many a film holds per white cell)") in said
