"""Signing a batch's count off (POST /batch/<id>/signoff): refused while cells wait for review,
shown on the page, the printed report and the differential CSV, and shown as changed once the
count moves away from what was signed."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from hematovision.web import uploads
from tests.web_helpers import (batch_as_said, csrf_token, csv_of, image_bytes, page, prose,
                               review_cells, save_sample, shown_count, shown_signoff, sign_off,
                               text, upload)

MODEL_SAID = [
    ("neutrophil", "accepted", 0.97),
    ("lymphocyte", "accepted", 0.99),
    ("neutrophil", "unidentified", 0.55),
    ("monocyte", "not_a_cell", 0.40),
]


@pytest.fixture
def batch_id(client) -> str:
    """The model's answers of MODEL_SAID; its not-a-cell image is one in which the white-cell
    finder found no white cell either, so it is left out without review (set_aside_unseen).
    Its sample has an ID, as a sign-off needs."""
    batch_id = batch_as_said(client, "tiny", MODEL_SAID)
    assert save_sample(client, batch_id, "H-2026-00042").status_code == 303
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda batch: batch["results"][-1].update(white_cells=0))
    return batch_id


def stored(client, batch_id: str) -> dict:
    return uploads.load_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id)


def signed_csv(client, batch_id: str) -> list[tuple[str, str]]:
    rows = csv.DictReader(csv_of(
        client.get(f"/batch/{batch_id}/differential.csv").get_data(as_text=True)))
    return sorted({(r["signed_off_by"], r["signed_off_at"]) for r in rows})


def test_a_count_with_cells_to_review_is_not_signed(client, batch_id):
    before = stored(client, batch_id)
    response = sign_off(client, batch_id)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert ("1 unidentified cell still waits for review: review it first, so that the count "
            "you sign does not lean towards the classes the model is sure of.") in text(html)
    # The name kept as typed, and not marked wrong: the count is what is not ready, said once,
    # with the way to the cells that wait.
    assert re.search(r'id="signed-by" name="signed_by"\s+value="J. Smith"', html)
    assert 'aria-invalid="true"' not in html
    error = re.search(r'<div[^>]*id="signoff-error" role="alert">(.*?)</div>', html, re.S)
    assert f'href="/batch/{batch_id}/review">Review them</a>' in error.group(1)
    assert text(html).count("1 unidentified cell still waits for review") == 1
    assert stored(client, batch_id) == before
    assert 'id="signoff-summary"' not in html


def test_a_signed_count_is_shown_printed_and_written_with_the_name(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    response = sign_off(client, batch_id, "  J. Smith ")
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/batch/{batch_id}")
    signed = stored(client, batch_id)["signoff"]
    assert (signed["by"], signed["white_cells"], signed["reviewed"]) == ("J. Smith", 3, 1)

    html = page(client, f"/batch/{batch_id}")
    assert ("Signed off by \u2068J. Smith\u2069: the page, the printed report"
            in text(html))  # the flash
    summary = re.search(r'<p[^>]*id="signoff-summary".*?</p>', html, re.S).group(0)
    assert 'data-current="true"' in summary and "Signed off by J. Smith" in text(summary)
    assert ("3 white cells counted, 1 of them confirmed or given their class on review, the "
            "rest as the model accepted them.") in text(html)
    note = re.search(r'id="print-note".*?</p>', html, re.S).group(0)
    assert "Signed off by J. Smith," in prose(note) and "Preliminary" not in note
    assert 'id="withdraw-form"' in html and 'id="signoff-form"' not in html
    [(by, at)] = signed_csv(client, batch_id)
    assert by == "J. Smith" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", at)


def test_a_count_whose_sample_has_no_id_is_not_signed_until_it_has_one(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    assert save_sample(client, batch_id, "", "6.5").status_code == 303  # a count, no ID
    html = page(client, f"/batch/{batch_id}")
    help_text = re.search(r'id="signoff-help">(.*?)</div>', html, re.S).group(1)
    assert "Give the sample's ID first (Sample ID, at the top of this page)" in text(help_text)
    assert '<a href="#sample-id">Go to Sample ID</a>' in help_text
    before = stored(client, batch_id)
    response = sign_off(client, batch_id, count=shown_count(client, batch_id))
    assert response.status_code == 400 and stored(client, batch_id) == before
    assert ("Give the sample's ID first (Sample ID, at the top of this page): a count signed off "
            "without one cannot be told from another patient's on the report.") in text(
        response.get_data(as_text=True))
    error = re.search(r'id="signoff-error" role="alert">(.*?)</div>', response.get_data(
        as_text=True), re.S).group(1)
    assert '<a href="#sample-id">Go to Sample ID</a>' in error

    assert save_sample(client, batch_id, "H-2026-00042", "6.5").status_code == 303
    assert sign_off(client, batch_id, count=shown_count(client, batch_id)).status_code == 303
    assert stored(client, batch_id)["signoff"]["by"] == "J. Smith"


def test_every_reason_not_to_sign_yet_is_named_at_once_with_its_way_there(client, batch_id):
    assert save_sample(client, batch_id, "").status_code == 303
    help_text = re.search(r'id="signoff-help">(.*?)</div>', page(client, f"/batch/{batch_id}"),
                          re.S).group(1)
    reasons = text(help_text)
    assert reasons.index("1 unidentified cell still waits for review") < reasons.index(
        "Review them") < reasons.index("Give the sample's ID first") < reasons.index(
        "Go to Sample ID")
    assert f'href="/batch/{batch_id}/review">Review them</a>' in help_text
    refused = sign_off(client, batch_id, count=shown_count(client, batch_id))
    error = re.search(r'id="signoff-error" role="alert">(.*?)</div>',
                      refused.get_data(as_text=True), re.S).group(1)
    assert refused.status_code == 400 and text(error) == reasons


@pytest.mark.parametrize("change", ["review", "sample", "add"])
def test_a_change_to_the_count_after_signing_shows_it_as_changed(client, batch_id, change):
    review_cells(client, batch_id, n2="neutrophil")
    sign_off(client, batch_id)
    if change == "review":
        review_cells(client, batch_id, n0="eosinophil")
    elif change == "sample":
        save_sample(client, batch_id, "H-1", "6.5")
    else:
        response = client.post(f"/batch/{batch_id}/add", data={
            "csrf_token": csrf_token(client),
            "file": [(io.BytesIO(image_bytes(size=(90, 60), fmt="PNG")), "more.png")]})
        assert response.status_code == 303
    html = page(client, f"/batch/{batch_id}")
    summary = re.search(r'<p[^>]*id="signoff-summary".*?</p>', html, re.S).group(0)
    assert 'data-current="false"' in summary
    assert "Changed since it was signed off by J. Smith" in text(summary)
    printed = text(re.search(r'id="print-note".*?</p>', html, re.S).group(0))
    assert re.search(r"Changed after J\. Smith signed it off \(\d+ white cells? counted then\): "
                     r"not signed as it stands\.", printed)
    assert "Not signed off." in printed
    assert 'id="signoff-form"' in html and 'id="signoff-stale"' in html
    assert signed_csv(client, batch_id) == [("", "")]
    # Signed again, it stands.
    if change == "add":  # the added image waits for review or counts as it is
        review_cells(client, batch_id, n4="lymphocyte")
    assert sign_off(client, batch_id, "A. Jones").status_code == 303
    assert signed_csv(client, batch_id)[0][0] == "A. Jones"


def test_confirming_a_cell_again_as_its_class_keeps_the_sign_off(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    sign_off(client, batch_id)
    review_cells(client, batch_id, n2="neutrophil")  # a new review time, the same count
    assert signed_csv(client, batch_id)[0][0] == "J. Smith"


@pytest.mark.parametrize("name, message", [
    ("", "Give your name or initials to sign the count off."),
    ("   ", "Give your name or initials to sign the count off."),
    ("J.\x00Smith", "Sign with your name or initials"),
    ("J. Smith\u202e", "Sign with your name or initials"),  # an invisible direction mark
    ("x" * 61, "Sign with your name or initials: at most 60"),
    ("\u3164", "Sign with your name or initials"),  # a Hangul filler: a letter that shows nothing
    ("\u2800\u2800", "Sign with your name or initials"),  # braille blanks
    ("\u0301\u0301", "Sign with your name or initials"),  # combining marks alone
    ("-.-", "Sign with your name or initials"),  # no letter or digit
])
def test_a_name_that_is_not_plain_text_is_refused(client, batch_id, name, message):
    review_cells(client, batch_id, n2="neutrophil")
    before = stored(client, batch_id)
    response = sign_off(client, batch_id, name)
    assert response.status_code == 400
    assert message in text(response.get_data(as_text=True))
    assert stored(client, batch_id) == before


def test_a_name_like_a_formula_is_written_inert(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    sign_off(client, batch_id, "=HYPERLINK(1)")
    assert signed_csv(client, batch_id)[0][0] == "'=HYPERLINK(1)"


def test_a_sign_off_is_withdrawn(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    sign_off(client, batch_id)
    response = client.post(f"/batch/{batch_id}/signoff",
                           data={"csrf_token": csrf_token(client), "withdraw": "1"})
    assert response.status_code == 303
    assert "signoff" not in stored(client, batch_id)
    html = page(client, f"/batch/{batch_id}")
    assert "Withdrew the sign-off by \u2068J. Smith\u2069." in text(html)
    assert 'id="signoff-summary"' not in html and 'id="signoff-form"' in html


def test_nothing_counted_or_one_image_or_no_token_is_not_signed(client, batch_id):
    review_cells(client, batch_id, n0="excluded", n1="excluded", n2="excluded")
    response = sign_off(client, batch_id)
    assert response.status_code == 400
    assert "No white cell is counted in this batch" in text(response.get_data(as_text=True))

    single = upload(client, "tiny", ("one.png", image_bytes(fmt="PNG"))).rsplit("/", 1)[1]
    response = sign_off(client, single, count="")
    assert response.status_code == 400
    assert "add images to this batch first" in text(response.get_data(as_text=True))
    assert client.post(f"/batch/{batch_id}/signoff",
                       data={"signed_by": "J. Smith"}).status_code == 400
    assert sign_off(client, "0" * 32, count="").status_code == 404


def test_a_count_changed_after_the_page_was_loaded_is_not_signed_unseen(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    seen = shown_count(client, batch_id)
    review_cells(client, batch_id, n0="lymphocyte")  # another tab, or a colleague
    before = stored(client, batch_id)
    response = sign_off(client, batch_id, count=seen)
    assert response.status_code == 409
    html = response.get_data(as_text=True)
    assert "The count changed after this page was loaded" in text(html)
    assert re.search(r'id="signed-by" name="signed_by"\s+value="J. Smith"', html)
    assert stored(client, batch_id) == before
    # The page sent back shows the count as it is now: signed from it, it stands.
    fresh = re.search(r'name="count" value="(\w+)"', html).group(1)
    assert sign_off(client, batch_id, count=fresh).status_code == 303
    # A third tab, drawn before, is refused too; its page says the sign-off stands, not that
    # it has changed.
    html = sign_off(client, batch_id, "A. Jones", count=seen).get_data(as_text=True)
    assert "The sign-off by J. Smith" in text(html) and "stands; signing replaces it" in text(html)
    assert 'id="signoff-stale"' not in html


def test_a_colleagues_sign_off_given_after_the_page_was_loaded_is_not_replaced_unseen(
        client, batch_id):
    """Two browsers on one batch page, neither signed: the first signs; the second, from its
    older page (the same count, no sign-off shown), is told who signed meanwhile, not allowed
    to replace it without seeing it."""
    review_cells(client, batch_id, n2="neutrophil", n3="excluded")
    seen_count, seen_signed = shown_count(client, batch_id), shown_signoff(client, batch_id)
    assert seen_signed == ""
    assert sign_off(client, batch_id, "A. Bench").status_code == 303
    before = stored(client, batch_id)
    response = sign_off(client, batch_id, "C. Senior", count=seen_count, signed=seen_signed)
    assert response.status_code == 409
    html = response.get_data(as_text=True)
    assert ("\u2068A. Bench\u2069 signed this count off after this page was loaded (another "
            "tab, or a colleague): that sign-off stands, below. To replace it with yours, sign "
            "again.") in text(html)
    assert "The sign-off by A. Bench" in text(html) and "stands; signing replaces it" in text(html)
    assert re.search(r'id="signed-by" name="signed_by"\s+value="C. Senior"', html)
    assert stored(client, batch_id) == before
    # Signed again from the page sent back, which shows it, it replaces it, as it says.
    count, signed = (re.search(rf'name="{field}" value="([^"]*)"', html).group(1)
                     for field in ("count", "signed"))
    assert signed == repr(before["signoff"]["at"])
    assert sign_off(client, batch_id, "C. Senior", count=count, signed=signed).status_code == 303
    assert stored(client, batch_id)["signoff"]["by"] == "C. Senior"
    # A sign-off withdrawn meanwhile leaves nothing to replace: the older page's is taken.
    shown = shown_signoff(client, batch_id)
    client.post(f"/batch/{batch_id}/signoff", data={"csrf_token": csrf_token(client),
                                                     "withdraw": "1"})
    assert sign_off(client, batch_id, "D. Late", signed=shown).status_code == 303


def test_a_colleagues_sign_off_given_after_the_page_was_loaded_is_not_withdrawn_unseen(
        client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    assert sign_off(client, batch_id, "A. Bench").status_code == 303
    html = page(client, f"/batch/{batch_id}")
    form = re.search(r'<form[^>]*id="withdraw-form".*?</form>', html, re.S).group(0)
    shown = re.search(r'name="signed" value="([^"]*)"', form).group(1)
    assert shown == repr(stored(client, batch_id)["signoff"]["at"])
    # A colleague signs again (from a page that showed A. Bench's sign-off) ...
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda b: b["signoff"].update(by="C. Senior", at=b["signoff"]["at"] + 5))
    before = stored(client, batch_id)
    response = client.post(f"/batch/{batch_id}/signoff", data={
        "csrf_token": csrf_token(client), "withdraw": "1", "signed": shown})
    assert response.status_code == 409
    assert ("\u2068C. Senior\u2069 signed this count off after this page was loaded (another "
            "tab, or a colleague): nothing was withdrawn.") in text(response.get_data(as_text=True))
    assert stored(client, batch_id) == before
    # ... withdrawn from the page that shows it, it goes.
    fresh = repr(before["signoff"]["at"])
    assert client.post(f"/batch/{batch_id}/signoff", data={
        "csrf_token": csrf_token(client), "withdraw": "1", "signed": fresh}).status_code == 303
    assert stored(client, batch_id).get("signoff") is None


def test_a_sign_off_whose_stored_time_is_damaged_leaves_the_page_working(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    assert sign_off(client, batch_id, "A. Bench").status_code == 303
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda b: b["signoff"].update(at="yesterday"))
    html = page(client, f"/batch/{batch_id}")
    assert re.search(r'name="signed" value="\?"', html)
    assert client.post(f"/batch/{batch_id}/signoff", data={
        "csrf_token": csrf_token(client), "withdraw": "1", "signed": "?"}).status_code == 303


def test_an_image_with_no_white_cell_found_counted_unreviewed_is_not_signed(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda batch: batch["results"][1].update(white_cells=0))
    response = sign_off(client, batch_id)
    assert response.status_code == 400
    assert ("1 image in which no white cell was found is counted but not reviewed: check it "
            "first" in text(response.get_data(as_text=True)))
    review_cells(client, batch_id, n1="excluded")
    assert sign_off(client, batch_id).status_code == 303


@pytest.mark.parametrize("found", [None, 2], ids=["image-read-whole", "cell-of-a-field"])
def test_an_image_called_not_a_cell_where_a_white_cell_may_be_is_looked_at_before_signing(
        client, batch_id, found):
    """A neutrophil photographed unlike the training images can be called not a blood-cell
    image: left out unseen, the count signed would lack it. Where the finder found a white cell
    in the image (or does not run, for a model reading images whole) someone looks first."""
    folder = Path(client.application.config["UPLOAD_FOLDER"])

    def not_seen_by_the_finder(batch):
        batch["results"][3].pop("white_cells", None)
        if found is not None:  # the second cell of a field holding two: an image's first
            # cell stands for the image in counts of images, which once missed this one
            batch["results"][3].update(white_cells=found, cell={"number": 2, "of": found})

    uploads.update_batch(folder, batch_id, not_seen_by_the_finder)
    review_cells(client, batch_id, n2="neutrophil")
    html = page(client, f"/batch/{batch_id}")
    summary = text(re.search(r'<p[^>]*id="set-aside-summary".*?</p>', html, re.S).group(0))
    what = "1 image" if found is None else "1 cell of a field"
    assert summary.strip().startswith(f"{what} called not a blood-cell image is not reviewed "
                                      "yet: it is not counted, and a white cell in it (of a "
                                      "look or a kind tiny was not trained on) is missing")
    assert f'href="/batch/{batch_id}/review?show=not-a-cell"' in html
    assert re.search(r'id="differential-preliminary">preliminary: 1 to review<', html)
    report = page(client, f"/batch/{batch_id}/report")
    assert f"{what} called not a blood-cell image is not counted, not reviewed" in text(report)
    assert (f"Preliminary: {what} called not a blood-cell image is not looked at yet" in
            text(re.search(r'id="print-preliminary">.*?</strong>', html, re.S).group(0)))
    status = re.search(r'<p[^>]*id="report-status" data-status="(\w+)">(.*?)</p>', report, re.S)
    assert status.group(1) == "preliminary" and text(status.group(2)).strip() == (
        f"Preliminary: {what} called not a blood-cell image is not looked at yet; a white cell "
        "in it would be missing from this count.")
    rows = list(csv.DictReader(csv_of(client.get(
        f"/batch/{batch_id}/differential.csv").get_data(as_text=True))))
    assert {r["not_a_cell_unreviewed"] for r in rows} == {"1"}
    before = stored(client, batch_id)
    response = sign_off(client, batch_id)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert (f"{what} called not a blood-cell image is not reviewed: look at it first (give the "
            "class of any white cell, exclude the rest), since a white cell in it is missing "
            "from the count you sign.") in text(html)
    error = re.search(r'<div[^>]*id="signoff-error" role="alert">(.*?)</div>', html, re.S)
    assert f'href="/batch/{batch_id}/review?show=not-a-cell">Look at them</a>' in error.group(1)
    assert stored(client, batch_id) == before
    # Its list holds it until it has a verdict.
    listing = page(client, f"/batch/{batch_id}/review?show=not-a-cell")
    assert "Images called not a blood-cell image" in text(listing)
    assert 'name="verdict-3"' in listing and 'name="verdict-0"' not in listing
    review_cells(client, batch_id, n3="neutrophil")
    html = page(client, f"/batch/{batch_id}")
    assert 'id="set-aside-summary"' not in html and 'id="differential-preliminary"' not in html
    assert "No image called not a blood-cell image is waiting for review" in text(
        page(client, f"/batch/{batch_id}/review?show=not-a-cell"))
    assert sign_off(client, batch_id).status_code == 303
    assert stored(client, batch_id)["signoff"]["white_cells"] == 4  # the neutrophil counted
    rows = list(csv.DictReader(csv_of(client.get(
        f"/batch/{batch_id}/differential.csv").get_data(as_text=True))))
    assert {r["not_a_cell_unreviewed"] for r in rows} == {"0"}


def test_new_reference_intervals_show_a_signed_count_as_changed(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    sign_off(client, batch_id)
    intervals = client.application.config["REFERENCE_INTERVALS"]
    client.application.config["REFERENCE_INTERVALS"] = {**intervals, "neutrophil": (0.0, 10.0)}
    assert signed_csv(client, batch_id) == [("", "")]  # its flags are not those signed


def test_a_name_written_right_to_left_keeps_its_place_in_the_sentence(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    name = "אבי כהן"
    sign_off(client, batch_id, name)
    for html in (page(client, f"/batch/{batch_id}"), page(client, f"/batch/{batch_id}/report")):
        # Set apart by markup in the page, by Unicode isolates in a message or an attribute.
        assert name in html and name not in html.replace(f"<bdi>{name}</bdi>", "").replace(
            f"\u2068{name}\u2069", "")


def test_a_comment_goes_with_the_sign_off_onto_the_report_and_the_csv(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    assert sign_off(client, batch_id, comment=" Platelet clumps seen ").status_code == 303
    assert stored(client, batch_id)["signoff"]["comment"] == "Platelet clumps seen"
    assert "Comment: Platelet clumps seen" in text(page(client, f"/batch/{batch_id}"))
    assert "Comment: Platelet clumps seen" in text(page(client, f"/batch/{batch_id}/report"))
    rows = list(csv.DictReader(csv_of(
        client.get(f"/batch/{batch_id}/differential.csv").get_data(as_text=True))))
    assert {r["comment"] for r in rows} == {"Platelet clumps seen"}
    # A comment that is not one line of plain text: the form back, the name kept.
    response = sign_off(client, batch_id, "A. Jones", comment="line one\nline two",
                        count=stored(client, batch_id)["signoff"]["fingerprint"])
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "A comment is one line of at most 300 letters" in text(html)
    assert 'id="signoff-comment-error"' in html and 'value="A. Jones"' in html
    assert stored(client, batch_id)["signoff"]["by"] == "J. Smith"


def test_the_sign_off_shows_where_the_count_is_read_and_changed(client, batch_id):
    review_cells(client, batch_id, n2="neutrophil")
    sign_off(client, batch_id, comment="Platelet clumps seen")
    # The cell page says a review would change a signed count, before a key saves one.
    assert ("This batch's count is signed off by J. Smith: a review changes it" in
            prose(page(client, f"/batch/{batch_id}/0")))
    # The upload page's list of this browser's batches says which are signed.
    home = page(client, "/")
    assert re.search(r'signed-badge">signed off</span>', home)
    review_cells(client, batch_id, n0="lymphocyte")
    assert re.search(r'signed-badge">changed since signed off</span>', page(client, "/"))
    # Signing again starts from the comment given before; the name is the new signer's to type.
    html = page(client, f"/batch/{batch_id}")
    assert re.search(r'id="signed-by" name="signed_by"\s+value=""', html)
    assert re.search(r'name="comment"\s+value="Platelet clumps seen"', html)
    assert "the form below holds the comment given then" in text(html)
