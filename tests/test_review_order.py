"""Where wrongly accepted cells lie in the review order (training.review_order), on a made-up
model's answers: no model is read."""

from types import SimpleNamespace

import numpy as np
import pytest

from training.review_order import FRACTIONS, checked_first, score_order

CLASSES = ["eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil"]  # no ig drawn
COMPOSITION = {"neutrophil": 0.6, "lymphocyte": 0.3, "monocyte": 0.06, "eosinophil": 0.04}


def test_each_group_is_checked_least_sure_first_and_at_least_one_cell_each():
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    confidence = np.array([0.9, 0.5, 0.99, 0.6, 0.7, 0.8, 0.95, 0.99])
    assert checked_first(groups, confidence, 0.2).tolist() == [
        False, True, False, False, False, True, False, True]  # 1 of 5, 1 of 2, 1 of 1
    assert checked_first(groups, confidence, 0.5).tolist() == [
        False, True, False, True, True, True, False, True]  # 3 of 5 (rounded up)
    assert checked_first(groups, confidence, 1.0).all()


def answers(confidence_of_wrong: float | None, named: str = "neutrophil"):
    """100 test images per class, each accepted; the first 10 lymphocytes named `named`, with
    `confidence_of_wrong` (None: spread evenly over the same range) against 0.9-0.99 for the
    cells named right."""
    truth = np.repeat(np.arange(len(CLASSES)), 100)
    labels = truth.copy()
    wrong = np.flatnonzero(truth == CLASSES.index("lymphocyte"))[:10]
    labels[wrong] = CLASSES.index(named)
    confidence = np.random.default_rng(1).uniform(0.9, 0.99, len(truth))
    confidence[wrong] = (np.linspace(0.9, 0.99, len(wrong)) if confidence_of_wrong is None
                         else confidence_of_wrong)
    return SimpleNamespace(predictor=SimpleNamespace(classes=CLASSES), truth=truth,
                           labels=labels, statuses=np.full(len(truth), "accepted"),
                           confidence=confidence)


def test_mistakes_the_model_is_least_sure_of_are_found_first():
    scored = score_order(answers(0.5), COMPOSITION, draws=300)
    assert scored["accepted_per_film"] == 100
    assert scored["wrong_per_film"] == pytest.approx(3.0, abs=0.3)  # 10 % of 30 lymphocytes
    rows = {r["fraction"]: r for r in scored["fractions"]}
    assert set(rows) == set(FRACTIONS)
    # A film's ~3 wrong cells are its least sure: the least sure tenth (10 cells) holds them
    # all; checked in upload order, a tenth of them; by class, the tenth of the ~63 cells
    # named neutrophil (7 cells) holds them too.
    assert rows[0.1]["checked_per_film"] == 10 and rows[0.1]["found_least_sure"] > 0.95
    assert rows[0.1]["found_upload_order"] == pytest.approx(0.1, abs=0.02)
    assert rows[0.1]["by_class"]["found"] > 0.95


def test_mistakes_as_sure_as_the_rest_are_found_no_sooner_than_in_upload_order():
    scored = score_order(answers(None), COMPOSITION, draws=300)
    for row in scored["fractions"]:
        assert row["found_least_sure"] == pytest.approx(row["fraction"], abs=0.1)


def test_by_class_misses_mistakes_that_make_a_class_of_their_own():
    # Lymphocytes named immature granulocytes, which a normal film has none of: the least
    # sure tenth of each class checks one of them a film, the least sure tenth of all, all.
    rows = {r["fraction"]: r for r in score_order(answers(0.5, "ig"), COMPOSITION,
                                                  draws=300)["fractions"]}
    assert rows[0.1]["found_least_sure"] > 0.95
    assert rows[0.1]["by_class"]["found"] < 0.6


def test_a_model_that_is_never_wrong_has_no_share_to_find():
    right = answers(0.5)
    right.labels = right.truth
    scored = score_order(right, COMPOSITION, draws=20)
    assert scored["wrong_per_film"] == 0
    assert all(r["found_least_sure"] is None and r["by_class"]["found"] is None
               for r in scored["fractions"])


def test_cells_marked_near_the_threshold_are_counted_with_the_wrong_ones_among_them():
    scored_answers = answers(0.5)
    near = scored_answers.confidence < 0.6  # exactly the wrong ones are marked
    scored = score_order(scored_answers, COMPOSITION, draws=300, near=near)
    assert scored["near_threshold"]["found"] == 1.0
    assert scored["near_threshold"]["checked_per_film"] == pytest.approx(
        scored["wrong_per_film"], abs=0.05)
    half = near & (np.arange(len(near)) % 2 == 0)  # every other wrong one marked
    assert half[scored_answers.labels != scored_answers.truth].mean() == 0.5
    assert score_order(scored_answers, COMPOSITION, draws=300, near=half)[
        "near_threshold"]["found"] == pytest.approx(0.5, abs=0.1)
    assert "near_threshold" not in score_order(scored_answers, COMPOSITION, draws=20)
