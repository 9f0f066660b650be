"""hematovision.differential: which cells a differential counts (accepted ones, or as a
reviewer said), the white-cell shares with their counting ranges and flags against reference
intervals, the classes counted beside it, the absolute counts, and the form the API gives."""

from hematovision.cells import OTHER_WHITE_CELL
from hematovision.differential import (EXCLUDED, ClassShare, OtherCount, counted_class,
                                       differential, differential_json, left_out_counts,
                                       left_out_reason, needs_review)
from hematovision.reference import ABOVE, BELOW, Flag, intervals

PBC8 = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
        "platelet"]


def result(label: str, status: str = "accepted", classes=PBC8) -> dict:
    others = (1.0 - 0.93) / (len(classes) - 1)
    return {"file": f"{label}-{status}.jpg", "label": label, "status": status,
            "confidence": 0.93, "probabilities": {c: 0.93 if c == label else others
                                                  for c in classes}}


# 4 accepted white cells, 1 platelet, 1 erythroblast, and results the differential never counts.
BATCH = [result("neutrophil"), result("neutrophil"), result("lymphocyte"), result("ig"),
         result("platelet"), result("erythroblast"), result("neutrophil", "unidentified"),
         result("platelet", "not_a_cell"), {"file": "broken.jpg", "error": "not an image"}]


def test_platelets_and_erythroblasts_are_counted_beside_the_white_cell_differential():
    counted = differential(BATCH, PBC8)
    assert counted.white_cells == 4
    assert counted.shares == [
        ClassShare("basophil", 0, 0.0), ClassShare("eosinophil", 0, 0.0), ClassShare("ig", 1, 25.0),
        ClassShare("lymphocyte", 1, 25.0), ClassShare("monocyte", 0, 0.0),
        ClassShare("neutrophil", 2, 50.0)]
    # Platelets as a count alone: single cells say nothing of how many a film holds.
    assert counted.others == [OtherCount("erythroblast", 1, 25.0),
                                   OtherCount("platelet", 1, None)]


def test_each_share_carries_its_counting_range_in_percent():
    shares = {s.name: s for s in differential(BATCH, PBC8).shares}
    assert (shares["neutrophil"].low, shares["neutrophil"].high) == (6.8, 93.2)  # 2 of 4
    assert (shares["monocyte"].low, shares["monocyte"].high) == (0.0, 60.2)  # 0 of 4


def test_the_api_form_of_the_differential_keeps_every_figure():
    body = differential_json(differential(BATCH, PBC8))
    assert body["white_cells"] == 4 and body["awaiting_review"] == 1
    # One cell awaits review, so no share is flagged against its interval yet.
    assert body["shares"][-1] == {"class": "neutrophil", "count": 2, "percent": 50.0,
                                  "range_95": [6.8, 93.2], "reference": [40, 70],
                                  "outside": None, "beyond_counting_error": None}
    # 1 beside 4 white cells: 25 per 100, 0.5-252.6 by counting; flagged once nothing awaits
    # review (nucleated red cells: none in an adult); platelets a count alone.
    held = {"outside": None, "beyond_counting_error": None}
    assert body["others"] == [
        {"class": "erythroblast", "count": 1, "per_100_white": 25.0, "range_95": [0.5, 252.6],
         "reference": [0, 0], **held},
        {"class": "platelet", "count": 1, "per_100_white": None, "range_95": None,
         "reference": None, **held}]
    reviewed = [r for r in BATCH if not needs_review(r)]
    erythroblasts = differential_json(differential(reviewed, PBC8))["others"][0]
    assert (erythroblasts["outside"], erythroblasts["beyond_counting_error"]) == ("above", True)


def film(counts: dict[str, int], classes=PBC8) -> list[dict]:
    return [result(c, classes=classes) for c, n in counts.items() for _ in range(n)]


def test_shares_are_flagged_against_their_reference_interval_beyond_counting_error_or_not():
    # 100 cells: 12 eosinophils lie above 1-4 % beyond counting error (range 6.4-20.0 %), 6
    # monocytes inside 2-8 %, 9 monocytes above it within counting error (range 4.2-16.4 %).
    shares = {s.name: s for s in differential(
        film({"neutrophil": 55, "lymphocyte": 27, "eosinophil": 12, "monocyte": 6}),
        PBC8).shares}
    assert shares["eosinophil"].reference == (1, 4)
    assert shares["eosinophil"].flag == Flag(ABOVE, beyond_counting_error=True)
    assert shares["monocyte"].flag is None and shares["neutrophil"].flag is None
    shares = {s.name: s for s in differential(
        film({"neutrophil": 64, "lymphocyte": 27, "monocyte": 9}), PBC8).shares}
    assert shares["monocyte"].flag == Flag(ABOVE, beyond_counting_error=False)
    # No eosinophil of 100 is below 1 % but within counting error (0-3.6 %); basophils'
    # interval starts at 0, so none is never low.
    assert shares["eosinophil"].flag == Flag(BELOW, beyond_counting_error=False)
    assert shares["basophil"].flag is None


def test_the_api_form_gives_the_flag_once_no_cell_awaits_review():
    cells = film({"neutrophil": 20, "lymphocyte": 80})
    body = differential_json(differential(cells, PBC8))
    shares = {s["class"]: s for s in body["shares"]}
    assert body["awaiting_review"] == 0
    assert (shares["neutrophil"]["outside"], shares["neutrophil"]["beyond_counting_error"]) == (
        "below", True)
    assert (shares["lymphocyte"]["outside"], shares["ig"]["outside"]) == ("above", None)
    # An unidentified cell holds every flag back until a reviewer gives it a verdict.
    waiting = cells + [result("monocyte", "unidentified")]
    held = differential(waiting, PBC8)
    assert held.awaiting_review == 1 and all(s.flag is None for s in held.shares)
    reviewed_all = differential(cells + [reviewed(waiting[-1], "monocyte")], PBC8)
    assert reviewed_all.awaiting_review == 0
    assert {s.name: s.flag for s in reviewed_all.shares if s.flag} == {
        "neutrophil": Flag(BELOW, True), "lymphocyte": Flag(ABOVE, True),
        "eosinophil": Flag(BELOW, False), "monocyte": Flag(BELOW, False)}  # 0 and 1 of 101
    # So does an image called not a blood-cell image that may hide a white cell.
    unseen = differential(cells + [reviewed(waiting[-1], "monocyte")], PBC8, images_unseen=1)
    assert unseen.flags_held and not reviewed_all.flags_held
    assert all(s.flag is None for s in unseen.shares) and all(o.flag is None for o in unseen.others)
    assert differential_json(unseen)["not_a_cell_unreviewed"] == 1


def test_a_lab_s_own_intervals_replace_the_catalog_s():
    cells = film({"neutrophil": 72, "lymphocyte": 28})
    assert {s.name: s.flag for s in differential(cells, PBC8).shares}["neutrophil"] == \
        Flag(ABOVE, beyond_counting_error=False)
    own = {**intervals(), "neutrophil": (40.0, 75.0)}
    shares = {s.name: s for s in differential(cells, PBC8, own).shares}
    assert shares["neutrophil"].reference == (40.0, 75.0) and shares["neutrophil"].flag is None


def test_with_no_accepted_white_cell_the_other_cells_have_no_rate():
    counted = differential([result("platelet"), result("ig", "unidentified")], PBC8)
    assert counted.white_cells == 0
    assert all(share.percent == 0.0 for share in counted.shares)
    assert counted.others == [OtherCount("erythroblast", 0, None),
                                   OtherCount("platelet", 1, None)]


def test_a_class_the_catalog_does_not_know_counts_as_a_white_cell():
    classes = ["blast", "neutrophil"]
    counted = differential(
        [result("blast", classes=classes), result("neutrophil", classes=classes)], classes)
    assert [(s.name, s.percent) for s in counted.shares] == [("blast", 50.0),
                                                                   ("neutrophil", 50.0)]
    assert counted.others == []


def reviewed(item: dict, verdict: str) -> dict:
    return {**item, "review": {"label": verdict, "at": 0.0}}


# The technologist's verdicts: an unidentified cell given a class, an accepted one given another,
# an accepted one confirmed, one excluded, and an unfamiliar image that was a cell after all.
REVIEWED = [reviewed(result("neutrophil", "unidentified"), "monocyte"),
            reviewed(result("lymphocyte"), "basophil"), reviewed(result("ig"), "ig"),
            reviewed(result("neutrophil"), EXCLUDED),
            reviewed(result("platelet", "not_a_cell"), "erythroblast"),
            result("lymphocyte"), result("eosinophil", "unidentified"),
            result("monocyte", "not_a_cell"), {"file": "broken.jpg", "error": "not an image"}]


def test_a_verdict_overrides_the_model_in_the_counts():
    assert [counted_class(r) for r in REVIEWED] == [
        "monocyte", "basophil", "ig", None, "erythroblast", "lymphocyte", None, None, None]
    counted = differential(REVIEWED, PBC8)
    assert {s.name: s.count for s in counted.shares if s.count} == {
        "monocyte": 1, "basophil": 1, "ig": 1, "lymphocyte": 1}
    assert counted.white_cells == 4 and counted.reviewed == 3
    assert counted.others == [OtherCount("erythroblast", 1, 25.0),
                                   OtherCount("platelet", 0, None)]


def test_what_the_differential_leaves_out_and_why():
    assert [left_out_reason(r) for r in REVIEWED] == [
        None, None, None, EXCLUDED, None, None, "unidentified", "not_a_cell", None]
    assert left_out_counts(REVIEWED) == {"unidentified": 1, "not_a_cell": 1,
                                                 EXCLUDED: 1}


WBC4 = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def test_given_the_total_count_each_share_is_also_cells_per_litre():
    cells = film({"neutrophil": 20, "lymphocyte": 70, "monocyte": 6, "eosinophil": 4}, WBC4)
    counted = differential(cells, WBC4, white_cells_per_litre=5.0)
    shares = {s.name: s for s in counted.shares}
    neutrophils = shares["neutrophil"].absolute
    assert (neutrophils.value, neutrophils.low, neutrophils.high) == (1.0, 0.63, 1.46)
    assert neutrophils.reference == (2.0, 7.5) and neutrophils.flag == Flag(BELOW, True)
    # Lymphocytes: 70 % is high as a share, 3.50 x 10^9/L is normal as a count.
    assert shares["lymphocyte"].flag == Flag(ABOVE, True)
    assert shares["lymphocyte"].absolute.flag is None
    body = differential_json(counted)
    assert body["white_cells_per_litre"] == 5.0
    assert body["shares"][-1]["absolute"] == {
        "value": 1.0, "range_95": [0.63, 1.46], "reference": [2.0, 7.5], "outside": "below",
        "beyond_counting_error": True}
    # Without a count, no absolute figures; while a cell awaits review, no flags.
    plain = differential_json(differential(cells, WBC4))
    assert "absolute" not in plain["shares"][0] and "white_cells_per_litre" not in plain
    held = differential(cells + [result("neutrophil", "unidentified", WBC4)], WBC4,
                                white_cells_per_litre=5.0)
    assert all(s.absolute.flag is None for s in held.shares)


def test_a_white_cell_of_a_type_the_model_does_not_name_is_a_share_of_its_own():
    """A blast the reviewer calls "other white cell": among the cells a manual differential
    counts, so among these, after the model's classes; with none, no such row."""
    assert [s.name for s in differential(REVIEWED, PBC8).shares] == [
        c for c in PBC8 if c not in ("erythroblast", "platelet")]
    blasts = [reviewed(result("lymphocyte"), OTHER_WHITE_CELL),
              reviewed(result("monocyte", "unidentified"), OTHER_WHITE_CELL)]
    counted = differential(REVIEWED + blasts, PBC8)
    assert counted.white_cells == 6 and counted.reviewed == 5
    assert counted.shares[-1] == ClassShare(OTHER_WHITE_CELL, 2, 33.3)
    assert counted.shares[-1].reference is None and counted.shares[-1].flag is None
    assert sum(s.count for s in counted.shares) == counted.white_cells
    assert [left_out_reason(r) for r in blasts] == [None, None]
