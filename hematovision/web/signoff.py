"""A batch's sign-off: the technologist who checked its count says so by name, as a lab releases
a verified differential. Kept in the stored batch with what it signed (a fingerprint of every
result, review, the sample's details, the manual count and the reference intervals the flags
were read against), so that a sign-off the count has since moved away from (a review changed,
images added, the sample's count edited, the lab's intervals changed) is shown as such instead
of vouching for figures no one signed. The form carries the fingerprint of the count its page
showed, so that a change made meanwhile (in another tab, by a colleague) is not signed unseen,
and the time of the sign-off it showed, so that a colleague's sign-off given meanwhile is not
replaced unseen."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hematovision.differential import counted_label, needs_review, verdict_of
from hematovision.web import sample
from hematovision.web.forms import TypedForm, plain_text
from hematovision.web.results import counted_unseen, images_and_cells, is_time, set_aside_unseen

MAX_NAME_LENGTH = 60
# A remark the signer adds for the report: what the differential cannot say (red-cell
# morphology, toxic granulation, platelet clumps, smudge cells).
MAX_COMMENT_LENGTH = 300
NAME_FIELD = "signed_by"
COMMENT_FIELD = "comment"
SHOWN_FIELD = "count"  # the fingerprint of the count the signer's page showed
SIGNED_FIELD = "signed"  # the time of the sign-off the signer's page showed ("": none)
WITHDRAW_FIELD = "withdraw"  # the withdraw button's name
BAD_NAME = (f"Sign with your name or initials: at most {MAX_NAME_LENGTH} letters, digits, spaces "
            "and punctuation; {typed!r} is not.")
NO_NAME = "Give your name or initials to sign the count off."
BAD_COMMENT = (f"A comment is one line of at most {MAX_COMMENT_LENGTH} letters, digits, spaces and "
               "punctuation.")
STILL_TO_REVIEW = (
    "{count} unidentified cell{s} still wait{verb} for review: review {them} first, so that the "
    "count you sign does not lean towards the classes the model is sure of.")
SET_ASIDE_UNSEEN = (
    "{what} called not a blood-cell image {verb} not reviewed: look at {them} first "
    "(give the class of any white cell, exclude the rest), since a white cell {among} is "
    "missing from the count you sign.")
NO_SAMPLE_ID = (
    "Give the sample's ID first (Sample ID, at the top of this page): a count signed off "
    "without one cannot be told from another patient's on the report.")
NOTHING_COUNTED = "No white cell is counted in this batch, so there is no differential to sign."
NO_WHITE_CELL_COUNTED = (
    "{count} image{s} in which no white cell was found {verb} counted but not reviewed: check "
    "{them} first (exclude any that shows no white cell), as {their} answer{s} {verb2} about "
    "whatever lay at the centre of the crop.")
SIGNED_MEANWHILE = (
    "{name} signed this count off after this page was loaded (another tab, or a colleague): "
    "that sign-off stands, below. To replace it with yours, sign again.")
NOT_WITHDRAWN = (
    "{name} signed this count off after this page was loaded (another tab, or a colleague): "
    "nothing was withdrawn. Here is that sign-off; withdraw it if you mean to.")
CHANGED_MEANWHILE = (
    "The count changed after this page was loaded (a review, added images or the sample's "
    "details, from another tab or a colleague): check it as it is now, below, and sign again.")


@dataclass(frozen=True)
class SignOff:
    by: str
    at: float  # seconds since the epoch
    white_cells: int  # white cells counted when signed
    reviewed: int  # of them, those a reviewer confirmed or gave their class
    current: bool  # the batch still counts what was signed
    comment: str = ""  # the signer's remark for the report


def fingerprint(batch: dict[str, Any], intervals: Any) -> str:
    """What a sign-off vouches for, as a digest: each result's file, model answer and review
    verdict, the sample's details, the manual count, and `intervals` (the reference intervals
    in force, which the flags are read against). A review's time is left out, so confirming a
    cell again as the same class keeps the sign-off."""
    signed = {
        "results": [[r.get("file"), r.get("cell"), r.get("label"), r.get("status"), verdict_of(r)]
                    for r in batch["results"]],
        "sample": {k: v for k, v in (batch.get("sample") or {}).items() if k != "at"},
        "manual": {k: v for k, v in (batch.get("manual") or {}).items() if k != "at"},
        "intervals": intervals,
    }
    return hashlib.sha256(json.dumps(signed, sort_keys=True).encode()).hexdigest()


def of(batch: dict[str, Any], count: str) -> SignOff | None:
    """The batch's sign-off, or None where it was never signed (or was withdrawn); `count`:
    the batch's `fingerprint` as it stands, which says whether the sign-off still does."""
    stored = batch.get("signoff")
    # A record damaged outside the app (cut short, of other kinds) vouches for nothing.
    if not (isinstance(stored, dict) and all(isinstance(stored.get(k), str)
                                             for k in ("by", "fingerprint"))
            and all(type(stored.get(k)) is int for k in ("white_cells", "reviewed"))
            and isinstance(stored.get("comment", ""), str)):
        return None
    return SignOff(stored["by"], stored.get("at"), stored["white_cells"], stored["reviewed"],
                   current=stored["fingerprint"] == count, comment=stored.get("comment", ""))


def shown_as(batch: dict[str, Any]) -> str:
    """The batch's sign-off as a page's form carries it (SIGNED_FIELD): its time, or "" for
    none."""
    stored = batch.get("signoff")
    if not isinstance(stored, dict):
        return ""
    at = stored.get("at")
    return repr(float(at)) if is_time(at) else "?"  # a damaged time: still one to compare


def signed_meanwhile(batch: dict[str, Any], shown: str) -> str | None:
    """Who signed the batch off since a page that showed the sign-off `shown` (`shown_as`)
    was loaded; None where the page showed the one that stands, or none stands (one withdrawn
    meanwhile leaves nothing to replace)."""
    current = shown_as(batch)
    if not current or current == shown:
        return None
    return str(batch["signoff"].get("by") or "Someone")  # a damaged record names no one


def refusal(batch: dict[str, Any]) -> str | None:
    """Why the batch's count cannot be signed off as it stands (every reason); None when it
    can."""
    return " ".join(reason for _, reason in refusals(batch)) or None


# What each refusal asks for, which the page links to.
REVIEW, LOOK, SAMPLE = "review", "not-a-cell", "sample"


def refusals(batch: dict[str, Any]) -> list[tuple[str, str]]:
    """Each reason the batch's count cannot be signed off as it stands, with what it asks for
    (REVIEW, LOOK, SAMPLE, or "" for nothing a link leads to); all at once, so that a
    technologist meets them together rather than one refused sign-off at a time."""
    found, reasons = batch["results"], []
    waiting = sum(needs_review(r) for r in found)
    if waiting:
        reasons.append((REVIEW, STILL_TO_REVIEW.format(
            count=waiting, s="s" if waiting != 1 else "", verb="" if waiting != 1 else "s",
            them="them" if waiting != 1 else "it")))
    set_aside = [r for r in found if set_aside_unseen(r)]
    if set_aside:
        one = len(set_aside) == 1
        reasons.append((LOOK, SET_ASIDE_UNSEEN.format(
            what=images_and_cells(set_aside), verb="is" if one else "are",
            them="it" if one else "them", among="in it" if one else "among them")))
    unseen = sum(map(counted_unseen, found))
    if unseen:
        one = unseen == 1
        reasons.append(("", NO_WHITE_CELL_COUNTED.format(
            count=unseen, s="" if one else "s", verb="is" if one else "are",
            them="it" if one else "them", their="its" if one else "their",
            verb2="is" if one else "are")))
    if not waiting and not set_aside and not any(counted_label(r) for r in found):
        reasons.append(("", NOTHING_COUNTED))  # cells still to be looked at may yet count
    if not str(sample.of(batch).id or "").strip():
        reasons.append((SAMPLE, NO_SAMPLE_ID))
    return reasons


def read_form(form: Mapping[str, str]) -> tuple[tuple[str, str] | None, TypedForm]:
    """The signer's name and comment (empty: none) a form gives, or None and the form with a
    message for each refused field."""
    typed = {NAME_FIELD: str(form.get(NAME_FIELD, ""))[:200],
             COMMENT_FIELD: str(form.get(COMMENT_FIELD, ""))[:MAX_COMMENT_LENGTH + 100]}
    errors, values = {}, {}
    for field, limit in ((NAME_FIELD, MAX_NAME_LENGTH), (COMMENT_FIELD, MAX_COMMENT_LENGTH)):
        try:
            values[field] = plain_text(typed[field], limit)
        except ValueError:
            errors[field] = (BAD_NAME.format(typed=typed[field][:MAX_NAME_LENGTH + 10])
                             if field == NAME_FIELD else BAD_COMMENT)
    if NAME_FIELD not in errors and not values[NAME_FIELD]:
        errors[NAME_FIELD] = NO_NAME
    if errors:
        return None, TypedForm(typed, errors)
    return (values[NAME_FIELD], values[COMMENT_FIELD]), TypedForm(values)


def form_of(signed: SignOff | None) -> TypedForm:
    """The sign-off form as the batch page first shows it: after a sign-off the count has
    moved away from, filled in with its comment, to sign again without retyping it (not with
    a name, neither the earlier signer's nor the one this browser records changes under: a
    sign-off is a person's own word, typed by them, and a shared workstation's browser may
    hold a colleague's)."""
    if signed is None or signed.current:
        return TypedForm()
    return TypedForm({COMMENT_FIELD: signed.comment})


def sign(batch: dict[str, Any], name: str, comment: str, at: float, count: str) -> None:
    """Record `name`'s sign-off of the batch as it stands, `count` its `fingerprint` (in
    place), with the signer's `comment` (empty: none), replacing any before."""
    counted = [r for r in batch["results"] if counted_label(r)]
    batch["signoff"] = {"by": name, "at": at, "white_cells": len(counted),
                        "reviewed": sum(verdict_of(r) is not None for r in counted),
                        "comment": comment, "fingerprint": count}


def withdraw(batch: dict[str, Any]) -> None:
    batch.pop("signoff", None)
