"""Fitting the trust layer: temperature, ECE, abstention threshold, class Gaussians."""

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


def test_reliability_bins_count_every_image_once():
    probabilities = np.array([[0.95, 0.05], [0.55, 0.45], [0.02, 0.98], [1.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    result = calibrate.reliability(probabilities, labels, bins=15)
    assert sum(result["counts"]) == 4 and result["counts"][14] == 3  # 0.95, 0.98, 1.0
    # one wrong answer at 0.55 and three right ones at ~0.98: ECE = (0.55 + 3 * 0.0233) / 4
    assert result["ece"] == pytest.approx((0.55 + (0.05 + 0.02 + 0.0)) / 4)


def test_confidence_threshold_is_the_lowest_that_reaches_the_target():
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 1, 0, 1], dtype=bool)
    assert calibrate.confidence_threshold(confidence, correct, target=0.99) == 0.8
    assert calibrate.confidence_threshold(confidence, correct, target=0.8) == 0.6
    assert calibrate.confidence_threshold(confidence, ~correct, target=0.99) == 1.0


def test_confidence_threshold_never_splits_tied_confidences():
    confidence = np.array([0.9, 0.9, 0.9])
    correct = np.array([1, 0, 1], dtype=bool)
    # accepting "the first 0.9" alone is not a threshold: all three share it.
    assert calibrate.confidence_threshold(confidence, correct, target=0.99) == 1.0


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
