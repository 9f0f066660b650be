"""Upload storage: random names, sanitised display names, retention purge, nothing lost."""

import io
import json
import math
import os
import time
from contextlib import contextmanager

import pytest
from PIL import Image

from hematovision.web import uploads
from tests.web_helpers import (
    BAD_FILES,
    csrf_token,
    exif_rotated_jpeg,
    image_bytes,
    make_app,
    make_models_root,
)


@pytest.fixture
def app(tmp_path, tiny_model_dir):
    return make_app(
        tmp_path,
        make_models_root(tmp_path / "models", tiny_model_dir),
        PURGE_INTERVAL_SECONDS=0,
        RETENTION_SECONDS=60,
    )

# What a stored batch holds beside its results (load_batch refuses a file without them).
EMPTY = {"model": "tiny", "classes": []}


@pytest.fixture
def client(app):
    return app.test_client()


def upload(client, *files) -> str:
    """Upload through the form; returns the batch id the result page redirects to."""
    response = client.post(
        "/upload",
        data={
            "csrf_token": csrf_token(client),
            "file": [(io.BytesIO(data), name) for name, data in files],
        },
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    return response.headers["Location"].rsplit("/", 1)[1]


@pytest.mark.parametrize(
    "client_name, shown",
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("..\\..\\windows\\win.ini.png", "win.ini.png"),
        ("a\x00b\x1b[31m.png", "ab[31m.png"),
        ("e\u0301.png", "\u00e9.png"),  # NFC: one code point, as the user typed it
        ("  spaced.jpg  ", "spaced.jpg"),
        ("", "unnamed"),
        (None, "unnamed"),
        ("dir/", "unnamed"),
        ("y" * 500, "y" * 119 + "…"),
        ("z" * 200 + ".jpeg", "z" * 114 + "….jpeg"),
    ],
)
def test_display_name(client_name, shown):
    assert uploads.display_name(client_name) == shown
    assert len(uploads.display_name(client_name)) <= uploads.MAX_NAME_LENGTH


def test_ids_are_random_hex_and_validated():
    ids = {uploads.new_id() for _ in range(100)}
    assert len(ids) == 100 and all(uploads.is_valid_id(i) for i in ids)
    for bad in ["", "abc", "../" + "a" * 29, "A" * 32, "g" * 32, "a" * 33, "a" * 31 + "\n"]:
        assert not uploads.is_valid_id(bad)


def test_batch_round_trip_and_unknown_ids(tmp_path):
    batch_id = uploads.save_batch(tmp_path, {"model": "tiny", "classes": [], "results": []})
    stored = uploads.load_batch(tmp_path, batch_id)
    assert stored["id"] == batch_id and stored["model"] == "tiny" and stored["results"] == []
    assert uploads.load_batch(tmp_path, uploads.new_id()) is None
    assert uploads.load_batch(tmp_path, "../secret") is None


def test_stored_image_is_an_upright_downscaled_jpeg_without_metadata(tmp_path):
    image = Image.open(io.BytesIO(image_bytes(size=(2000, 1000))))
    image_id = uploads.save_image(tmp_path, image)
    stored = Image.open(tmp_path / f"{image_id}.jpg")
    assert stored.format == "JPEG" and stored.size == (1024, 512)
    assert not stored.getexif()


def test_purge_deletes_only_expired_stored_files(tmp_path):
    uploads.save_batch(tmp_path, {"results": []})  # made old below
    new = uploads.save_batch(tmp_path, {"results": []})
    (tmp_path / "notes.txt").write_text("not ours")  # e.g. a mistaken UPLOAD_FOLDER
    (tmp_path / f"{'a' * 32}.exe").write_text("not ours either")
    for path in tmp_path.iterdir():
        if path.name != f"{new}.json":
            os.utime(path, (time.time() - 120, time.time() - 120))
    assert uploads.purge_expired(tmp_path, retention_seconds=60) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{new}.json", "notes.txt", f"{'a' * 32}.exe", uploads.LOCK_NAME]  # the purge's lock
    )


def test_purge_of_a_missing_folder_is_a_no_op(tmp_path):
    assert uploads.purge_expired(tmp_path / "nope", 1) == 0


def test_uploads_are_stored_under_random_names_only(client, tmp_path):
    batch_id = upload(
        client, ("../../etc/passwd.png", image_bytes(fmt="PNG")), ("血液.jpg", image_bytes())
    )
    names = sorted(p.name for p in (tmp_path / "uploads").iterdir())
    assert len(names) == 3 and f"{batch_id}.json" in names
    assert all(uploads.STORED_NAME.fullmatch(n) for n in names)
    assert not (tmp_path / "etc").exists()


def test_stored_image_is_served_upright(client, tmp_path):
    batch_id = upload(client, ("rotated.jpg", exif_rotated_jpeg()))
    image_id = uploads.load_batch(tmp_path / "uploads", batch_id)["results"][0]["image"]
    response = client.get(f"/uploads/{image_id}.jpg")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert response.headers["Cache-Control"] == "no-store"
    assert Image.open(io.BytesIO(response.data)).size == (48, 64)


@pytest.mark.parametrize(
    "path",
    [
        "/uploads/nothere.jpg",
        "/uploads/" + "0" * 32 + ".jpg",
        "/uploads/..%2Fsecret_key.jpg",
        "/uploads/../secret_key",
        "/batch/" + "0" * 32,
        "/batch/" + "0" * 32 + ".csv",
        "/batch/not-an-id",
        "/batch/../../etc/passwd",
    ],
)
def test_unknown_or_malformed_ids_are_404(client, path):
    assert client.get(path).status_code == 404


def test_expired_results_are_purged_and_fresh_ones_kept(client, tmp_path):
    old = upload(client, ("a.jpg", image_bytes()))
    folder = tmp_path / "uploads"
    for path in folder.iterdir():
        os.utime(path, (time.time() - 61, time.time() - 61))
    new = upload(client, ("b.jpg", image_bytes()))  # this request runs the purge first

    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".json") == [f"{new}.json"]
    assert len(list(folder.glob("*.jpg"))) == 1
    response = client.get(f"/batch/{old}")
    assert response.status_code == 404
    assert "a batch is deleted 1 minute after its last change" in response.get_data(as_text=True)
    assert client.get(f"/batch/{new}").status_code == 200


def test_purge_runs_at_most_once_per_interval(tmp_path, tiny_model_dir):
    app = make_app(
        tmp_path,
        make_models_root(tmp_path / "models", tiny_model_dir),
        PURGE_INTERVAL_SECONDS=3600,
        RETENTION_SECONDS=60,
    )
    client = app.test_client()
    batch_id = upload(client, ("a.jpg", image_bytes()))
    for path in (tmp_path / "uploads").iterdir():
        os.utime(path, (time.time() - 61, time.time() - 61))
    assert client.get(f"/batch/{batch_id}").status_code == 200  # the next purge is not due yet


def test_expired_uploads_are_purged_at_startup(tmp_path, tiny_model_dir):
    folder = tmp_path / "uploads"
    batch_id = uploads.save_batch(folder, {"results": []})
    os.utime(folder / f"{batch_id}.json", (time.time() - 61, time.time() - 61))
    make_app(tmp_path, make_models_root(tmp_path / "models", tiny_model_dir), RETENTION_SECONDS=60)
    assert [p.name for p in folder.iterdir()] == [uploads.LOCK_NAME]


def test_bad_uploads_lose_nothing_already_stored(client, tmp_path):
    kept = upload(client, ("a.jpg", image_bytes()), ("b.png", image_bytes(fmt="PNG")))
    def stored() -> list[str]:
        return sorted(p.name for p in (tmp_path / "uploads").iterdir()
                      if p.name != uploads.LOCK_NAME)

    before = stored()
    token = csrf_token(client)
    for param in BAD_FILES:
        name, data, _ = param.values
        response = client.post(
            "/upload", data={"csrf_token": token, "file": (io.BytesIO(data), name)}
        )
        assert response.status_code == 400
    assert stored() == before
    assert client.get(f"/batch/{kept}").status_code == 200


def stored_names(tmp_path) -> set[str]:
    """The stored files: images and batches (not the lock file changes and deletions take)."""
    return {p.name for p in (tmp_path / "uploads").iterdir()} - {uploads.LOCK_NAME}


def test_delete_batch_removes_its_results_and_images_and_nothing_else(tmp_path, client):
    gone = upload(client, ("a.jpg", image_bytes()), ("b.png", image_bytes(fmt="PNG")),
                  ("bad.png", b"not an image"))
    kept = upload(client, ("c.jpg", image_bytes()))
    images = [r["image"] for r in uploads.load_batch(tmp_path / "uploads", gone)["results"]
              if "image" in r]
    others = stored_names(tmp_path) - {f"{gone}.json"} - {f"{i}.jpg" for i in images}

    assert uploads.delete_batch(tmp_path / "uploads", gone) == 2
    assert stored_names(tmp_path) == others  # the other batch and its image, untouched
    assert f"{kept}.json" in others and uploads.load_batch(tmp_path / "uploads", gone) is None
    assert uploads.delete_batch(tmp_path / "uploads", gone) is None  # already gone
    assert uploads.delete_batch(tmp_path / "uploads", "../" + kept) is None  # not an id


def test_delete_now_from_the_page_deletes_the_batch_and_says_so(tmp_path, client):
    batch_id = upload(client, ("a.jpg", image_bytes()), ("b.jpg", image_bytes((60, 60, 200))))
    kept = upload(client, ("c.jpg", image_bytes()))
    image_id = uploads.load_batch(tmp_path / "uploads", batch_id)["results"][0]["image"]
    page = client.get(f"/batch/{batch_id}").get_data(as_text=True)
    assert f'action="/batch/{batch_id}/delete"' in page and "all 2 images of this batch" in page

    response = client.post(f"/batch/{batch_id}/delete", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 303 and response.headers["Location"].startswith("/?")
    home = client.get(response.headers["Location"]).get_data(as_text=True)
    assert 'id="notices"' in home and "the results of 2 images and their stored copies" in home
    assert client.get(f"/batch/{batch_id}").status_code == 404
    assert client.get(f"/batch/{batch_id}/1").status_code == 404
    assert client.get(f"/uploads/{image_id}.jpg").status_code == 404
    assert client.get(f"/batch/{kept}").status_code == 200
    # Shown once: the next page has no notice.
    assert 'id="notices"' not in client.get("/").get_data(as_text=True)


def test_delete_needs_the_form_token_a_post_and_a_known_batch(tmp_path, client):
    batch_id = upload(client, ("a.jpg", image_bytes()))
    before = stored_names(tmp_path)
    assert client.post(f"/batch/{batch_id}/delete").status_code == 400  # no CSRF token
    assert client.get(f"/batch/{batch_id}/delete").status_code == 405
    token = csrf_token(client)
    missing = client.post(f"/batch/{'0' * 32}/delete", data={"csrf_token": token})
    assert missing.status_code == 404 and "No such result" in missing.get_data(as_text=True)
    assert stored_names(tmp_path) == before
    single = client.get(f"/batch/{batch_id}").get_data(as_text=True)
    assert "Delete now" in single and "results of this image" in single



DAMAGED_FILES = [b'{"results": [', b"\xff\xfe\x00", b"[]", b'{"results": 3, "classes": []}',
                 b'{"results": [], "classes": [], "model": null}',
                 b'{"results": [3], "classes": [], "model": "tiny"}',
                 b'{"results": [], "classes": [], "model": "tiny", "created": "today"}',
                 b'{"results": [], "classes": [], "model": "tiny", "sample": "H-1"}']


@pytest.mark.parametrize("content", DAMAGED_FILES)
def test_a_damaged_batch_file_is_said_to_be_unreadable_on_every_route_and_can_be_deleted(
        tmp_path, client, caplog, content):
    """Its pages answer 410 with what happened, never a 500 (trying again cannot help), touch
    no file, and name the file in the server's log; deleting it works, and leaves its images,
    which it no longer lists, to the purge."""
    damaged = upload(client, ("a.jpg", image_bytes()))
    kept = upload(client, ("b.jpg", image_bytes()))
    folder = tmp_path / "uploads"
    (folder / f"{damaged}.json").write_bytes(content)
    with pytest.raises(uploads.DamagedBatch):
        uploads.load_batch(folder, damaged)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    token = csrf_token(client)
    batch = f"/batch/{damaged}"
    gets = [batch, f"{batch}/0", f"{batch}.csv", f"{batch}/differential.csv",
            f"{batch}/review", f"{batch}/reviewed.zip", f"{batch}/0/view.jpg",
            f"{batch}/0/heat-map.png", f"{batch}/0/field.jpg"]
    posts = {f"{batch}/sample": {"sample_id": "H-1"}, f"{batch}/manual": {"manual_other": "5"},
             f"{batch}/0/review": {"verdict": "excluded"}, f"{batch}/review": {},
             f"{batch}/add": {"file": [(io.BytesIO(image_bytes()), "c.jpg")]}}
    for path in gets + list(posts):
        caplog.clear()
        response = (client.get(path) if path in gets else
                    client.post(path, data={"csrf_token": token, **posts[path]}))
        assert response.status_code == 410, path
        assert "their file on the server is damaged" in response.get_data(as_text=True), path
        assert f"{damaged}.json" in caplog.text, path
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert client.get(f"/batch/{kept}").status_code == 200

    response = client.post(f"{batch}/delete", data={"csrf_token": token})
    assert response.status_code == 303
    assert "damaged results from the server" in client.get(
        response.headers["Location"]).get_data(as_text=True)
    assert client.get(batch).status_code == 404
    assert set(before) - {p.name for p in folder.iterdir()} == {f"{damaged}.json"}

def _review_each(args) -> None:
    """One worker process of the test below: record a verdict on its own results, one change
    at a time, as a worker process of the server would."""
    folder, batch_id, indices = args
    for index in indices:
        uploads.update_batch(folder, batch_id,
                             lambda batch: batch["results"][index].update(note=index))


def test_changes_from_several_processes_at_once_all_land(tmp_path):
    import multiprocessing

    folder = tmp_path / "uploads"
    batch_id = uploads.save_batch(folder, {**EMPTY, "results": [{"file": f"{i}"}
                                                                for i in range(80)]})
    work = [(folder, batch_id, range(start, 80, 4)) for start in range(4)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_review_each, work)
    stored = uploads.load_batch(folder, batch_id)["results"]
    assert [r.get("note") for r in stored] == list(range(80))


def stored_times(folder, batch_id, images) -> list[float]:
    return [(folder / f"{name}").stat().st_mtime
            for name in [f"{batch_id}.json"] + [f"{image}.jpg" for image in images]]


def test_a_change_renews_the_retention_of_the_batch_and_its_images(tmp_path):
    folder = tmp_path / "uploads"
    images = [uploads.save_image(folder, Image.new("RGB", (8, 8))) for _ in range(2)]
    uploaded = time.time() - 1000
    batch_id = uploads.save_batch(folder, {**EMPTY, "created": uploaded, "results": [
        {"file": "a.jpg", "image": images[0]}, {"file": "b.jpg", "image": images[1]},
        {"file": "gone.jpg", "image": uploads.new_id()}]})  # its image deleted already
    for name in [f"{batch_id}.json"] + [f"{image}.jpg" for image in images]:
        os.utime(folder / name, (uploaded, uploaded))

    before = time.time()
    changed = uploads.update_batch(folder, batch_id,
                                   lambda batch: batch["results"][0].update(note="x"))
    assert changed["results"][0]["note"] == "x"
    assert uploads.load_batch(folder, batch_id) == changed
    assert changed["created"] == uploaded  # the upload time stays what it was
    assert before <= uploads.kept_from(changed) <= time.time()
    # The purge deletes by the files' times: all of them now say the change's time.
    assert stored_times(folder, batch_id, images) == pytest.approx(
        [uploads.kept_from(changed)] * 3)
    assert uploads.purge_expired(folder, 900) == 0
    assert uploads.purge_expired(folder, 900, now=uploads.kept_from(changed) + 901) == 3
    assert not any(p.name.endswith((".json", ".jpg")) for p in folder.iterdir())


def test_the_purge_deletes_under_the_folders_lock(tmp_path, monkeypatch):
    """A change renewing a batch in another worker between the purge's age check and its
    deletion would be told "saved" and lose the batch: the purge holds the lock changes take."""
    folder = tmp_path / "uploads"
    batch_id = uploads.save_batch(folder, {**EMPTY, "results": []})
    old = time.time() - 100
    os.utime(folder / f"{batch_id}.json", (old, old))
    held = []
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        held.append(uploads._THREADS.locked())
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(uploads.os, "unlink", unlink)
    assert uploads.purge_expired(folder, 60) == 1
    assert held == [True]


def test_the_purge_looks_without_the_lock_and_checks_each_file_again_under_it(
        tmp_path, monkeypatch):
    """Scanning a large folder under the lock would hold every change for the scan: the purge
    looks at the files' times without it, then, holding it, deletes only files still expired.
    A batch renewed by a change that took the lock between the two is kept."""
    folder = tmp_path / "uploads"
    renewed, expired = (uploads.save_batch(folder, {**EMPTY, "results": []}) for _ in range(2))
    old = time.time() - 100
    for batch_id in (renewed, expired):
        os.utime(folder / f"{batch_id}.json", (old, old))
    real_scandir, real_locked = os.scandir, uploads._locked
    scanned_holding = []

    def scandir(path):
        scanned_holding.append(uploads._THREADS.locked())
        return real_scandir(path)

    @contextmanager
    def locked(path):
        with real_locked(path):
            os.utime(folder / f"{renewed}.json")  # a change that got the lock first renews it
            yield

    monkeypatch.setattr(uploads.os, "scandir", scandir)
    monkeypatch.setattr(uploads, "_locked", locked)
    assert uploads.purge_expired(folder, 60) == 1
    assert scanned_holding == [False]
    assert (folder / f"{renewed}.json").exists()
    assert not (folder / f"{expired}.json").exists()


def test_a_purge_with_nothing_expired_takes_no_lock(tmp_path, monkeypatch):
    folder = tmp_path / "uploads"
    uploads.save_batch(folder, {**EMPTY, "results": []})
    monkeypatch.setattr(uploads, "_locked", lambda path: pytest.fail("took the lock"))
    assert uploads.purge_expired(folder, 60) == 0


@pytest.mark.parametrize("damaged", ["yesterday", None, True, [1], float("inf"), 10**400, -5])
def test_a_renewal_time_not_as_the_app_writes_it_falls_back_to_the_upload(damaged):
    assert uploads.kept_from({"created": 100.0, "kept_from": damaged}) == 100.0
    assert uploads.kept_from({"created": 100.0, "kept_from": 250}) == 250
    assert math.isnan(uploads.kept_from({"created": damaged, "kept_from": damaged}))


@pytest.mark.parametrize("damaged", [float("nan"), 1e300, 10**400, 9_999_999_999])
def test_a_change_renews_a_batch_whatever_time_its_file_held(tmp_path, damaged):
    folder = tmp_path / "uploads"
    batch_id = uploads.save_batch(folder, {**EMPTY, "results": []})
    path = folder / f"{batch_id}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "created": damaged,
                                "kept_from": damaged}))
    changed = uploads.update_batch(folder, batch_id, lambda batch: batch.update(sample={}))
    assert uploads.kept_from(changed) == pytest.approx(time.time(), abs=5)
    assert path.stat().st_mtime == uploads.kept_from(changed)


def test_a_change_that_changes_nothing_writes_and_renews_nothing_unless_asked(tmp_path):
    folder = tmp_path / "uploads"
    batch_id = uploads.save_batch(folder, {**EMPTY, "results": [{"file": "a.jpg"}]})
    path = folder / f"{batch_id}.json"
    stored, old = path.read_bytes(), time.time() - 100
    os.utime(path, (old, old))

    def refused(batch):  # as a review of a cell reviewed meanwhile is
        batch["results"][0].get("review")

    assert uploads.update_batch(folder, batch_id, refused)["results"] == [{"file": "a.jpg"}]
    assert path.read_bytes() == stored and path.stat().st_mtime == old
    kept = uploads.update_batch(folder, batch_id, refused, renew=True)  # "Keep it"
    assert path.stat().st_mtime == uploads.kept_from(kept) == pytest.approx(time.time(), abs=5)


def test_a_change_never_brings_back_a_deleted_batch(tmp_path):
    folder = tmp_path / "uploads"
    batch_id = uploads.save_batch(folder, {**EMPTY, "results": [{"file": "a.jpg"}]})
    path = folder / f"{batch_id}.json"
    assert uploads.delete_batch(folder, batch_id) == 0
    assert uploads.update_batch(folder, batch_id, lambda batch: None) is None
    assert not path.exists()
    assert uploads.update_batch(folder, "../etc", lambda batch: None) is None


def test_adding_to_a_batch_deleted_meanwhile_keeps_none_of_the_new_images(tmp_path):
    folder = tmp_path / "uploads"
    image = uploads.save_image(folder, Image.new("RGB", (8, 8)))
    assert uploads.add_to_batch(folder, uploads.new_id(), [{"file": "a", "image": image}]) is None
    assert uploads.image_path(folder, image) is None


def test_adding_to_a_batch_damaged_meanwhile_says_so_and_keeps_none_of_the_new_images(tmp_path):
    folder = tmp_path / "uploads"
    batch_id = uploads.save_batch(folder, {**EMPTY, "results": []})
    (folder / f"{batch_id}.json").write_text('{"results": [')
    image = uploads.save_image(folder, Image.new("RGB", (8, 8)))
    with pytest.raises(uploads.DamagedBatch):
        uploads.add_to_batch(folder, batch_id, [{"file": "a", "image": image}])
    assert uploads.image_path(folder, image) is None
