"""The JSON API: exact response fields, validation of every bad input, batching."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from hematovision.predictor import Predictor
from hematovision.preprocess import load_image, to_input
from hematovision.release import app_version
from tests.conftest import CLASSES
from tests.web_helpers import (
    BAD_FILES,
    CRASHING_SIZE,
    HOSTILE_NAMES,
    ODD_IMAGES,
    animated_gif,
    crash_decoder_on,
    damaged_images,
    image_bytes,
    make_app,
    make_models_root,
)


@pytest.fixture
def models_root(tmp_path, tiny_model_dir):
    return make_models_root(tmp_path / "models", tiny_model_dir)


def post(client, *files, **form):
    return client.post(
        "/api/predict", data={"file": [(io.BytesIO(data), name) for name, data in files], **form}
    )


def test_the_differential_counts_the_accepted_cells_with_their_ranges(client, models_root):
    from hematovision.counting import share_range
    from hematovision.reference import catalog_intervals, flag

    files = [(f"{i}.png", image_bytes(color, fmt="PNG"))
             for i, color in enumerate([(200, 60, 60), (60, 60, 200), (200, 60, 60)])]
    body = post(client, *files, ("broken.jpg", b"nope")).get_json()
    labels = [r["label"] for r in body["results"] if r.get("status") == "accepted"]
    assert len(labels) == 3  # the tiny model has no trust layer: all accepted
    differential = body["differential"]
    assert differential["white_cells"] == 3 and "others" not in differential
    assert [s["class"] for s in differential["shares"]] == CLASSES
    for share in differential["shares"]:
        count = labels.count(share["class"])
        low, high = share_range(count, 3)
        assert share["count"] == count and share["percent"] == round(100 * count / 3, 1)
        assert share["range_95"] == [round(100 * low, 1), round(100 * high, 1)]
        # Nothing awaits review, so each share is read against its adult reference interval.
        interval = catalog_intervals()[share["class"]]
        found = flag(count, 3, interval)
        assert share["reference"] == list(interval)
        assert share["outside"] == (found.direction if found else None)
        assert share["beyond_counting_error"] == (found.beyond_counting_error if found else None)
    assert differential["awaiting_review"] == 0
    assert any(share["outside"] for share in differential["shares"])  # 3 cells: never normal


def test_with_the_total_count_the_differential_gives_cells_per_litre(client, models_root):
    from hematovision.counting import share_range

    files = [(f"{i}.png", image_bytes((200, 60, 60), fmt="PNG")) for i in range(4)]
    body = post(client, *files, wbc_count="6,5").get_json()
    differential = body["differential"]
    assert differential["white_cells_per_litre"] == 6.5
    for share in differential["shares"]:
        absolute = share["absolute"]
        assert absolute["value"] == round(6.5 * share["count"] / 4, 2)
        low, high = share_range(share["count"], 4)
        assert absolute["range_95"] == [round(6.5 * low, 2), round(6.5 * high, 2)]
        assert absolute["reference"] is not None  # every wbc4 class has one in the catalog
    # A model that names no nucleated red cell has none to correct the count for.
    body = post(client, *files, wbc_count="6,5", wbc_includes_nrbc="1").get_json()
    assert body["differential"]["white_cells_per_litre"] == 6.5
    assert "uncorrected_white_cells_per_litre" not in body["differential"]


@pytest.mark.parametrize("form, query, message", [
    ({"wbc_count": "6500"}, "", "must be a number of 10^9 cells per litre"),
    ({"wbc_count": "abc"}, "", "such as 6.5 (6,500 per microlitre)"),
    ({"wbc_count": "6.5"}, "?wbc_count=7", "'wbc_count' is given twice with different values"),
    ({"wbc_count": "6.5", "wbc_includes_nrbc": "maybe"}, "",
     "Unknown wbc_includes_nrbc value 'maybe': send wbc_includes_nrbc=1"),
])
def test_a_bad_total_count_is_refused_before_any_image_is_read(client, models_root, monkeypatch,
                                                                form, query, message):
    from hematovision.web import classify

    monkeypatch.setattr(classify, "decode", lambda *a, **k: pytest.fail("an image was read"))
    response = client.post("/api/predict" + query, data={
        "file": [(io.BytesIO(image_bytes()), "a.jpg")], **form})
    assert response.status_code == 400 and message in response.get_json()["error"]


def test_a_manual_count_is_compared_with_the_differential_as_the_batch_page_does(
        client, models_root):
    """The batch page's manual-count fields, in the form or the query string: the differential
    gains "manual", each class both ways with the difference and its p-value; without them it
    has none."""
    from hematovision.comparison import LEVEL, fisher_exact

    files = [(f"{i}.png", image_bytes(color, fmt="PNG"))
             for i, color in enumerate([(200, 60, 60)] * 3 + [(60, 60, 200)])]
    assert "manual" not in post(client, *files).get_json()["differential"]
    sent = {"neutrophil": 50, "lymphocyte": 30, "monocyte": 0, "eosinophil": 15}
    for query, form in (("", sent), ("?" + "&".join(f"manual_{c}={n}" for c, n in sent.items()),
                                     {})):
        response = client.post("/api/predict" + query, data={
            "file": [(io.BytesIO(data), name) for name, data in files], "manual_other": "5",
            **{f"manual_{c}": str(n) for c, n in form.items()}})
        differential = response.get_json()["differential"]
        manual = differential["manual"]
        assert (manual["white_cells"], manual["other"]) == (100, 5) and "beside" not in manual
        # The model's classes, then the manual count's other white cells against none: the
        # API has no reviews, so no cell of the request is another white cell.
        assert [m["class"] for m in manual["shares"]] == [*CLASSES, "other-white-cell"]
        other = manual["shares"][-1]
        assert (other["count"], other["manual_count"], other["difference"]) == (0, 5, -5.0)
        for share, compared in zip(differential["shares"], manual["shares"]):
            mine = sent[share["class"]]
            assert (compared["count"], compared["percent"]) == (share["count"], share["percent"])
            assert (compared["manual_count"], compared["manual_percent"]) == (mine, float(mine))
            assert compared["difference"] == round(100 * share["count"] / 4 - mine, 1)
            assert compared["p_value"] == fisher_exact(share["count"], 4, mine, 100)
            assert compared["beyond_counting_error"] == (compared["p_value"] < LEVEL)


@pytest.mark.parametrize("form, message", [
    ({"manual_neutrophils": "60"}, "Unknown field 'manual_neutrophils': a manual count for "
                                   "model tiny has the fields manual_eosinophil, "),
    ({"manual_neutrophil": "sixty"}, "manual_neutrophil: A count of cells is a whole number "
                                     "from 0 to 10,000; 'sixty' is not."),
    ({"manual_neutrophil": "-3"}, "'-3' is not"),
    ({"manual_neutrophil": "9000", "manual_lymphocyte": "9000"},
     "A manual count of at most 10,000 cells is compared; these add up to 18,000."),
    ({"manual_neutrophil": "0", "manual_other": ""}, "The manual count counts no white cell"),
])
def test_a_bad_manual_count_is_refused_before_any_image_is_read(client, models_root,
                                                                monkeypatch, form, message):
    from hematovision.web import classify

    monkeypatch.setattr(classify, "decode", lambda *a, **k: pytest.fail("an image was read"))
    response = client.post("/api/predict", data={
        "file": [(io.BytesIO(image_bytes()), "a.jpg")], **form})
    assert response.status_code == 400 and message in response.get_json()["error"]


def test_no_differential_when_no_file_was_read(client, models_root):
    response = post(client, ("broken.jpg", b"nope"))
    assert response.status_code == 400 and "differential" not in response.get_json()


def test_predict_one_file_gives_the_cli_json_fields_exactly(client, models_root):
    data = image_bytes((200, 60, 60))
    response = post(client, ("cell.jpg", data))
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["model", "model_version", "accuracy_target", "app_version", "results",
                          "differential"]
    assert body["model"] == "tiny"
    assert body["model_version"] == Predictor(models_root / "tiny").version
    assert body["accuracy_target"] is None and body["app_version"] == app_version()
    [result] = body["results"]
    assert list(result) == [
        "file", "label", "status", "confidence", "probabilities", "candidates", "scores"
    ]
    # The tiny model has no trust layer: every readable image is accepted, nothing is scored.
    assert result["status"] == "accepted"
    assert result["scores"]["unfamiliarity"] is None
    assert result["file"] == "cell.jpg"
    assert list(result["probabilities"]) == CLASSES
    expected = Predictor(models_root / "tiny").predict(data)
    assert result["label"] == expected.label
    assert result["confidence"] == pytest.approx(expected.confidence, abs=1e-6)
    for c in CLASSES:
        assert result["probabilities"][c] == pytest.approx(expected.probabilities[c], abs=1e-6)


def test_many_files_keep_their_order_and_go_through_the_model_once(client, app):
    predictor = app.extensions["predictors"]["tiny"]
    calls = []
    original = predictor.predict_images_arrays
    predictor.predict_images_arrays = lambda arrays, found=None: (
        calls.append(len(arrays)) or original(arrays, found))
    colors = [(200, 60, 60), (60, 60, 200), (120, 60, 160)]
    response = post(
        client, *[(f"{i}.png", image_bytes(c, fmt="PNG")) for i, c in enumerate(colors)]
    )
    assert response.status_code == 200
    assert [r["file"] for r in response.get_json()["results"]] == ["0.png", "1.png", "2.png"]
    assert calls == [3]


@pytest.mark.parametrize("name, data, message", BAD_FILES)
def test_a_bad_file_alone_is_a_400_with_its_reason(client, name, data, message):
    response = post(client, (name, data))
    assert response.status_code == 400
    assert response.get_json() == {
        "model": "tiny", "model_version": response.get_json()["model_version"],
        "accuracy_target": None, "app_version": app_version(),
        "results": [{"file": name, "error": response.get_json()["results"][0]["error"]}],
    }
    assert message in response.get_json()["results"][0]["error"]


@pytest.mark.parametrize("name, data, message", BAD_FILES)
def test_a_bad_file_does_not_stop_the_others(client, name, data, message):
    response = post(
        client, ("good.jpg", image_bytes()), (name, data), ("also.png", image_bytes(fmt="PNG"))
    )
    assert response.status_code == 200
    good, bad, also = response.get_json()["results"]
    assert good["label"] in CLASSES and also["label"] in CLASSES
    assert set(bad) == {"file", "error"} and message in bad["error"]


@pytest.mark.parametrize("name, make", ODD_IMAGES)
def test_unusual_but_valid_images_are_classified(client, models_root, name, make):
    data = make()
    response = post(client, (name, data))
    assert response.status_code == 200
    [result] = response.get_json()["results"]
    expected = Predictor(models_root / "tiny").predict(data)
    assert result["label"] == expected.label
    assert result["confidence"] == pytest.approx(expected.confidence, abs=1e-6)


def test_a_decoder_crash_is_an_error_entry_and_the_others_are_classified(client, monkeypatch):
    crash_decoder_on(monkeypatch, IndexError("list index out of range"))
    response = post(client, ("odd.png", image_bytes(size=CRASHING_SIZE, fmt="PNG")),
                    ("good.jpg", image_bytes()))
    assert response.status_code == 200
    bad, good = response.get_json()["results"]
    assert bad == {"file": "odd.png",
                   "error": "The image is damaged or truncated (list index out of range)."}
    assert good["label"] in CLASSES


def test_a_large_sixteen_bit_image_is_classified(client, models_root):
    """A 12-megapixel 16-bit greyscale TIFF: stretched to 8 bits without full-size float64
    copies (see test_preprocess for the memory bound), classified like its 8-bit version."""
    ramp = np.linspace(0, 65535, 4000, dtype=np.uint16)[None, :].repeat(3000, axis=0)
    out = io.BytesIO()
    Image.fromarray(ramp).save(out, "TIFF")
    response = post(client, ("large16.tif", out.getvalue()))
    assert response.status_code == 200, response.get_json()
    [result] = response.get_json()["results"]
    eight_bit = Image.fromarray((ramp.astype(np.float64) * (255 / 65535)).astype(np.uint8))
    expected = Predictor(models_root / "tiny").predict_images([eight_bit.convert("RGB")])[0]
    assert result["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)


def test_animated_gif_is_classified_by_its_first_frame(client, models_root):
    predictor = Predictor(models_root / "tiny")
    first = Image.open(io.BytesIO(animated_gif())).convert("RGB")
    expected = predictor.predict_images([first])[0]
    [result] = post(client, ("anim.gif", animated_gif())).get_json()["results"]
    assert result["confidence"] == pytest.approx(expected.confidence, abs=1e-6)
    assert result["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)


@pytest.mark.parametrize("client_name, shown", HOSTILE_NAMES)
def test_client_file_names_are_sanitised(client, client_name, shown):
    [result] = post(client, (client_name, image_bytes())).get_json()["results"]
    assert result["file"] == shown


def test_no_file_field_is_a_400(client):
    response = client.post("/api/predict", data={"model": "tiny"})
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "No file was uploaded: choose one or more images (a script sends each in the "
                 "form field 'file')."}


def test_empty_file_part_counts_as_no_file(client):
    # What a browser sends for a form submitted with no file chosen.
    response = client.post("/api/predict", data={"file": (io.BytesIO(b""), "")})
    assert response.status_code == 400
    assert "No file was uploaded" in response.get_json()["error"]


def test_unknown_model_is_a_400_naming_the_available_ones(client):
    response = post(client, ("a.jpg", image_bytes()), model="../tiny")
    assert response.status_code == 400
    assert response.get_json() == {"error": "Unknown model '../tiny'; available models: tiny."}


def test_a_request_over_the_size_limit_is_a_413(tmp_path, models_root):
    client = make_app(tmp_path, models_root, MAX_CONTENT_LENGTH=50_000).test_client()
    response = post(client, ("big.png", bytes(60_000)))
    assert response.status_code == 413
    assert response.get_json() == {
        "error": "The upload is larger than the limit of 0.0476837 MB in total."
    }


def test_too_many_form_parts_is_a_413_that_says_so(client):
    """With the default limits, more than MAX_FORM_PARTS (1,000) tiny parts are refused while
    the form is parsed, before the MAX_FILES check; the request is a few kilobytes."""
    response = post(client, ("a.jpg", image_bytes()), **{f"f{i}": "" for i in range(1_001)})
    assert response.status_code == 413
    assert response.get_json() == {"error": (
        "The form has too many parts (at most 1,000) or a text field over 500,000 bytes: send at "
        "most 100 files and only the form's own fields."
    )}


def test_a_413_of_a_chunked_request_names_both_possible_causes(app):
    """Without a Content-Length the size and the form limits cannot be told apart."""
    from hematovision.web.errors import too_large

    with app.test_request_context("/api/predict", method="POST",
                                  headers={"Transfer-Encoding": "chunked"}):
        assert too_large() == ("Request too large", (
            "The upload is larger than the limit of 32 MB in total, or its form has too many "
            "parts (at most 1,000) or a text field over 500,000 bytes."))


def test_too_many_files_is_a_400(tmp_path, models_root):
    client = make_app(tmp_path, models_root, MAX_FILES=2).test_client()
    response = post(client, *[(f"{i}.jpg", image_bytes()) for i in range(3)])
    assert response.status_code == 400
    assert response.get_json() == {"error": "Too many files (3); send at most 2 at a time."}


def test_the_model_field_picks_the_model(tmp_path, tiny_model_dir):
    root = make_models_root(tmp_path / "m", tiny_model_dir, names=("tiny", "other"))
    client = make_app(tmp_path, root).test_client()
    assert post(client, ("a.jpg", image_bytes())).get_json()["model"] == "tiny"
    assert post(client, ("a.jpg", image_bytes()), model="other").get_json()["model"] == "other"


def test_model_and_explain_may_come_in_the_query_string(tmp_path, tiny_model_dir):
    """As `/api/model?model=` takes it; a query value must never be silently ignored."""
    root = make_models_root(tmp_path / "m", tiny_model_dir, names=("tiny", "other"))
    client = make_app(tmp_path, root).test_client()
    data = {"file": [(io.BytesIO(image_bytes()), "a.jpg")]}
    response = client.post("/api/predict?model=other&explain=1", data=data)
    assert response.status_code == 200 and response.get_json()["model"] == "other"
    assert "cam" in response.get_json()["results"][0]


@pytest.mark.parametrize("field, form, query", [("model", "tiny", "other"), ("explain", "1", "0")])
def test_a_setting_given_twice_with_different_values_is_a_400(tmp_path, tiny_model_dir, field,
                                                              form, query):
    root = make_models_root(tmp_path / "m", tiny_model_dir, names=("tiny", "other"))
    client = make_app(tmp_path, root).test_client()
    data = {"file": [(io.BytesIO(image_bytes()), "a.jpg")], field: form}
    response = client.post(f"/api/predict?{field}={query}", data=data)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(f"'{field}' is given twice")
    same = client.post(f"/api/predict?{field}={form}",
                       data={"file": [(io.BytesIO(image_bytes()), "a.jpg")], field: form})
    assert same.status_code == 200


def test_the_api_needs_no_cookie_or_csrf_token(app):
    client = app.test_client(use_cookies=False)
    assert post(client, ("a.jpg", image_bytes())).status_code == 200


def test_the_api_stores_nothing(client, tmp_path):
    post(client, ("a.jpg", image_bytes()))
    uploads = tmp_path / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_health(client, models_root):
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "version": "0.1.0",
        "app_version": app_version(),
        "models": ["tiny"],
        "default_model": "tiny",
        "model_versions": {"tiny": Predictor(models_root / "tiny").version},
        "models_changed_on_disk": [],
    }


def test_model_card_is_returned_as_stored(client, models_root):
    stored = json.loads((models_root / "tiny" / "model_card.json").read_text())
    assert client.get("/api/model").get_json() == stored
    assert client.get("/api/model?model=tiny").get_json() == stored


def test_unknown_model_card_is_a_400(client):
    response = client.get("/api/model?model=nope")
    assert response.status_code == 400
    assert response.get_json() == {"error": "Unknown model 'nope'; available models: tiny."}


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("get", "/api/predict", 405),
        ("get", "/api/nothing-here", 404),
        ("post", "/api/health", 405),
    ],
)
def test_api_errors_are_json(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.is_json and set(response.get_json()) == {"error"}


def test_a_405_names_the_allowed_methods(client):
    """HTTP requires Allow on a 405; our JSON body replaces Werkzeug's, not its headers."""
    response = client.get("/api/predict")
    assert response.status_code == 405 and response.is_json
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


def test_served_probabilities_match_keras(app, client, tiny_keras_model):
    """The web path (decode, LiteRT) gives the Keras model's probabilities for the same input
    (averaged over the flipped views, as served)."""
    from training.export import reference_probabilities

    data = image_bytes((60, 160, 90), size=(120, 90))
    [result] = post(client, ("a.jpg", data)).get_json()["results"]
    crop = app.extensions["predictors"]["tiny"].crop
    array = to_input(load_image(data), 224, crop)
    keras_probabilities = reference_probabilities(tiny_keras_model, array[None])[0]
    assert [result["probabilities"][c] for c in CLASSES] == pytest.approx(
        keras_probabilities.tolist(), abs=1e-5
    )


def test_the_model_cards_crop_is_applied(tmp_path, tiny_model_dir):
    """A model exported with the nucleus crop gets cropped inputs through the web path too."""
    root = make_models_root(
        tmp_path / "m", tiny_model_dir, card={"preprocessing": {"crop": "nucleus"}}
    )
    client = make_app(tmp_path, root).test_client()
    data = image_bytes((90, 40, 160), size=(320, 240))  # a blue-violet "nucleus"
    [result] = post(client, ("a.jpg", data)).get_json()["results"]
    predictor = Predictor(root / "tiny")
    assert predictor.crop == "nucleus"
    cropped = predictor.predict(data).probabilities
    uncropped = predictor.predict_images_arrays([to_input(load_image(data), 224)])[0].probabilities
    assert result["probabilities"] == pytest.approx(cropped, abs=1e-6)
    assert result["probabilities"] != pytest.approx(uncropped, abs=1e-6)


def test_the_pixel_limit_is_the_apps_setting(tmp_path, tiny_model_dir):
    """MAX_IMAGE_PIXELS (a deployment may lower it for small workers) is what uploads are
    checked against (the form goes through the same `classify_request`)."""
    root = make_models_root(tmp_path / "m", tiny_model_dir)
    client = make_app(tmp_path, root, MAX_IMAGE_PIXELS=3000).test_client()
    small, large = image_bytes(size=(50, 50)), image_bytes(size=(64, 48))  # 2,500 and 3,072
    response = post(client, ("small.jpg", small), ("large.jpg", large))
    assert response.status_code == 200
    ok, refused = response.get_json()["results"]
    assert ok["label"] in CLASSES
    assert refused == {"file": "large.jpg", "error": "The image is too large (64x48 pixels); "
                                                      "the limit is 3,000 pixels."}
    assert post(client, ("large.jpg", large)).status_code == 400


def test_damaged_files_of_many_formats_get_a_result_or_a_reason_each(client, models_root):
    files = [("good.jpg", image_bytes())] + damaged_images(60, seed=2)
    response = post(client, *files)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["file"] for r in results] == [name for name, _ in files]
    for result in results:
        assert ("label" in result) != ("error" in result), result
    errors = [r["error"] for r in results if "error" in r]
    assert errors and len(errors) < len(files) - 1  # some damage decodes, some does not
    assert all(e.startswith("The ") and e.endswith(".") for e in errors)

