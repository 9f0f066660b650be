"""The serving side of the trust layer: temperature, unfamiliarity, status rules, CAMs."""

import numpy as np
import pytest
from PIL import Image

from hematovision import trust
from hematovision.trust import ACCEPTED, NOT_A_CELL, UNIDENTIFIED, Trust


def test_softmax_with_temperature_softens_without_changing_the_ranking():
    logits = np.array([[4.0, 1.0, 0.0]])
    sharp, soft = trust.softmax(logits), trust.softmax(logits, temperature=3.0)
    np.testing.assert_allclose(sharp.sum(), 1.0)
    assert soft[0, 0] < sharp[0, 0] and soft.argmax() == sharp.argmax() == 0
    np.testing.assert_allclose(trust.softmax(logits, 2.0), trust.softmax(logits / 2.0))


def test_softmax_is_stable_for_huge_logits():
    p = trust.softmax(np.array([[1000.0, 0.0]]))
    assert np.all(np.isfinite(p)) and p[0, 0] == pytest.approx(1.0)


def test_mahalanobis_is_the_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    covariance = a @ a.T + np.eye(4)
    precision = np.linalg.inv(covariance)
    whitening = np.linalg.cholesky(precision)  # L @ L.T = precision
    means = rng.normal(size=(3, 4))
    x = rng.normal(size=(5, 4))
    expected = np.min([[(xi - m) @ precision @ (xi - m) for m in means] for xi in x], axis=1)
    np.testing.assert_allclose(trust.mahalanobis(x, means, whitening), expected, rtol=1e-9)


def _trust(**kwargs) -> Trust:
    return Trust(layers=(trust.LayerGaussians(np.zeros((2, 3)), np.eye(3)),), **kwargs)


def test_unfamiliarity_is_the_largest_scaled_distance_over_the_layers():
    # Two layers (2-d and 3-d features side by side), class means at the origin.
    low = trust.LayerGaussians(np.zeros((1, 2)), np.eye(2), scale=2.0)
    high = trust.LayerGaussians(np.zeros((2, 3)), np.eye(3) / 2, scale=1.0)  # precision I/4
    t = Trust(layers=(low, high))
    features = np.array([[2.0, 0.0, 0.0, 0.0, 0.0],    # low layer: 4 / 2 = 2; high: 0
                         [0.0, 0.0, 4.0, 0.0, 0.0],    # low: 0; high: 16 / 4 = 4
                         [0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(trust.layer_distances(t.layers, features),
                               [[2.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(t.ood_scores(features), [2.0, 4.0, 0.0])
    with pytest.raises(ValueError, match="Expected 5 unfamiliarity features, got 4"):
        t.ood_scores(np.zeros((1, 4)))


def test_status_rules_unfamiliar_first_then_confidence():
    t = _trust(confidence_threshold=0.8, ood_threshold=10.0)
    assert t.status(confidence=0.99, ood_score=11.0) == NOT_A_CELL  # confident but unfamiliar
    assert t.status(confidence=0.79, ood_score=1.0) == UNIDENTIFIED
    assert t.status(confidence=0.80, ood_score=10.0) == ACCEPTED  # both limits inclusive


def test_an_unfitted_trust_layer_accepts_everything_and_says_so_in_its_scores():
    t = Trust()
    assert not t.fitted
    assert t.status(0.3, float(t.ood_scores(np.ones((1, 5)))[0])) == ACCEPTED
    assert t.scores(0.0)["unfamiliarity"] is None and t.scores(0.0)["unfamiliarity_threshold"] is None


def test_load_reads_the_card_section_and_the_arrays(tmp_path):
    layers = [trust.LayerGaussians(np.ones((2, 3)), np.eye(3), 7.0),
              trust.LayerGaussians(np.zeros((2, 5)), 2 * np.eye(5), 0.5)]
    trust.save_trust_arrays(tmp_path, layers, np.ones((3, 2)), np.zeros(2))
    card = {"trust": {"temperature": 1.5, "confidence_threshold": 0.7,
                      "ood": {"threshold": 42.0}}}
    loaded = Trust.load(tmp_path, card)
    assert (loaded.temperature, loaded.confidence_threshold, loaded.ood_threshold) == (1.5, 0.7, 42.0)
    assert [(g.dim, g.scale) for g in loaded.layers] == [(3, 7.0), (5, 0.5)]
    np.testing.assert_array_equal(loaded.layers[1].whitening, 2 * np.eye(5))
    assert loaded.head_kernel.shape == (3, 2)
    assert not Trust.load(tmp_path, {}).fitted  # no card section: identity trust


def test_cam_is_the_spatial_decomposition_of_the_class_logit():
    rng = np.random.default_rng(1)
    maps = rng.uniform(0, 6, (7, 7, 16))
    kernel = rng.normal(size=(16, 3))
    raw = maps @ kernel[:, 2]
    # GAP + dense: the logit (without bias) is the mean of the un-normalised map.
    np.testing.assert_allclose(raw.mean(), maps.mean(axis=(0, 1)) @ kernel[:, 2])
    cam = trust.class_activation_map(maps, kernel, 2)
    assert cam.shape == (7, 7) and cam.max() == pytest.approx(1.0) and cam.min() >= 0
    assert np.unravel_index(cam.argmax(), cam.shape) == np.unravel_index(raw.argmax(), raw.shape)


def test_cam_of_no_positive_evidence_is_all_zero():
    cam = trust.class_activation_map(np.ones((7, 7, 2)), np.array([[-1.0], [-1.0]]), 0)
    assert np.all(cam == 0)


def test_overlay_blends_heat_where_the_map_is_high():
    model_input = np.zeros((224, 224, 3), np.float32)  # mid-grey image
    cam = np.zeros((7, 7))
    cam[0, 0] = 1.0
    image = trust.overlay(model_input, cam)
    assert isinstance(image, Image.Image) and image.size == (224, 224) and image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[5, 5] - 128).sum() > 60  # coloured where the evidence is
    assert np.abs(pixels[200, 200] - 128).sum() <= 3  # untouched where there is none
