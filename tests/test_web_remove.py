"""Removing one image from a batch (POST /batch/<id>/<n>/remove): its results leave the counts,
its stored copy is deleted, its place keeps its name, when and why; a page opened before the
removal saves nothing onto it; the batch's last image and a bad request remove nothing."""

from __future__ import annotations

import csv
import io
import re
from html import unescape
from pathlib import Path

import pytest

from hematovision.web import uploads
from tests.web_helpers import (batch_as_said, csrf_token, csv_of, image_bytes, page, prose,
                               review_cells, shown_count, sign_off, stored_json, text, upload)

MODEL_SAID = [
    ("neutrophil", "accepted", 0.97),
    ("lymphocyte", "accepted", 0.99),
    ("neutrophil", "accepted", 0.95),
    ("monocyte", "unidentified", 0.55),
]


@pytest.fixture
def batch_id(client) -> str:
    return batch_as_said(client, "tiny", MODEL_SAID)


def folder(client) -> Path:
    return Path(client.application.config["UPLOAD_FOLDER"])


def remove(client, batch_id: str, index: int, reason: str = "", token: str | None = None):
    return client.post(f"/batch/{batch_id}/{index}/remove",
                       data={"csrf_token": token or csrf_token(client), "reason": reason})


def shares(html: str) -> dict[str, int]:
    table = html.split('id="differential"')[1].split("</table>")[0]
    return {name: int(count) for name, count in re.findall(
        r'<tr data-class="([\w-]+)">.*?<td class="text-end">(\d+)</td>', table, re.S)}


def test_a_removed_image_leaves_the_count_and_the_server_but_keeps_its_place(client, batch_id):
    before = stored_json(client, batch_id)["results"]
    image = uploads.image_path(folder(client), before[0]["image"])
    assert image is not None and shares(page(client, f"/batch/{batch_id}"))["neutrophil"] == 2

    response = remove(client, batch_id, 0, reason="another patient's film")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/batch/{batch_id}"
    assert not image.exists()
    after = stored_json(client, batch_id)["results"]
    assert after[0] == {"file": "0.png", "removed": {"at": pytest.approx(after[0]["removed"]["at"]),
                                                     "reason": "another patient's film",
                                                     "by": ""}}
    assert after[1:] == before[1:]  # the others keep their places, and so their addresses

    html = client.get(f"/batch/{batch_id}", follow_redirects=True).get_data(as_text=True)
    assert ("Removed 0.png from this batch (1 cell no longer counted); its stored copy is "
            "deleted. Add it again to count it.") in text(html)
    assert "Batch of 3 images" in text(html) and "3 classified, 1 removed" in text(html)
    assert shares(html)["neutrophil"] == 1
    row = re.search(r"<tr [^>]*data-removed>(.*?)</tr>", html, re.S).group(1)
    assert "0.png" in row and "Removed from the batch" in text(row)
    assert "another patient's film" in text(row) and "<a " not in row  # nothing left to open

    table = client.get(f"/batch/{batch_id}.csv").get_data(as_text=True)
    first = next(csv.DictReader(csv_of(table)))
    assert (first["file"], first["label"], first["error"]) == (
        "0.png", "", "removed from the batch: another patient's film")
    report = page(client, f"/batch/{batch_id}/report")
    assert "3 classified" in text(report) and "1 removed from the batch" in text(report)
    removed = re.search(r'id="report-removed">(.*?)</p>', report, re.S).group(1)
    assert re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", "", removed))).startswith(
        "Removed from the batch: 0.png (another patient's film) (the batch page")


def test_the_removed_image_s_page_says_so_and_offers_nothing_to_do(client, batch_id):
    call_me = client.post("/reviewer", data={"csrf_token": csrf_token(client), "next": "/",
                                              "reviewer": "M. Haddad"})
    assert call_me.status_code == 303
    remove(client, batch_id, 2, reason="too blurred")
    html = page(client, f"/batch/{batch_id}/2")
    assert "<title>2.png · removed ·" in html
    assert "by M. Haddad: too blurred." in prose(html)
    row = re.search(r"<tr [^>]*data-removed>(.*?)</tr>", page(client, f"/batch/{batch_id}"),
                    re.S).group(1)
    assert "by M. Haddad: too blurred" in prose(row)
    note = re.search(r'id="removed-note">(.*?)</div>', html, re.S).group(1)
    assert "Removed from this batch" in text(note) and "too blurred" in text(note)
    for absent in ('id="review-form"', 'id="remove-form"', "view.jpg"):
        assert absent not in html
    # Its neighbours' pages step over it, and count the results the batch holds.
    assert "<title>3.png · result 3 of 3 ·" in page(client, f"/batch/{batch_id}/3")
    assert f'rel="next" href="/batch/{batch_id}/3"' in page(client, f"/batch/{batch_id}/1")
    assert f'rel="prev" href="/batch/{batch_id}/1"' in page(client, f"/batch/{batch_id}/3")
    assert client.get(f"/batch/{batch_id}/2/view.jpg").status_code == 404


def test_the_page_offers_removal_with_a_question_and_a_reason(client, batch_id):
    html = page(client, f"/batch/{batch_id}/1")
    form = re.search(r'<form [^>]*id="remove-form"[^>]*>', html).group(0)
    assert f'action="/batch/{batch_id}/1/remove"' in form
    assert ('data-confirm="Remove \u20681.png\u2069 from this batch? 1 counted cell leaves the '
            'count, and its stored copy is deleted."') in form
    # An image the differential does not count (unidentified, not reviewed) says so.
    assert "It is not counted; its stored copy is deleted." in page(client, f"/batch/{batch_id}/3")
    remove(client, batch_id, 3)
    shown = text(page(client, f"/batch/{batch_id}"))
    assert ("Removed 3.png from this batch (nothing it held was counted); its stored copy is "
            "deleted.") in shown and "Add it again" not in shown
    assert 'name="reason"' in html


def test_removing_every_cell_of_a_field_takes_the_whole_field(client, batch_id):
    def as_field(batch: dict) -> None:  # results 0 and 1: two cells of one stored field
        first, second = batch["results"][:2]
        uploads.delete_image(folder(client), second["image"])
        second["image"], second["file"] = first["image"], first["file"]
        first["cell"] = {"number": 1, "of": 2, "box": [0, 0, 10, 10]}
        second["cell"] = {"number": 2, "of": 2, "box": [10, 10, 20, 20]}

    uploads.update_batch(folder(client), batch_id, as_field)
    assert "Batch of 3 images, 4 results" in text(page(client, f"/batch/{batch_id}"))
    remove(client, batch_id, 1)
    after = stored_json(client, batch_id)["results"]
    assert [("removed" in r, (r.get("cell") or {}).get("number")) for r in after] == [
        (True, 1), (True, 2), (False, None), (False, None)]
    html = page(client, f"/batch/{batch_id}")
    assert "Batch of 2 images" in text(html) and "results" not in text(html).split("·")[0]
    assert len(re.findall(r"data-removed>", html)) == 1  # the field once
    assert shares(html) == {"eosinophil": 0, "lymphocyte": 0, "monocyte": 0, "neutrophil": 1}


def test_a_removal_changes_a_signed_count(client, batch_id):
    review_cells(client, batch_id, n3="monocyte")
    assert sign_off(client, batch_id).status_code == 303
    assert 'id="remove-help"' in (html := page(client, f"/batch/{batch_id}/0"))
    assert "The count is signed off: removing the image changes it." in text(html)
    remove(client, batch_id, 0)
    assert 'data-status="changed"' in page(client, f"/batch/{batch_id}/report")
    assert "it has changed since: a review, added or removed images" in text(
        page(client, f"/batch/{batch_id}"))


def test_a_page_opened_before_the_removal_saves_no_review_onto_it(client, batch_id):
    count = shown_count(client, batch_id)
    remove(client, batch_id, 3)
    response = client.post(f"/batch/{batch_id}/3/review",
                           data={"csrf_token": csrf_token(client), "verdict": "monocyte",
                                 "seen": ""})
    assert response.status_code == 409
    assert ("3.png was removed from this batch meanwhile (in another tab, or by a colleague): "
            "nothing was saved.") in text(response.get_data(as_text=True))
    # The review list: the rest of the page saved, the removed cell named.
    response = client.post(f"/batch/{batch_id}/review?show=all", data={
        "csrf_token": csrf_token(client), "verdict-3": "monocyte", "verdict-1": "lymphocyte",
        "seen": "3=,1="}, follow_redirects=True)
    html = text(response.get_data(as_text=True))
    assert "Saved your review of 1 cell." in html
    assert "Not saved, as changed meanwhile" in html
    assert "3.png (now removed from the batch)" in html
    results = stored_json(client, batch_id)["results"]
    assert "review" not in results[3] and results[1]["review"]["label"] == "lymphocyte"
    # A sign-off from a page shown before the removal is refused: the count is not the same.
    assert sign_off(client, batch_id, count=count).status_code == 409


def test_a_removed_image_can_be_added_again_and_takes_no_room(client):
    files = [(f"{i}.png", image_bytes((40 * i, 60, 200), size=(64 + i, 48), fmt="PNG"))
             for i in range(3)]
    batch_id = upload(client, "tiny", *files).rsplit("/", 1)[1]
    remove(client, batch_id, 0)
    client.application.config["MAX_BATCH_IMAGES"] = 3
    response = client.post(f"/batch/{batch_id}/add", data={
        "csrf_token": csrf_token(client), "file": [(io.BytesIO(files[0][1]), "0.png")]})
    assert response.status_code == 303
    results = stored_json(client, batch_id)["results"]
    assert [(r["file"], "removed" in r) for r in results] == [
        ("0.png", True), ("1.png", False), ("2.png", False), ("0.png", False)]


def test_the_last_image_of_a_batch_is_not_removed(client):
    batch_id = upload(client, "tiny", *[(f"{i}.png", image_bytes((90 * i, 60, 60), fmt="PNG"))
                                         for i in range(2)]).rsplit("/", 1)[1]
    assert remove(client, batch_id, 1).status_code == 303
    assert 'id="remove-form"' not in page(client, f"/batch/{batch_id}/0")
    before = stored_json(client, batch_id)
    response = remove(client, batch_id, 0)
    assert response.status_code == 400
    assert "This is the batch's only classified image left: delete the batch instead" in text(
        response.get_data(as_text=True))
    assert stored_json(client, batch_id) == before


def test_a_batch_keeps_a_classified_image_and_an_unreadable_one_goes_as_such(client):
    batch_id = upload(client, "tiny", ("0.png", image_bytes(fmt="PNG")),
                      ("bad.png", b"not an image"), ("2.png", image_bytes((9, 9, 9), fmt="PNG"))
                      ).rsplit("/", 1)[1]
    remove(client, batch_id, 2)
    # The unreadable file is no image to count: the classified one stays.
    assert 'id="remove-form"' not in page(client, f"/batch/{batch_id}/0")
    assert remove(client, batch_id, 0).status_code == 400
    html = page(client, f"/batch/{batch_id}/1")
    assert "It could not be read and was never counted: only its line goes." in html
    assert "removing it only takes its line off the batch's list" in text(html)
    response = remove(client, batch_id, 1, reason="a text file")
    assert response.status_code == 303
    html = client.get(f"/batch/{batch_id}").get_data(as_text=True)
    assert "Removed bad.png, a file that could not be read, from this batch's list." in text(html)
    summary = re.search(r'id="batch-summary">(.*?)</p>', html, re.S).group(1)
    assert text(summary).startswith("1 classified, 2 removed ·")
    assert "It could not be read, and was never counted." in text(
        page(client, f"/batch/{batch_id}/1"))


def test_removal_is_bounded_as_the_batch_is(client):
    files = [(f"{i}.png", image_bytes((40 * i, 60, 200), size=(64 + i, 48), fmt="PNG"))
             for i in range(3)]
    batch_id = upload(client, "tiny", *files).rsplit("/", 1)[1]
    client.application.config["MAX_BATCH_IMAGES"] = 3
    assert remove(client, batch_id, 0).status_code == 303
    for data in (files[0][1], image_bytes((1, 2, 3), fmt="PNG")):
        client.post(f"/batch/{batch_id}/add", data={
            "csrf_token": csrf_token(client), "file": [(io.BytesIO(data), "again.png")]})
        assert remove(client, batch_id, len(stored_json(client, batch_id)["results"]) - 1
                      ).status_code == 303
    before = stored_json(client, batch_id)
    response = remove(client, batch_id, 1)
    assert response.status_code == 400
    assert ("3 images have been removed from this batch already, as many as it holds: start a "
            "new batch") in text(response.get_data(as_text=True))
    assert stored_json(client, batch_id) == before


def test_a_removed_image_names_neither_the_batch_nor_its_pictures(client, batch_id):
    remove(client, batch_id, 0)
    assert "from 1.png" in text(page(client, "/"))  # "Your batches": its first image held
    for picture in ("view.jpg", "heat-map.png", "field.jpg"):
        response = client.get(f"/batch/{batch_id}/0/{picture}")
        assert response.status_code == 404
        assert "0.png was removed from this batch, and its stored copy deleted." in text(
            response.get_data(as_text=True))


@pytest.mark.parametrize("reason,token,status", [
    pytest.param("blurred\x00", None, 400, id="control-character"),
    pytest.param("x" * 201, None, 400, id="too-long"),
    pytest.param("", "forged", 400, id="no-form-token"),
])
def test_a_bad_removal_removes_nothing(client, batch_id, reason, token, status):
    before = stored_json(client, batch_id)
    response = remove(client, batch_id, 0, reason=reason, token=token)
    assert response.status_code == status
    assert stored_json(client, batch_id) == before
    assert uploads.image_path(folder(client), before["results"][0]["image"]) is not None


def test_removing_twice_or_what_is_not_there(client, batch_id):
    remove(client, batch_id, 0)
    before = stored_json(client, batch_id)
    response = remove(client, batch_id, 0)
    assert response.status_code == 303
    assert stored_json(client, batch_id) == before
    assert "0.png had already been removed from this batch" in text(
        client.get(f"/batch/{batch_id}").get_data(as_text=True))
    assert remove(client, batch_id, 9).status_code == 404
    assert remove(client, "0" * 32, 0).status_code == 404


def test_the_history_says_what_a_removed_image_was_counted_as_and_by_whose_review(client,
                                                                                  batch_id):
    client.post("/reviewer", data={"csrf_token": csrf_token(client), "next": "/",
                                   "reviewer": "AB"})
    review_cells(client, batch_id, n3="monocyte")
    remove(client, batch_id, 3, reason="wrong film")
    remove(client, batch_id, 0)
    changes = [row.split(",", 3)[3] for row in client.get(
        f"/batch/{batch_id}/history.csv").get_data(as_text=True).splitlines()[-2:]]
    assert changes == ['"3.png: wrong film; 3.png was counted as Monocyte, reviewed by AB"',
                       "0.png; 0.png was counted as Neutrophil as the model accepted it"]


@pytest.mark.parametrize("damage", [
    pytest.param({}, id="no-keys"),
    pytest.param({"at": "noon", "reason": 5, "by": ["AB"]}, id="wrong-types"),
    pytest.param({"at": 1e20, "reason": None}, id="time-out-of-range"),
])
def test_a_damaged_removal_shows_what_it_can(client, batch_id, damage):
    remove(client, batch_id, 2)
    uploads.update_batch(folder(client), batch_id,
                         lambda b: b["results"][2].update(removed=damage))
    for address in ("", "/2", "/report", ".csv", "/history"):
        assert client.get(f"/batch/{batch_id}{address}").status_code == 200, address
    assert "Removed from the batch an unknown time" in text(page(client, f"/batch/{batch_id}"))


def test_an_unreadable_file_removed_keeps_why_it_could_not_be_read(client):
    batch_id = upload(client, "tiny", ("0.png", image_bytes(fmt="PNG")),
                      ("bad.png", b"not an image")).rsplit("/", 1)[1]
    error = stored_json(client, batch_id)["results"][1]["error"]
    remove(client, batch_id, 1, reason="a text file")
    rows = list(csv.DictReader(csv_of(
        client.get(f"/batch/{batch_id}.csv").get_data(as_text=True))))
    assert rows[1]["error"] == f"removed from the batch: a text file (could not be read: {error})"
