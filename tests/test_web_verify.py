"""Verifying a batch's count class by class (GET/POST /batch/<id>/review?show=<class>): the
cells counted as each class on one page, the odd ones corrected and the rest confirmed."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest

from hematovision.web import uploads
from tests.web_helpers import batch_as_said, csrf_token, page, review_cells, text

# What the model said of each image of the batch (label, status, confidence).
MODEL_SAID = [
    ("neutrophil", "accepted", 0.97),
    ("neutrophil", "accepted", 0.91),
    ("lymphocyte", "accepted", 0.99),
    ("neutrophil", "unidentified", 0.55),
    ("neutrophil", "accepted", 0.995),
    ("monocyte", "not_a_cell", 0.40),
]


def folder(client) -> Path:
    return Path(client.application.config["UPLOAD_FOLDER"])


@pytest.fixture
def batch_id(client) -> str:
    return batch_as_said(client, "tiny", MODEL_SAID)


def stored(client, batch_id: str) -> list[dict]:
    return uploads.load_batch(folder(client), batch_id)["results"]


def verdicts(client, batch_id: str) -> list[str | None]:
    return [(r.get("review") or {}).get("label") for r in stored(client, batch_id)]


def listed(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<fieldset[^>]* data-index="(\d+)"', html)]


def post(client, batch_id: str, show: str, confirm: str | None = None,
         shown: str | None = None, **chosen):
    data = {"csrf_token": csrf_token(client),
            **{f"verdict-{k.removeprefix('n')}": v for k, v in chosen.items()}}
    if confirm is not None:
        data["confirm"] = confirm
    if shown is not None:  # the cells the page showed, none reviewed when it was drawn
        data["seen"] = ",".join(f"{index}=" for index in shown.split(","))
    return client.post(f"/batch/{batch_id}/review?show={show}", data=data)


def test_a_class_list_holds_the_cells_counted_as_that_class_those_to_confirm_first(
        client, batch_id):
    # The least sure accepted neutrophil first, then the others; not the unidentified one
    # (not counted) nor the lymphocyte.
    html = page(client, f"/batch/{batch_id}/review?show=neutrophil")
    assert listed(html) == [1, 0, 4]
    assert "3 cells counted as Neutrophil: 3 to confirm" in text(html)
    assert 'name="seen" value="1=,0=,4="' in html
    assert 'name="confirm" value="neutrophil"' in html

    # Once one is reviewed as a neutrophil it goes after those still to confirm; the
    # unidentified cell given this class on review joins the list.
    review_cells(client, batch_id, n1="neutrophil", n3="neutrophil")
    html = page(client, f"/batch/{batch_id}/review?show=neutrophil")
    assert listed(html) == [0, 4, 3, 1]
    assert "4 cells counted as Neutrophil: 2 to confirm" in text(html)
    assert re.search(r'data-index="3"\s+data-status="unidentified" data-verdict="neutrophil"', html)


def test_the_lists_are_named_with_their_counts_and_cells_to_confirm(client, batch_id):
    html = page(client, f"/batch/{batch_id}/review?show=lymphocyte")
    tabs = re.search(r'id="review-lists".*?</nav>', html, re.S).group(0)
    assert [(show, text(name).strip()) for show, name in re.findall(
        r'data-show="([\w-]*)"[^>]*>(.*?)</a>', tabs, re.S)] == [
        ("", "To review 1"), ("not-a-cell", "Not a cell 1"), ("eosinophil", "Eosinophil 0"),
        ("lymphocyte", "Lymphocyte 1 (1 to confirm)"), ("monocyte", "Monocyte 0"),
        ("neutrophil", "Neutrophil 3 (3 to confirm)"),
        ("all", "Every cell 6")]  # no "Excluded" while none is
    assert re.findall(r'data-show="(\w*)"\s+href="[^"]+" aria-current="page"', tabs) == [
        "lymphocyte"]
    assert "<title>Cells counted as Lymphocyte" in html

    review_cells(client, batch_id, n2="excluded")
    html = page(client, f"/batch/{batch_id}/review?show=excluded")
    assert listed(html) == [2]
    assert "1 cell you excluded from the count" in text(html)
    assert 'name="confirm"' not in html  # an exclusion is not confirmed in bulk
    assert "Excluded 1" in text(re.search(r'id="review-lists".*?</nav>', html, re.S).group(0))


def test_confirming_saves_the_corrections_and_confirms_the_rest_shown(client, batch_id):
    response = post(client, batch_id, "neutrophil", confirm="neutrophil", shown="1,0",
                    n1="monocyte")
    assert response.status_code == 303
    # Cell 4, not shown (as on a later page), is left to confirm; so the list again.
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/review?show=neutrophil")
    assert verdicts(client, batch_id) == [
        "neutrophil", "monocyte", None, None, None, None]
    html = page(client, response.headers["Location"])
    assert ("Saved your review of 1 cell. Confirmed 1 cell as Neutrophil, as the model "
            "classed it.") in text(html)
    assert listed(html) == [4, 0]

    # The last neutrophil confirmed: on to the next class with cells to confirm.
    response = post(client, batch_id, "neutrophil", confirm="neutrophil", shown="4,0")
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/review?show=lymphocyte")
    assert verdicts(client, batch_id)[4] == "neutrophil"
    response = post(client, batch_id, "lymphocyte", confirm="lymphocyte", shown="2")
    assert response.headers["Location"].endswith(f"/batch/{batch_id}")  # nothing left


def test_a_cell_reviewed_meanwhile_keeps_its_review(client, batch_id):
    # Another tab gave cell 0 another class after this page was drawn.
    review_cells(client, batch_id, n0="eosinophil")
    response = post(client, batch_id, "neutrophil", confirm="neutrophil", shown="1,0,4")
    assert response.status_code == 303
    assert verdicts(client, batch_id)[:5] == ["eosinophil", "neutrophil", None, None,
                                              "neutrophil"]
    # Nothing left to confirm: said, not passed over.
    response = post(client, batch_id, "neutrophil", confirm="neutrophil", shown="1,4")
    assert "No cell was left to confirm" in text(page(client, response.headers["Location"]))


@pytest.mark.parametrize("show, confirm, shown, message", [
    ("all", "neutrophil", "0", "Cells are confirmed from the list of their class"),
    ("neutrophil", "lymphocyte", "0", "Cells are confirmed from the list of their class"),
    ("excluded", "excluded", "0", "Cells are confirmed from the list of their class"),
    ("neutrophil", "neutrophil", "0,9", "no classified image 9"),
    ("neutrophil", "neutrophil", "0,x", "no classified image x"),
    ("neutrophil", "neutrophil", "", "no classified image"),
])
def test_a_bad_confirmation_saves_nothing(client, batch_id, show, confirm, shown, message):
    before = (folder(client) / f"{batch_id}.json").read_bytes()
    response = post(client, batch_id, show, confirm=confirm, shown=shown, n1="monocyte")
    assert response.status_code == 400
    assert message in text(response.get_data(as_text=True))
    assert (folder(client) / f"{batch_id}.json").read_bytes() == before


def test_the_batch_page_leads_to_each_class_list(client, batch_id):
    html = page(client, f"/batch/{batch_id}")
    assert (f'<a class="class-list-link" href="/batch/{batch_id}/review?show=neutrophil"'
            in html)
    assert "4 accepted cells not confirmed: verify the count class by class" in text(html)
    assert (f'href="/batch/{batch_id}/review?show=lymphocyte" id="verify-by-class-link"'
            in html)  # the first class with cells to confirm
    post(client, batch_id, "neutrophil", confirm="neutrophil", shown="1,0,4")
    post(client, batch_id, "lymphocyte", confirm="lymphocyte", shown="2")
    assert 'id="verify-by-class-link"' not in page(client, f"/batch/{batch_id}")


def test_saving_without_confirming_keeps_the_list_and_its_page(client, batch_id, monkeypatch):
    from hematovision.web import review_pages

    monkeypatch.setattr(review_pages, "REVIEW_PAGE_CELLS", 2)
    response = post(client, batch_id, "neutrophil&start=2", n4="monocyte")
    assert response.headers["Location"].endswith(
        f"/batch/{batch_id}/review?show=neutrophil&start=2")
    # Confirming goes back to the first page, where the cells still to confirm now are.
    response = post(client, batch_id, "neutrophil&start=2", confirm="neutrophil", shown="1")
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/review?show=neutrophil")
    # More cells than one page shows are not confirmed in one go.
    response = post(client, batch_id, "neutrophil", confirm="neutrophil", shown="0,1,4")
    assert response.status_code == 400
    assert "A review page shows at most 2 cells" in text(response.get_data(as_text=True))


def test_the_excluded_list_stays_while_it_holds_cells(client, batch_id):
    review_cells(client, batch_id, n0="excluded", n1="excluded")
    response = post(client, batch_id, "excluded", n0="neutrophil")
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/review?show=excluded")
    response = post(client, batch_id, "excluded", n1="neutrophil")
    # Empty now: on to the first class with cells to confirm.
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/review?show=lymphocyte")


def test_a_verdict_given_meanwhile_elsewhere_is_kept_and_named(client, batch_id):
    # This page showed cells 0 and 1 unreviewed; meanwhile another tab gave cell 0 a class.
    seen = "0=,1="
    review_cells(client, batch_id, n0="eosinophil")
    response = client.post(f"/batch/{batch_id}/review?show=all", data={
        "csrf_token": csrf_token(client), "seen": seen, "verdict-0": "monocyte",
        "verdict-1": "monocyte"})
    assert response.status_code == 303
    assert verdicts(client, batch_id)[:2] == ["eosinophil", "monocyte"]
    shown = text(page(client, response.headers["Location"]))
    assert "Saved your review of 1 cell." in shown
    assert ("Not saved, as changed meanwhile (in another tab, or by a colleague): 0.png (now "
            "reviewed as Eosinophil).") in shown


def test_a_cell_opened_from_a_list_is_saved_back_to_it_never_over_a_verdict_unseen(
        client, batch_id):
    assert (f'href="/batch/{batch_id}/1?show=neutrophil"'
            in page(client, f"/batch/{batch_id}/review?show=neutrophil"))
    cell = page(client, f"/batch/{batch_id}/1?show=neutrophil")
    assert f'href="/batch/{batch_id}/review?show=neutrophil" id="back-to-list"' in cell
    assert f'action="/batch/{batch_id}/1/review?show=neutrophil"' in cell
    assert "Save, then back to the list" in cell and 'name="seen" value=""' in cell

    def save(verdict: str, seen: str):
        return client.post(f"/batch/{batch_id}/1/review?show=neutrophil", data={
            "csrf_token": csrf_token(client), "verdict": verdict, "seen": seen})

    response = save("monocyte", "")
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/review?show=neutrophil")
    # A second tab, drawn before that review, sends its own.
    response = save("eosinophil", "")
    assert response.status_code == 409
    assert ("1.png was changed meanwhile (in another tab, or by a colleague): it is now "
            "reviewed as Monocyte. Nothing was saved") in text(response.get_data(as_text=True))
    assert 'class="alert alert-warning" role="status" id="notices"' in response.get_data(
        as_text=True)
    assert verdicts(client, batch_id)[1] == "monocyte"
    assert save("eosinophil", "monocyte").status_code == 303  # drawn after it: saved
    assert verdicts(client, batch_id)[1] == "eosinophil"


def test_a_cell_opened_from_a_page_of_a_list_goes_back_to_that_page(client, batch_id,
                                                                    monkeypatch):
    from hematovision.web import review_pages

    monkeypatch.setattr(review_pages, "REVIEW_PAGE_CELLS", 2)
    html = page(client, f"/batch/{batch_id}/review?show=all&start=2")  # cells 1 and 0
    assert f'href="/batch/{batch_id}/1?show=all&amp;start=2"' in html
    cell = page(client, f"/batch/{batch_id}/1?show=all&start=2")
    assert f'action="/batch/{batch_id}/1/review?show=all&amp;start=2"' in cell
    response = client.post(f"/batch/{batch_id}/1/review?show=all&start=2", data={
        "csrf_token": csrf_token(client), "verdict": "monocyte", "seen": ""})
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/review?show=all&start=2")
    # Clearing it keeps the way back to the list.
    cell = page(client, f"/batch/{batch_id}/1?show=all&start=2")
    clear = re.search(r'<form[^>]*id="review-clear-form"', cell).group(0)
    assert "show=all&amp;start=2" in clear
    response = client.post(f"/batch/{batch_id}/1/review?show=all&start=2", data={
        "csrf_token": csrf_token(client), "verdict": "", "seen": "monocyte"})
    assert response.headers["Location"].endswith(f"/batch/{batch_id}/1?show=all&start=2")


def test_a_cell_whose_review_was_cleared_meanwhile_is_said_not_reviewed(client, batch_id):
    review_cells(client, batch_id, n0="eosinophil")
    client.post(f"/batch/{batch_id}/0/review", data={"csrf_token": csrf_token(client),
                                                      "verdict": ""})  # another tab clears it
    response = client.post(f"/batch/{batch_id}/review?show=all", data={
        "csrf_token": csrf_token(client), "seen": "0=eosinophil", "verdict-0": "monocyte"})
    assert ("Not saved, as changed meanwhile (in another tab, or by a colleague): 0.png (now "
            "not reviewed).") in text(page(client, response.headers["Location"]))


def test_a_cell_of_a_type_the_model_does_not_name_counts_as_another_white_cell(client,
                                                                                batch_id):
    """A blast among the neutrophils: given "other white cell", it stays in the count (as a
    manual differential counts it), on its own row and list, and out of the training archive."""
    review_cells(client, batch_id, n1="other-white-cell", n3="lymphocyte")
    html = page(client, f"/batch/{batch_id}")
    rows = dict(re.findall(r'<tr data-class="([\w-]+)">\s*<th[^>]*>.*?</th>\s*'
                           r'<td class="text-end">(\d+)</td>', html, re.S))
    assert rows["other-white-cell"] == "1" and rows["neutrophil"] == "2"
    assert "Share of the 5 white cells counted" in text(html)
    tabs = page(client, f"/batch/{batch_id}/review?show=other-white-cell")
    assert listed(tabs) == [1]
    assert "Other white cell 1" in text(re.search(r'id="review-lists".*?</nav>', tabs,
                                                  re.S).group(0))
    assert 'name="confirm"' not in tabs  # the reviewer's own class: nothing to confirm
    table = client.get(f"/batch/{batch_id}/differential.csv").get_data(as_text=True)
    assert "\nother-white-cell,yes,1,20.0," in table
    report = page(client, f"/batch/{batch_id}/report")
    assert "Other white cell" in text(re.search(r'id="report-differential".*?</table>', report,
                                                re.S).group(0))
    # The archive to train on holds the lymphocyte only.
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/batch/{batch_id}/reviewed.zip").data))
    assert [n.split("/")[0] for n in archive.namelist() if n.endswith(".jpg")] == ["lymphocyte"]
    # A manual count's cells of types the model does not name are compared with them.
    client.post(f"/batch/{batch_id}/manual", data={
        "csrf_token": csrf_token(client), "manual_neutrophil": "2", "manual_lymphocyte": "2",
        "manual_other": "1"})
    manual = re.search(r'id="manual-comparison".*?</table>', page(client, f"/batch/{batch_id}"),
                       re.S).group(0)
    assert 'data-class="other-white-cell"' in manual
