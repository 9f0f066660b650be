"""How the pages say things: the template filters and globals that format a value (numbers,
shares, moments, names, verdicts, counts) and the context every page's layout reads. A blueprint
without routes, so that each is app-wide and its name stands on its definition."""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone

from flask import Blueprint, current_app

from hematovision import differential
from hematovision.cells import (OTHER_WHITE_CELL, display_name, is_nucleated_red_cell,
                                other_white_cells)
from hematovision.counting import share_range
from hematovision.fields import NO_WHITE_CELL
from hematovision.trust import (ACCEPTED, BELOW_ONE, EXACTLY_ONE, NOT_A_CELL, STATUS_TEXT,
                                UNIDENTIFIED, WHITE_CELL_RULE, short_of_target,
                                uncalibrated_note)
from hematovision.web import models, results, sample
from hematovision.web.results import is_number

bp = Blueprint("filters", __name__)
# A page left open warns that its batch is about to be deleted in the last quarter of the
# retention time, and at most its last 10 minutes: time to finish a review, not a standing alarm.
WARN_BEFORE_DELETION_SECONDS = 600


@bp.app_context_processor
def layout_context() -> dict:
    return {
        "model_names": models.names(),
        "default_model": models.default_name(),
        "retention": retention(),
        "STATUS_TEXT": STATUS_TEXT,
        "ACCEPTED": ACCEPTED,
        "UNIDENTIFIED": UNIDENTIFIED,
        "NOT_A_CELL": NOT_A_CELL,
        "BELOW_ONE": BELOW_ONE,
        "EXACTLY_ONE": EXACTLY_ONE,
        "EXCLUDED": differential.EXCLUDED,
        "OTHER_WHITE_CELL": OTHER_WHITE_CELL,
        "NO_WHITE_CELL": NO_WHITE_CELL,
        "WHITE_CELL_RULE": WHITE_CELL_RULE,
    }


bp.add_app_template_filter(display_name, "cell_name")
bp.add_app_template_global(other_white_cells, "other_white_cells")
bp.add_app_template_global(uncalibrated_note, "uncalibrated_note")


@bp.app_template_filter("isolated")
def isolated(text: str) -> str:
    """A name or ID a person typed, set apart from the sentence around it for right-to-left
    text (Unicode first-strong isolate), where markup cannot (<bdi>): a message, an attribute.
    Written right to left, "Signed off by <name>, 07 Dec" would otherwise carry the date into
    the name's direction."""
    return f"\u2068{text}\u2069"


@bp.app_template_filter("compact")
def compact(value) -> str:
    """A card value on one line: numbers to 4 significant digits, nested values flattened."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {compact(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(compact(v) for v in value)
    return str(value)


@bp.app_template_filter("sentence")
def sentence(text: str) -> str:
    """A card's free text ended as a sentence, so the page's next sentence does not run on."""
    text = str(text).rstrip()
    return text if not text or text[-1] in ".!?" else text + "."


bp.add_app_template_filter(results.name_of, "item_name")
bp.add_app_template_filter(results.image_count, "image_count")
bp.add_app_template_filter(results.images_and_cells, "images_and_cells")
bp.add_app_template_filter(results.first_of_image, "first_of_image")
bp.add_app_template_test(results.is_removed, "removed")
bp.add_app_template_test(is_nucleated_red_cell, "nucleated_red_cell")
bp.add_app_template_filter(results.reviewer_of, "reviewer_of")
bp.add_app_template_filter(results.removal_reason, "removal_reason")
bp.add_app_template_filter(results.no_white_cell, "no_white_cell")
bp.add_app_template_filter(results.exposure_of, "exposure_check")
bp.add_app_template_filter(differential.flag_text, "flag_text")
bp.add_app_template_filter(differential.findings, "findings")


@bp.app_template_filter("batch_name")
def batch_name(stored: dict) -> str:
    """A batch as its pages name it: "Batch of N images", after its sample's ID where given."""
    title, described = results.batch_title(stored["results"]), sample.of(stored)
    return f"Sample {described.id} · {title}" if described.id else title


@bp.app_template_filter("status")
def status(result: dict) -> str | None:
    """accepted / unidentified / not_a_cell of a stored result; None for an unreadable file."""
    return differential.status_of(result)


bp.add_app_template_filter(results.iso_time, "iso_utc")
bp.add_app_template_global(results.held_out_band, "held_out_band")
# A band whose 95 % range is wider than this many points says its images are too few to tell
# (3 of 3 right: 29 % to 100 %), lest "100 %" reassure about a cell held out so rarely.
bp.add_app_template_global(0.2, "WIDE_BAND_RANGE")
bp.add_app_template_global(results.near_threshold, "near_threshold")
bp.add_app_template_global(results.second_choice, "second_choice")
bp.add_app_template_filter(short_of_target, "short_of_target")


@bp.app_template_global()
def confidence_digits(result: dict) -> int:
    """The decimals at which a result's confidence prints apart from the edges between its
    band and the next (0.9896 "98.96 %", in the band up to 99 %), so that two cells shown at
    "99.0 %", one badged below target and one not, never stand side by side."""
    band = results.held_out_band(result)
    if band is None:
        return 1
    edges = [e for e in (band["low"], band["high"]) if 0 < e < 1]
    return max([decimals_apart(result.get("confidence"), e, 100, 1) for e in edges] or [1])


@bp.app_template_global()
def band_range(band: dict) -> tuple[float, float]:
    """The exact 95 % range of the share right among a held-out band's images
    (`results.held_out_band`), as a differential's range is computed."""
    return share_range(band["right"], band["images"])


@bp.app_template_filter("band_edge")
def band_edge(value: float) -> str:
    """A confidence band's edge as the pages write it: 0.95 "95 %", 0.999 "99.9 %"."""
    return f"{round(100 * value, 4):g} %"


@bp.app_template_filter("clock_utc")
def clock_utc(timestamp: float, seconds: bool = False) -> str:
    """A moment for people, with its day (retention may be set to days): in UTC, and said so,
    since the server's zone is not theirs; with `seconds`, to the second (a history's changes
    come seconds apart). A time a damaged file holds instead of one: "an unknown time"."""
    if not results.is_time(timestamp):
        return "an unknown time"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime(
        f"%d %b %Y, %H:%M{':%S' if seconds else ''} UTC")


@bp.app_template_filter("fixed")
def fixed(value, digits: int = 4) -> str:
    """A card or score number with `digits` decimals; a dash where the card has none."""
    return f"{value:.{digits}f}" if is_number(value) else "—"


@bp.app_template_filter("pct")
def pct(value, digits: int = 1) -> str:
    """A 0..1 share as a percentage with `digits` decimals; a dash where the card has none."""
    return f"{value * 100:.{digits}f} %" if is_number(value) else "—"


@bp.app_template_filter("threshold_pct")
def threshold_pct(value, digits: int = 1) -> str:
    """A confidence threshold as a percentage, with the decimals that keep one below 1 from
    reading "100.0 %" (0.9999: "99.99 %"); BELOW_ONE, which accepts only a confidence computed
    as exactly 1, in words."""
    if value == BELOW_ONE:
        return EXACTLY_ONE
    return share_pct(value, digits)


@bp.app_template_filter("share_pct")
def share_pct(value, digits: int = 1) -> str:
    """A 0..1 share as a percentage with the decimals that keep one short of 1 from reading
    "100.0 %", and one above 0 from reading "0.0 %": 19,999 right of 20,000 is "99.995 %"."""
    while is_number(value) and digits < 6 and (
            (value < 1 and pct(value, digits) == pct(1, digits))
            or (0 < value and pct(value, digits) == pct(0, digits))):
        digits += 1
    return pct(value, digits)


@bp.app_template_filter("interval")
def interval(bounds) -> str:
    """A reference interval, as labs write it: "40–70" (percent), "2–7.5" (x 10^9/L); "0" for
    none at all (nucleated red cells in an adult)."""
    low, high = bounds
    return f"{low:g}" if low == high else f"{low:g}–{high:g}"


@bp.app_template_filter("probability_pct")
def probability_pct(value, digits: int = 1) -> str:
    """A model's probability as a percentage with `digits` decimals, never rounded to a
    certainty it does not have: with one decimal, 99.95 % and above reads "> 99.9 %", a
    non-zero value below 0.05 % "< 0.1 %"."""
    shown = pct(value, digits)
    step = 10.0**-digits
    if shown == pct(1.0, digits):
        return f"> {100 - step:.{digits}f} %"
    if is_number(value) and value > 0 and shown == pct(0.0, digits):
        return f"< {step:.{digits}f} %"
    return shown


@bp.app_template_global()
def decimals_apart(value, threshold, scale: float = 1.0, least: int = 1) -> int:
    """The fewest decimals (from `least`) at which `value` and `threshold`, times `scale`, print
    differently, so that a score shown beside its threshold never looks equal to it while the
    check says it is above or below (rounding keeps the order of numbers that print apart);
    `least` where they are equal or either is missing."""
    if not (is_number(value) and is_number(threshold)):
        return least
    for digits in range(least, 7):
        if f"{value * scale:.{digits}f}" != f"{threshold * scale:.{digits}f}":
            return digits
    return least


@bp.app_template_filter("verdict")
def verdict_text(verdict: str) -> str:
    """A reviewer's verdict in words: the class's display name, or what excluding means."""
    if verdict == differential.EXCLUDED:
        return "excluded from the counts"
    return display_name(verdict)


@bp.app_template_global()
def left_out_text(reason: str) -> str:
    """Why an image is not in the differential, in words (differential.LEFT_OUT_REASONS)."""
    return "Excluded on review" if reason == differential.EXCLUDED else STATUS_TEXT[reason]


@bp.app_template_global("retention_text")
def retention() -> str:
    """How long uploads and results are kept after their batch's last change, in words
    ("1 hour")."""
    return human_duration(current_app.config["RETENTION_SECONDS"])


@bp.app_template_global()
def time_left(expires: float) -> dict:
    """How long a batch has left before it is deleted at `expires`, as its pages warn of it:
    `seconds` is the server's figure as it writes the page, which static/app.js counts down
    from (a browser's own clock may be wrong), `soon` whether the warning shows already;
    `known` is false for a time a damaged file holds (the page then has no warning)."""
    known = results.is_time(expires)
    seconds = max(0.0, expires - time.time()) if known else 0.0
    warn = min(WARN_BEFORE_DELETION_SECONDS, current_app.config["RETENTION_SECONDS"] / 4)
    minutes = math.ceil(seconds / 60)
    return {"known": known, "seconds": seconds, "warn_seconds": warn,
            "soon": known and seconds <= warn,
            "in_words": f"in {minutes} minutes" if minutes > 1 else "in less than a minute"}


def human_duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            return how_many(int(seconds // size), unit)
    return f"{seconds:g} seconds"


@bp.app_template_global()
def how_many(count: int, unit: str) -> str:
    """A count with its unit, as the messages say it: "1 cell", "3 cells"."""
    return f"{count} {unit}{'s' if count != 1 else ''}"
