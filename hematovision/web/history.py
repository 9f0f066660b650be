"""Who changed a batch, when and how: the batch's history, and the name a browser's changes
are recorded under.

The app has no user accounts. A technologist gives their name or initials once in a browser
(kept in its signed session cookie, which the browser drops when it closes: a shared
workstation does not keep the last person's), and every change a page then makes to a batch
is recorded under it, with the time: the upload, added and removed images, each review, the
sample's details, the manual count, sign-offs. A lab's quality system asks who verified each
result and who changed a reported count; a sign-off alone names only the last person.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import session

from hematovision.spreadsheet import inert
from hematovision.web import signoff
from hematovision.web.forms import plain_text
from hematovision.web.results import is_time, iso_time

SESSION_KEY = "reviewer"
NAME_FIELD = "reviewer"
MAX_NAME_LENGTH = signoff.MAX_NAME_LENGTH  # a reviewer's name, as a signer's
# Events a batch keeps: beyond, the oldest reviews and edits go (and the page says how many);
# the upload and every sign-off and withdrawal stay. A batch lives an hour or so; its history
# is downloaded with it, as its CSVs are, to be kept.
MAX_EVENTS = 5000

# What an event records: its kind, then what changed, in words.
UPLOADED, ADDED, REMOVED, REVIEWED, SAMPLE, MANUAL, SIGNED, WITHDRAWN = (
    "uploaded", "added", "removed", "reviewed", "sample", "manual", "signed", "withdrawn")
KEPT = (UPLOADED, SIGNED, WITHDRAWN)  # never dropped for the limit
KINDS = {UPLOADED: "Uploaded", ADDED: "Images added", REMOVED: "Image removed",
         REVIEWED: "Review", SAMPLE: "Sample's details", MANUAL: "Manual count",
         SIGNED: "Signed off", WITHDRAWN: "Sign-off withdrawn"}
BAD_NAME = ("Give your name or initials, with a letter or digit, in at most {limit} letters, "
            "digits, spaces and punctuation, or leave the field empty to record changes without "
            "a name.")


@dataclass(frozen=True)
class Event:
    at: float
    by: str  # "" where the browser gave no name
    kind: str  # one of KINDS
    text: str


def reviewer() -> str:
    """The name this browser's changes are recorded under ("" where none was given)."""
    name = session.get(SESSION_KEY)
    return name if isinstance(name, str) else ""


def read_name(form: Mapping[str, str]) -> str:
    """The name a form gives (empty: none); ValueError where it is not plain text."""
    return plain_text(str(form.get(NAME_FIELD, ""))[:MAX_NAME_LENGTH + 100], MAX_NAME_LENGTH)


def remember(name: str) -> None:
    """Record this browser's later changes under `name` (empty: under none)."""
    if name:
        session[SESSION_KEY] = name
    else:
        session.pop(SESSION_KEY, None)


def record(batch: dict[str, Any], kind: str, text: str, at: float,
           by: str | None = None) -> None:
    """Add an event to the batch's history (in place, under the batch's lock: the change's
    own), by this browser's name unless `by` names someone (the signer of a sign-off)."""
    if not isinstance(batch.get("history"), list):  # none yet, or damaged: start it anew
        batch["history"] = []
    events = batch["history"]
    events.append({"at": at, "by": reviewer() if by is None else by, "kind": kind,
                   "text": text})
    if len(events) > MAX_EVENTS:
        kept = {i for i, e in enumerate(events) if isinstance(e, dict) and e.get("kind") in KEPT}
        gone = set([i for i in range(len(events)) if i not in kept][:len(events) - MAX_EVENTS])
        batch["history"] = [e for i, e in enumerate(events) if i not in gone]
        batch["history_dropped"] = dropped(batch) + len(gone)


def of(batch: dict[str, Any]) -> list[Event]:
    """The batch's history, oldest first; a batch stored before histories were kept has none."""
    events = batch.get("history")
    if not isinstance(events, list):
        return []
    return [Event(e["at"], e["by"], e["kind"], e["text"]) for e in events
            if isinstance(e, dict) and is_time(e.get("at"))
            and all(isinstance(e.get(k), str) for k in ("by", "kind", "text"))]


def dropped(batch: dict[str, Any]) -> int:
    """How many of the batch's oldest events were dropped (MAX_EVENTS)."""
    count = batch.get("history_dropped", 0)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


COLUMNS = ("at", "by", "kind", "change")


def to_csv(batch: dict[str, Any]) -> str:
    """The history as a table to keep beside the batch's CSVs: one row per event, its time
    (ISO 8601, UTC), who, its kind and what changed."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in of(batch):
        writer.writerow([iso_time(e.at), *(inert(v) for v in (e.by, e.kind, e.text))])
    return out.getvalue()
