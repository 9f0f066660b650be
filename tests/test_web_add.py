"""Adding images to a stored batch (POST /batch/<id>/add): classified by the batch's model,
appended under the batch's deletion time, so that one differential counts more cells than one
upload may hold; bad requests add nothing and lose nothing."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest

from hematovision.web import uploads
from tests.web_helpers import (aged, csrf_token, image_bytes, make_app, make_models_root, page,
                               text, upload)


@pytest.fixture
def app(tmp_path, tiny_model_dir):
    root = make_models_root(tmp_path / "models", tiny_model_dir, names=("tiny", "other"))
    return make_app(tmp_path, root, MAX_BATCH_IMAGES=5)


@pytest.fixture
def client(app):
    return app.test_client()


def folder(client) -> Path:
    return Path(client.application.config["UPLOAD_FOLDER"])


def add(client, batch_id: str, *files: tuple[str, bytes], **fields):
    return client.post(f"/batch/{batch_id}/add", data={
        "csrf_token": csrf_token(client), **fields,
        "file": [(io.BytesIO(data), name) for name, data in files]})


def stored_file(client, batch_id: str) -> bytes:
    return (folder(client) / f"{batch_id}.json").read_bytes()


@pytest.fixture
def batch_id(client) -> str:
    location = upload(client, "tiny", ("a.png", image_bytes(fmt="PNG")),
                      ("b.png", image_bytes((60, 60, 200), fmt="PNG")))
    return location.rsplit("/", 1)[1]


def test_added_images_join_the_batch_and_its_deletion_time(client, batch_id):
    json_path = folder(client) / f"{batch_id}.json"
    aged(folder(client), batch_id, 100)
    held = [folder(client) / f"{r['image']}.jpg"
            for r in uploads.load_batch(folder(client), batch_id)["results"]]
    response = add(client, batch_id, ("c.png", image_bytes((90, 160, 90), fmt="PNG")),
                   ("empty.png", b""), model="other")  # the batch's model, whatever is sent
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/batch/{batch_id}")
    stored = uploads.load_batch(folder(client), batch_id)
    assert [r["file"] for r in stored["results"]] == ["a.png", "b.png", "c.png", "empty.png"]
    assert stored["model"] == "tiny" and stored["results"][3]["error"] == "The file is empty."
    # The addition renews the batch: the purge deletes every image with it, the new one too.
    added = folder(client) / f"{stored['results'][2]['image']}.jpg"
    renewed = uploads.kept_from(stored)
    assert renewed == pytest.approx(time.time(), abs=5)
    assert [p.stat().st_mtime for p in [json_path, added, *held]] == [renewed] * 4

    html = page(client, response.headers["Location"])
    assert "Added 1 image to this batch (1 could not be read: listed below)." in text(html)
    assert "Batch of 4 images" in html and "3 classified, 1 could not be read" in text(html)
    counts = re.findall(r'<tr data-class="\w+">.*?<td class="text-end">(\d+)</td>',
                        html.split('id="differential"')[1].split("</table>")[0], re.S)
    assert sum(map(int, counts)) == 3


def test_a_one_image_batch_offers_to_add_and_becomes_a_batch(client):
    one = upload(client, "tiny", ("a.png", image_bytes(fmt="PNG"))).rsplit("/", 1)[1]
    assert 'id="add-form"' in page(client, f"/batch/{one}")
    add(client, one, ("b.png", image_bytes((60, 60, 200), fmt="PNG")))
    assert 'id="differential"' in page(client, f"/batch/{one}")


def test_an_image_already_in_the_batch_is_not_added_again(client, batch_id):
    """The same file added twice (or a folder sent again) would count its cells twice."""
    a = image_bytes(fmt="PNG")  # a.png's bytes, under another name
    c = image_bytes((90, 160, 90), fmt="PNG")
    response = add(client, batch_id, ("a copy.png", a), ("c.png", c), ("c again.png", c))
    assert response.status_code == 303
    stored = uploads.load_batch(folder(client), batch_id)
    assert [r["file"] for r in stored["results"]] == ["a.png", "b.png", "c.png"]
    assert all(len(r["sha256"]) == 64 for r in stored["results"])
    html = page(client, f"/batch/{batch_id}")
    assert ("Added 1 image to this batch." in text(html)
            and "Left out 2 files that are byte for byte an image already in this batch, so "
                "that no cell is counted twice: a copy.png (the same as a.png), c again.png "
                "(the same as c.png)." in text(html))
    # All of them in the batch already: nothing wrong, nothing added (a part of a folder sent
    # again in parts must not stop the parts after it).
    before = stored_file(client, batch_id)
    response = add(client, batch_id, ("b.png", image_bytes((60, 60, 200), fmt="PNG")))
    assert response.status_code == 303
    assert "Left out 1 file that is byte for byte an image already in this batch" in text(
        page(client, response.headers["Location"]))
    assert stored_file(client, batch_id) == before


def test_the_same_file_added_twice_at_once_is_kept_once(client, batch_id):
    """Both additions pass the check before classifying; the second to be stored finds the
    image held already and keeps nothing of it, its stored copy deleted."""
    stored = uploads.load_batch(folder(client), batch_id)
    held = stored["results"][0]
    copy = uploads.save_image(folder(client), uploads.Image.new("RGB", (8, 8)))
    uploads.add_to_batch(folder(client), batch_id, [{**held, "image": copy}])
    assert len(uploads.load_batch(folder(client), batch_id)["results"]) == 2
    assert not (folder(client) / f"{copy}.jpg").exists()


def test_parts_sent_by_the_page_get_the_batch_s_address_and_leave_its_messages(client):
    """upload.js asks for JSON: the address of the batch, with the messages about its files
    kept for the page that opens after the last part, but none saying how many a part added:
    after 105 images sent in two parts, "Added 5 images to this batch" misstated the upload."""
    json_headers = {"Accept": "application/json"}
    token = csrf_token(client)  # from the page, once, as the browser has it (it reads "/")
    response = client.post("/upload", headers=json_headers, data={
        "csrf_token": token, "model": "tiny",
        "file": [(io.BytesIO(image_bytes(fmt="PNG")), "a.png"),
                 (io.BytesIO(image_bytes(fmt="PNG")), "a copy.png")]})
    address = response.get_json()["batch"]
    assert response.status_code == 200 and re.fullmatch(r"/batch/[0-9a-f]{32}", address)
    response = client.post(f"{address}/add", headers=json_headers, data={
        "csrf_token": token,
        "file": [(io.BytesIO(image_bytes((90, 160, 90), fmt="PNG")), "c.png")]})
    assert response.get_json() == {"batch": address}
    shown = text(page(client, address))
    assert "Left out 1 file that is byte for byte" in shown and "Added" not in shown
    assert "Batch of 2 images" in shown


def test_an_upload_holding_one_file_twice_counts_it_once(client):
    location = upload(client, "tiny", ("a.png", image_bytes(fmt="PNG")),
                      ("a (1).png", image_bytes(fmt="PNG")))
    html = page(client, location)
    assert "Left out 1 file that is byte for byte an image already in this batch" in text(html)
    stored = uploads.load_batch(folder(client), location.rsplit("/", 1)[1])
    assert [r["file"] for r in stored["results"]] == ["a.png"]


def test_files_none_of_which_can_be_read_add_nothing_and_say_why(client, batch_id):
    before = stored_file(client, batch_id)
    images_before = sorted(p.name for p in folder(client).glob("*.jpg"))
    response = add(client, batch_id, ("notes.png", b"not an image"), ("empty.jpg", b""))
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Nothing was added: none of the files could be read." in text(html)
    assert re.findall(r"<li><span class=\"text-break\">([^<]+)</span>:", html) == [
        "notes.png", "empty.jpg"]
    assert "Batch of 2 images" in html  # the batch page, as it was
    assert stored_file(client, batch_id) == before
    assert sorted(p.name for p in folder(client).glob("*.jpg")) == images_before


@pytest.mark.parametrize("files, fields, status, message", [
    ([(f"c{i}.png", bytes([i])) for i in range(4)], {}, 400,
     "A batch holds at most 5 images and this one holds 2: add at most 3"),
    ([], {}, 400, "No file was uploaded"),
    ([("c.png", image_bytes(fmt="PNG"))], {"csrf_token": "forged"}, 400, "The form has expired"),
])
def test_a_refused_addition_changes_nothing(client, batch_id, files, fields, status, message):
    before = stored_file(client, batch_id)
    response = add(client, batch_id, *files, **fields)
    assert response.status_code == status
    assert message in text(response.get_data(as_text=True))
    assert stored_file(client, batch_id) == before


def test_copies_of_the_batch_s_images_take_no_room(client, batch_id):
    """A folder sent again with a few new images, to a batch with room for those only: the
    copies are left out before the room is counted."""
    again = [("a.png", image_bytes(fmt="PNG")), ("b.png", image_bytes((60, 60, 200), fmt="PNG"))]
    new = [(f"n{i}.png", image_bytes((90, 40 * i, 90), fmt="PNG")) for i in range(3)]
    response = add(client, batch_id, *again, *new, ("n0 again.png", new[0][1]))
    assert response.status_code == 303
    stored = uploads.load_batch(folder(client), batch_id)
    assert [r["file"] for r in stored["results"]] == ["a.png", "b.png", "n0.png", "n1.png",
                                                      "n2.png"]
    assert ("Left out 3 files that are byte for byte an image already in this batch"
            in text(page(client, f"/batch/{batch_id}")))


def test_an_addition_that_another_filled_the_batch_before_is_refused_and_keeps_nothing(
        client, batch_id, monkeypatch):
    """Two additions at once: each fits the batch alone, checked before its images are read.
    The second to be stored must find the batch full (it once took a batch past its limit)."""
    from hematovision.web import pages

    def and_another_meanwhile(*args, **kwargs):
        found = classify_request(*args, **kwargs)
        uploads.add_to_batch(folder(client), batch_id, [{"file": "x.png"}, {"file": "y.png"}])
        return found

    classify_request = pages.classify_request
    monkeypatch.setattr(pages, "classify_request", and_another_meanwhile)
    images_before = sorted(p.name for p in folder(client).glob("*.jpg"))
    response = add(client, batch_id, ("c.png", image_bytes((90, 160, 90), fmt="PNG")),
                   ("d.png", image_bytes((160, 90, 90), fmt="PNG")))
    assert response.status_code == 400
    assert ("A batch holds at most 5 images and this one holds 4: add at most 1"
            in text(response.get_data(as_text=True)))
    stored = uploads.load_batch(folder(client), batch_id)
    assert [r["file"] for r in stored["results"]] == ["a.png", "b.png", "x.png", "y.png"]
    assert sorted(p.name for p in folder(client).glob("*.jpg")) == images_before


def test_no_batch_or_no_model_no_addition(client, batch_id):
    assert add(client, "0" * 32, ("c.png", image_bytes(fmt="PNG"))).status_code == 404
    gone = uploads.save_batch(folder(client), {"model": "retired", "classes": ["x"],
                                               "results": []})
    response = add(client, gone, ("c.png", image_bytes(fmt="PNG")))
    assert response.status_code == 400
    assert "The model 'retired' that classified this batch is no longer served" in text(
        response.get_data(as_text=True))
    # Its page offers no form to add with, and says why.
    html = page(client, f"/batch/{gone}")
    assert 'id="add-form"' not in html
    assert "The model 'retired' that classified this batch is no longer served" in text(
        re.search(r'<p[^>]*id="add-refused".*?</p>', html, re.S).group(0))
