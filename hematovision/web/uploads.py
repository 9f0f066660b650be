"""Where uploaded images and batch results live on disk, and how long they stay.

Files are named by random ids only (`<id>.jpg`, `<id>.json`): the client's file name is kept
inside the batch JSON for display and never touches the file system. The stored image is a
re-encoded, upright, downscaled copy, so metadata (EXIF, GPS) and any payload hidden in the
original file are not kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere (the development server on Windows) one process holds the batches
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

from flask import Flask
from PIL import Image

from hematovision.card import ModelLoadError
from hematovision.trust import STATUSES
from hematovision.web import setting_name
from hematovision.web.results import is_number, is_time

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"[0-9a-f]{32}")
# What the purge may delete: stored files and temporaries left by a crash; nothing else, so a
# mistaken UPLOAD_FOLDER setting cannot wipe unrelated files.
STORED_NAME = re.compile(r"\.?[0-9a-f]{32}\.(jpg|json)(\.[0-9a-f]{8}\.tmp)?")
# Held while a stored batch is changed or deleted, by every thread of every worker process.
LOCK_NAME = ".batches.lock"
DISPLAY_MAX_SIDE = 1024  # stored copies are for viewing; the model already saw the original
MAX_NAME_LENGTH = 120  # characters of a client file name shown back to the user


def new_id() -> str:
    """A random 128-bit id: unguessable, so one user cannot browse another's results."""
    return secrets.token_hex(16)


def is_valid_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value))


def display_name(client_name: str | None) -> str:
    """A client file name made safe to show: last path part, no control characters, bounded."""
    name = unicodedata.normalize("NFC", client_name or "")
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if len(name) > MAX_NAME_LENGTH:
        stem, dot, suffix = name.rpartition(".")
        suffix = dot + suffix if stem and len(suffix) <= 10 else ""
        name = name[: MAX_NAME_LENGTH - len(suffix) - 1] + "…" + suffix
    return name or "unnamed"


def save_image(folder: Path, image: Image.Image) -> str:
    """Store a viewing copy of an RGB image; returns its id."""
    image_id = new_id()
    copy = image.copy()
    copy.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE), Image.Resampling.BILINEAR)
    _write_atomic(folder / f"{image_id}.jpg", lambda f: copy.save(f, "JPEG", quality=90))
    return image_id


def save_batch(folder: Path, batch: dict[str, Any]) -> str:
    """Store a batch result (JSON-serialisable); returns its id. The file and the images it
    lists take the time it records as `created`, by the app's clock, as a change stamps them
    (`update_batch`): the purge goes by their times, and a file server's own clock, behind the
    app's, would have a batch just uploaded look old enough to delete."""
    batch_id, created = new_id(), time.time()
    stored = {"id": batch_id, "created": created, **batch}
    data = json.dumps(stored).encode()
    path = folder / f"{batch_id}.json"
    _write_atomic(path, lambda f: f.write(data))
    os.utime(path, (created, created))
    _stamp_images(folder, stored, created)
    return batch_id


class DamagedBatch(ValueError):
    """A stored batch file that cannot be read as a batch. Batches are written whole
    (`_write_atomic`), so only something outside the app makes one: a disk error, a hand
    edit, a file copied in from elsewhere."""

    def __init__(self, path: Path, reason: str):
        super().__init__(path, reason)  # both in args: a worker process's error unpickles
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def is_stored(folder: Path, batch_id: str) -> bool:
    """Whether the batch's file is still there (not deleted, nor purged), without reading it."""
    return (folder / f"{batch_id}.json").is_file()


def load_batch(folder: Path, batch_id: str) -> dict[str, Any] | None:
    """The stored batch, or None when the id is malformed, unknown or already purged;
    DamagedBatch when its file is not a batch."""
    if not is_valid_id(batch_id):
        return None
    path = folder / f"{batch_id}.json"
    try:
        batch = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise DamagedBatch(path, str(exc)) from None
    # What every page of a batch (and the upload page's list of them) reads first.
    if not (isinstance(batch, dict) and isinstance(batch.get("results"), list)
            and isinstance(batch.get("classes"), list) and isinstance(batch.get("model"), str)):
        raise DamagedBatch(path, "not a batch: no results, classes or model")
    if not (all(isinstance(r, dict) for r in batch["results"])
            and isinstance(batch.get("created", 0), (int, float))
            and all(isinstance(batch.get(k) or {}, dict) for k in ("sample", "manual"))):
        raise DamagedBatch(path, "a result, its upload time, sample or manual count is not "
                                 "as the app writes it")
    if damaged := _damaged_record(batch):
        raise DamagedBatch(path, f"{damaged} is not as the app writes it")
    return batch


def _damaged_record(batch: dict[str, Any]) -> str | None:
    """Which of a batch's records, inside, is not of the kinds the pages read it as (None:
    none is): a hand edit or a file copied in from elsewhere would otherwise be a 500 on each
    page that reads it, the upload page's list of this browser's batches included. A record
    an older version wrote without a field reads as before (a review without a reviewer); a
    damaged sign-off is none (`signoff.of`), which withdrawing it removes."""
    def text(value) -> bool:
        return isinstance(value, str)

    def count(value) -> bool:
        return type(value) is int and value >= 0

    def kind(value, check) -> bool:  # absent, or of its kind
        return value is None or check(value)

    if not text(batch.get("id")):
        return "its id"
    if not all(map(text, batch["classes"])):
        return "a class name"
    for result in batch["results"]:
        review, cell = result.get("review"), result.get("cell")
        if not text(result.get("file")):
            return "a result's file name"
        if "label" in result and not (
                text(result["label"]) and result.get("status") in STATUSES
                and is_number(result.get("confidence"))
                and isinstance(result.get("probabilities"), dict)
                and all(is_number(result["probabilities"].get(c)) for c in batch["classes"])
                and isinstance(result.get("candidates", []), list)
                and all(isinstance(c, dict) and text(c.get("label"))
                        and is_number(c.get("probability"))
                        for c in result.get("candidates", []))
                and isinstance(result.get("scores", {}), dict)):
            return "a result's class, status, confidence, probabilities or candidates"
        if not kind(review, lambda r: isinstance(r, dict) and text(r.get("label"))):
            return "a result's review"
        if not (kind(result.get("image"), text) and kind(result.get("sha256"), text)):
            return "a result's image"
        if not (kind(cell, lambda c: isinstance(c, dict) and count(c.get("number"))
                     and count(c.get("of")))
                and kind(result.get("white_cells"), count)
                and kind(result.get("red_cell_ratio"), is_number)):
            return "a result's cell, white cells or red-cell ratio"
    sample = batch.get("sample") or {}
    wbc = sample.get("white_cells_per_litre")
    if not (text(sample.get("id", "")) and kind(wbc, is_number)):
        return "its sample"
    manual = batch.get("manual")
    if manual and not (
            isinstance(manual.get("counts"), dict) and count(manual.get("other", 0))
            and isinstance(manual.get("beside", {}), dict)
            and all(text(k) and count(v) for part in (manual["counts"], manual.get("beside", {}))
                    for k, v in part.items())):
        return "its manual count"
    return None


def kept_from(batch: dict[str, Any]) -> float:
    """When the batch's retention time began: its last change (`update_batch`), or its upload.
    The purge deletes the batch and its images `RETENTION_SECONDS` after it. NaN where the
    file holds neither as a time (a damaged file: its pages say "an unknown time")."""
    for key in ("kept_from", "created"):
        if is_time(batch.get(key)):
            return batch[key]
    return math.nan


def update_batch(folder: Path, batch_id: str, change: Callable[[dict[str, Any]], None],
                 renew: bool = False) -> dict[str, Any] | None:
    """Apply `change` to the stored batch in place and store it again; returns the batch as
    stored, or None when there is no such batch. Read, change and write happen under the
    folder's lock, so two changes at once (two reviews from two workers) both land and a change
    never brings back a batch deleted meanwhile. A change renews the batch's retention time
    (`kept_from`): the file and every image it lists, those the change added included, take
    the change's time, by which the purge (under the same lock) deletes them. A change that
    leaves the batch as it was (refused: a cell reviewed meanwhile; or the same again) writes
    nothing and renews nothing, unless asked to `renew` ("Keep it")."""
    with _locked(folder):
        batch = load_batch(folder, batch_id)
        if batch is None:
            return None
        path = folder / f"{batch_id}.json"
        before = json.loads(path.read_bytes())  # a copy as stored, to tell a change from none
        change(batch)
        if batch == before and not renew:
            return batch
        now = time.time()
        batch["kept_from"] = now
        data = json.dumps(batch).encode()
        _write_atomic(path, lambda f: f.write(data))
        os.utime(path, (now, now))
        _stamp_images(folder, batch, now)
        return batch


def _stamp_images(folder: Path, batch: dict[str, Any], at: float) -> None:
    """Give the batch's stored images the time `at`: the purge deletes each image by its own
    file's time, so they stay exactly as long as the batch that lists them."""
    for image_id in {r.get("image") for r in batch["results"]}:
        if isinstance(image_id, str) and is_valid_id(image_id):
            try:
                os.utime(folder / f"{image_id}.jpg", (at, at))
            except FileNotFoundError:  # removed from the batch, or never stored
                pass


class BatchFull(Exception):
    """The results added would take a batch past its size limit (`add_to_batch`'s `fits`)."""


def add_to_batch(folder: Path, batch_id: str, results: list[dict[str, Any]],
                 fits: Callable[[list[dict[str, Any]]], bool] = lambda _: True,
                 noted: Callable[[dict[str, Any], list[dict[str, Any]]], None] = lambda *_: None
                 ) -> dict[str, Any] | None:
    """Append results, whose images are already stored, to a stored batch; returns the batch
    as stored, or None when there is no such batch. BatchFull when the results it would hold
    do not `fit` (checked under the lock: two additions at once could each have fitted alone);
    `noted(batch, added)` records the addition in the batch, under the same lock.
    Whatever was not added (an image the batch already holds, by its "sha256", included) has
    its new images deleted. The addition renews the batch (`update_batch`), the new images
    with it, so the purge deletes them with the batch."""
    added: list[dict[str, Any]] = []

    def add(stored: dict[str, Any]) -> None:
        # An image another addition stored meanwhile (the same file sent twice at once) is
        # checked for here, under the lock, as the limit is: counted twice it skews the counts.
        held = {r.get("sha256") for r in stored["results"]} - {None}
        fresh = [r for r in results if r.get("sha256") is None or r["sha256"] not in held]
        if not fits(stored["results"] + fresh):
            raise BatchFull
        stored["results"].extend(fresh)
        added.extend(fresh)
        if fresh:
            noted(stored, fresh)

    images = [p for p in (image_path(folder, r.get("image") or "") for r in results) if p]
    try:
        return update_batch(folder, batch_id, add)
    except BaseException:  # the batch's file was not written (a full disk): nothing was added
        added.clear()
        raise
    finally:
        kept_ids = {r.get("image") for r in added}
        for path in images:  # not added: no such batch, full, unreadable, or held already
            if path.stem not in kept_ids:
                path.unlink(missing_ok=True)


def delete_batch(folder: Path, batch_id: str) -> int | None:
    """Delete a stored batch and the images it holds now, before its retention ends; returns
    how many images were deleted, or None when there is no such batch. The images go first, so
    a deletion cut short leaves a batch that can be deleted again (and the purge takes whatever
    is left in any case). Only this batch's own files are touched: every stored image belongs
    to the one batch it was uploaded in (the cells of a field share its image, counted once)."""
    with _locked(folder):
        try:
            batch = load_batch(folder, batch_id)
        except DamagedBatch:  # which images it held cannot be read: the purge takes them
            batch = {"results": []}
        if batch is None:
            return None
        images = {image_path(folder, r.get("image") or "") for r in batch["results"]
                  if isinstance(r, dict)}
        images.discard(None)
        for path in images:
            path.unlink(missing_ok=True)
        (folder / f"{batch_id}.json").unlink(missing_ok=True)
        return len(images)


def delete_images(folder: Path, image_ids) -> None:
    """Delete the images a request stored for a batch that will not hold them."""
    for image_id in set(image_ids):
        delete_image(folder, image_id)


def delete_image(folder: Path, image_id: str) -> None:
    """Delete one stored image (an image removed from its batch), if it is there."""
    path = image_path(folder, image_id)
    if path is not None:
        path.unlink(missing_ok=True)


def image_path(folder: Path, image_id: str) -> Path | None:
    if not is_valid_id(image_id):
        return None
    path = folder / f"{image_id}.jpg"
    return path if path.is_file() else None


def purge_expired(folder: Path, retention_seconds: float, now: float | None = None) -> int:
    """Delete stored files older than the retention time; returns how many were deleted.
    The folder is scanned without the lock (a folder of many files would hold every change for
    the scan's length); each file found expired is then looked at again and deleted under the
    folder's lock, since a change renewing its batch in another worker meanwhile would
    otherwise be told "saved" and lose the batch."""
    if not folder.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - retention_seconds
    expired = [entry.path for entry in os.scandir(folder)
               if STORED_NAME.fullmatch(entry.name) and _modified_before(entry.path, cutoff)]
    if not expired:
        return 0
    deleted = 0
    with _locked(folder):
        for path in expired:
            if _modified_before(path, cutoff):
                try:
                    os.unlink(path)
                    deleted += 1
                except FileNotFoundError:  # deleted meanwhile, e.g. by "Delete now"
                    pass
    return deleted


def _modified_before(path: str, cutoff: float) -> bool:
    try:
        return os.stat(path).st_mtime < cutoff
    except FileNotFoundError:  # deleted meanwhile (a temporary file renamed)
        return False


_THREADS = threading.Lock()


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """The folder's batch lock: a thread lock within this process, an exclusive `flock` on
    LOCK_NAME across processes (gunicorn workers). Changes, deletions and the purge take it, so
    a change either renews a batch before the purge looks at it or finds it purged (a 404 that
    says so)."""
    folder.mkdir(parents=True, exist_ok=True)
    with _THREADS, open(folder / LOCK_NAME, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # the lock is released when the file is closed


def _write_atomic(path: Path, write) -> None:
    """Write via a temporary name so a reader (or the purge) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def init_app(app: Flask) -> None:
    """Check that the upload folder can be written (`writable`), then purge expired uploads
    at startup and at most every PURGE_INTERVAL_SECONDS: before requests, and where none come
    (a night, a weekend), in a background thread, so that images and sample IDs do not outlive
    their retention time for want of a visitor. Either finds the other's work done."""
    folder = Path(app.config["UPLOAD_FOLDER"])
    problem = holds_the_app(folder, Path(app.config["MODELS_ROOT"])) or writable(folder)
    if problem:
        raise ModelLoadError(f"{setting_name('UPLOAD_FOLDER')}: {problem}")
    retention = float(app.config["RETENTION_SECONDS"])
    interval = float(app.config["PURGE_INTERVAL_SECONDS"])
    last = {"time": time.time()}
    purge_expired(folder, retention)

    def purge_if_due() -> None:
        now = time.time()
        if now - last["time"] >= interval:
            last["time"] = now
            try:
                purge_expired(folder, retention, now)
            except OSError as exc:  # a full or read-only disk: the request itself may not write
                log.error("cannot purge expired uploads in %s: %s", folder, exc)

    app.before_request(purge_if_due)
    if app.config.get("PURGE_IN_BACKGROUND"):
        def keep_purging() -> None:
            while True:
                time.sleep(max(interval, 1.0))
                purge_if_due()

        threading.Thread(target=keep_purging, name="purge", daemon=True).start()


def holds_the_app(folder: Path, models_root: Path) -> str | None:
    """Why `folder` may not take uploads (None: it may): the file system's root, a folder
    holding the app's code or its models, or one inside the models (a model's own folder),
    where stored images and results would lie among them."""
    resolved, models = folder.resolve(), models_root.resolve()
    if resolved == Path(resolved.anchor):
        return "the file system's root cannot hold uploads: give a folder of their own."
    for held in (Path(__file__).resolve().parents[2], models):
        if resolved == held or resolved in held.parents:
            return (f"{folder} holds the app's code or models ({held}): give uploads a folder "
                    "of their own.")
    if models in resolved.parents:
        return (f"{folder} lies among the models ({models}): give uploads a folder of their "
                "own.")
    return None


def writable(folder: Path) -> str | None:
    """Why the app cannot store uploads in `folder` (None: it can): the folder is created
    where missing, readable by the app's user only, and a file is written there and removed.
    Checked at startup and by /api/health, so a full or read-only disk is seen before a
    technologist's upload fails on it."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = folder / f".probe.{secrets.token_hex(4)}"
        try:
            probe.write_bytes(b"x")
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        return f"cannot store uploads in {folder} ({exc.strerror or exc})."
    return None
