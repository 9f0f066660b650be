"""The trust layer in the web app: each status on the result and batch pages, the CSV, the
heat map route and toggle markup, the API's `explain`, and the model page's calibration."""

import base64
import io
import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hematovision.predictor import Predictor
from hematovision.web import heatmap
from tests.conftest import CELL_COLORS
from tests.web_helpers import (csrf_token, damaged_images, image_bytes, make_app,
                               make_models_root, page, spread_operating_points, text,
                               upload)

RED = image_bytes(CELL_COLORS[0])
BLUE = image_bytes(CELL_COLORS[1])


def card_with(trusted_model_dir, **changes) -> dict:
    """The fitted card of the trusted tiny model with its trust section changed."""
    card = json.loads((trusted_model_dir / "model_card.json").read_text())
    trust = card["trust"]
    if "ood_threshold" in changes:
        trust["ood"]["threshold"] = changes.pop("ood_threshold")
    trust.update(changes)
    return {
        "trust": trust,
        "expects": "Single stained white cells, 360x363 crops.",
        "metrics": {
            "test": {"n": 20, "accuracy": 0.9, "calibration": {
                "temperature": trust["temperature"], "ece_before": 0.0812, "ece_after": 0.0153,
                "nll_before": 0.41, "nll_after": 0.33},
                "trust": {"accepted_rate": 0.85, "unidentified_rate": 0.1, "not_a_cell_rate": 0.05,
                          "accuracy_accepted": 0.98}},
            "unfamiliar": {"seed": 0, "sets": [
                {"name": "noise", "group": "generated", "description": "uniform noise", "n": 50,
                 "not_a_cell_rate": 1.0, "unidentified_rate": 0.0, "accepted_rate": 0.0}]},
        },
    }


@pytest.fixture
def models_root(tmp_path, tiny_model_dir, trusted_model_dir):
    """'tiny' has no trust layer; the others force one status each (thresholds moved)."""
    root = tmp_path / "models"
    make_models_root(root, tiny_model_dir)
    variants = {
        "accepting": card_with(trusted_model_dir, confidence_threshold=0.0, ood_threshold=1e12),
        "unsure": card_with(trusted_model_dir, confidence_threshold=1.0, ood_threshold=1e12),
        "strange": card_with(trusted_model_dir, confidence_threshold=0.0, ood_threshold=-1.0),
    }
    for name, card in variants.items():
        make_models_root(root, trusted_model_dir, names=(name,), card=card,
                         files={"reliability_test.png": image_bytes(fmt="PNG")})
    return root


def test_accepted_result_names_the_class_and_shows_why(client, models_root):
    html = page(client, upload(client, "accepting", ("red.jpg", RED)))
    expected = Predictor(models_root / "accepting").predict(RED)
    assert 'data-status="accepted"' in html
    assert f'data-label="{expected.label}"' in html
    assert 'id="why-unfamiliarity"' in html and 'id="why-confidence"' in html
    assert "passed" in text(html)
    target = json.loads((models_root / "accepting" / "model_card.json").read_text())[
        "trust"]["target_accuracy"]
    assert re.search(r'id="why-target">[^<]*right at least\s+' + re.escape(f"{target * 100:.1f}"),
                     html)
    assert 'id="heat-map-toggle"' in html  # the trusted model has head weights for maps


def test_unidentified_result_names_no_class_and_lists_two_candidates(client, models_root):
    html = page(client, upload(client, "unsure", ("red.jpg", RED)))
    expected = Predictor(models_root / "unsure").predict(RED)
    assert expected.status == "unidentified"
    assert 'data-status="unidentified"' in html and 'id="predicted-label"' not in html
    assert "Unidentified: needs review" in text(html)
    candidates = re.findall(r'<li data-label="(\w+)">', html)
    assert candidates == [label for label, _ in expected.candidates] and len(candidates) == 2
    assert "too unsure: unidentified" in text(html)
    # Why, in the status itself: how sure it was against how sure it must be (threshold 100 %).
    assert (f"Its confidence, {expected.confidence * 100:.1f} %, is below the 100.0 % it needs "
            "to name a class.") in text(html)


def test_a_confidence_just_below_its_threshold_is_shown_below_it(tmp_path, trusted_model_dir):
    """With one decimal, 0.99895 against a threshold of 0.9991 would read "99.9 %, at least
    99.9 %: too unsure"; the why-table shows as many decimals as tell them apart."""
    confidence = Predictor(trusted_model_dir).predict(RED).confidence
    card = card_with(trusted_model_dir, confidence_threshold=confidence + 2e-6, ood_threshold=1e12)
    root = make_models_root(tmp_path / "m", trusted_model_dir, names=("close",), card=card)
    client = make_app(tmp_path, root, DEFAULT_MODEL="close").test_client()
    html = page(client, upload(client, "close", ("red.jpg", RED)))
    row = text(re.search(r'<tr id="why-confidence">.*?</tr>', html, re.S).group(0))
    shown, threshold = re.search(r"Calibrated confidence (\S+) % at least (\S+) %", row).groups()
    assert "too unsure: unidentified" in row
    assert float(shown) < float(threshold)


def test_not_a_cell_result_says_what_the_model_expects(client, models_root):
    html = page(client, upload(client, "strange", ("red.jpg", RED)))
    assert 'data-status="not_a_cell"' in html and 'id="predicted-label"' not in html
    assert "Not a blood-cell image like the training data" in text(html)
    assert "Single stained white cells, 360x363 crops." in text(html)
    assert "too unfamiliar: not a cell" in text(html)
    assert "About the" not in text(html)  # no cell description for a non-cell


def test_a_batch_mostly_unlike_the_models_images_points_to_the_other_models_once(client,
                                                                                 models_root):
    """Ten of another model's images give ten "not a cell" pages, each naming the other model;
    the batch page says it once, where the whole batch can be sent again."""
    html = page(client, upload(client, "strange", ("a.jpg", RED), ("b.jpg", BLUE)))
    banner = re.sub(r" ([:.])", r"\1", text(re.search(r'id="wrong-model">(.*?)</div>', html,
                                                         re.S).group(1))).strip()
    assert banner.startswith("2 of these 2 images do not look like the images strange was "
                             "trained on. strange expects: Single stained white cells, 360x363 "
                             "crops.")
    assert "If they are like this, classify them with accepting:" in banner
    assert 'href="/?model=accepting"' in html
    assert 'id="wrong-model"' not in page(client, upload(client, "accepting", ("a.jpg", RED),
                                                          ("b.jpg", BLUE)))

def test_untrusted_model_says_it_has_no_trust_layer_and_no_heat_map(client, models_root):
    location = upload(client, "tiny", ("red.jpg", RED))
    html = page(client, location)
    assert "has no trust layer fitted" in text(html)
    assert 'id="heat-map"' not in html
    response = client.get(f"{location}/0/heat-map.png")
    assert response.status_code == 404
    assert "no heat maps" in response.get_data(as_text=True)


def test_batch_differential_counts_only_accepted_cells(client, models_root, trusted_model_dir):
    # A confidence threshold between the two images' confidences: one accepted, one not.
    predictor = Predictor(trusted_model_dir)
    red, blue = predictor.predict(RED).confidence, predictor.predict(BLUE).confidence
    assert red != blue
    root = models_root
    make_models_root(root, trusted_model_dir, names=("mixed",),
                     card=card_with(trusted_model_dir, confidence_threshold=(red + blue) / 2,
                                    ood_threshold=1e12))
    # The app lists models at start: a fresh client on a fresh app sees 'mixed'.
    from tests.web_helpers import make_app

    client = make_app(root.parent / "mixed_app", root).test_client()
    location = upload(client, "mixed", ("red.jpg", RED), ("blue.jpg", BLUE), ("bad.jpg", b"x"))
    html = page(client, location)
    accepted, unsure = ("red.jpg", "blue.jpg") if red > blue else ("blue.jpg", "red.jpg")
    assert "1 accepted · 1 unidentified (needs review) · 0 not a blood-cell image" in text(html)
    assert "Share of the 1 white cell counted: accepted by the model;" in text(html)
    review = re.findall(r'<li data-status="(\w+)"><a[^>]*>([^<]+)</a>', html)
    assert review == [("unidentified", unsure)]
    assert ("Only 1 counted white cell: a manual differential counts 100, so these shares are "
            "rough: add images to this batch, or review the unidentified cells, to count more."
            in text(html))
    csv = client.get(location + ".csv").get_data(as_text=True)
    header, *lines = [line.split(",") for line in csv.splitlines()]
    counted = header.index("differential_class")
    rows = {row[0]: [row[1], row[2], row[counted]] for row in lines}
    top = {name: Predictor(trusted_model_dir).predict(data).label
           for name, data in (("red.jpg", RED), ("blue.jpg", BLUE))}
    # The label is the top class, as in the API; counting differential_class gives the
    # differential.
    assert rows == {accepted: [top[accepted], "accepted", top[accepted]],
                    unsure: [top[unsure], "unidentified", ""], "bad.jpg": ["", "", ""]}


def test_pages_say_what_share_the_served_threshold_accepted_on_test(tmp_path, trusted_model_dir):
    """So that most cells going to review reads as this model's known behaviour; measured at
    the threshold the server applies, or not said at all."""
    root = make_models_root(tmp_path / "m", trusted_model_dir, names=("trusted",))
    lowest, served = spread_operating_points(root / "trusted")
    card_file = root / "trusted" / "model_card.json"
    card = json.loads(card_file.read_text())
    card["metrics"] = {"test": {"n": 321, "operating_points": [
        {**lowest, "accepted_rate": 0.876}, {**served, "accepted_rate": 0.1234}]}}
    card_file.write_text(json.dumps(card))
    client = make_app(tmp_path / "a", root, DEFAULT_MODEL="trusted").test_client()
    share = "At the served threshold trusted accepted 12.3 % of the 321 images of its test set"
    assert share in text(client.get("/").get_data(as_text=True))
    assert share in text(re.search(r'id="in-short".*?</section>',
                                   client.get("/models/trusted").get_data(as_text=True),
                                   re.S).group(0))
    html = page(client, upload(client, "trusted", ("red.jpg", RED), ("blue.jpg", BLUE)))
    assert share in text(html)
    lower = make_app(tmp_path / "b", root, DEFAULT_MODEL="trusted",
                     ACCURACY_TARGET=lowest["target_accuracy"]).test_client()
    assert "accepted 87.6 % of the 321 images" in text(lower.get("/").get_data(as_text=True))
    unmeasured = make_app(tmp_path / "c", root, DEFAULT_MODEL="trusted",
                          ACCURACY_TARGET=0.5).test_client()
    assert "At the served threshold" not in text(unmeasured.get("/").get_data(as_text=True))


@pytest.mark.parametrize("ece, rough", [(0.0153, False), (0.0855, True)])
def test_the_result_page_states_the_models_measured_calibration_error(tmp_path,
                                                                      trusted_model_dir, ece,
                                                                      rough):
    card = card_with(trusted_model_dir, confidence_threshold=0.0, ood_threshold=1e12)
    card["metrics"]["test"]["calibration"]["ece_after"] = ece
    root = make_models_root(tmp_path / "m", trusted_model_dir, names=("measured",), card=card)
    client = make_app(tmp_path, root, DEFAULT_MODEL="measured").test_client()
    html = text(page(client, upload(client, "measured", ("red.jpg", RED))))
    assert (f"On its test set (20 images), confidence and the share of right answers differed "
            f"by {ece * 100:.1f} points on average") in html
    assert ("read the confidence as a rough guide" in html) == rough
    assert "90 % confidence are right about 90 %" not in html
    # A smaller, worse calibrated test set is named beside it, and counts for the warning.
    card["metrics"]["test_simple"] = {**card["metrics"]["test"], "n": 7, "calibration": {
        **card["metrics"]["test"]["calibration"], "ece_after": 0.0912}}
    both = make_models_root(tmp_path / "b", trusted_model_dir, names=("measured",), card=card)
    client = make_app(tmp_path / "both", both, DEFAULT_MODEL="measured").test_client()
    html = text(page(client, upload(client, "measured", ("red.jpg", RED))))
    assert (f"by {ece * 100:.1f} points on average (expected calibration error); on its test "
            "simple set (7 images), by 9.1, so read the confidence as a rough guide") in html
    del card["metrics"]["test_simple"]
    # Measured at another temperature (the card was refitted since): not this calibration's.
    card["metrics"]["test"]["calibration"]["temperature"] += 0.5
    refitted = make_models_root(tmp_path / "r", trusted_model_dir, names=("measured",), card=card)
    client = make_app(tmp_path / "again", refitted, DEFAULT_MODEL="measured").test_client()
    html = text(page(client, upload(client, "measured", ("red.jpg", RED))))
    assert "has not been measured on a test set" in html and "points on average" not in html


def test_not_a_cell_has_no_heat_map_and_points_to_the_other_models(client, models_root):
    location = upload(client, "strange", ("red.jpg", RED))
    html = page(client, location)
    assert 'id="heat-map"' not in html
    response = client.get(f"{location}/0/heat-map.png")  # nor by its address
    assert response.status_code == 404
    assert "did not look like the cells model 'strange' was trained on" in \
        unescape(response.get_data(as_text=True))
    others = re.findall(r'upload it to <a href="/\?model=(\w+)">', html)
    assert others == ["accepting", "tiny", "unsure"]
    assert 'selected' in re.search(r'<option value="unsure"[^>]*>',
                                   client.get("/?model=unsure").get_data(as_text=True)).group(0)


def test_a_refused_upload_keeps_the_model_it_chose(client, models_root):
    response = client.post("/upload", data={"csrf_token": csrf_token(client), "model": "unsure",
                                            "file": [(io.BytesIO(b"not an image"), "x.jpg")]})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert re.findall(r'<option value="(\w+)" selected', html) == ["unsure"]
    assert re.search(r'class="mb-0 model-expects" data-model="unsure"\s*>', html)


def test_result_pages_lead_back_to_the_form_with_their_model(client, models_root):
    """"Classify more" must not quietly switch a pbc8 user back to the default model."""
    for files in ((("a.jpg", RED),), (("a.jpg", RED), ("b.jpg", BLUE))):
        location = upload(client, "unsure", *files)
        for address in (location, f"{location}/0"):
            links = re.findall(r'href="(/[^"]*)">Classify more', page(client, address))
            assert links == ["/?model=unsure"], address


@pytest.mark.parametrize("form, query", [({"model": "unsure"}, ""), ({}, "?model=unsure")])
def test_error_pages_lead_back_to_the_model_the_request_chose(tmp_path, models_root, form, query):
    """A refused upload (no file here, too large below) keeps the model on the way back; the
    page's script also names the model in the form's address, since a 413's form is never
    read."""
    app = make_app(tmp_path / "small", models_root, MAX_CONTENT_LENGTH=5000)
    client = app.test_client()
    token = csrf_token(client)
    empty = client.post("/upload" + query, data={"csrf_token": token, **form,
                                                 "file": [(io.BytesIO(b""), "")]})
    large = client.post("/upload" + query, data={"csrf_token": token, **form,
                                                 "file": [(io.BytesIO(b"x" * 9000), "a.jpg")]})
    assert (empty.status_code, large.status_code) == (400, 413)
    back = r'href="([^"]*)">Back to the upload page'
    assert re.findall(back, empty.get_data(as_text=True)) == ["/?model=unsure"]
    expected = ["/?model=unsure"] if query else ["/"]
    assert re.findall(back, large.get_data(as_text=True)) == expected
    unknown = client.post("/upload?model=nope", data={"csrf_token": token, "model": "nope"})
    assert re.findall(back, unknown.get_data(as_text=True)) == ["/"]


def test_result_pages_of_a_batch_step_to_their_neighbours(client, models_root):
    location = upload(client, "accepting", ("a.jpg", RED), ("b.jpg", BLUE),
                      ("c.jpg", image_bytes(CELL_COLORS[2])))
    steps = [re.findall(r'rel="(prev|next)" href="([^"]+)"', page(client, f"{location}/{i}"))
             for i in range(3)]
    assert steps == [[("next", f"{location}/1")],
                     [("prev", f"{location}/0"), ("next", f"{location}/2")],
                     [("prev", f"{location}/1")]]
    batch = page(client, location)
    assert re.search(r'<a href="' + re.escape(location) + r'/1">b.jpg</a>', batch)
    kept = (r'Kept until <time class="deletion-time" datetime="[0-9T:+-]+">'
            r'\d\d \w{3} \d{4}, \d\d:\d\d UTC</time>')
    assert re.search(kept, batch)
    # A result page, and above all a one-image result (it has no batch page), says it too.
    assert re.search(kept, page(client, f"{location}/1"))
    assert re.search(kept, page(client, upload(client, "accepting", ("a.jpg", RED))))
    missing = client.get(f"{location}/3")
    assert missing.status_code == 404
    assert ("This batch has no image or cell numbered 3: its addresses number them from 0 to "
            "2.") in text(missing.get_data(as_text=True))


def test_heat_map_route_gives_an_overlay_of_the_model_input(client, models_root):
    location = upload(client, "accepting", ("red.jpg", RED))
    response = client.get(f"{location}/0/heat-map.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["Cache-Control"] == "no-store"
    image = Image.open(io.BytesIO(response.data))
    assert image.size == (224, 224) and image.mode == "RGB"
    assert client.get(f"{location}/5/heat-map.png").status_code == 404


def test_heat_map_shows_the_evidence_for_the_stored_label(client, models_root, app):
    """The page captions the map as evidence for the stored label, so the map must be that
    class's even when the stored viewing copy (re-encoded, downscaled) would now score another
    class highest; here the stored label is set to the class whose map differs most."""
    from hematovision.preprocess import load_image, to_input
    from hematovision.trust import class_activation_map
    from hematovision.web.heatmap import overlay

    location = upload(client, "accepting", ("red.jpg", RED))
    folder = Path(app.config["UPLOAD_FOLDER"])
    stored_path = folder / f"{location.rsplit('/', 1)[1]}.json"
    stored = json.loads(stored_path.read_text())
    predictor = Predictor(models_root / "accepting")
    array = to_input(load_image(folder / f"{stored['results'][0]['image']}.jpg"), 224)
    outputs = predictor.forward(array[None], feature_maps=True)
    kernel = predictor.trust.head_kernel
    maps = {c: class_activation_map(outputs.feature_maps[0], kernel, i)
            for i, c in enumerate(predictor.classes)}
    top = predictor.predictions(outputs)[0].label
    other = max((c for c in maps if c != top), key=lambda c: np.abs(maps[c] - maps[top]).max())
    stored["results"][0]["label"] = other
    stored_path.write_text(json.dumps(stored))

    response = client.get(f"{location}/0/heat-map.png")

    assert response.status_code == 200
    served = np.asarray(Image.open(io.BytesIO(response.data)))
    np.testing.assert_array_equal(served, np.asarray(overlay(array, maps[other])))
    assert not np.array_equal(served, np.asarray(overlay(array, maps[top])))


def test_heat_map_of_a_label_the_model_no_longer_has_is_a_clear_404(client, models_root, app):
    location = upload(client, "accepting", ("red.jpg", RED))
    stored_path = Path(app.config["UPLOAD_FOLDER"]) / f"{location.rsplit('/', 1)[1]}.json"
    stored = json.loads(stored_path.read_text())
    stored["results"][0]["label"] = "basophil"
    stored_path.write_text(json.dumps(stored))
    response = client.get(f"{location}/0/heat-map.png")
    assert response.status_code == 404
    assert "no longer has the class" in response.get_data(as_text=True)


def test_heat_map_of_a_deleted_upload_is_a_clear_404(client, models_root, app):
    location = upload(client, "accepting", ("red.jpg", RED))
    for stored in Path(app.config["UPLOAD_FOLDER"]).rglob("*.jpg"):
        stored.unlink()
    response = client.get(f"{location}/0/heat-map.png")
    assert response.status_code == 404
    assert "stored image is gone" in response.get_data(as_text=True)


def test_api_explain_adds_the_map_and_plain_calls_do_not(client, models_root):
    plain = client.post("/api/predict", data={"model": "accepting",
                                              "file": [(io.BytesIO(RED), "red.jpg")]})
    assert "cam" not in plain.get_json()["results"][0]
    response = client.post("/api/predict", data={
        "model": "accepting", "explain": "1",
        "file": [(io.BytesIO(RED), "red.jpg"), (io.BytesIO(b"nope"), "bad.jpg")]})
    assert response.status_code == 200
    good, bad = response.get_json()["results"]
    assert "cam" not in bad and "error" in bad
    grid = np.array(good["cam"]["grid"])
    assert grid.shape == (56, 56)  # the tiny model's last feature maps
    assert grid.min() >= 0 and grid.max() == pytest.approx(1.0)
    overlay = Image.open(io.BytesIO(base64.b64decode(good["cam"]["overlay_png_base64"])))
    assert overlay.size == (224, 224)
    # The map does not change the answer.
    assert {k: v for k, v in good.items() if k != "cam"} == plain.get_json()["results"][0]


def test_api_gives_no_heat_map_for_an_unfamiliar_image(client, models_root):
    """As the result page offers none: it would show evidence for a class the image is not."""
    response = client.post("/api/predict", data={"model": "strange", "explain": "1",
                                                 "file": [(io.BytesIO(RED), "red.jpg")]})
    result = response.get_json()["results"][0]
    assert result["status"] == "not_a_cell" and result["cam"] is None


def test_api_explain_without_a_trust_layer_is_null_and_bad_values_are_refused(client,
                                                                              models_root):
    response = client.post("/api/predict", data={"model": "tiny", "explain": "true",
                                                 "file": [(io.BytesIO(RED), "red.jpg")]})
    assert response.get_json()["results"][0]["cam"] is None
    refused = client.post("/api/predict", data={"explain": "maybe",
                                                "file": [(io.BytesIO(RED), "red.jpg")]})
    assert refused.status_code == 400
    assert "Unknown explain value" in refused.get_json()["error"]


@pytest.mark.parametrize("model,status", [("accepting", "accepted"), ("unsure", "unidentified"),
                                          ("strange", "not_a_cell")])
def test_api_reports_each_status_with_its_scores(client, models_root, model, status):
    result = client.post("/api/predict", data={
        "model": model, "file": [(io.BytesIO(RED), "red.jpg")]}).get_json()["results"][0]
    assert result["status"] == status
    card = json.loads((models_root / model / "model_card.json").read_text())["trust"]
    assert result["scores"]["confidence_threshold"] == card["confidence_threshold"]
    assert result["scores"]["temperature"] == pytest.approx(card["temperature"], abs=1e-4)
    served = Predictor(models_root / model).predict(RED)
    assert result["scores"]["unfamiliarity"] == pytest.approx(served.scores["unfamiliarity"],
                                                              rel=1e-6)
    assert result["scores"]["unfamiliarity_threshold"] == pytest.approx(card["ood"]["threshold"],
                                                                        abs=5e-4)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


def test_model_page_shows_calibration_and_unfamiliar_sets(client, models_root):
    html = client.get("/models/accepting").get_data(as_text=True)
    in_short = text(re.search(r'id="in-short".*?</section>', html, re.S).group(0))
    assert "On its test set (20 images) it named the right class for 90.0 % of them." in in_short
    assert "differed from the share of right answers by 1.5 points" in in_short
    assert 'id="in-short-rough"' not in html  # 1.5 points: not a rough guide
    assert 'id="calibration"' in html and 'id="unfamiliar-table"' in html
    card = json.loads((models_root / "accepting" / "model_card.json").read_text())["trust"]
    assert f'{card["temperature"]:.3f}' in html
    assert "reliability_test.png" in html
    assert "0.0812" in html and "0.0153" in html  # ECE before and after on test
    assert "uniform noise" in html
    assert 'id="tta"' in html and "flipped up-down" in html  # the tiny model serves the flips
    assert re.search(r'id="calibration-source">\s*the validation set<', html)
    # How the temperature was fitted, in the card's words.
    assert re.search(r'id="temperature-rule">the temperature minimising the negative '
                     r'log-likelihood<', html)
    # Fitted on 12 validation images: the card's note that the thresholds rest on few.
    note = card["calibration_size"]["note"]
    assert note.startswith("The thresholds rest on 12 held-out images (fewer than 200)")
    assert text(re.search(r'id="calibration-size">(.*?)</div>', html, re.S).group(1)) == (
        note + ".")


def test_model_page_says_when_the_temperature_was_not_fitted(tmp_path, trusted_model_dir):
    note = ("Not calibrated: the 20 held-out images are all right, so every sharpening fits "
            "them better (the fit ran to temperature 0.050): too few or too easy to calibrate "
            "on, the model's own confidences are served (temperature 1)")
    card = card_with(trusted_model_dir, temperature=1.0, temperature_fitted=0.05,
                     temperature_note=note)
    root = make_models_root(tmp_path / "m", trusted_model_dir, names=("easy",), card=card)
    app = make_app(tmp_path, root, DEFAULT_MODEL="easy")
    html = app.test_client().get("/models/easy").get_data(as_text=True)
    assert text(re.search(r'id="temperature-note">(.*?)</div>', html, re.S).group(1)) == (
        note + ".")
    assert 'id="temperature-not-fitted"' in html and 'id="temperature-rule"' not in html
    # A result of it does not call its probabilities calibrated.
    client = app.test_client()
    result = page(client, upload(client, "easy", ("red.jpg", RED)))
    assert "Probabilities are the model's own, not calibrated: Not calibrated: the 20" in text(
        result)
    assert "Probabilities are calibrated" not in text(result)
    assert "Calibrated confidence" not in text(result)
    fitted = make_models_root(tmp_path / "f" / "m", trusted_model_dir, names=("fitted",))
    app = make_app(tmp_path / "f", fitted, DEFAULT_MODEL="fitted")
    html = app.test_client().get("/models/fitted").get_data(as_text=True)
    assert 'id="temperature-note"' not in html and 'id="temperature-not-fitted"' not in html
    client = app.test_client()
    assert "Probabilities are calibrated" in text(page(client, upload(client, "fitted",
                                                                      ("red.jpg", RED))))


def test_a_threshold_that_accepts_only_a_confidence_of_exactly_1_reads_so(tmp_path,
                                                                          trusted_model_dir):
    """The rule's threshold where every accepted held-out image was computed as exactly 1
    (trust.BELOW_ONE): "100.0 %" would read as a model that accepts nothing."""
    from hematovision.trust import BELOW_ONE

    card = card_with(trusted_model_dir, confidence_threshold=BELOW_ONE, target_accuracy=0.99)
    root = make_models_root(tmp_path / "m", trusted_model_dir, names=("sure",), card=card)
    html = make_app(tmp_path, root, DEFAULT_MODEL="sure").test_client().get(
        "/models/sure").get_data(as_text=True)
    assert re.search(r'id="confidence-threshold">exactly 1 as computed<', html)
    assert 'id="threshold-exactly-one"' in html and 'id="abstains-on-all"' not in html
    card = card_with(trusted_model_dir, confidence_threshold=0.9999, target_accuracy=0.99)
    root = make_models_root(tmp_path / "n" / "m", trusted_model_dir, names=("near",),
                            card=card)
    html = make_app(tmp_path / "n", root, DEFAULT_MODEL="near").test_client().get(
        "/models/near").get_data(as_text=True)
    assert re.search(r'id="confidence-threshold">99.99 %<', html)


def test_model_page_says_which_validation_figure_is_which(tmp_path, trusted_model_dir):
    """The training run's one-view validation accuracy and the served one differ; each says
    how it was measured."""
    card = card_with(trusted_model_dir) | {"validation": {"accuracy": 0.9145}}
    root = make_models_root(tmp_path / "m", trusted_model_dir, names=("served",), card=card)
    app = make_app(tmp_path, root, DEFAULT_MODEL="served")
    html = text(app.test_client().get("/models/served").get_data(as_text=True))
    assert ("As measured while training, one view of each image (the early-stopping figure); "
            "the served model's figures on the same images are under Calibration") in html
    assert re.search(r"As served: the average of 4 views of each image \(as is, flipped "
                     r"left-right, flipped up-down, both\); accuracy counts every image", html)


def test_model_page_says_when_calibration_used_out_of_fold_predictions(models_root, request):
    card_file = models_root / "accepting" / "model_card.json"
    card = json.loads(card_file.read_text())
    card["trust"]["fitted_on"]["temperature_and_confidence_threshold"] = {
        "source": "out-of-fold logits (crossfit.npz)", "folds": 5, "images": 4569, "groups": 270}
    card_file.write_text(json.dumps(card))
    client = request.getfixturevalue("client")  # the app reads the cards when it starts
    html = client.get("/models/accepting").get_data(as_text=True)
    assert re.search(r"the out-of-fold predictions of 5 models trained without them\s*"
                     r"\(4569 images of 270 source groups\)", html)


def test_api_docs_example_takes_its_figures_from_the_default_models_card(tmp_path,
                                                                          trusted_model_dir):
    """No hand-typed figure: the example's only numbers are the default model's fitted
    thresholds and temperature, as the API rounds them, and the reference intervals the
    server reads shares against; per-image values are placeholders."""
    root = make_models_root(tmp_path / "m", trusted_model_dir, names=("trusted",))
    app = make_app(tmp_path, root, DEFAULT_MODEL="trusted",
                   REFERENCE_INTERVALS={"monocyte": [2, 11.5]})
    html = app.test_client().get("/docs/api")
    example = unescape(re.search(r'id="api-example"><code>(.*?)</code>',
                                 html.get_data(as_text=True), re.S).group(1))
    card = json.loads((root / "trusted" / "model_card.json").read_text())["trust"]
    figures = {"unfamiliarity_threshold": round(card["ood"]["threshold"], 3),
               "confidence_threshold": card["confidence_threshold"],  # as applied
               "temperature": round(card["temperature"], 4)}
    band = ('"held_out_band": {"low": <float>, "high": <float>, "images": <int>, '
            '"right": <int>, "target": <float|null>, "below_target": <bool>}')
    assert ('"scores": {"unfamiliarity": <float>, ' + ", ".join(
        f'"{k}": {json.dumps(v)}' for k, v in figures.items()) + f", {band}}}") in example
    numbers = re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", example)
    intervals = app.config["REFERENCE_INTERVALS"]
    classes = json.loads((root / "trusted" / "model_card.json").read_text())["classes"]
    assert '"reference": [2.0, 11.5]' in example  # the server's own, for monocytes
    assert sorted(map(float, numbers)) == sorted(
        [*figures.values(), *(v for c in classes for v in intervals[c])])
    assert '"confidence": <float>' in example and '"label": "<class>"' in example


def test_model_page_lists_the_operating_points_and_their_measured_figures(models_root, request):
    card_file = models_root / "accepting" / "model_card.json"
    card = json.loads(card_file.read_text())
    points = card["trust"]["operating_points"]
    card["metrics"]["test"]["operating_points"] = [
        {**p, "accepted_rate": 0.4321, "unidentified_rate": 0.5, "not_a_cell_rate": 0.0679,
         "accuracy_accepted": 0.9876} for p in points]
    card_file.write_text(json.dumps(card))
    client = request.getfixturevalue("client")
    html = client.get("/models/accepting").get_data(as_text=True)
    table = re.search(r'<table[^>]*id="operating-points".*?</table>', html, re.S).group(0)
    rows = re.findall(r'<tr data-target="([^"]+)"', table)
    assert [float(t) for t in rows] == [p["target_accuracy"] for p in points]
    assert table.count("43.2 %") == len(points) and table.count("0.9876") == len(points)
    served = re.search(r'<tr data-target="[^"]+" class="fw-semibold".*?</tr>', table, re.S).group(0)
    assert "(served)" in served and f'{card["trust"]["target_accuracy"] * 100:.1f} %' in served
    assert 'id="server-target"' not in html  # the card's own target is served
    # Figures measured at another threshold (the card refitted since) are not shown as this one's.
    card["metrics"]["test"]["operating_points"][0]["confidence_threshold"] += 0.01
    card_file.write_text(json.dumps(card))
    again = Path(client.application.config["UPLOAD_FOLDER"]).parent / "again"
    client = make_app(again, models_root, DEFAULT_MODEL="accepting").test_client()
    table = re.search(r'<table[^>]*id="operating-points".*?</table>',
                      client.get("/models/accepting").get_data(as_text=True), re.S).group(0)
    assert table.count("43.2 %") == len(points) - 1


def test_the_server_can_abstain_at_its_own_accuracy_target(tmp_path, trusted_model_dir):
    root = make_models_root(tmp_path / "m", trusted_model_dir, names=("trusted",))
    lowest, served = spread_operating_points(root / "trusted")
    app = make_app(tmp_path, root, DEFAULT_MODEL="trusted",
                   ACCURACY_TARGET=lowest["target_accuracy"])
    client = app.test_client()
    result = client.post("/api/predict", data={"file": [(io.BytesIO(RED), "a.jpg")]}).get_json()
    assert result["results"][0]["scores"]["confidence_threshold"] == \
        lowest["confidence_threshold"]
    assert lowest["confidence_threshold"] < served["confidence_threshold"]
    html = client.get("/models/trusted").get_data(as_text=True)
    assert 'id="server-target"' in html
    assert re.search(r'id="confidence-threshold">' + re.escape(
        f'{lowest["confidence_threshold"] * 100:.1f} %'), html)


@pytest.mark.parametrize("value, message", [
    ("often", "HEMATOVISION_ACCURACY_TARGET\\) must be a number such as 0.95, not 'often'"),
    (1.5, "HEMATOVISION_ACCURACY_TARGET\\): .* greater than 0 and at most 1"),
    (True, "must be a number"),
])
def test_a_bad_accuracy_target_stops_the_app_with_one_clear_message(tmp_path, trusted_model_dir,
                                                                    value, message):
    from hematovision.card import ModelLoadError

    root = make_models_root(tmp_path / "m", trusted_model_dir, names=("trusted",))
    with pytest.raises(ModelLoadError, match=message):
        make_app(tmp_path, root, DEFAULT_MODEL="trusted", ACCURACY_TARGET=value)


def test_app_check_names_each_models_threshold_and_the_target_from_the_environment(
        tmp_path, trusted_model_dir):
    import os
    import subprocess
    import sys

    root = make_models_root(tmp_path / "m", trusted_model_dir, names=("trusted",))
    lowest, _ = spread_operating_points(root / "trusted")
    env = {**os.environ, "HEMATOVISION_MODELS_ROOT": str(root),
           "HEMATOVISION_DEFAULT_MODEL": "trusted", "HEMATOVISION_SECRET_KEY": "test",
           "HEMATOVISION_UPLOAD_FOLDER": str(tmp_path / "uploads"),
           "HEMATOVISION_ACCURACY_TARGET": str(lowest["target_accuracy"])}
    app_py = Path(__file__).resolve().parent.parent / "app.py"
    check = subprocess.run([sys.executable, str(app_py), "--check"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert (f"trusted {lowest['confidence_threshold']:g} "
            f"(accuracy target {lowest['target_accuracy']:g})") in check.stdout
    env["HEMATOVISION_ACCURACY_TARGET"] = "95"  # a percentage where a share is meant
    check = subprocess.run([sys.executable, str(app_py), "--check"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 2
    assert "greater than 0 and at most 1 (e.g. 0.95), not 95.0" in check.stderr
    # A lab's reference intervals, from the environment as JSON, are listed; a bad one stops it.
    env["HEMATOVISION_ACCURACY_TARGET"] = ""
    env["HEMATOVISION_REFERENCE_INTERVALS"] = '{"neutrophil": [40, 75]}'
    check = subprocess.run([sys.executable, str(app_py), "--check"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert "lymphocyte 20-40, monocyte 2-8, neutrophil 40-75," in check.stdout
    env["HEMATOVISION_REFERENCE_INTERVALS"] = '{"neutrophil": "40-75"}'
    check = subprocess.run([sys.executable, str(app_py), "--check"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 2
    assert "REFERENCE_INTERVALS): 'neutrophil': '40-75' is not [low, high]" in check.stderr


def test_overlay_blends_heat_where_the_map_is_high():
    model_input = np.zeros((224, 224, 3), np.float32)  # mid-grey image
    cam = np.zeros((7, 7))
    cam[0, 0] = 1.0
    image = heatmap.overlay(model_input, cam)
    assert isinstance(image, Image.Image) and image.size == (224, 224) and image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[5, 5] - 128).sum() > 60  # coloured where the evidence is
    assert np.abs(pixels[200, 200] - 128).sum() <= 3  # untouched where there is none


def test_the_heat_map_caption_says_what_the_model_saw(tmp_path, trusted_model_dir, client,
                                                      models_root):
    """The whole image for a model without a crop; the nucleus square, with its share of the
    short side, for one whose card records a crop (nucleus:F as well as nucleus)."""
    whole = text(page(client, upload(client, "accepting", ("red.jpg", RED))))
    assert "What the model looked at: the whole image, resized to" in whole
    for crop, share in (("nucleus", "0.55"), ("nucleus:0.4", "0.4")):
        card = card_with(trusted_model_dir, confidence_threshold=0.0, ood_threshold=1e12)
        root = make_models_root(tmp_path / crop.replace(":", "-"), trusted_model_dir,
                                names=("tiny",),
                                card={**card, "preprocessing": {"crop": crop}})
        cropping = make_app(tmp_path, root).test_client()
        shown = text(page(cropping, upload(cropping, "tiny", ("red.jpg", RED))))
        assert ("What the model looked at: a square crop centred on the stained nucleus "
                f"({share} of the short side), resized to") in shown


def test_a_batch_of_damaged_files_gives_a_page_for_each_and_no_server_error(client):
    """Seeded damaged files of a dozen formats in one upload beside a good one: the batch, every
    result page, its heat map and the CSV answer, each damaged file either classified or listed
    with its reason."""
    files = [("good.jpg", RED)] + damaged_images(60, seed=1)
    location = upload(client, "accepting", *files)
    batch = client.get(location)
    assert batch.status_code == 200
    assert client.get(f"{location}.csv").status_code == 200
    maps = set()
    for index in range(len(files)):
        page = client.get(f"{location}/{index}")
        assert page.status_code == 200, files[index][0]
        heat_map = client.get(f"{location}/{index}/heat-map.png")
        # A map for each classified image; 404 for a file that could not be read.
        assert heat_map.status_code in (200, 404), files[index][0]
        maps.add(heat_map.status_code)
    assert maps == {200, 404}



def test_in_short_calls_a_confidence_off_by_over_5_points_a_rough_guide(tmp_path,
                                                                       trusted_model_dir):
    card = card_with(trusted_model_dir)
    card["metrics"]["test"]["calibration"]["ece_after"] = 0.0801
    root = make_models_root(tmp_path / "m", trusted_model_dir, names=("rough",), card=card)
    html = page(make_app(tmp_path, root, DEFAULT_MODEL="rough").test_client(), "/models/rough")
    in_short = text(re.search(r'id="in-short".*?</section>', html, re.S).group(0))
    assert ("by 8.0 points on average on its test set (expected calibration error): read a "
            "confidence as a rough guide, not as a cell's chance of being right") in in_short
