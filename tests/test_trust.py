"""The serving side of the trust layer: temperature, unfamiliarity, status rules, CAMs."""

import numpy as np
import pytest

from hematovision import trust
from hematovision.trust import ACCEPTED, NOT_A_CELL, UNIDENTIFIED, Trust, no_white_cell, statuses


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


def test_an_answer_about_an_image_with_no_white_cell_is_never_accepted():
    t = _trust(confidence_threshold=0.8, ood_threshold=10.0)
    assert t.status(confidence=0.99, ood_score=1.0, no_white_cell=True) == UNIDENTIFIED
    assert t.status(confidence=0.99, ood_score=11.0, no_white_cell=True) == NOT_A_CELL
    assert Trust().status(0.3, 0.0, no_white_cell=True) == UNIDENTIFIED  # unfitted too
    confidence, unfamiliar = np.array([0.9, 0.9, 0.5]), np.array([False, False, False])
    assert list(statuses(confidence, unfamiliar, 0.8, np.array([False, True, True]))) == [
        ACCEPTED, UNIDENTIFIED, UNIDENTIFIED]
    assert list(statuses(confidence, unfamiliar, 0.8)) == [ACCEPTED, ACCEPTED, UNIDENTIFIED]


def test_white_cell_counts_mark_the_images_with_none_and_ignore_uncounted_ones():
    assert list(no_white_cell([2, 0, 1, None])) == [False, True, False, False]
    assert no_white_cell([None, None]) is None and no_white_cell(None) is None


def test_an_unfitted_trust_layer_accepts_everything_and_says_so_in_its_scores():
    t = Trust()
    assert not t.fitted
    assert t.status(0.3, float(t.ood_scores(np.ones((1, 5)))[0])) == ACCEPTED
    assert t.scores(0.0)["unfamiliarity"] is None and t.scores(0.0)["unfamiliarity_threshold"] is None


def test_load_reads_the_card_section_and_the_arrays(tmp_path):
    layers = [trust.LayerGaussians(np.ones((2, 3)), np.eye(3), 7.0),
              trust.LayerGaussians(np.zeros((2, 5)), 2 * np.eye(5), 0.5)]
    trust.save_trust_arrays(tmp_path, layers, np.ones((3, 2)), np.zeros(2), [0.9], [True])
    card = {"trust": {"temperature": 1.5, "confidence_threshold": 0.7,
                      "ood": {"threshold": 42.0}}}
    loaded = Trust.load(tmp_path, card)
    assert (loaded.temperature, loaded.confidence_threshold, loaded.ood_threshold) == (1.5, 0.7, 42.0)
    assert [(g.dim, g.scale) for g in loaded.layers] == [(3, 7.0), (5, 0.5)]
    np.testing.assert_array_equal(loaded.layers[1].whitening, 2 * np.eye(5))
    assert loaded.head_kernel.shape == (3, 2)
    assert not Trust.load(tmp_path, {}).fitted  # no card section: identity trust


def _any_whitening(rng, dim: int) -> np.ndarray:
    """A full (not triangular) whitening of a random covariance, as an eigendecomposition
    gives it."""
    a = rng.normal(size=(dim, dim))
    values, vectors = np.linalg.eigh(a @ a.T + np.eye(dim))
    return vectors / np.sqrt(values)


def _distances(layer: trust.LayerGaussians, x: np.ndarray) -> np.ndarray:
    return trust.mahalanobis(x, layer.means, layer.whitening.astype(np.float64))


def test_a_whitening_is_stored_as_half_a_matrix_with_the_same_distances(tmp_path):
    rng = np.random.default_rng(1)
    layer = trust.LayerGaussians(rng.normal(size=(3, 6)), _any_whitening(rng, 6), 2.0)
    trust.save_trust_arrays(tmp_path, [layer], np.ones((6, 3)), np.zeros(3), [0.9], [True])
    with np.load(tmp_path / trust.TRUST_FILE) as arrays:
        assert "whitening_0" not in arrays.files
        assert arrays["whitening_lower_0"].shape == (6 * 7 // 2,)  # 21 of 36 entries
    loaded = Trust.load(tmp_path, {"trust": {"temperature": 1.0, "confidence_threshold": 0.5,
                                             "ood": {"threshold": 3.0}}}).layers[0]
    assert not np.triu(loaded.whitening, 1).any()
    x = rng.normal(size=(20, 6))
    np.testing.assert_allclose(_distances(loaded, x), _distances(layer, x), rtol=1e-5)


def test_pack_lower_and_unpack_lower_round_trip_and_refuse_wrong_sizes():
    lower = np.tril(np.arange(1.0, 17.0).reshape(4, 4))
    packed = trust.pack_lower(lower)
    np.testing.assert_array_equal(packed, [1, 5, 6, 9, 10, 11, 13, 14, 15, 16])
    np.testing.assert_array_equal(trust.unpack_lower(packed, 4), lower)
    with pytest.raises(ValueError, match="10 entries"):
        trust.unpack_lower(packed[:-1], 4)
    with pytest.raises(ValueError, match="square"):
        trust.pack_lower(np.ones((2, 3)))


def test_repack_halves_an_older_trust_file_and_keeps_its_distances_and_other_arrays(tmp_path):
    rng = np.random.default_rng(2)
    whole = _any_whitening(rng, 40).astype(np.float32)
    means = rng.normal(size=(4, 40)).astype(np.float32)
    older = {"layer_scales": np.array([3.0]), "class_means_0": means, "whitening_0": whole,
             "head_kernel": np.ones((40, 4), np.float32), "head_bias": np.zeros(4, np.float32),
             "held_out_confidence": np.array([0.7, 0.9]),
             "held_out_correct": np.array([False, True])}
    np.savez(tmp_path / trust.TRUST_FILE, **older)  # as exports before the packed storage
    card = {"trust": {"temperature": 1.2, "confidence_threshold": 0.8, "ood": {"threshold": 2.0}}}
    before = Trust.load(tmp_path, card)

    trust.repack(tmp_path)
    after = Trust.load(tmp_path, card)
    x = rng.normal(size=(50, 40)).astype(np.float32)
    np.testing.assert_allclose(after.ood_scores(x), before.ood_scores(x), rtol=1e-4)
    with np.load(tmp_path / trust.TRUST_FILE) as arrays:
        assert arrays["whitening_lower_0"].nbytes == 40 * 41 // 2 * 4  # of 40 * 40 * 4
        assert set(arrays.files) == set(older) - {"whitening_0"} | {"whitening_lower_0"}
        for key in set(older) - {"whitening_0"}:
            np.testing.assert_array_equal(arrays[key], older[key])
    trust.repack(tmp_path)  # a packed file is left as it is
    np.testing.assert_array_equal(Trust.load(tmp_path, card).layers[0].whitening,
                                  after.layers[0].whitening)


def test_confidence_threshold_is_the_lowest_that_reaches_the_target():
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, True, True, True, False, True, False])
    assert trust.confidence_threshold(confidence, correct, 0.99) == 0.8  # 4 of 4 right
    assert trust.confidence_threshold(confidence, correct, 0.8) == 0.6  # 5 of 6 right
    assert trust.confidence_threshold(confidence, ~correct, 0.99) == 1.0  # none reaches it


def test_confidence_threshold_never_splits_tied_confidences():
    confidence = np.array([0.9, 0.9, 0.5])
    correct = np.array([True, False, True])
    # accepting "the first 0.9" alone is not a threshold: both share it.
    assert trust.confidence_threshold(confidence, correct, 0.99) == 1.0


def test_the_stored_threshold_accepts_exactly_the_images_the_rule_chose():
    confidence = np.array([0.912341, 0.8, 0.7])
    correct = np.array([True, False, True])
    # Shortened to 4 decimals: the same images are accepted, the one at the cut included.
    assert trust.threshold_for_target(confidence, correct, 0.99) == 0.9123
    assert trust.threshold_for_target(confidence, correct, 0.6) == 0.7
    # Two confidences within 1e-4: shortening would also accept the lower one, so it stays.
    close = np.array([0.91234, 0.91231, 0.5])
    assert trust.threshold_for_target(close, np.array([True, False, True]), 0.99) == 0.91234
    assert trust.threshold_for_target(close, np.zeros(3, bool), 0.99) == 1.0


def test_accuracy_at_the_stored_threshold_meets_the_target():
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.3, 1.0, 2000)
    correct = rng.uniform(size=2000) < confidence
    for target in (0.8, 0.9, 0.95, 0.99):
        threshold = trust.threshold_for_target(confidence, correct, target)
        accepted = confidence >= threshold
        assert correct[accepted].mean() >= target
        assert accepted.sum() == (confidence >= trust.confidence_threshold(
            confidence, correct, target)).sum()


def test_a_threshold_of_1_abstains_even_on_a_confidence_of_exactly_1():
    t = _trust(confidence_threshold=1.0, ood_threshold=10.0)
    assert t.abstains_on_all and t.status(confidence=1.0, ood_score=0.0) == UNIDENTIFIED


def test_held_out_images_all_right_at_a_confidence_of_1_accept_such_cells_not_none():
    """A small, easy held-out set can have every confidence round to exactly 1 (float32),
    all right: the rule then accepts what is that sure, where a threshold of 1 would mean
    "abstain on all" and send every cell to review."""
    confidence, correct = np.ones(20, np.float32), np.ones(20, bool)
    cut = trust.confidence_threshold(confidence, correct, 0.99)
    assert cut < trust.ABSTAIN_ON_ALL and 1.0 >= cut > np.nextafter(np.float32(1), 0)
    stored = trust.threshold_for_target(confidence, correct, 0.99)
    assert stored == 0.9999
    t = _trust(confidence_threshold=stored, ood_threshold=10.0)
    assert not t.abstains_on_all
    assert t.status(confidence=1.0, ood_score=0.0) == ACCEPTED
    assert t.status(confidence=0.99, ood_score=0.0) == UNIDENTIFIED  # below every held-out one
    assert trust.confidence_threshold(confidence, ~correct, 0.99) == trust.ABSTAIN_ON_ALL


def test_the_threshold_in_words_says_when_every_cell_goes_to_review():
    assert Trust(confidence_threshold=0.9123, target_accuracy=0.99).threshold_text() == (
        "0.9123 (accuracy target 0.99)")
    assert Trust(confidence_threshold=1.0, target_accuracy=0.99).threshold_text() == (
        "1 (accuracy target 0.99): no threshold reached its target on the held-out images, "
        "so every cell is sent to review")
    assert Trust().threshold_text() == "0"
    assert Trust(confidence_threshold=trust.BELOW_ONE, target_accuracy=0.99).threshold_text() == (
        "exactly 1 as computed (accuracy target 0.99)")


def _fitted_folder(tmp_path, target=0.99):
    """A trust layer whose threshold for `target` was chosen on ten held-out images, the
    three least confident of them wrong."""
    confidence = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5])
    correct = np.array([True] * 7 + [False, True, False])
    layers = [trust.LayerGaussians(np.zeros((2, 3)), np.eye(3), 1.0)]
    trust.save_trust_arrays(tmp_path, layers, np.ones((3, 2)), np.zeros(2), confidence, correct)
    card = {"trust": {"temperature": 1.2, "target_accuracy": target, "ood": {"threshold": 5.0},
                      "confidence_threshold": trust.threshold_for_target(confidence, correct,
                                                                         target)}}
    return card, confidence


def test_an_accuracy_target_chooses_its_threshold_on_the_held_out_images(tmp_path):
    card, confidence = _fitted_folder(tmp_path)
    served = Trust.load(tmp_path, card)
    assert served.confidence_threshold == pytest.approx(confidence[6], abs=1e-4)  # 7 of 7 right
    assert served.target_accuracy == 0.99
    same = Trust.load(tmp_path, card, accuracy_target=0.99)
    assert same.confidence_threshold == served.confidence_threshold
    lower = Trust.load(tmp_path, card, accuracy_target=0.85)  # 8 of 9 right: 0.89 >= 0.85
    assert lower.confidence_threshold == pytest.approx(confidence[8], abs=1e-4)
    assert lower.target_accuracy == 0.85
    assert (lower.temperature, lower.ood_threshold) == (served.temperature, served.ood_threshold)
    assert lower.status(confidence=0.6, ood_score=1.0) == ACCEPTED
    assert served.status(confidence=0.6, ood_score=1.0) == UNIDENTIFIED


@pytest.mark.parametrize("target", [0.0, -0.5, 1.5])
def test_an_accuracy_target_outside_0_to_1_is_refused(tmp_path, target):
    card, _ = _fitted_folder(tmp_path)
    with pytest.raises(ValueError, match="greater than 0 and at most 1"):
        Trust.load(tmp_path, card, accuracy_target=target)


def test_an_accuracy_target_needs_held_out_predictions_and_a_trust_layer(tmp_path):
    card, _ = _fitted_folder(tmp_path)
    with np.load(tmp_path / trust.TRUST_FILE) as arrays:
        older = {k: arrays[k] for k in arrays.files if not k.startswith("held_out")}
    np.savez(tmp_path / trust.TRUST_FILE, **older)  # a folder fitted before they were kept
    assert Trust.load(tmp_path, card).fitted  # still serves at its own target
    with pytest.raises(ValueError, match="no held-out predictions.*training.calibrate"):
        Trust.load(tmp_path, card, accuracy_target=0.9)
    with pytest.raises(ValueError, match="no fitted trust layer"):
        Trust.load(tmp_path, {}, accuracy_target=0.9)


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
