"""training.differential: how far a batch's differential is from the truth, counted from the
accepted cells only, from every top class, and after the unidentified cells are reviewed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training import differential
from training.differential import batch_counts, compositions, simulate

CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
EVEN = {c: 0.25 for c in CLASSES}


def test_a_batch_has_whole_cells_in_the_composition_summing_to_its_size():
    assert batch_counts(EVEN, 100) == {c: 25 for c in CLASSES}
    normal = compositions(np.array([0, 1, 2, 3]), CLASSES)["normal adult"]
    counts = batch_counts(normal, 100)
    assert sum(counts.values()) == 100 and counts["neutrophil"] == 61  # 60/99 of 100
    assert sum(batch_counts({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 10).values()) == 10


def test_compositions_are_the_test_sets_white_cells_and_a_normal_film():
    truth = np.array([0, 0, 1, 3, 3, 3, 4])  # one platelet: not a white cell
    found = compositions(truth, ["eosinophil", "lymphocyte", "monocyte", "neutrophil",
                                 "platelet"])
    assert found["test set"] == pytest.approx(
        {"eosinophil": 2 / 6, "lymphocyte": 1 / 6, "monocyte": 0, "neutrophil": 3 / 6})
    assert list(found["normal adult"]) == ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert sum(found["normal adult"].values()) == pytest.approx(1)


def statuses(n, unidentified=()):
    out = np.array(["accepted"] * n, dtype=object)
    out[list(unidentified)] = "unidentified"
    return out


def test_a_right_model_that_accepts_everything_counts_every_batch_exactly():
    truth = np.repeat(np.arange(4), 10)
    result = simulate(truth, truth.copy(), statuses(40), CLASSES, EVEN, cells=20, draws=50)
    for way in differential.WAYS:
        assert result["ways"][way]["mean_abs_error_points"] == 0
    assert result["unidentified_per_batch"] == 0


def test_leaving_out_a_class_the_model_doubts_biases_the_accepted_differential():
    """Every neutrophil is unidentified (its top class right): the accepted cells alone read
    no neutrophil at all; counted by top class, or once reviewed, the shares are right."""
    truth = np.repeat(np.arange(4), 10)
    doubted = np.flatnonzero(truth == 3)
    result = simulate(truth, truth.copy(), statuses(40, doubted), CLASSES, EVEN, cells=20,
                      draws=50)
    accepted = result["ways"]["accepted only"]
    assert accepted["bias_points"]["neutrophil"] == -25.0
    assert accepted["bias_points"]["eosinophil"] == pytest.approx(100 / 3 - 25, abs=0.01)
    assert result["ways"]["no trust layer"]["mean_abs_error_points"] == 0
    assert result["ways"]["unidentified reviewed"]["mean_abs_error_points"] == 0
    assert result["unidentified_per_batch"] == 5


def test_reviewing_counts_the_true_class_of_an_unidentified_cell_not_its_top_class():
    truth = np.repeat(np.arange(4), 10)
    labels = truth.copy()
    wrong = np.flatnonzero(truth == 2)  # every monocyte read as a lymphocyte, unsure
    labels[wrong] = 1
    result = simulate(truth, labels, statuses(40, wrong), CLASSES, EVEN, cells=20, draws=20)
    assert result["ways"]["no trust layer"]["bias_points"]["monocyte"] == -25.0
    assert result["ways"]["unidentified reviewed"]["mean_abs_error_points"] == 0


def test_the_command_records_the_figures_in_the_card(trusted_model_dir, tmp_path, image_folder,
                                                     capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trusted_model_dir, model)
    differential.main(["--model-dir", str(model), "--data", str(image_folder), "--draws", "30",
                       "--cells", "10", "--record"])
    figures = json.loads((model / "model_card.json").read_text())["metrics"]["differential"]
    assert figures["n"] == 24 and figures["cells"] == 10 and figures["draws"] == 30
    assert list(figures["compositions"]) == ["test set", "normal adult"]
    points = json.loads((model / "model_card.json").read_text())["trust"]["operating_points"]
    for composition in figures["compositions"].values():
        assert list(composition["ways"]) == list(differential.WAYS)
        assert sum(composition["composition"].values()) == pytest.approx(1)
        # One row per operating point of the card; the higher the target, the more to review.
        rows = composition["operating_points"]
        assert [r["target_accuracy"] for r in rows] == [p["target_accuracy"] for p in points]
        to_review = [r["unidentified_per_batch"] for r in rows]
        assert to_review == sorted(to_review)
    assert "30 batches of 10 white cells" in capsys.readouterr().out
    # Not a test-set evaluation: the model page's evaluation tables leave it out.
    from hematovision.card import read_card, recorded_evaluations
    assert "differential" not in recorded_evaluations(read_card(model))

    from training import tables
    table = tables.differential_table(tmp_path).splitlines()
    assert table[0] == ("| batches of 10 white cells drawn as | counted | `model` (n=24): mean "
                        "error (points) | largest bias (points) |")
    assert [row.split(" | ")[:2] for row in table[2:6]] == [
        ["| test set", "cells per batch sent to review"], ["| test set", "accepted only"],
        ["| test set", "no trust layer"], ["| test set", "unidentified reviewed"]]
    reviewed = figures["compositions"]["normal adult"]["ways"]["unidentified reviewed"]
    cls, bias = max(reviewed["bias_points"].items(), key=lambda kv: abs(kv[1]))
    assert table[-1] == (f"| normal adult | unidentified reviewed | "
                         f"{reviewed['mean_abs_error_points']:.2f} | {cls} {bias:+.1f} |")
    targets = tables.differential_targets_table(tmp_path).splitlines()
    assert len(targets) == 2 + len(points)
    last = figures["compositions"]["normal adult"]["operating_points"][-1]
    assert targets[-1] == (f"| {last['target_accuracy']:.0%} | {last['unidentified_per_batch']:.1f}"
                           f" | {last['accepted_only_error']:.2f} | {last['reviewed_error']:.2f} |")


def test_a_normal_film_is_drawn_only_from_classes_the_test_set_has():
    truth = np.array([1, 1, 3])  # no eosinophil or monocyte image
    normal = compositions(truth, CLASSES)["normal adult"]
    assert normal["eosinophil"] == 0 and normal["monocyte"] == 0
    assert normal["neutrophil"] == pytest.approx(2 / 3) and sum(normal.values()) == 1
    result = simulate(truth, truth, statuses(3), CLASSES, normal, cells=10, draws=5)
    assert result["composition"] == {"eosinophil": 0, "lymphocyte": 0.3, "monocyte": 0,
                                     "neutrophil": 0.7}
    # A model of classes no normal film has: the test set's own shares only.
    assert list(compositions(np.array([0, 1]), ["blast", "ig"])) == ["test set"]
    with pytest.raises(SystemExit, match="No test image of a white-cell class"):
        compositions(np.array([0]), ["platelet", "neutrophil"])


def test_the_table_leaves_cells_empty_for_a_model_without_a_normal_film(tmp_path):
    """A model whose classes no normal film has (its card: the test set's shares only) beside
    one with both: the normal-film rows leave its cells empty instead of failing."""
    from training import tables

    def drawn(error):
        ways = {w: {"bias_points": {"a": error}, "mean_abs_error_points": error}
                for w in differential.WAYS}
        return {"composition": {"a": 1.0}, "unidentified_per_batch": 1.0, "ways": ways}

    for name, names in (("both", ("test set", "normal adult")), ("odd", ("test set",))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.tflite").write_bytes(b"")
        figures = {"n": 5, "cells": 100, "draws": 2,
                   "compositions": {c: drawn(2.0) for c in names}}
        (tmp_path / name / "model_card.json").write_text(
            json.dumps({"classes": ["a"], "metrics": {"differential": figures}}))
    rows = tables.differential_table(tmp_path).splitlines()
    assert rows[6] == "| normal adult | cells per batch sent to review | 1.0 |  |  |  |"
    assert rows[7] == "| normal adult | accepted only | 2.00 | a +2.0 |  |  |"
