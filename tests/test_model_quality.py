"""The committed models reach their bars on held-out data, through the serving path.

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
def test_wbc4_reaches_the_bar_on_kaggle_test(tmp_path):
    metrics = evaluate(MODELS_ROOT / "wbc4", KAGGLE_TEST, tmp_path)
    assert metrics["n"] == 2487 and not metrics["unreadable_files"]
    assert metrics["accuracy"] >= 0.93
    assert metrics["macro_f1"] >= 0.93
    card = recorded("wbc4", "test")
    assert card["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert card["macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-4)
    assert card["per_source_smear"] == metrics["per_source_smear"]
