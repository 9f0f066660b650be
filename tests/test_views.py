"""training.views: the validation figures behind the number of test-time views served."""

import json

import numpy as np
import pytest

from hematovision.batch import forward_files
from hematovision.predictor import Predictor
from training import views
from training.calibrate import nll


def test_compare_averages_the_first_v_orientations():
    labels = np.array([0, 1])
    logits = np.zeros((8, 2, 2))
    logits[0] = [[0.0, 1.0], [0.0, 1.0]]  # as is: the first image wrong
    logits[1:] = [[3.0, 0.0], [0.0, 3.0]]  # every other orientation: both right
    figures = views.compare(logits, labels)
    assert figures["1"]["accuracy"] == 0.5 and figures["4"]["accuracy"] == 1.0
    assert figures["8"]["nll"] < figures["4"]["nll"] < figures["1"]["nll"]
    assert figures["1"]["nll"] == round(nll(logits[0], labels), 4)


def test_the_served_count_scores_what_the_served_model_computes(trusted_model_dir, tmp_path):
    card = json.loads((trusted_model_dir / "model_card.json").read_text())
    files = json.loads((trusted_model_dir / "splits.json").read_text())["val"]
    root = trusted_model_dir.parents[1] / "data"
    result = views.measure(trusted_model_dir)
    assert (result["images"], result["served"], result["split"]) == (12, 4, "splits.json:val")
    predictor = Predictor(trusted_model_dir)  # LiteRT, the four flips averaged in its graph
    outputs, _ = forward_files(predictor, [root / f for f in files])
    labels = np.array([card["classes"].index(f.split("/")[0]) for f in files])
    served = result["before_calibration"]["4"]
    assert served["accuracy"] == round(float(np.mean(outputs.logits.argmax(1) == labels)), 4)
    assert served["nll"] == pytest.approx(nll(outputs.logits, labels), abs=2e-4)
    assert set(result["before_calibration"]) == {"1", "4", "8"}


def test_main_writes_views_json_and_needs_validation_images(trusted_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trusted_model_dir, folder)
    views.main([str(folder)])
    assert json.loads((folder / views.JSON_FILE).read_text())["rule"] == views.RULE
    (folder / "splits.json").write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(SystemExit, match="no validation images"):
        views.main([str(folder)])
