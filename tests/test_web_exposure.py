"""The exposure correction in the app: each image's background and scaling on its result
page, in the API and the CSV; the batch page's count of corrected and over-exposed images; the
model page's recorded figures; nothing of it for a model whose card records no reference; and a
damaged stored check left out, never a failed page."""

from __future__ import annotations

import copy
import csv
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from hematovision.exposure import scaled
from hematovision.web import uploads
from tests.conftest import make_smear, with_transparent_margins
from tests.test_exposure import reference_of
from tests.web_helpers import (csv_of, make_app, make_models_root, page, review_cells,
                               save_sample, sign_off, text, upload)

ROW = {"accuracy": 0.98, "accepted_rate": 0.95, "unidentified_rate": 0.0,
       "not_a_cell_rate": 0.05, "accuracy_accepted": 0.99}
CHECK = {"data": "test", "n": 40, "rows": [
    {"name": "darker", "description": "under-exposed: brightness x0.75", "corrected": 1.0,
     "not_correctable": 0.0, "unmeasured": 0.0, **ROW,
     "as_read": {**ROW, "accepted_rate": 0.0, "not_a_cell_rate": 1.0,
                 "accuracy_accepted": None}}]}


def badges(batch_page: str) -> dict[str, str]:
    """Each image of the batch page's list marked for its exposure: {file: how}."""
    rows = re.findall(r'<tr data-status.*?</tr>', batch_page, re.S)
    return {re.search(r'file-name"><a [^>]*>([^<]*)</a>', row).group(1):
            re.search(r'data-exposure="([^"]+)"', row).group(1)
            for row in rows if "exposure-badge" in row}


def film(factor: float = 1.0, seed: int = 0) -> bytes:
    out = io.BytesIO()
    scaled(make_smear(30, seed=seed), (factor,) * 3).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def models_root(tmp_path, trusted_model_dir):
    """'exposed' records the backgrounds of 30-pixel films; 'plain' none."""
    root = tmp_path / "models"
    entry = {**reference_of(make_smear(30)).entry(), "measured": 100,
             "reference": {"data": "train", "images": 100}, "check": CHECK}
    make_models_root(root, trusted_model_dir, names=("exposed",), card={"exposure": entry})
    make_models_root(root, trusted_model_dir, names=("plain", "tiny"))
    return root


def test_a_darker_image_is_read_corrected_and_its_page_says_by_how_much(client):
    location = upload(client, "exposed", ("dark.png", film(0.75)), ("usual.png", film(seed=1)))
    html = page(client, location + "/0")
    assert re.search(r'id="why-exposure" data-outside="true" data-corrected="true"', html)
    note = text(re.search(r'id="exposure-note".*?</p>', html, re.S).group(0))
    assert re.search(r"was 0\.7[4-6] times as bright as in the model's training images", note)
    assert re.search(r"red ×1\.3[2-4]\d, green ×1\.3[2-4]\d, blue ×1\.3[2-4]\d", note)
    assert "of another colour" not in note and "The image shown is as uploaded" in note

    usual = page(client, location + "/1")
    assert re.search(r'id="why-exposure" data-outside="false" data-corrected="false"', usual)
    assert "within: read as it is" in usual and 'id="exposure-note"' not in usual

    batch = page(client, location)
    assert re.search(r'id="exposure-check"\s+data-corrected="1" data-over-exposed="0"', batch)
    assert re.search(r"The slide's background in 1 of these 2 images lay outside", text(batch))
    assert badges(batch) == {"dark.png": "corrected"}
    review = page(client, location + "/review?show=all")
    assert re.findall(r'exposure-note" data-exposure="(\w+)">([^<]*)<', review) == [
        ("corrected", "Its exposure was corrected before the model read it, as shown.")]
    report = text(page(client, location + "/report"))
    assert ("1 of 2 images was read with its exposure corrected to the background of exposed's "
            "training images") in report and "over-exposed" not in report


def test_an_over_exposed_image_is_named_on_its_page_and_its_batch(client):
    location = upload(client, "exposed", ("white.png", film(1.3)), ("usual.png", film(seed=1)))
    html = page(client, location + "/0")
    assert re.search(r'id="why-exposure" data-outside="true" data-corrected="false"', html)
    assert "white: over-exposed, not corrected" in html
    assert re.search(r"(Take|If it is a blood film, take) the image again with less light",
                     text(html))
    # Called not a blood-cell image (a screenshot is white too), the advice is for a film.
    for status, said in (("not_a_cell", "If it is a blood film, take the image again"),
                         ("accepted", ". Take the image again")):
        uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]),
                             location.rsplit("/", 1)[1],
                             lambda batch: batch["results"][0].update(status=status))
        assert said in text(page(client, location + "/0"))
    batch = page(client, location)
    assert 'class="alert alert-warning small py-2" id="exposure-check"' in batch
    assert "1 image is over-exposed:" in text(batch)
    assert badges(batch) == {"white.png": "over-exposed"}


def test_an_over_exposed_cell_accepted_unreviewed_is_marked_on_the_printed_report(client):
    location = upload(client, "exposed", ("white.png", film(1.3)), ("usual.png", film(seed=1)))
    batch_id = location.rsplit("/", 1)[1]
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda batch: batch["results"][0].update(
                             label="neutrophil", status="accepted", confidence=0.99))
    said = text(page(client, location))
    assert ("1 was accepted and is counted unreviewed: look at it first (marked over-exposed "
            "among the images below). Take it again with less light.") in said  # a cell
    report = re.search(r'<p[^>]*id="report-exposure".*?</p>', page(client, location + "/report"),
                       re.S).group(0)
    assert "text-warning-emphasis" in report and "exposure corrected" not in text(report)
    assert text(report).strip() == (
        "1 image was over-exposed (the background at the camera's white, what lay above it "
        "lost): 1 cell from it is counted, 1 as the model accepted it, not reviewed.")
    assert "Over-exposed: the background is at the camera's white" in page(
        client, location + "/review?show=all")
    top = re.search(r'id="exposure-unreviewed">(.*?)</div>', page(client, location + "/0"), re.S)
    assert text(top.group(1)).strip().startswith(
        "Over-exposed: look at this cell before counting it.")
    assert 'id="exposure-unreviewed"' not in page(client, location + "/1")  # within its range
    # The batch page's "look at it first" leads to a list of them.
    assert f'href="/batch/{batch_id}/review?show=over-exposed" id="over-exposed-review"' in page(
        client, location)
    listed = page(client, location + "/review?show=over-exposed")
    assert "Accepted cells of over-exposed images" in listed and "white.png" in listed
    assert "usual.png" not in listed
    assert re.search(r'data-show="over-exposed"[^>]*>\s*Over-exposed\s*<span[^>]*>1</span>', listed)
    review_cells(client, batch_id, n0="neutrophil")
    assert 'id="exposure-unreviewed"' not in page(client, location + "/0")
    assert "No accepted cell of an over-exposed image is waiting for review." in text(page(
        client, location + "/review?show=over-exposed"))
    # Looked at: nothing left to look at first.
    said = text(re.search(r'<span id="exposure-over-exposed">(.*?)</span>',
                          page(client, location), re.S).group(1))
    assert said.strip().startswith("1 image is over-exposed:") and "look at it first" not in said
    review_cells(client, batch_id, n0="neutrophil")  # looked at: still from a lost image
    report = re.search(r'<p[^>]*id="report-exposure".*?</p>', page(client, location + "/report"),
                       re.S).group(0)
    assert "text-warning-emphasis" not in report and text(report).strip().endswith(
        "lost): 1 cell from it is counted.")


def test_an_image_too_far_to_correct_is_named_on_its_review_card_and_the_report(client):
    location = upload(client, "exposed", ("dim.png", film(0.4)), ("usual.png", film(seed=1)))
    batch_id = location.rsplit("/", 1)[1]
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda batch: batch["results"][0].update(
                             label="neutrophil", status="accepted", confidence=0.99))
    assert badges(page(client, location)) == {"dim.png": "too-far"}
    assert re.findall(r'exposure-note" data-exposure="([\w-]+)"', page(
        client, location + "/review?show=all")) == ["too-far"]
    report = re.search(r'<p[^>]*id="report-exposure".*?</p>', page(client, location + "/report"),
                       re.S).group(0)
    assert text(report).strip() == ("1 image was read uncorrected, too far from the training "
                                    "images' exposure: 1 cell from it is counted.")


def test_the_api_and_the_csv_carry_the_check(client):
    body = client.post("/api/predict", data={
        "model": "exposed", "file": [(io.BytesIO(film(0.75)), "dark.png")]}).get_json()
    check = body["results"][0]["exposure"]
    assert check["outside"] is True and check["gains"] == pytest.approx([1 / 0.75] * 3, rel=0.02)

    location = upload(client, "exposed", ("dark.png", film(0.75)), ("usual.png", film(seed=1)),
                      ("white.png", film(1.3, seed=2)))
    rows = list(csv.DictReader(csv_of(page(client, location + ".csv"))))
    colours, gains = zip(*(g.split("x") for g in rows[0]["exposure_correction"].split()))
    assert colours == ("R", "G", "B")
    assert [float(g) for g in gains] == pytest.approx([1 / 0.75] * 3, rel=0.02)
    assert [r["exposure_correction"] for r in rows[1:]] == ["within", "over-exposed"]


def test_a_model_without_a_reference_reads_images_as_they_are(client):
    location = upload(client, "plain", ("dark.png", film(0.75)))
    assert 'id="why-exposure"' not in page(client, location)
    body = client.post("/api/predict", data={
        "model": "plain", "file": [(io.BytesIO(film(0.75)), "dark.png")]}).get_json()
    assert "exposure" not in body["results"][0]
    assert 'id="exposure"' not in page(client, "/models/plain")


def test_the_model_page_shows_the_figures_both_ways(client):
    html = page(client, "/models/exposed")
    row = text(re.search(r'id="exposure-table".*?data-change="darker">(.*?)</tr>', html,
                         re.S).group(1)).strip()
    assert row == ("darker (under-exposed: brightness x0.75) 100.0 % 95.0 % (99.0 %) 5.0 % "
                   "0.0 % (none accepted) 100.0 %")


@pytest.mark.parametrize("damaged", [{"outside": True, "background": "grey", "gains": None},
                                     {"outside": True, "background": [1, 2, 3], "gains": [0]},
                                     "dark", 7])
def test_a_damaged_stored_check_is_left_out_not_a_failed_page(client, damaged):
    location = upload(client, "exposed", ("dark.png", film(0.75)), ("usual.png", film(seed=1)))
    batch_id = location.rsplit("/", 1)[1]
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda batch: batch["results"][0].update(exposure=damaged))
    html = page(client, location + "/0")
    assert 'id="why-exposure"' not in html and 'id="exposure-note"' not in html
    assert 'id="exposure-check"' not in page(client, location)
    rows = list(csv.DictReader(csv_of(page(client, location + ".csv"))))
    assert rows[0]["exposure_correction"] == ""


def test_the_model_s_view_and_heat_map_read_the_stored_upload_as_the_result_was_read(
        client, models_root):
    """The stored copy is a re-encoded JPEG whose background may fall on the other side of a
    range's edge: the model's view and the heat map scale it by the result's stored gains,
    never measure it again."""
    from hematovision.exposure import stored
    from hematovision.predictor import Predictor
    from hematovision.web import heatmap

    location = upload(client, "exposed", ("dark.png", film(0.75)), ("usual.png", film(seed=1)))
    batch_id = location.rsplit("/", 1)[1]
    corrected = client.get(location + "/0/view.jpg")
    assert corrected.status_code == 200

    def as_if_within(batch: dict) -> None:
        batch["results"][0]["exposure"].update(outside=False, gains=None)

    folder = Path(client.application.config["UPLOAD_FOLDER"])
    batch = uploads.update_batch(folder, batch_id, as_if_within)
    uncorrected = client.get(location + "/0/view.jpg")
    assert uncorrected.status_code == 200 and uncorrected.data != corrected.data

    predictor = Predictor(models_root / "exposed")
    path = next(folder.rglob(f"{batch['results'][0]['image']}*"))
    check = stored({"outside": True, "background": [170, 162, 165], "gains": [1.33] * 3})
    label = predictor.classes[0]
    assert (heatmap.stored_overlay(predictor, path, label, exposure=check)
            != heatmap.stored_overlay(predictor, path, label))


def test_a_batch_of_darker_and_brighter_images_names_each_apart(client):
    location = upload(client, "exposed", ("dark.png", film(0.75)),
                      ("darker.png", film(0.7, seed=1)), ("bright.png", film(1.08, seed=2)))
    said = text(page(client, location))
    assert re.search(r"lay outside the range of the model's training images' \(2 darker, a "
                     r"median 0\.7[0-4] times as bright as theirs; 1 brighter, 1\.0[6-9] times",
                     said)


def test_an_image_too_far_in_one_colour_names_the_colours(client):
    tinted = io.BytesIO()
    scaled(make_smear(30), (0.45, 1.0, 1.0)).save(tinted, "PNG")
    html = page(client, upload(client, "exposed", ("red.png", tinted.getvalue())))
    note = text(re.search(r'id="exposure-note".*?</p>', html, re.S).group(0))
    assert "of another colour than the model's training images' (red ×0.45, green ×1.00" in note
    assert "times as bright" not in note


@pytest.mark.parametrize("figures", [
    {"rows": [{"name": "darker"}]}, {"rows": ["darker"]}, {"n": 40, "data": "test"},
    {**CHECK, "rows": [{**CHECK["rows"][0], "as_read": None}]}])
def test_a_half_recorded_card_entry_leaves_the_section_off_the_model_page(
        tmp_path, trusted_model_dir, figures):
    from tests.web_helpers import make_app

    root = tmp_path / "models"
    entry = {**reference_of(make_smear(30)).entry(), "reference": {"data": "t", "images": 9},
             "check": figures}
    make_models_root(root, trusted_model_dir, names=("exposed", "tiny"),
                     card={"exposure": entry})
    html = page(make_app(tmp_path, root).test_client(), "/models/exposed")
    assert 'id="exposure"' not in html


def test_a_stored_number_too_large_for_a_float_is_a_damaged_check(client):
    location = upload(client, "exposed", ("dark.png", film(0.75)))
    batch_id = location.rsplit("/", 1)[1]
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda batch: batch["results"][0]["exposure"].update(
                             gains=[10 ** 400, 1, 1]))
    assert 'id="why-exposure"' not in page(client, location)


def test_a_tinted_batch_is_named_so_and_one_white_in_two_colours_is_over_exposed(client):
    warmer = io.BytesIO()
    scaled(make_smear(30), (1.0, 0.92, 0.8)).save(warmer, "PNG")
    partly = io.BytesIO()  # green and blue at white, red not: what lay above white is lost
    scaled(make_smear(30, seed=1), (1.05, 1.17, 1.15)).save(partly, "PNG")
    location = upload(client, "exposed", ("warm.png", warmer.getvalue()),
                      ("partly.png", partly.getvalue()), ("usual.png", film(seed=2)))
    said = text(page(client, location))
    assert re.search(r"\(1 of another colour, 0\.9\d times as bright as theirs\)", said)
    assert "1 image is over-exposed: the background is at the camera's white in some" in said
    html = page(client, location + "/1")
    assert re.search(r'id="why-exposure" data-outside="true" data-corrected="false"', html)
    note = text(re.search(r'id="exposure-note".*?</p>', html, re.S).group(0))
    assert "at the camera's white in green and blue, where the training images' is not" in note


def test_an_image_with_too_little_bare_slide_says_it_was_not_measured(client):
    black = io.BytesIO()
    Image.new("RGB", (64, 64)).save(black, "PNG")
    html = page(client, upload(client, "exposed", ("black.png", black.getvalue()),
                               ("usual.png", film())) + "/0")
    assert re.search(r'id="why-exposure" data-outside="unmeasured"', html)
    assert "not measured: too little bare slide" in html


def test_a_picture_with_transparent_margins_is_not_called_over_exposed(client):
    """Wholly transparent margins are cropped off: the field within range, read as it is; a
    rotated crop's transparent corners are no slide: not measured, read as it is. (The page's
    general account of "not a blood-cell image", naming over-exposed pictures among its
    causes, may stand: the tiny model's answer is no part of this.)"""
    pasted, turned = io.BytesIO(), io.BytesIO()
    with_transparent_margins(make_smear(30)).save(pasted, "PNG")
    make_smear(30).convert("RGBA").rotate(20, expand=True).save(turned, "PNG")
    location = upload(client, "exposed", ("turned.png", turned.getvalue()),
                      ("usual.png", film(seed=1)), ("pasted.png", pasted.getvalue()))
    assert "within: read as it is" in page(client, location + "/2")
    html = page(client, location + "/0")
    assert re.search(r'id="why-exposure" data-outside="unmeasured" data-corrected="false"', html)
    assert "transparent margins; read as it is" in text(html) and 'id="exposure-note"' not in html
    said = text(html)
    assert "over-exposed, not corrected" not in said and "less light" not in said
    assert "Over-exposed" not in said
    batch = page(client, location)
    assert 'id="exposure-check"' not in batch  # nothing outside the range to name
    assert badges(batch) == {} and "is over-exposed" not in text(batch)


def test_a_batch_of_one_image_read_says_the_image_was_corrected(client):
    location = upload(client, "exposed", ("dark.png", film(0.75)), ("bad.png", b"not an image"))
    report = text(page(client, location + "/report"))
    assert ("The image was read with its exposure corrected to the background of exposed's "
            "training images") in report


def field_of_two(batch):
    """white.png read as a field of two cells: the first set aside (not a blood-cell image),
    the second accepted as a neutrophil; both share the image's over-exposed check."""
    first = batch["results"][0]
    second = copy.deepcopy(first)
    place = {"of": 2, "centre": [0.3, 0.3], "nucleus": [0.2, 0.2, 0.4, 0.4],
             "square": [0.1, 0.1, 0.5, 0.5]}
    first["cell"] = {**place, "number": 1}
    first.update(status="not_a_cell", label="not_a_cell")
    second["cell"] = {**place, "number": 2, "centre": [0.7, 0.7]}
    second.update(status="accepted", label="neutrophil", confidence=0.99)
    batch["results"].insert(1, second)


def test_an_over_exposed_field_s_accepted_cell_is_named_on_the_batch_page_and_report(client):
    location = upload(client, "exposed", ("white.png", film(1.3)), ("usual.png", film(seed=1)))
    batch_id = location.rsplit("/", 1)[1]
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         field_of_two)
    report = text(page(client, location + "/report"))
    assert ("1 image was over-exposed (the background at the camera's white, what lay above it "
            "lost): 1 cell from it is counted, 1 as the model accepted it, not reviewed.") in report
    assert "but 1 was accepted and is counted unreviewed: look at it first" in text(
        page(client, location))


def test_an_over_exposed_image_called_not_a_cell_is_looked_at_before_signing(client):
    """The white-cell finder finding none agrees with "not a blood-cell image" only on an image
    of the exposures the model knows: an over-exposed one may hide a white cell from both."""
    location = upload(client, "exposed", ("white.png", film(1.3)), ("usual.png", film(seed=1)),
                      ("also.png", film(seed=2)))
    batch_id = location.rsplit("/", 1)[1]

    def as_said(batch):
        for result, status in zip(batch["results"], ["not_a_cell", "not_a_cell", "accepted"]):
            result.update(status=status, label="neutrophil", confidence=0.99, white_cells=0)

    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id, as_said)
    assert save_sample(client, batch_id, "H-1").status_code == 303
    review_cells(client, batch_id, n2="neutrophil")
    refused = sign_off(client, batch_id)
    assert refused.status_code == 400
    assert "1 image called not a blood-cell image is not reviewed: look at it first" in text(
        refused.get_data(as_text=True))
    listed = page(client, location + "/review?show=not-a-cell")
    assert "white.png" in listed and "usual.png" not in listed  # the finder agrees there
    assert ("No unidentified cell is waiting for review. 1 image called not a blood-cell image "
            "waits to be looked at before sign-off: look at it") in text(page(
                client, location + "/review"))
    review_cells(client, batch_id, n0="excluded")
    assert sign_off(client, batch_id).status_code == 303


def test_images_over_exposed_for_the_batch_s_model_but_usual_for_another_name_it(
        tmp_path, models_root, trusted_model_dir):
    """PBC's single cells, white in red, sent to wbc4: the camera's usual background is
    another model's kind of image, better read by it than taken again."""
    bright = reference_of(scaled(make_smear(30), (1.3,) * 3))
    make_models_root(models_root, trusted_model_dir, names=("white",), card={"exposure": {
        **bright.entry(), "measured": 100, "reference": {"data": "train", "images": 100},
        "check": CHECK}})
    other = make_app(tmp_path, models_root).test_client()
    location = upload(other, "exposed", ("white.png", film(1.3)), ("usual.png", film(seed=1)))
    said = re.search(r'<span id="exposure-elsewhere" data-model="white">(.*?)</span>',
                     page(other, location), re.S)
    assert text(said.group(1)) == (
        "Its background lies within the range of white's training images': if it is the kind "
        "of image white reads, classify it with white rather than taking it again; if not, "
        "take it again with less light.")
    assert 'href="/?model=white"' in said.group(1)
    assert "with less light" not in text(re.search(  # said once, as the other way
        r'<span id="exposure-over-exposed">(.*?)</span>', page(other, location), re.S).group(1))
    assert 'id="exposure-elsewhere"' not in page(other, upload(other, "white", (
        "white.png", film(1.3))))  # within its own model's range: nothing to say
    assert 'id="exposure-elsewhere"' not in page(other, location + "/1")  # read as it is


def test_one_image_over_exposed_for_its_model_but_usual_for_another_names_it_on_its_page(
        tmp_path, models_root, trusted_model_dir):
    """A single image has no batch page: its result page gives the other model, rather than
    telling a technologist to take again an image that another model reads as it is."""
    bright = reference_of(scaled(make_smear(30), (1.3,) * 3))
    make_models_root(models_root, trusted_model_dir, names=("white",), card={"exposure": {
        **bright.entry(), "measured": 100, "reference": {"data": "train", "images": 100},
        "check": CHECK}})
    other = make_app(tmp_path, models_root).test_client()
    html = page(other, upload(other, "exposed", ("white.png", film(1.3))))
    note = re.search(r'id="exposure-note".*?</p>', html, re.S).group(0)
    said = re.search(r'<span id="exposure-elsewhere" data-model="white">(.*?)</span>', note, re.S)
    assert text(said.group(1)) == (
        "Its background lies within the range of white's training images': if it is the kind "
        "of image white reads, classify it with white rather than taking it again; if not, "
        "take it again with less light.")
    assert 'href="/?model=white"' in said.group(1)
    assert "over-exposed" in text(note) and text(note).count("with less light") == 1
    assert 'id="exposure-elsewhere"' not in page(other, upload(other, "white", (
        "white.png", film(1.3))))
    dark = page(other, upload(other, "exposed", ("dark.png", film(0.75))))
    assert 'id="exposure-note"' in dark and 'id="exposure-elsewhere"' not in dark  # corrected


def test_over_exposed_images_only_some_of_which_another_model_holds_are_all_told_what_to_do(
        tmp_path, trusted_model_dir):
    """Two over-exposed images, one white in every colour (within 'white's range) and one
    white in red only (within no served model's): the page had dropped "take them again" for
    both, leaving the red one told only to try 'white', which holds neither its background."""
    root = tmp_path / "models"
    for name, image in (("exposed", make_smear(30)),
                        ("white", scaled(make_smear(30), (1.3,) * 3))):
        make_models_root(root, trusted_model_dir, names=(name,), card={"exposure": {
            **reference_of(image).entry(), "measured": 100,
            "reference": {"data": "train", "images": 100}, "check": CHECK}})
    make_models_root(root, trusted_model_dir, names=("tiny",))
    other = make_app(tmp_path, root).test_client()
    red_white = io.BytesIO()
    scaled(make_smear(30, seed=2), (1.3, 1.0, 1.0)).save(red_white, "PNG")
    html = page(other, upload(other, "exposed", ("all-white.png", film(1.3)),
                              ("red-white.png", red_white.getvalue())))
    assert re.search(r'data-over-exposed="2"', html)
    over = text(re.search(r'<span id="exposure-over-exposed">(.*?)</span>', html, re.S).group(1))
    assert over.strip().endswith("If they are blood films, take them again with less light.")
    elsewhere = text(re.search(r'<span id="exposure-elsewhere"[^>]*>(.*?)</span>', html,
                               re.S).group(1))
    assert elsewhere.strip() == (
        "The background of 1 of them lies within the range of white's training images': if it "
        "is the kind of image white reads, classify it with white rather than taking it again.")


def test_over_exposed_images_of_the_model_s_own_red_cell_size_are_not_sent_to_another(
        tmp_path, trusted_model_dir):
    """A walker's smear fields brightened in red, over-exposed for wbc4 and within pbc8's
    backgrounds, were told to be classified with pbc8 (which called them all not a cell),
    though their red cells measured wbc4's own training images' size."""
    root = tmp_path / "models"
    bright = reference_of(scaled(make_smear(30), (1.3,) * 3))
    make_models_root(root, trusted_model_dir, names=("white",), card={"exposure": {
        **bright.entry(), "measured": 100, "reference": {"data": "train", "images": 100},
        "check": CHECK}})
    make_models_root(root, trusted_model_dir, names=("exposed",), card={
        "exposure": {**reference_of(make_smear(30)).entry(), "measured": 100,
                     "reference": {"data": "train", "images": 100}, "check": CHECK},
        "magnification": {"red_cell_scale": 0.1, "single_image_range": [0.8, 1.3],
                          "batch_range": [0.8333, 1.25], "min_batch_images": 5}})
    make_models_root(root, trusted_model_dir, names=("tiny",))
    other = make_app(tmp_path, root).test_client()
    location = upload(other, "exposed", ("field.png", film(1.3)), ("cell.png", film(1.3, 1)))
    batch_id = location.rsplit("/", 1)[1]

    def measured(batch):  # the field's red cells at the training size, the cell's not
        batch["results"][0]["red_cell_ratio"] = 1.02
        batch["results"][1]["red_cell_ratio"] = None

    uploads.update_batch(Path(other.application.config["UPLOAD_FOLDER"]), batch_id, measured)
    html = page(other, location)
    elsewhere = text(re.search(r'<span id="exposure-elsewhere"[^>]*>(.*?)</span>', html,
                               re.S).group(1))
    assert elsewhere.strip().startswith("The background of 1 of them lies within the range of "
                                        "white's training images'")
    assert "If they are blood films, take them again with less light." in text(html)
    assert 'id="exposure-elsewhere"' not in page(other, location + "/0")
    assert 'id="exposure-elsewhere"' in page(other, location + "/1")
