"""Fitting the trust layer: temperature, ECE, abstention threshold, class Gaussians."""

import json

import numpy as np
import pytest

from hematovision.trust import mahalanobis, softmax
from training import calibrate


def _synthetic(temperature: float, n: int = 4000, k: int = 4, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / temperature): calibrated at T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, k))
    p = softmax(logits, temperature)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return logits, labels


def test_fit_temperature_recovers_the_generating_temperature():
    logits, labels = _synthetic(temperature=2.5)
    assert calibrate.fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)


def test_temperature_scaling_lowers_nll_and_ece_of_overconfident_logits():
    logits, labels = _synthetic(temperature=3.0)
    t = calibrate.fit_temperature(logits, labels)
    assert calibrate.nll(logits, labels, t) < calibrate.nll(logits, labels)
    before = calibrate.reliability(softmax(logits), labels)["ece"]
    after = calibrate.reliability(softmax(logits, t), labels)["ece"]
    assert after < 0.03 < before


def test_bias_corrected_temperature_recovers_the_generating_temperature_and_biases():
    rng = np.random.default_rng(1)
    logits, bias = rng.normal(0, 3, (6000, 4)), np.array([0.0, 1.0, -0.5, 0.5])
    p = softmax(logits / 2.0 + bias)
    labels = np.array([rng.choice(4, p=row) for row in p])
    t, fitted = calibrate.fit_bias_corrected_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=0.1)
    assert fitted == pytest.approx(bias, abs=0.15)


def test_held_out_comparison_shows_a_bias_changing_the_top_class_where_a_temperature_cannot():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (3000, 3))
    labels = np.array([rng.choice(3, p=row) for row in softmax(logits + [0.0, 0.0, 2.0])])
    folds = np.arange(3000) % 3
    result = calibrate.compare_temperature_fits(logits, labels, folds)
    raw = float(np.mean(logits.argmax(1) == labels))
    assert result["folds"] == [0, 1, 2]
    for criterion in calibrate.TEMPERATURE_FITS:  # a temperature keeps every top class
        assert result[criterion]["pooled"]["accuracy"] == pytest.approx(raw, abs=1e-4)
    bcts = result[calibrate.BIAS_CORRECTED]
    assert bcts["pooled"]["accuracy"] > raw + 0.05  # the missing bias toward the third class
    assert bcts["pooled"]["nll"] < result["nll"]["pooled"]["nll"]
    assert [b[2] for b in bcts["bias"]] == pytest.approx([2.0] * 3, abs=0.3)
    assert len(bcts["accuracy"]) == len(bcts["ece"]) == 3


def test_reliability_bins_count_every_image_once():
    probabilities = np.array([[0.95, 0.05], [0.55, 0.45], [0.02, 0.98], [1.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    result = calibrate.reliability(probabilities, labels, bins=15)
    assert sum(result["counts"]) == 4 and result["counts"][14] == 3  # 0.95, 0.98, 1.0
    # one wrong answer at 0.55 and three right ones at ~0.98: ECE = (0.55 + 3 * 0.0233) / 4
    assert result["ece"] == pytest.approx((0.55 + (0.05 + 0.02 + 0.0)) / 4)


def test_operating_points_give_each_target_its_threshold_and_accepted_share():
    confidence = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5])
    correct = np.array([True] * 7 + [False, True, False])
    points = calibrate.operating_points(confidence, correct, [0.85, 0.99])
    assert [p["target_accuracy"] for p in points] == [0.85, 0.99]
    assert points[1] == {"target_accuracy": 0.99, "confidence_threshold": 0.65,
                         "accepted_rate": 0.7, "accuracy_accepted": 1.0}
    assert points[0]["confidence_threshold"] == 0.55 and points[0]["accepted_rate"] == 0.9
    assert points[0]["accuracy_accepted"] == pytest.approx(8 / 9, abs=1e-4)
    nothing = calibrate.operating_points(confidence, np.zeros(10, bool), [0.99])[0]
    assert nothing["confidence_threshold"] == 1.0 and nothing["accepted_rate"] == 0.0
    assert nothing["accuracy_accepted"] is None


def test_operating_figures_flag_unfamiliar_images_first_at_every_threshold():
    confidence = np.array([0.99, 0.9, 0.8, 0.6])
    correct = np.array([True, True, False, True])
    unfamiliar = np.array([True, False, False, False])
    points = [{"target_accuracy": 0.99, "confidence_threshold": 0.85},
              {"target_accuracy": 0.5, "confidence_threshold": 0.5}]
    strict, loose = calibrate.operating_figures(confidence, correct, unfamiliar, points)
    assert strict == {"target_accuracy": 0.99, "confidence_threshold": 0.85,
                      "accepted_rate": 0.25, "unidentified_rate": 0.5, "not_a_cell_rate": 0.25,
                      "accuracy_accepted": 1.0}
    assert (loose["accepted_rate"], loose["not_a_cell_rate"]) == (0.75, 0.25)
    assert loose["accuracy_accepted"] == pytest.approx(2 / 3, abs=1e-4)


def test_class_gaussians_whiten_the_within_class_spread():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    covariance = a @ a.T + 0.5 * np.eye(6)
    labels = np.repeat([0, 1, 2], 4000)
    centres = rng.normal(0, 10, (3, 6))
    x = centres[labels] + rng.multivariate_normal(np.zeros(6), covariance, len(labels))
    means, whitening, shrinkage = calibrate.fit_class_gaussians(x, labels, 3)
    np.testing.assert_allclose(means, centres, atol=0.2)
    assert 0 <= shrinkage < 0.05  # plenty of data: little shrinkage
    assert not np.triu(whitening, 1).any()  # lower triangular: stored as half a matrix
    white = (x - means[labels]) @ whitening
    np.testing.assert_allclose(np.cov(white.T), np.eye(6), atol=0.1)
    # far from every class mean is far in Mahalanobis terms too
    far = mahalanobis(centres[:1] + 50, means, whitening)
    near = mahalanobis(centres[:1], means, whitening)
    assert far[0] > 100 * max(near[0], 1e-3)


def test_class_gaussians_stay_invertible_with_more_dimensions_than_images():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 50))
    means, whitening, shrinkage = calibrate.fit_class_gaussians(x, np.repeat([0, 1], 10), 2)
    assert shrinkage > 0.1 and np.all(np.isfinite(whitening))


def test_fitting_from_another_folder_names_the_missing_training_data(trained_run, tmp_path):
    from training import export

    _, run_dir = trained_run
    model_dir = export.export_run(run_dir, "smoke", root=tmp_path, trust=False)
    card = json.loads((model_dir / "model_card.json").read_text())
    card["training"]["config"]["data"] = "../relative/to/where/it/ran"
    (model_dir / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(SystemExit, match="the data smoke was trained on, is not a folder"):
        calibrate.fit_trust(model_dir, progress=False)


def test_the_fitted_unfamiliarity_rule_is_the_one_the_card_states(trusted_model_dir):
    """Class means from the training split; each layer's distances divided by their median on
    validation (so each is 1 there); not_a_cell above the card's quantile of the validation
    images' scores, rounded up as stored. Recomputed here from the served outputs."""
    from pathlib import Path

    from hematovision.card import read_card
    from hematovision.predictor import Predictor
    from hematovision.trust import LayerGaussians, layer_distances

    card = read_card(trusted_model_dir)
    split = json.loads((trusted_model_dir / "splits.json").read_text())
    root = Path(card["training"]["config"]["data"])
    predictor = Predictor(trusted_model_dir)
    layers = predictor.trust.layers
    train_out, train_labels = calibrate.labelled_outputs(predictor, root, split["train"], False)
    val_out, _ = calibrate.labelled_outputs(predictor, root, split["val"], False)
    assert len(train_labels) == 20 and len(val_out.logits) == 12

    bounds = np.cumsum([0, *(g.dim for g in layers)])
    for g, a, b in zip(layers, bounds[:-1], bounds[1:]):
        class_means = [train_out.features[train_labels == k, a:b].mean(axis=0)
                       for k in range(len(predictor.classes))]
        np.testing.assert_allclose(g.means, class_means, rtol=1e-4, atol=1e-5)
    # In float64 as fitted: the tiny model's 4-d features are so ill-conditioned that the
    # served float32 arithmetic moves its distances by a few per cent (0.2 % at most for pbc8).
    distances = layer_distances(
        tuple(LayerGaussians(g.means.astype(np.float64), g.whitening.astype(np.float64), g.scale)
              for g in layers), val_out.features.astype(np.float64))
    np.testing.assert_allclose(np.median(distances, axis=0), 1.0, rtol=1e-3)  # float32 arrays
    ood = card["trust"]["ood"]
    quantile = float(np.quantile(distances.max(axis=1), ood["quantile"]))
    assert ood["threshold"] == pytest.approx(quantile, rel=1e-3, abs=1e-4)
    assert predictor.trust.ood_threshold == ood["threshold"]


def test_a_temperature_on_an_end_of_its_search_is_warned_about():
    """A model that learned nothing: the NLL fit runs to its upper bound (20.000 logged, every
    cell then unidentified)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    logits = rng.normal(0, 5, (200, 4))  # confident, and unrelated to the labels
    fitted = calibrate.fit_temperature(logits, labels)
    assert fitted == pytest.approx(calibrate.TEMPERATURE_SEARCH[1], rel=0.01)
    warning = calibrate.temperature_at_bound(fitted, "nll")
    assert warning.startswith(f"warning: temperature {fitted:.3f} is the upper bound of its "
                              "search (0.05 to 20)")
    assert "every cell would come back unidentified" in warning
    assert "lower bound of its search (0.25 to 8)" in calibrate.temperature_at_bound(0.25, "ece")
    assert calibrate.temperature_at_bound(8.0, "ece").startswith("warning: temperature 8.000 is "
                                                                 "the upper bound")
    assert calibrate.temperature_at_bound(1.3, "nll") is None
    assert calibrate.temperature_at_bound(19.0, "nll") is None


def test_held_out_images_all_right_leave_the_models_own_confidences_not_certainty():
    """Held-out logits all right: every sharpening lowers their NLL, so the fit runs towards
    zero (here to where their probabilities round to 1), which would serve a first wrong
    answer as certain."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 40)
    logits = rng.normal(0, 1, (40, 4))
    logits[np.arange(40), labels] += 8.0
    fitted = calibrate.fit_temperature(logits, labels)
    assert fitted < 0.2
    right = logits.argmax(axis=1) == labels
    temperature, note = calibrate.served_temperature(fitted, "nll", right)
    assert temperature == 1.0
    assert note.startswith("Not calibrated: the 40 held-out images are all right, so every "
                           f"sharpening fits them better (the fit ran to temperature "
                           f"{fitted:.3f})")
    assert "the model's own confidences are served (temperature 1)" in note
    # One wrong answer sets a temperature, which is served.
    labels[0] = (labels[0] + 1) % 4
    wrong = logits.argmax(axis=1) == labels
    fitted = calibrate.fit_temperature(logits, labels)
    assert calibrate.served_temperature(fitted, "nll", wrong) == (fitted, None)
    # At the upper bound the fit stands (every cell unidentified), with its warning kept.
    temperature, note = calibrate.served_temperature(20.0, "nll", wrong)
    assert temperature == 20.0 and note.startswith("Temperature 20.000 is the upper bound")


def test_a_fit_at_its_lower_bound_is_served_at_temperature_1_and_says_so(
        tmp_path, trusted_model_dir, monkeypatch):
    import shutil

    from hematovision.trust import Trust

    model_dir = tmp_path / "easy"
    shutil.copytree(trusted_model_dir, model_dir)
    # As if the tiny model's twelve validation images were all right.
    served = calibrate.served_temperature
    monkeypatch.setattr(calibrate, "served_temperature", lambda fitted, criterion, correct:
                        served(0.05, criterion, np.ones_like(correct)))
    section = calibrate.fit_trust(model_dir, progress=False)
    assert section["temperature"] == 1.0
    assert section["temperature_note"].startswith(
        "Not calibrated: the 12 held-out images are all right")
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["trust"]["temperature_note"] == section["temperature_note"]
    assert Trust.load(model_dir, card).temperature == 1.0
    # The threshold and the validation figures are those of the confidences served.
    assert section["validation"]["nll_after"] == section["validation"]["nll_before"]
    assert section["validation"]["ece_after"] == section["validation"]["ece_before"]


def test_thresholds_fitted_on_few_images_carry_their_count_in_the_card(trusted_model_dir):
    few = calibrate.calibration_size(40, 40)
    assert few["below_minimum"] and few["minimum_advised"] == calibrate.MIN_CALIBRATION_IMAGES
    assert few["note"].startswith("The thresholds rest on 40 held-out images (fewer than 200)")
    # Out-of-fold logits cover the confidence threshold; validation still sets the other.
    assert calibrate.calibration_size(900, 120)["note"].startswith("The thresholds rest on 120")
    enough = calibrate.calibration_size(900, 300)
    assert not enough["below_minimum"] and "note" not in enough
    card = json.loads((trusted_model_dir / "model_card.json").read_text())
    recorded = card["trust"]["calibration_size"]
    assert recorded["confidence_threshold_images"] == 12
    assert recorded["unfamiliarity_threshold_images"] == 12 and recorded["below_minimum"]
