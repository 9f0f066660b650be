"""How long a batch stays: RETENTION_SECONDS after its last change, so one being worked on is
never deleted under its reviewer; "Keep it" renews it without a change; a page near the end
says so. (The purge itself: tests/test_uploads.py.)"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from hematovision.web import uploads
from tests.web_helpers import (aged, batch_as_said, csrf_token, make_app, page, prose,
                               review_cells, sign_off, stored_json, text)

RETENTION = 600
MODEL_SAID = [("neutrophil", "accepted", 0.97), ("lymphocyte", "accepted", 0.99)]


@pytest.fixture
def app(tmp_path, models_root):
    return make_app(tmp_path, models_root, RETENTION_SECONDS=RETENTION, PURGE_INTERVAL_SECONDS=0)


@pytest.fixture
def batch_id(client) -> str:
    return batch_as_said(client, "tiny", MODEL_SAID)


def folder(client) -> Path:
    return Path(client.application.config["UPLOAD_FOLDER"])


def kept_until(html: str) -> float:
    """The deletion time the page's "Kept until" gives, as a timestamp."""
    shown = re.search(r'id="expires">Kept until <time[^>]* datetime="([^"]+)"', html).group(1)
    return datetime.fromisoformat(shown).timestamp()


def keep(client, batch_id: str, back: str | None = None, token: str | None = None):
    return client.post(f"/batch/{batch_id}/keep", data={
        "csrf_token": token or csrf_token(client), **({"next": back} if back else {})})


def test_a_review_keeps_the_batch_for_the_retention_time_from_then(client, batch_id):
    aged(folder(client), batch_id, 500)
    assert kept_until(page(client, f"/batch/{batch_id}")) == pytest.approx(
        time.time() + 100, abs=5)

    review_cells(client, batch_id, n0="lymphocyte")
    assert kept_until(page(client, f"/batch/{batch_id}")) == pytest.approx(
        time.time() + RETENTION, abs=5)
    aged(folder(client), batch_id, 200)  # 700 s after the upload, 200 after the review
    html = page(client, f"/batch/{batch_id}")  # this request purges what has expired
    assert "Reviewed" in text(html) or "reviewed" in text(html)
    image = stored_json(client, batch_id)["results"][1]["image"]
    assert client.get(f"/uploads/{image}.jpg").status_code == 200  # its images stay with it

    aged(folder(client), batch_id, RETENTION - 200 + 1)
    response = client.get(f"/batch/{batch_id}")
    assert response.status_code == 404
    assert "deleted 10 minutes after its last change" in text(response.get_data(as_text=True))
    assert not list(folder(client).glob("*.jpg"))


def test_a_batch_left_alone_goes_at_the_end_of_its_retention_time(client, batch_id):
    aged(folder(client), batch_id, RETENTION + 1)
    assert client.get(f"/batch/{batch_id}").status_code == 404
    assert not [p for p in folder(client).iterdir() if p.suffix in (".json", ".jpg")]


@pytest.mark.parametrize("retention", [30, 600])
def test_keep_renews_even_just_after_a_change_and_whatever_the_retention(tmp_path, models_root,
                                                                       retention):
    client = make_app(tmp_path, models_root, RETENTION_SECONDS=retention,
                      PURGE_INTERVAL_SECONDS=0).test_client()
    batch_id = batch_as_said(client, "tiny", MODEL_SAID)
    aged(folder(client), batch_id, retention - 5)  # changed (the model's answers) just now
    assert keep(client, batch_id).status_code == 303
    aged(folder(client), batch_id, 10)  # past the old deletion time, not the new one
    assert client.get(f"/batch/{batch_id}").status_code == 200
    assert len(list(folder(client).glob("*.jpg"))) == 2


def test_keep_renews_the_batch_and_goes_back_to_the_page_it_was_on(client, batch_id):
    aged(folder(client), batch_id, 500)
    back = f"/batch/{batch_id}/review?show=all"
    response = keep(client, batch_id, back)
    assert response.status_code == 303 and response.headers["Location"] == back
    renewed = uploads.kept_from(stored_json(client, batch_id))
    assert renewed == pytest.approx(time.time(), abs=5)
    html = page(client, back)
    assert kept_until(html) == pytest.approx(renewed + RETENTION)
    until = re.search(r'id="expires">Kept until <time[^>]*>([^<]+)</time>', html).group(1)
    assert f"Kept this batch until {until}" in prose(html)
    assert uploads.kept_from(stored_json(client, batch_id)) == renewed  # reading renews nothing


@pytest.mark.parametrize("back", ["//example.org/x", "https://example.org/", "/\\example.org",
                                  "", "/batch/x\n"])
def test_keep_goes_back_only_to_a_page_of_this_site(client, batch_id, back):
    response = keep(client, batch_id, back or None)
    assert response.status_code == 303
    assert response.headers["Location"] == f"/batch/{batch_id}"


def test_keeping_is_not_a_change_to_the_count_or_its_history(client, batch_id):
    assert sign_off(client, batch_id).status_code == 303
    before = stored_json(client, batch_id)
    aged(folder(client), batch_id, 100)
    assert keep(client, batch_id).status_code == 303
    after = stored_json(client, batch_id)
    assert after["history"] == before["history"]
    assert {k: v for k, v in after.items() if k not in ("created", "kept_from")} == {
        k: v for k, v in before.items() if k not in ("created", "kept_from")}
    html = page(client, f"/batch/{batch_id}")
    assert 'id="signoff-summary" data-current="true"' in html


def test_keep_of_a_batch_gone_or_damaged_or_without_the_form_token(client, batch_id):
    missing = keep(client, uploads.new_id())
    assert missing.status_code == 404
    assert "after its last change" in text(missing.get_data(as_text=True))
    assert keep(client, batch_id, token="forged").status_code == 400

    (folder(client) / f"{batch_id}.json").write_text('{"results": [')
    damaged = keep(client, batch_id)
    assert damaged.status_code == 410
    assert (folder(client) / f"{batch_id}.json").read_text() == '{"results": ['


def test_each_page_of_a_batch_says_when_it_goes_and_offers_to_keep_it(client, batch_id):
    for address in (f"/batch/{batch_id}", f"/batch/{batch_id}/0",
                    f"/batch/{batch_id}/review?show=all"):
        html = page(client, address)
        form = re.search(r'<form[^>]+id="keep-form".*?</form>', html, re.S).group(0)
        assert f'action="/batch/{batch_id}/keep"' in form
        assert f'name="next" value="{address.replace("&", "&amp;")}"' in form
        assert "Keep it 10 minutes from now" in text(form)
        kept = re.search(r'id="expires">(.*?)<form', html, re.S).group(1)
        assert re.fullmatch(r"Kept until \d\d \w{3} \d{4}, \d\d:\d\d UTC, 10 minutes after its "
                            r"last change: download the CSV to keep the results.",
                            prose(kept).strip())


def test_a_page_near_the_end_of_the_retention_time_warns(client, batch_id):
    fresh = page(client, f"/batch/{batch_id}")
    warning = re.search(r'<div[^>]+id="expires-soon"[^>]*>', fresh).group(0)
    assert " hidden" in warning  # app.js shows it when the time comes
    assert 'data-warn-seconds="150"' in warning  # a quarter of 10 minutes
    left = float(re.search(r'data-seconds-left="([\d.]+)"', warning).group(1))
    assert left == pytest.approx(RETENTION, abs=5)

    aged(folder(client), batch_id, RETENTION - 100)
    html = page(client, f"/batch/{batch_id}")
    warning = re.search(r'<div[^>]+id="expires-soon"[^>]*>', html).group(0)
    assert " hidden" not in warning
    assert float(re.search(r'data-seconds-left="([\d.]+)"', warning).group(1)) == pytest.approx(
        100, abs=5)
    said = prose(html.split('id="expires-soon"')[1].split("</form>")[0])
    assert "This batch is deleted in 2 minutes" in said
    assert "Keep it 10 minutes from now" in said


def test_the_footer_and_your_batches_say_how_long_batches_stay(client, batch_id):
    home = text(page(client, "/"))
    assert ("Uploaded images and results are deleted 10 minutes after their batch's last "
            "change.") in home
    assert "each is deleted 10 minutes after its last change" in home


@pytest.mark.parametrize("damage", [{"kept_from": float("inf")}, {"kept_from": "soon"},
                                    {"created": 1e300, "kept_from": None},
                                    {"created": float("nan"), "kept_from": float("nan")}])
def test_a_damaged_time_shows_as_unknown_and_warns_of_nothing(client, batch_id, damage):
    path = folder(client) / f"{batch_id}.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, **damage}))  # json writes Infinity and NaN as such
    html = page(client, f"/batch/{batch_id}")
    if "created" in damage:  # neither time can be shown
        assert "Kept until an unknown time" in text(html) and 'id="expires-soon"' not in html
    else:  # the renewal's time is ignored: the upload's stands
        assert kept_until(html) == pytest.approx(stored["created"] + RETENTION)
    assert keep(client, batch_id).status_code == 303
    assert uploads.kept_from(stored_json(client, batch_id)) == pytest.approx(time.time(), abs=5)


def test_keep_asked_for_json_answers_the_new_time_and_stays(client, batch_id):
    aged(folder(client), batch_id, 500)
    response = client.post(f"/batch/{batch_id}/keep", data={"csrf_token": csrf_token(client)},
                           headers={"Accept": "application/json"})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    answer = response.get_json()
    renewed = uploads.kept_from(stored_json(client, batch_id))
    assert answer["seconds_left"] == pytest.approx(RETENTION, abs=5)
    assert datetime.fromisoformat(answer["expires"]).timestamp() == pytest.approx(
        renewed + RETENTION, abs=1)
    assert answer["message"] == (f"Kept this batch until {answer['expires_text']}; any later "
                                 "change keeps it 10 minutes from then.")
    # Said by the page that asked, so no notice waits for the next page.
    assert "Kept this batch" not in text(page(client, f"/batch/{batch_id}"))


def test_a_page_left_open_can_ask_when_its_batch_goes(client, batch_id):
    aged(folder(client), batch_id, 100)
    answer = client.get(f"/batch/{batch_id}/expires").get_json()
    assert answer["seconds_left"] == pytest.approx(RETENTION - 100, abs=5)
    assert answer["expires_text"] in text(page(client, f"/batch/{batch_id}"))
    assert uploads.kept_from(stored_json(client, batch_id)) == pytest.approx(
        time.time() - 100, abs=5)  # asking renews nothing
    uploads.delete_batch(folder(client), batch_id)
    assert client.get(f"/batch/{batch_id}/expires").status_code == 404


def test_a_form_sent_to_a_batch_gone_says_nothing_was_saved(client, batch_id):
    token = csrf_token(client)
    uploads.delete_batch(folder(client), batch_id)
    for action, data in [("review?show=all", {"verdict-0": "lymphocyte"}),
                         ("0/review", {"verdict": "lymphocyte"}),
                         ("signoff", {"signed_by": "MK", "count": "x"}), ("keep", {}),
                         ("sample", {"sample_id": "A1"}), ("manual", {})]:
        response = client.post(f"/batch/{batch_id}/{action}", data={"csrf_token": token, **data})
        assert response.status_code == 404, action
        assert ("This batch is no longer on the server (a batch is deleted 10 minutes after its "
                "last change, or at once with Delete now), so what you sent was not saved. To "
                "count these cells, upload the images again.") in text(
                    response.get_data(as_text=True)), action
    assert "No such result: it may have been deleted" in text(
        client.get(f"/batch/{batch_id}").get_data(as_text=True))
    # Delete now, from a tab opened before: what it asked for is done, and it says no more.
    deleted = client.post(f"/batch/{batch_id}/delete", data={"csrf_token": token})
    assert deleted.status_code == 404
    assert "No such result: it may have been deleted" in text(deleted.get_data(as_text=True))


def test_the_report_and_history_say_when_the_batch_goes_and_keep_it(client, batch_id):
    aged(folder(client), batch_id, RETENTION - 100)
    for address in (f"/batch/{batch_id}/report", f"/batch/{batch_id}/history"):
        html = page(client, address)
        assert "10 minutes after its last change" in text(html)
        form = re.search(r'<form[^>]+id="keep-form".*?</form>', html, re.S).group(0)
        assert f'name="next" value="{address}"' in form
        warning = re.search(r'<div[^>]+id="expires-soon"[^>]*>', html).group(0)
        assert " hidden" not in warning
        assert f'data-expires-url="/batch/{batch_id}/expires"' in warning
