"""A batch's history (/batch/<id>/history and its CSV) and the name a browser's changes are
recorded under (POST /reviewer): every change a page makes to a batch, who made it and when."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from hematovision.web import history, uploads
from tests.web_helpers import (batch_as_said, csrf_token, csv_of, give_the_sample_an_id,
                               image_bytes, page, prose, review_cells, save_sample, shown_count,
                               sign_off, stored_json, text, upload)

MODEL_SAID = [
    ("neutrophil", "accepted", 0.97),
    ("lymphocyte", "accepted", 0.99),
    ("neutrophil", "accepted", 0.95),
    ("monocyte", "unidentified", 0.55),
]


@pytest.fixture
def batch_id(client) -> str:
    return batch_as_said(client, "tiny", MODEL_SAID)


def call_me(client, name: str, back: str = "/"):
    return client.post("/reviewer", data={"csrf_token": csrf_token(client), "reviewer": name,
                                          "next": back})


def events(client, batch_id: str) -> list[dict]:
    response = client.get(f"/batch/{batch_id}/history.csv")
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    return list(csv.DictReader(csv_of(response.get_data(as_text=True))))


def test_a_name_given_once_records_the_browser_s_reviews_under_it(client, batch_id):
    response = call_me(client, "A. Okafor", back=f"/batch/{batch_id}/3?show=all")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/batch/{batch_id}/3?show=all"
    html = page(client, f"/batch/{batch_id}/3")
    assert ("Your reviews and changes are now recorded as \u2068A. Okafor\u2069 in each batch's "
            "history") in text(html)
    assert re.search(r'id="reviewer" name="reviewer" value="A. Okafor" maxlength="60"', html)

    client.post(f"/batch/{batch_id}/3/review", data={"csrf_token": csrf_token(client),
                                                      "verdict": "monocyte", "seen": ""})
    assert stored_json(client, batch_id)["results"][3]["review"]["by"] == "A. Okafor"
    assert "by A. Okafor" in prose(page(client, f"/batch/{batch_id}/3"))
    row = next(r for r in csv.DictReader(csv_of(
        client.get(f"/batch/{batch_id}.csv").get_data(as_text=True))) if r["file"] == "3.png")
    assert row["reviewed_by"] == "A. Okafor" and row["reviewed_at"].endswith("+00:00")
    upload, review = events(client, batch_id)
    assert (upload["by"], upload["kind"], upload["change"]) == (
        "", "uploaded", "4 images: 0.png, 1.png, 2.png, 3.png")
    assert (review["by"], review["kind"], review["change"]) == (
        "A. Okafor", "reviewed",
        "3.png: Monocyte (was unidentified by the model, first choice Monocyte)")

    # The report names who reviewed the counted cells; a sign-off is typed by its signer, never
    # filled in with the browser's name (a shared workstation may hold a colleague's).
    assert re.search(r'name="signed_by"\s+value=""', page(client, f"/batch/{batch_id}"))
    assert "Reviewed 1 of the 4 counted white cells, by A. Okafor" in prose(
        page(client, f"/batch/{batch_id}/report"))

    # An empty name: later changes go unnamed.
    call_me(client, "")
    review_cells(client, batch_id, n0="lymphocyte")
    assert events(client, batch_id)[-1]["by"] == ""
    assert 'id="reviewer" name="reviewer" value=""' in page(client, f"/batch/{batch_id}")


def test_every_change_a_page_makes_is_recorded_in_order(client, batch_id):
    call_me(client, "JS")
    review_cells(client, batch_id, n3="eosinophil")
    client.post(f"/batch/{batch_id}/review?show=neutrophil", data={
        "csrf_token": csrf_token(client), "confirm": "neutrophil", "seen": "0=,2="})
    client.post(f"/batch/{batch_id}/3/review", data={"csrf_token": csrf_token(client),
                                                      "verdict": "", "seen": "eosinophil"})
    client.post(f"/batch/{batch_id}/add", data={
        "csrf_token": csrf_token(client),
        "file": [(io.BytesIO(image_bytes((10, 200, 90), fmt="PNG")), "late.png"),
                 (io.BytesIO(b"not an image"), "notes.txt.png")]})
    client.post(f"/batch/{batch_id}/1/remove", data={"csrf_token": csrf_token(client),
                                                     "reason": "wrong film"})
    save_sample(client, batch_id, sample_id="S-16")
    save_sample(client, batch_id, sample_id="S-17", wbc="6.2")
    for neutrophils in ("60", "61"):
        client.post(f"/batch/{batch_id}/manual", data={"csrf_token": csrf_token(client),
                                                       "manual_neutrophil": neutrophils,
                                                       "manual_lymphocyte": "40"})
    review_cells(client, batch_id, n3="monocyte", n4="excluded")  # late.png: not a cell
    assert sign_off(client, batch_id, name="Dr Rivera", comment="smear fine").status_code == 303
    client.post(f"/batch/{batch_id}/signoff", data={"csrf_token": csrf_token(client),
                                                     "withdraw": "1"})
    rows = events(client, batch_id)
    assert [(r["by"], r["kind"], r["change"]) for r in rows] == [
        ("", "uploaded", "4 images: 0.png, 1.png, 2.png, 3.png"),
        ("JS", "reviewed", ("3.png: Eosinophil (was unidentified by the model, first choice "
                            "Monocyte)")),
        ("JS", "reviewed", "0.png: Neutrophil, confirmed with the rest of its class list (was "
                           "accepted as Neutrophil by the model)"),
        ("JS", "reviewed", "2.png: Neutrophil, confirmed with the rest of its class list (was "
                           "accepted as Neutrophil by the model)"),
        ("JS", "reviewed", "3.png: review cleared (was reviewed as Eosinophil)"),
        ("JS", "added", "1 image: late.png; could not be read: notes.txt.png"),
        ("JS", "removed", "1.png: wrong film; 1.png was counted as Lymphocyte as the model "
                          "accepted it"),
        ("JS", "sample", "ID S-16; no white-cell count"),
        ("JS", "sample", "ID S-17; white-cell count 6.2 × 10⁹/L "
                         "(was ID S-16; no white-cell count)"),
        ("JS", "manual", "100 white cells: Eosinophil 0, Lymphocyte 40, Monocyte 0, "
                         "Neutrophil 60, other 0"),
        ("JS", "manual", "101 white cells: Eosinophil 0, Lymphocyte 40, Monocyte 0, "
                         "Neutrophil 61, other 0 (was 100 white cells: Eosinophil 0, "
                         "Lymphocyte 40, Monocyte 0, Neutrophil 60, other 0)"),
        ("JS", "reviewed", ("3.png: Monocyte (was unidentified by the model, first choice "
                            "Monocyte)")),
        ("JS", "reviewed", "late.png: excluded from the counts (was called not a blood-cell "
                           "image by the model)"),
        ("Dr Rivera", "signed", "3 white cells counted, 3 of them reviewed. Comment: \u201csmear "
                                "fine\u201d. From a browser recording changes as JS."),
        ("JS", "withdrawn", "signed off by Dr Rivera"),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", r["at"]) for r in rows)
    times = [r["at"] for r in rows]
    assert times == sorted(times)

    html = page(client, f"/batch/{batch_id}/history")
    assert "15 changes, oldest first" in text(html)
    assert len(re.findall(r"<tr data-kind=", html)) == 15
    assert re.search(r"\d\d Dec \d{4}, \d\d:\d\d:\d\d UTC</time>", html)  # to the second
    assert 'data-kind="removed"' in html and "Image removed" in text(html)
    assert f'href="/batch/{batch_id}/history"' in page(client, f"/batch/{batch_id}")


def test_the_oldest_changes_go_beyond_the_limit_and_the_page_says_so(client, batch_id,
                                                                     monkeypatch):
    monkeypatch.setattr(history, "MAX_EVENTS", 3)
    for verdict in ("monocyte", "eosinophil", "monocyte", "lymphocyte"):
        review_cells(client, batch_id, n3=verdict)
    # The upload stays, as sign-offs and withdrawals would: the oldest reviews go.
    assert [r["change"].split(" (")[0] for r in events(client, batch_id)] == [
        "4 images: 0.png, 1.png, 2.png, 3.png", "3.png: Monocyte", "3.png: Lymphocyte"]
    assert ("The 2 oldest changes were dropped: a batch keeps 3 changes, its upload, sign-offs "
            "and withdrawals among them, and the most recent of the rest.") in text(
        page(client, f"/batch/{batch_id}/history"))


def test_saving_what_is_stored_records_nothing_and_the_first_review_stands(client, batch_id):
    call_me(client, "AB")
    review_cells(client, batch_id, n3="monocyte")
    first = stored_json(client, batch_id)["results"][3]["review"]
    call_me(client, "CD")
    review_cells(client, batch_id, n3="monocyte")  # the same verdict again, by another
    assert "The cells chosen already had those classes: nothing changed." in text(
        page(client, f"/batch/{batch_id}/review?show=all"))
    response = client.post(f"/batch/{batch_id}/3/review", follow_redirects=True, data={
        "csrf_token": csrf_token(client), "verdict": "monocyte", "seen": "monocyte"})
    assert "3.png was already reviewed as Monocyte: nothing changed." in text(
        response.get_data(as_text=True))
    for _ in range(2):
        save_sample(client, batch_id, sample_id="S-1")
    save_sample(client, batch_id)  # cleared
    save_sample(client, batch_id)  # nothing left to clear
    client.post(f"/batch/{batch_id}/manual", data={"csrf_token": csrf_token(client)})
    assert stored_json(client, batch_id)["results"][3]["review"] == first
    assert [(r["by"], r["kind"]) for r in events(client, batch_id)] == [
        ("", "uploaded"), ("AB", "reviewed"), ("CD", "sample"), ("CD", "sample")]


def test_the_name_form_comes_back_to_the_page_even_after_a_refused_form(client, batch_id):
    html = sign_off(client, batch_id).get_data(as_text=True)  # refused: a cell waits (400)
    assert re.search(rf'name="next" value="/batch/{batch_id}"', html)
    review_cells(client, batch_id, n3="monocyte")
    response = client.post(f"/batch/{batch_id}/3/review", data={
        "csrf_token": csrf_token(client), "verdict": "eosinophil", "seen": ""})
    assert response.status_code == 409  # reviewed meanwhile
    assert re.search(rf'name="next" value="/batch/{batch_id}/3"', response.get_data(as_text=True))


def test_the_report_names_three_reviewers_then_how_many_more(client, batch_id):
    for name, index in (("AB", 0), ("CD", 1), ("EF", 2), ("GH", 3)):
        call_me(client, name)
        review_cells(client, batch_id, **{f"n{index}": "lymphocyte"})
    assert "Reviewed 4 of the 4 counted white cells, by AB, CD, EF and 1 more" in prose(
        page(client, f"/batch/{batch_id}/report"))


@pytest.mark.parametrize("damage", [
    pytest.param(lambda b: b.update(history="not a list"), id="history-not-a-list"),
    pytest.param(lambda b: b.update(history=[{"at": 1e20, "by": "", "kind": "x", "text": "x"},
                                             {"at": True, "by": "", "kind": "x", "text": "x"},
                                             "an event?"],
                                    history_dropped=True), id="events-of-the-wrong-kind"),
    pytest.param(lambda b: b["results"][0].update(review={"label": "neutrophil", "at": "noon",
                                                          "by": ["AB"]}), id="review-by-a-list"),
])
def test_a_damaged_history_or_review_shows_what_it_can(client, batch_id, damage):
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id, damage)
    for address in ("", "/history", "/history.csv", "/report", ".csv", "/0"):
        assert client.get(f"/batch/{batch_id}{address}").status_code == 200, address
    review_cells(client, batch_id, n3="monocyte")
    assert events(client, batch_id)[-1]["kind"] == "reviewed"
    assert "dropped" not in text(page(client, f"/batch/{batch_id}/history"))


def test_a_batch_stored_before_histories_says_it_has_none(client, batch_id):
    def forget(batch: dict) -> None:
        del batch["history"]

    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id, forget)
    assert "uploaded before the app kept histories" in text(
        page(client, f"/batch/{batch_id}/history"))
    assert events(client, batch_id) == []


@pytest.mark.parametrize("back", ["//evil.example/x", "/\\evil.example", "https://evil.example",
                                  "javascript:alert(1)", "/ok\r\nSet-Cookie: x=1", ""])
def test_the_name_form_goes_back_only_to_this_site(client, back):
    response = call_me(client, "JS", back=back)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"


@pytest.mark.parametrize("name", ["J\x00S", "x" * 61, "\u3164"])
def test_a_name_that_is_not_plain_text_is_refused_and_the_old_one_kept(client, batch_id, name):
    call_me(client, "JS")
    response = call_me(client, name)
    assert response.status_code == 400
    assert "Give your name or initials, with a letter or digit, in at most 60 letters" in text(
        response.get_data(as_text=True))
    assert '<a class="btn btn-primary" href="/" id="back">Back to the page</a>' in \
        response.get_data(as_text=True)
    review_cells(client, batch_id, n3="monocyte")
    assert events(client, batch_id)[-1]["by"] == "JS"


def test_names_and_changes_are_text_not_markup_nor_formulas(client, batch_id):
    call_me(client, "=HYPERLINK(1)<b>x</b>")
    review_cells(client, batch_id, n3="monocyte")
    html = page(client, f"/batch/{batch_id}/history")
    assert "<b>x" not in html and "=HYPERLINK(1)&lt;b&gt;x&lt;/b&gt;" in html
    assert events(client, batch_id)[-1]["by"] == "'=HYPERLINK(1)<b>x</b>"


def test_the_upload_page_takes_the_name_and_the_upload_is_recorded_under_it(client):
    assert 'id="reviewer-form"' in page(client, "/")
    call_me(client, "K. Tanaka")
    batch_id = upload(client, "tiny", ("a.png", image_bytes(fmt="PNG")),
                      ("b.png", image_bytes((9, 9, 9), fmt="PNG"))).rsplit("/", 1)[1]
    assert [(r["by"], r["change"]) for r in events(client, batch_id)] == [
        ("K. Tanaka", "2 images: a.png, b.png")]


def test_withdrawing_names_the_sign_off_withdrawn_and_a_damaged_one_is_just_removed(client,
                                                                                  batch_id):
    review_cells(client, batch_id, n3="monocyte")
    give_the_sample_an_id(client, batch_id)
    count = shown_count(client, batch_id)
    assert sign_off(client, batch_id, name="Dr Old").status_code == 303
    # Signed again in another tab, after this page showed Dr Old's sign-off.
    assert sign_off(client, batch_id, name="Dr New", count=count).status_code == 303
    response = client.post(f"/batch/{batch_id}/signoff", data={
        "csrf_token": csrf_token(client), "withdraw": "1"}, follow_redirects=True)
    assert "Withdrew the sign-off by \u2068Dr New\u2069." in text(response.get_data(as_text=True))
    assert events(client, batch_id)[-1]["change"] == "signed off by Dr New"
    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id,
                         lambda b: b.update(signoff="signed"))
    assert client.post(f"/batch/{batch_id}/signoff", data={
        "csrf_token": csrf_token(client), "withdraw": "1"}).status_code == 303
    assert "signoff" not in stored_json(client, batch_id)


def test_a_one_image_batch_s_page_leads_to_its_history(client):
    batch_id = upload(client, "tiny", ("a.png", image_bytes(fmt="PNG"))).rsplit("/", 1)[1]
    assert f'href="/batch/{batch_id}/history" id="history-link"' in page(
        client, f"/batch/{batch_id}")
