"""Which version of a model made a batch's results, so that a result, a report or a CSV can be
traced to it: what a batch records when it is uploaded (`made_by`), how the pages say it, and
whether the model the app serves under that name now is still the one (`replaced`).

A lab that exports or calibrates a model again restarts the app on the same folder names: a
batch uploaded before keeps the answers of the model it was made by, so images added to it, or
heat maps drawn for it, by the new one would mix two models in one count. Both are refused,
with the pages saying why; a model served at another confidence threshold (another accuracy
target) is refused images too, as their statuses would be set otherwise.
"""

from __future__ import annotations

from flask import Blueprint, current_app

from hematovision.predictor import Predictor, exported_moment
from hematovision.trust import is_accuracy_target
from hematovision.web.lookup import served_model

bp = Blueprint("versions", __name__)

MADE_BY = "made_by"  # the stored batch's key
REPLACED = (
    "The results of this batch were made by {model}, {made}; the app now serves {model}, "
    "{now}, whose answers may differ.")
NOT_ADDED = ("Images added now would be counted by another model than the batch's, so none "
             "were added: upload them as a new batch.")
# The add form's words in its place (the batch and result pages).
NOT_ADDABLE = "No images can be added to this batch: upload more as a new batch."
NO_HEAT_MAP = ("A heat map drawn now would be the new model's, not the one that made this "
               "result, so none is drawn.")


def made_by(predictor: Predictor) -> dict:
    """What a batch records of the model that makes its results, as it is uploaded."""
    trust = predictor.trust
    return {"version": predictor.version, "exported": predictor.exported,
            "accuracy_target": trust.target_accuracy,
            "confidence_threshold": trust.confidence_threshold,
            "app": current_app.config["APP_VERSION"]}


def recorded(stored: dict) -> dict | None:
    """The batch's record of its model (None: uploaded before versions were recorded, or a
    record damaged outside the app)."""
    record = stored.get(MADE_BY)
    return record if isinstance(record, dict) and isinstance(record.get("version"), str) \
        else None


def replaced(stored: dict, statuses: bool = True) -> str | None:
    """Why the model served under the batch's model name is not the one that made its results
    (`REPLACED`), or None while it is, or where that cannot be told. With `statuses`, a model
    served at another confidence threshold is another one too (images added would be accepted
    or set aside otherwise); a heat map, which no threshold changes, asks without."""
    record = recorded(stored)
    served = served_model(stored["model"])
    if record is None or served is None:
        return None
    now = made_by(served)
    keys = ("version", "confidence_threshold") if statuses else ("version",)
    if all(record.get(key) == now[key] for key in keys):
        return None
    return REPLACED.format(model=stored["model"], made=served_as(record), now=served_as(now))


def columns(stored: dict) -> tuple[str, str, str, str]:
    """A batch's cells of the CSV downloads' last columns, what made its results
    (results.MADE_BY_COLUMNS; "" where not recorded)."""
    record = recorded(stored) or {}
    target, app = target_of(record), record.get("app")
    return (stored["model"], record.get("version", ""), "" if target is None else f"{target:g}",
            app if isinstance(app, str) else "")


def target_of(record: dict) -> float | None:
    """A record's accuracy target where it is one (None: none fitted, or a damaged record)."""
    target = record.get("accuracy_target")
    return target if is_accuracy_target(target) else None


@bp.app_template_global()
def served_as(record: dict | None) -> str:
    """'model version 432008ee39f9 (exported 03 Dec 2026, 11:37 UTC) at an accuracy target of
    99 %': the version is a digest of the model's files (predictor.model_version)."""
    if record is None:
        return "model version not recorded (uploaded before versions were)"
    words = f"model version {record['version']}"
    if when := exported_text(record.get("exported")):
        words += f" (exported {when})"
    if (target := target_of(record)) is not None:
        words += f" at an accuracy target of {100 * target:g} %"
    return words


def exported_text(stamp) -> str | None:
    """A card's export time ('2026-12-03T11:37:57+0000') as the pages write moments (None for
    a record damaged outside the app)."""
    moment = exported_moment(stamp)
    return moment.strftime("%d %b %Y, %H:%M UTC") if moment else None


bp.add_app_template_global(recorded, "recorded_version")
bp.add_app_template_filter(exported_text, "exported_utc")
bp.add_app_template_global(replaced, "model_replaced")
bp.add_app_template_global(NOT_ADDABLE, "NOT_ADDABLE")
bp.add_app_template_global(NO_HEAT_MAP, "REPLACED_NO_HEAT_MAP")
