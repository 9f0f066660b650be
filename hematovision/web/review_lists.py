"""The review page's lists (`?show=`): which results each holds and in which order, what each
class list has left to confirm, and the list a page was opened from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import request

from hematovision import differential
from hematovision.cells import OTHER_WHITE_CELL
from hematovision.spreadsheet import whole_number
from hematovision.trust import ACCEPTED
from hematovision.web import results


# The review page's lists (`?show=`): which results each holds. The default, "no-white-cell",
# "not-a-cell", "near-threshold" (below target) and "over-exposed" (accepted cells of images
# read over-exposed) leave out reviewed results, so they shrink
# as reviews are saved; "all" does not, so it pages. Beside them, one list per class
# (`?show=<class>`, and EXCLUDED): the cells counted as that class now, for verifying the count
# class by class, as a technologist verifies an analyzer's pre-classified cells (class_list).
REVIEW_LISTS: dict[str, Callable[[dict], bool]] = {
    "": differential.needs_review,
    "all": lambda r: differential.status_of(r) is not None,
    "no-white-cell": lambda r: results.no_white_cell(r) and differential.verdict_of(r) is None,
    "not-a-cell": results.set_aside_unseen,
    "near-threshold": results.near_threshold,
    "over-exposed": results.over_exposed_unseen,
}


def review_list(stored: dict) -> str:
    """The review page's list named by the request (`?show=`); unknown names: the default."""
    show = request.args.get("show", "")
    return show if show in REVIEW_LISTS or show in class_lists(stored) else ""


def class_lists(stored: dict) -> list[str]:
    """The review page's lists of one class each: the batch's classes, then the white cells of
    types the model does not name (OTHER_WHITE_CELL), then EXCLUDED."""
    return [*stored["classes"], OTHER_WHITE_CELL, differential.EXCLUDED]


def in_list(show: str) -> Callable[[dict], bool]:
    """Whether a result belongs to the review page's list `show`: a class list holds the cells
    counted as that class now (accepted by the model and not reviewed, or given it on review,
    OTHER_WHITE_CELL included), the EXCLUDED list those excluded on review."""
    if show in REVIEW_LISTS:
        return REVIEW_LISTS[show]
    return lambda r: (differential.counted_class(r) or differential.verdict_of(r)) == show


def to_confirm(result: dict) -> bool:
    """A cell counted as the model accepted it, which no reviewer has looked at yet."""
    return differential.status_of(result) == ACCEPTED and differential.verdict_of(result) is None


def listed_in(show: str, found: list[dict]) -> list[int]:
    """The indices of the list `show`, in the order the review page shows them. Every cell:
    least sure first (results.least_sure_first); a class list: the cells still to confirm
    first, least sure first, so that once a page of them is confirmed the next takes its place;
    the other lists: in upload order."""
    if show == "all":
        return results.least_sure_first(found)
    listed = [i for i, r in enumerate(found) if in_list(show)(r)]
    if show in REVIEW_LISTS:
        return listed
    return sorted(listed, key=lambda i: (not to_confirm(found[i]), found[i]["confidence"], i))


@dataclass(frozen=True)
class ClassTab:
    """One class list as the review page's tabs name it."""
    show: str
    cells: int
    unconfirmed: int  # of them, accepted cells no reviewer has looked at yet


def class_tabs(stored: dict) -> list[ClassTab]:
    found = stored["results"]
    tabs = []
    for show in class_lists(stored):
        mine = [r for r in found if in_list(show)(r)]
        tabs.append(ClassTab(show, len(mine), sum(to_confirm(r) for r in mine)))
    return tabs


def list_came_from(stored: dict) -> dict | None:
    """The review list (and its page) a cell page was opened from, as `?show=` and `?start=`
    name it: {"show": ..., "start": ...} for url_for, or None where it was not opened from one."""
    show = request.args.get("show")
    if show is None or show != review_list(stored):
        return None
    start = whole_number(request.args.get("start", ""))
    return {"show": show, "start": start or None}  # "": the list of cells to review
