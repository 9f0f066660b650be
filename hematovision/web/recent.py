"""The batches this browser uploaded, so the upload page can lead back to them.

A batch is reached only by its unguessable address (`uploads.new_id`), and the app has no user
accounts: a technologist who leaves a batch page (to classify the next film, or by closing the
tab) had no way back to it but the browser's history. The ids of the batches this browser
uploaded, or added images to, are kept in its signed session cookie (newest first, at most
MAX_REMEMBERED), never on the server, so no one sees the batches of another browser; the upload
page lists those still stored and forgets those deleted or purged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import session

from hematovision.web import uploads

SESSION_KEY = "batches"
DROPPED_KEY = "batches_dropped"  # the ids the list let go to keep to MAX_REMEMBERED
# Each listed batch is read from disk on every visit to the upload page (what that costs:
# benchmarks/bench_pages.py), and a cookie holds about 4 KB.
MAX_REMEMBERED = 10


def remember(batch_id: str) -> None:
    """Put a batch this browser uploaded (or added images to) first in its list. One pushed off
    its end is still stored: the page then says that the list holds only the newest."""
    ids = [batch_id, *(i for i in _ids() if i != batch_id)]
    if len(ids) > MAX_REMEMBERED:
        let_go = [*ids[MAX_REMEMBERED:], *_ids(DROPPED_KEY)]
        session[DROPPED_KEY] = list(dict.fromkeys(let_go))[:MAX_REMEMBERED]
    session[SESSION_KEY] = ids[:MAX_REMEMBERED]


def dropped(folder: Path) -> bool:
    """Whether a batch the list let go (to keep to MAX_REMEMBERED) is still stored, so that the
    page can say the list holds only the newest; those deleted or purged since are forgotten.
    At most MAX_REMEMBERED are kept in mind, the most recently let go."""
    kept = [i for i in _ids(DROPPED_KEY) if uploads.is_stored(folder, i)]
    if kept != _ids(DROPPED_KEY):
        session[DROPPED_KEY] = kept
    return bool(kept)


def forget(batch_id: str) -> None:
    """Take a deleted batch off this browser's list."""
    if batch_id in _ids():
        session[SESSION_KEY] = [i for i in _ids() if i != batch_id]


def batches(folder: Path) -> list[dict[str, Any]]:
    """This browser's batches still stored in `folder`, newest first; those gone (deleted in
    another tab, purged at the end of the retention time) are forgotten, and so is one that
    cannot be read: the upload page lists them, and must not fail for one."""
    stored = {i: _readable(folder, i) for i in _ids()}
    kept = [i for i, batch in stored.items() if batch is not None]
    if kept != _ids():
        session[SESSION_KEY] = kept
    return [stored[i] for i in kept]


def _readable(folder: Path, batch_id: str) -> dict[str, Any] | None:
    try:
        return uploads.load_batch(folder, batch_id)
    except (OSError, uploads.DamagedBatch):
        return None


def _ids(key: str = SESSION_KEY) -> list[str]:
    """The remembered ids, ignoring anything else an old or foreign cookie might hold."""
    ids = session.get(key)
    if not isinstance(ids, list):
        return []
    return [i for i in ids if isinstance(i, str) and uploads.is_valid_id(i)][:MAX_REMEMBERED]
