"""The batch's report to print (GET /batch/<id>/report): the sample, the differential with its
ranges and flags, what was left out, the manual count, and whether the count is signed off,
preliminary, or changed since it was signed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hematovision.web import uploads
from tests.web_helpers import (batch_as_said, csrf_token, image_bytes, page, prose, review_cells,
                               save_sample, sign_off, text, upload)

MODEL_SAID = [
    ("neutrophil", "accepted", 0.97),
    ("neutrophil", "accepted", 0.96),
    ("lymphocyte", "accepted", 0.99),
    ("eosinophil", "unidentified", 0.55),
    ("monocyte", "not_a_cell", 0.40),
]


@pytest.fixture
def batch_id(client) -> str:
    """The model's answers of MODEL_SAID; its not-a-cell image is one in which the white-cell
    finder found no white cell either, so it is left out without review (set_aside_unseen)."""
    batch_id = batch_as_said(client, "tiny", MODEL_SAID)
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda batch: batch["results"][-1].update(white_cells=0))
    return batch_id


def report(client, batch_id: str) -> str:
    return page(client, f"/batch/{batch_id}/report")


def status(html: str) -> tuple[str, str]:
    found = re.search(r'<p[^>]*id="report-status" data-status="(\w+)">(.*?)</p>', html, re.S)
    return found.group(1), prose(found.group(2)).strip()


def rows(html: str, table: str) -> list[list[str]]:
    body = re.search(rf'id="{table}".*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    return [[text(cell).strip() for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def test_the_report_holds_the_sample_the_differential_and_what_was_left_out(client, batch_id):
    save_sample(client, batch_id, "H-2026-01234", "6.5")
    html = report(client, batch_id)
    assert "<title>Report · Sample H-2026-01234" in html
    assert "White-cell differential: sample H-2026-01234" in text(html)
    facts = text(" ".join(re.findall(r'<p class="report-facts.*?</p>', html, re.S)))
    assert "Sample H-2026-01234 · White-cell count 6.5 × 10⁹/L · Uploaded" in facts
    assert ("Images 5 classified: 3 accepted, 1 unidentified, 1 not a blood-cell image · "
            "Reviewed 0 of the 3 counted white cells; 1 unidentified still to review") in facts
    # Count, %, 95 % range, reference (no flag while a cell awaits review), then per litre.
    assert rows(html, "report-differential")[3] == [
        "Neutrophil", "2", "66.7", "9.4–99.2", "40–70", "4.33", "0.61–6.45", "2–7.5"]
    assert ("Not counted: 1 unidentified awaiting review, 1 not a blood-cell image like the "
            "training images, 0 excluded on review.") in text(html)
    assert "no share is flagged until the unidentified cell is reviewed" in text(html)
    assert "Only 3 white cells were counted (a manual differential counts 100)" in text(html)
    assert 'id="report-manual"' not in html  # no manual count given
    assert 'id="print-button" hidden' in html  # shown by app.js, which printing needs
    # The batch goes at the end of its retention time: the report says so, on screen only.
    assert re.search(r'class="small text-warning-emphasis d-print-none mt-2 mb-0" id="report-kept">'
                     r'This batch is deleted from the server at\s+<time', html)
    # The batch page leads here, without script.
    assert (f'href="/batch/{batch_id}/report" id="report-link"'
            in page(client, f"/batch/{batch_id}"))


def test_the_report_says_whether_the_count_is_preliminary_signed_or_changed(client, batch_id):
    assert status(report(client, batch_id)) == (
        "preliminary", "Preliminary: 1 unidentified cell is not reviewed yet; until it is, "
        "the shares lean towards the classes the model is sure of and none is flagged.")
    review_cells(client, batch_id, n3="eosinophil")
    html = report(client, batch_id)
    assert status(html) == ("unsigned", "Not signed off.")
    # Unsigned, the sheet leaves a line to sign by hand.
    assert 'class="signature-line"' in html and "Checked by" in text(html)

    sign_off(client, batch_id)
    html = report(client, batch_id)
    kind, said = status(html)
    assert kind == "signed" and re.fullmatch(
        r"Signed off by J\. Smith, \d\d \w{3} \d{4}, \d\d:\d\d UTC\.", said)
    assert ("Checked and signed off in HematoVision by J. Smith" in text(html)
            and "1 of 4 counted white cells confirmed or given their class on review, the "
                "rest as the model accepted them." in text(html))
    assert 'class="signature-line"' not in html

    review_cells(client, batch_id, n0="lymphocyte")
    kind, said = status(report(client, batch_id))
    assert kind == "changed" and re.fullmatch(
        r"Changed after J\. Smith signed it off \( ?\d\d \w{3} \d{4}, \d\d:\d\d UTC, 4 white "
        r"cells counted then\): not signed as it stands\.", said)
    # Preliminary again (a review cleared): a copy printed before was signed, this one says it
    # is not, as well as why it is preliminary.
    client.post(f"/batch/{batch_id}/3/review", data={"csrf_token": csrf_token(client),
                                                      "verdict": ""})
    html = report(client, batch_id)
    assert status(html)[0] == "preliminary"
    assert re.search(r"Changed after J\. Smith signed it off \(.*?, 4 white cells counted "
                     r"then\): not signed as it stands\.", text(re.search(
                         r'id="report-changed">.*?</p>', html, re.S).group(0)))


def test_the_report_compares_with_a_manual_count(client, batch_id):
    client.post(f"/batch/{batch_id}/manual", data={
        "csrf_token": csrf_token(client), "manual_neutrophil": "60", "manual_lymphocyte": "30",
        "manual_monocyte": "6", "manual_eosinophil": "1", "manual_other": "3"})
    html = report(client, batch_id)
    # Cells the model has no class for (blasts) are not lost from the sheet.
    assert ("Against a manual count of 100 white cells, 3 (3.0 %) of classes tiny does not "
            "name, such as blasts") in text(html)
    assert rows(html, "report-manual")[3] == ["Neutrophil", "66.7 (2)", "60.0 (60)", "+6.7", ""]


def test_a_batch_of_one_image_has_no_report(client):
    single = upload(client, "tiny", ("one.png", image_bytes(fmt="PNG"))).rsplit("/", 1)[1]
    response = client.get(f"/batch/{single}/report")
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/batch/{single}/0")
    assert client.get("/batch/" + "0" * 32 + "/report").status_code == 404


def test_the_report_names_unreadable_files_and_unreviewed_images_with_no_white_cell(client,
                                                                                   batch_id):
    def damaged(batch: dict) -> None:
        batch["results"][1].update(white_cells=0)  # counted, no white cell found
        batch["results"].append({"file": "broken.png", "error": "not an image"})

    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id, damaged)
    html = report(client, batch_id)
    assert "not a blood-cell image; 1 could not be read ·" in text(html)
    assert ("1 image in which no white cell was found is counted, not reviewed: its answer is "
            "about whatever lay at the centre of the crop.") in text(html)


def test_without_absolute_intervals_the_report_has_no_such_column(client, batch_id):
    client.application.config["ABSOLUTE_REFERENCE_INTERVALS"] = {}
    save_sample(client, batch_id, "H-1", "6.5")
    html = report(client, batch_id)
    head = re.search(r'id="report-differential".*?</thead>', html, re.S).group(0)
    assert "× 10⁹/L" in head and "Ref. × 10⁹/L" not in head
    assert len(rows(html, "report-differential")[3]) == 7


def test_the_lab_named_in_the_settings_heads_the_report(client, batch_id):
    assert 'id="report-lab"' not in report(client, batch_id)
    client.application.config["LAB_NAME"] = "Central Hematology Laboratory"
    html = report(client, batch_id)
    assert '<p class="fw-semibold mb-0" id="report-lab">Central Hematology Laboratory</p>' in html


def test_the_batch_page_printed_head_says_changed_after_sign_off_while_preliminary(client,
                                                                                    batch_id):
    """The report said so (a review cleared after the sign-off); the batch page's printed
    head gave only the preliminary line, a copy printed before having been signed."""
    review_cells(client, batch_id, n3="eosinophil")
    assert sign_off(client, batch_id).status_code == 303
    client.post(f"/batch/{batch_id}/3/review", data={"csrf_token": csrf_token(client),
                                                      "verdict": ""})
    printed = text(re.search(r'id="print-note">(.*?)</p>', page(client, f"/batch/{batch_id}"),
                             re.S).group(1))
    assert "Preliminary: 1 unidentified cell is not reviewed yet" in printed
    assert re.search(r"Changed after J\. Smith signed it off \(4 white cells counted then\): not "
                     r"signed as it stands\.", printed)


def test_the_batch_page_printed_head_counts_reviewed_white_cells_as_the_report_does(client,
                                                                                    batch_id):
    """Two images excluded on review had read '2 cells reviewed' beside a report saying
    'Reviewed 0 of the 3 counted white cells'."""
    review_cells(client, batch_id, n3="excluded", n4="excluded")
    printed = text(re.search(r'id="print-note">(.*?)</p>', page(client, f"/batch/{batch_id}"),
                             re.S).group(1))
    facts = text(re.search(r'id="report-facts".*?</p>\s*<p[^>]*>(.*?)</p>',
                           page(client, f"/batch/{batch_id}/report"), re.S).group(1))
    assert "Reviewed 0 of the 3 counted white cells" in facts
    assert "; 0 of the 3 counted white cells reviewed, and 2 other images or cells (excluded, " \
           "or not a white cell)." in printed
    review_cells(client, batch_id, n0="neutrophil")
    printed = text(re.search(r'id="print-note">(.*?)</p>', page(client, f"/batch/{batch_id}"),
                             re.S).group(1))
    assert "; 1 of the 3 counted white cells reviewed, and 2 other" in printed
