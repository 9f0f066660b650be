"""hematovision.web.recent: the upload page lists the batches this browser uploaded, newest
first, with their sample, model, kept-until time and cells to review; and forgets those deleted
or purged, and never shows another browser's."""

import io
import re
from pathlib import Path

import pytest

from hematovision.web import recent
from tests.web_helpers import (csrf_token, image_bytes, make_app, make_models_root, page,
                               save_sample, text, upload)


@pytest.fixture
def app(tmp_path, tiny_model_dir):
    return make_app(tmp_path, make_models_root(tmp_path / "models", tiny_model_dir))


def listed(client) -> list[str]:
    """The batch ids the upload page lists, in its order."""
    return re.findall(r'data-batch="([0-9a-f]{32})"', page(client, "/"))


def upload_batch(client, images: int = 1) -> str:
    location = upload(client, "tiny", *[(f"cell{i}.jpg", image_bytes((200, 60 + i, 60)))
                                        for i in range(images)])
    return location.rsplit("/", 1)[-1]


def test_the_upload_page_lists_this_browser_s_batches_newest_first(app):
    client = app.test_client()
    assert listed(client) == [] and 'id="recent-batches"' not in page(client, "/")
    first, second = upload_batch(client, images=2), upload_batch(client)
    assert listed(client) == [second, first]
    html = page(client, "/")
    assert f'href="/batch/{first}"' in html and f'href="/batch/{second}"' in html
    shown = text(html)
    assert "Your batches" in shown and "Batch of 2 images" in shown and "Batch of 1 image" in shown
    assert "tiny · from cell0.jpg · uploaded" in shown and "kept until" in shown
    # Another browser (its own session) sees none of them, though it may open each by address.
    stranger = app.test_client()
    assert listed(stranger) == []
    assert stranger.get(f"/batch/{first}").status_code == 200


def test_the_list_names_the_sample_as_text_and_counts_the_cells_to_review(app):
    client = app.test_client()
    batch_id = upload_batch(client, images=2)  # a sample is given for a differential
    assert save_sample(client, batch_id, "<b>H-26-7</b>").status_code == 303
    html = page(client, "/")
    assert "Sample &lt;b&gt;H-26-7&lt;/b&gt; · Batch of 2 images" in html
    assert "to review" not in text(html)  # the tiny model accepts every cell

    folder = Path(app.config["UPLOAD_FOLDER"])
    stored = folder / f"{batch_id}.json"
    stored.write_text(stored.read_text().replace('"status": "accepted"',
                                                 '"status": "unidentified"'))
    assert "2 to review" in text(page(client, "/"))
    assert "manual count given" not in text(page(client, "/"))
    client.post(f"/batch/{batch_id}/manual", data={"csrf_token": csrf_token(client),
                                                   "manual_neutrophil": "40"})
    assert "manual count given" in text(page(client, "/"))


def test_a_deleted_or_purged_batch_leaves_the_list(app):
    client = app.test_client()
    kept, deleted, purged = (upload_batch(client) for _ in range(3))
    response = client.post(f"/batch/{deleted}/delete", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 303
    assert listed(client) == [purged, kept]
    (Path(app.config["UPLOAD_FOLDER"]) / f"{purged}.json").unlink()  # as the purge deletes it
    assert listed(client) == [kept]
    with client.session_transaction() as session:
        assert session[recent.SESSION_KEY] == [kept]  # forgotten, not only hidden


def test_a_batch_file_that_cannot_be_read_leaves_the_list_and_the_page_stands(app):
    client = app.test_client()
    kept, damaged = upload_batch(client), upload_batch(client)
    for content in ('{"results": [', '{"results": [1], "classes": [], "model": "tiny"}',
                    '{"results": [], "classes": [], "model": "tiny", "created": "today"}'):
        (Path(app.config["UPLOAD_FOLDER"]) / f"{damaged}.json").write_text(content)
        with client.session_transaction() as session:
            session[recent.SESSION_KEY] = [damaged, kept]
        assert listed(client) == [kept]


def test_only_the_most_recent_batches_are_remembered_and_the_page_says_so(app):
    client = app.test_client()
    ids = [upload_batch(client) for _ in range(recent.MAX_REMEMBERED)]
    assert 'id="recent-dropped"' not in page(client, "/")
    ids += [upload_batch(client) for _ in range(2)]
    assert listed(client) == ids[::-1][:recent.MAX_REMEMBERED]
    assert (f"It holds the {recent.MAX_REMEMBERED} newest: an older batch is still on the "
            "server until its time, at its own address") in text(page(client, "/"))
    assert page(client, f"/batch/{ids[0]}")  # still stored
    # Once the batches it let go are gone, it no longer says so.
    for batch_id in ids[:2]:
        client.post(f"/batch/{batch_id}/delete", data={"csrf_token": csrf_token(client)})
    assert 'id="recent-dropped"' not in page(client, "/")


def test_a_cookie_holding_anything_but_batch_ids_lists_nothing_and_does_not_fail(app):
    client = app.test_client()
    batch_id = upload_batch(client)
    for value in ["../../etc/passwd", ["../x", 7, None, batch_id.upper()], {"a": 1}]:
        with client.session_transaction() as session:
            session[recent.SESSION_KEY] = value
        assert listed(client) == []
    with client.session_transaction() as session:
        session[recent.SESSION_KEY] = ["not-an-id", batch_id]
    assert listed(client) == [batch_id]


def test_adding_images_to_another_browser_s_batch_lists_it_first(app):
    mine, theirs = app.test_client(), app.test_client()
    own, shared = upload_batch(mine), upload_batch(theirs, images=2)
    response = mine.post(f"/batch/{shared}/add", data={
        "csrf_token": csrf_token(mine),
        "file": [(io.BytesIO(image_bytes((90, 160, 90))), "more.jpg")]})
    assert response.status_code == 303
    assert listed(mine) == [shared, own] and listed(theirs) == [shared]


def test_behind_https_the_cookie_holding_the_batches_is_sent_over_https_only(tmp_path,
                                                                              tiny_model_dir):
    plain = make_app(tmp_path / "a", make_models_root(tmp_path / "m", tiny_model_dir))
    secure = make_app(tmp_path / "b", make_models_root(tmp_path / "m", tiny_model_dir),
                      SESSION_COOKIE_SECURE=True)
    for app, expected in ((plain, False), (secure, True)):
        client = app.test_client()
        token = csrf_token(client)
        response = client.post("/upload", data={"csrf_token": token, "model": "tiny",
                                                "file": [(io.BytesIO(image_bytes()), "a.jpg")]})
        [cookie] = response.headers.getlist("Set-Cookie")
        assert ("; Secure" in cookie) == expected and "HttpOnly" in cookie


def _set(key, value):
    return lambda batch: batch.update({key: value})


def _in_result(key, value):
    return lambda batch: batch["results"][0].update({key: value})


@pytest.mark.parametrize("damage", [
    pytest.param(lambda b: b["results"][0].pop("status"), id="result-without-status"),
    pytest.param(_set("sample", {"id": 12}), id="sample-id-a-number"),
    pytest.param(_set("sample", {"white_cells_per_litre": "6.5"}), id="count-as-text"),
    pytest.param(_set("manual", {"counts": [1, 2]}), id="manual-counts-a-list"),
    pytest.param(_set("manual", {"other": 1}), id="manual-without-counts"),
    pytest.param(_set("classes", [1, 2]), id="classes-as-numbers"),
    pytest.param(lambda b: b.pop("id"), id="no-id"),
    pytest.param(_in_result("confidence", "0.9"), id="confidence-as-text"),
    pytest.param(_in_result("label", 3), id="label-a-number"),
    pytest.param(_in_result("review", {"label": 3}), id="review-label-a-number"),
    pytest.param(_in_result("image", 7), id="image-a-number"),
    pytest.param(_in_result("probabilities", {"a": "x"}), id="probability-as-text"),
    pytest.param(_in_result("probabilities", {}), id="probabilities-without-the-classes"),
    pytest.param(_in_result("cell", "2/3"), id="cell-as-text"),
    pytest.param(_in_result("candidates", ["neutrophil"]), id="candidates-as-names"),
    pytest.param(_in_result("red_cell_ratio", "1.02"), id="ratio-as-text"),
    pytest.param(_in_result("sha256", 5), id="digest-a-number"),
])
def test_a_batch_damaged_inside_is_gone_not_a_500_and_the_upload_page_stands(app, damage):
    """A batch file edited by hand or cut by a disk error inside one record had passed the
    loader's check of its outline: the upload page (listing this browser's batches) and the
    batch's pages were then a 500 at every visit."""
    import json

    client = app.test_client()
    batch_id = upload_batch(client, images=2)
    path = Path(app.config["UPLOAD_FOLDER"]) / f"{batch_id}.json"
    stored = json.loads(path.read_text())
    damage(stored)
    path.write_text(json.dumps(stored))
    assert client.get("/").status_code == 200 and batch_id not in listed(client)
    for address in ["", "/0", "/report", ".csv", "/differential.csv", "/history.csv",
                    "/0/view.jpg", "/review?show=all"]:
        assert client.get(f"/batch/{batch_id}{address}").status_code == 410, address


def test_a_sign_off_damaged_inside_vouches_for_nothing(app):
    """A sign-off cut short (no count nor fingerprint) had made the upload page a 500: it is
    none, as a sign-off that is not a record at all was already."""
    import json

    client = app.test_client()
    batch_id = upload_batch(client, images=2)
    path = Path(app.config["UPLOAD_FOLDER"]) / f"{batch_id}.json"
    stored = json.loads(path.read_text())
    stored["signoff"] = {"by": "A. Bench", "at": 1.0}
    path.write_text(json.dumps(stored))
    assert batch_id in listed(client)
    assert "Signed off by" not in text(page(client, f"/batch/{batch_id}"))
    assert "Signed off by" not in text(page(client, f"/batch/{batch_id}/report"))
