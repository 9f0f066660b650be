"""training.views: the validation figures behind the number of test-time views served."""

import argparse
import json

import numpy as np
import pytest

from hematovision.batch import forward_files
from hematovision.predictor import Predictor
from training import views
from training.calibrate import nll


def test_the_views_are_named_for_what_they_do_and_unview_undoes_them():
    x = np.arange(2 * 3 * 3 * 2, dtype=np.float32).reshape(2, 3, 3, 2)
    transposed = x.transpose(0, 2, 1, 3)
    expected = {
        "as is": x, "flipped left-right": x[:, :, ::-1], "flipped up-down": x[:, ::-1],
        "both": x[:, ::-1, ::-1], "mirrored on the diagonal": transposed,
        "turned 90° clockwise": np.rot90(x, -1, axes=(1, 2)),
        "turned 90° anticlockwise": np.rot90(x, 1, axes=(1, 2)),
        "mirrored on the other diagonal": transposed[:, ::-1, ::-1],
    }
    assert list(expected) == list(views.VIEW_NAMES)
    for v, name in enumerate(views.VIEW_NAMES):
        turned = np.asarray(views.view(x, v))
        np.testing.assert_array_equal(turned, expected[name], err_msg=name)
        np.testing.assert_array_equal(np.asarray(views.unview(turned, v)), x, err_msg=name)


def test_the_views_option_takes_a_count_or_none():
    parser = argparse.ArgumentParser()
    views.add_views_option(parser, "serve")
    assert parser.parse_args([]).tta_views == views.TTA_VIEWS == 4
    assert parser.parse_args(["--tta-views", "8"]).tta_views == 8
    assert parser.parse_args(["--no-tta"]).tta_views == 1
    for wrong in (["--tta-views", "3"], ["--no-tta", "--tta-views", "8"]):
        with pytest.raises(SystemExit):
            parser.parse_args(wrong)
    with pytest.raises(ValueError, match="one of"):
        views.check_views(2)


def test_compare_averages_the_first_v_orientations():
    labels = np.array([0, 1])
    logits = np.zeros((8, 2, 2))
    logits[0] = [[0.0, 1.0], [0.0, 1.0]]  # as is: the first image wrong
    logits[1:] = [[3.0, 0.0], [0.0, 3.0]]  # every other orientation: both right
    figures = views.compare(logits, labels)
    assert figures["1"]["accuracy"] == 0.5 and figures["4"]["accuracy"] == 1.0
    assert figures["8"]["nll"] < figures["4"]["nll"] < figures["1"]["nll"]
    assert figures["1"]["nll"] == round(nll(logits[0], labels), 4)


def test_out_of_fold_figures_recover_the_temperature_of_overconfident_logits(tmp_path, capsys):
    from training.crossfit import NPZ_FILE

    rng = np.random.default_rng(0)
    calibrated = rng.normal(size=(8, 400, 3))
    # Logits drawn from a calibrated model (labels sampled from its softmax), then made 3x
    # too confident: the fitted temperature must undo that.
    p = np.exp(calibrated.mean(axis=0)) / np.exp(calibrated.mean(axis=0)).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in p])
    np.savez(tmp_path / NPZ_FILE, view_logits=3 * calibrated, labels=labels)
    views.main([str(tmp_path), "--out-of-fold"])
    figures = json.loads(capsys.readouterr().out)
    assert set(figures) == {"1", "4", "8"} and list(tmp_path.iterdir()) == [tmp_path / NPZ_FILE]
    assert figures["8"]["temperature"] == pytest.approx(3.0, rel=0.25)
    for v in ("1", "4", "8"):
        assert figures[v]["nll_at_temperature"] < figures[v]["nll"]
        assert figures[v]["accuracy"] == views.compare(3 * calibrated, labels)[v]["accuracy"]
        matrix = np.array(figures[v]["confusion"])
        assert matrix.shape == (3, 3) and matrix.sum(axis=1).tolist() == np.bincount(labels).tolist()
        assert np.trace(matrix) / len(labels) == pytest.approx(figures[v]["accuracy"], abs=5e-5)
    called = (3 * calibrated)[:4].mean(axis=0).argmax(axis=1)
    assert figures["4"]["confusion"][1][2] == int(np.sum((labels == 1) & (called == 2)))
    with pytest.raises(SystemExit, match="no crossfit.npz"):
        views.main([str(tmp_path / "nowhere"), "--out-of-fold"])


def test_the_served_count_scores_what_the_served_model_computes(trusted_model_dir):
    card = json.loads((trusted_model_dir / "model_card.json").read_text())
    files = json.loads((trusted_model_dir / "splits.json").read_text())["val"]
    root = trusted_model_dir.parents[1] / "data"
    result = views.measure(trusted_model_dir)
    assert (result["images"], result["split"]) == (12, "splits.json:val")
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


def test_views_json_and_its_table_add_the_crossfits_figures_of_every_count(trusted_model_dir,
                                                                           tmp_path):
    import shutil

    from training import crossfit, tables

    root = tmp_path / "models"
    folder = root / "m"
    shutil.copytree(trusted_model_dir, folder)
    views.main([str(folder)])
    assert "out_of_fold" not in json.loads((folder / views.JSON_FILE).read_text())
    by_views = {"1": {"accuracy": 0.8, "nll": 0.7}, "4": {"accuracy": 0.81, "nll": 0.65},
                "8": {"accuracy": 0.8125, "nll": 0.6}}
    (folder / crossfit.JSON_FILE).write_text(json.dumps(
        {"folds": 5, "images": 400, "groups": 90, "by_views": by_views}))
    views.main([str(folder)])
    oof = json.loads((folder / views.JSON_FILE).read_text())["out_of_fold"]
    assert oof == {"images": 400, "groups": 90, "folds": 5, "before_calibration": by_views}
    rows = tables.views_table(root).splitlines()[2:]
    assert [r.split(" | ")[1] for r in rows] == ["12 validation", "400 out of fold (90 source groups)"]
    assert rows[1].split(" | ")[2:5] == ["0.8000 (0.7000)", "0.8100 (0.6500)", "0.8125 (0.6000)"]
