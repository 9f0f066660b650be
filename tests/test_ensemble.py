"""training.ensemble: runs of one split and frozen part served as one network, the mean of
their logits or (--combine weights) one network holding the mean of their weights; and
--fit-seed, which draws another member without moving the split or the cached views."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from hematovision.predictor import Predictor
from hematovision.trust import class_activation_map
from training import crossfit, ensemble, export, train
from training.config import TrainConfig
from tests.conftest import CLASSES
from tests.test_crossfit import write_crossfit


@pytest.fixture(scope="module")
def two_members(trained_run, tmp_path_factory):
    """(base, first run, second run): the conftest run and one more of its config with
    another --fit-seed, sharing its cache folder. The second starts from the first's model
    file, as real members start from one pretrained file: the conftest run has random
    weights (--weights none), which the fit seed would draw again, frozen blocks included."""
    base, first = trained_run
    config = TrainConfig.load(first / "config.json")
    second = train.train(replace(config, fit_seed=11, name="fit11",
                                 weights=str(first / "model.keras"),
                                 out=str(tmp_path_factory.mktemp("fit11"))))
    return base, first, second


def test_another_fit_seed_keeps_the_split_and_the_cached_views_and_draws_another_head(
        two_members):
    base, first, second = two_members
    assert (first / "splits.json").read_text() == (second / "splits.json").read_text()
    assert len(list((base / "cache").glob("features-*.npy"))) == 2  # reused, not recomputed
    heads = [keras.models.load_model(r / "model.keras").get_layer("trainable").get_layer("head")
             for r in (first, second)]
    assert not np.allclose(heads[0].kernel.numpy(), heads[1].kernel.numpy())


def serving_outputs(model_file: Path, images: np.ndarray):
    model = keras.models.load_model(model_file, compile=False)
    logits, features, maps = export.serving_model(model, 1)(images, training=False)
    return model, logits.numpy(), features.numpy(), maps.numpy()


def test_an_ensemble_serves_the_mean_of_its_members_logits_and_heat_maps(two_members, tmp_path):
    base, first, second = two_members
    run = ensemble.ensemble([first, second], "ens", tmp_path / "runs")
    images = np.random.default_rng(0).uniform(-1, 1, (3, 224, 224, 3)).astype(np.float32)
    members = [serving_outputs(r / "model.keras", images) for r in (first, second)]
    merged, logits, features, maps = serving_outputs(run / "model.keras", images)
    np.testing.assert_allclose(logits, np.mean([m[1] for m in members], axis=0),
                               rtol=1e-4, atol=1e-4)
    # The first member's middle blocks feed the unfamiliarity features; every member's
    # pooled maps follow them, each member's its own Gaussians.
    layout = export.probe_layout(merged)
    assert [p["layer"] for p in layout][-3:] == ["block_15_add", "pool", "pool"]
    assert [(p["member"], p["dim"]) for p in layout[-2:]] == [(0, 1280), (1, 1280)]
    np.testing.assert_allclose(features[:, :-2560], members[0][2][:, :-1280], atol=1e-4)
    # The class activation map over the joined maps is the mean of the members' maps.
    kernel = export._find_layer(merged, "head").get_weights()[0]
    member_kernels = [export._find_layer(m[0], "head").get_weights()[0] for m in members]
    raw = maps[0] @ kernel[:, 1]
    expected = np.mean([m[3][0] @ k[:, 1] for m, k in zip(members, member_kernels)], axis=0)
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-4)
    assert class_activation_map(maps[0], kernel, 1).shape == (7, 7)

    summary = json.loads((run / "summary.json").read_text())
    assert [m["run"] for m in summary["members"]] == [str(first), str(second)]
    assert [m["fit_seed"] for m in summary["members"]] == [3, 11]
    # The two differ in their starting file too, which each member's record names; the
    # settings they share are not repeated.
    assert [m["settings"] for m in summary["members"]] == [
        {"weights": "none"}, {"weights": str(first / "model.keras")}]
    assert summary["best_epoch"] == [1, 1] and summary["classes"] == CLASSES
    assert set(summary["validation"]) == {"accuracy", "balanced_accuracy", "loss"}
    assert (run / "splits.json").read_text() == (first / "splits.json").read_text()
    assert len(list((base / "cache").glob("features-*.npy"))) == 2  # the members' clean view


def test_an_ensemble_exports_and_says_what_it_is(two_members, tmp_path):
    _, first, second = two_members
    run = ensemble.ensemble([first, second], "ens", tmp_path / "runs")
    out = export.export_run(run, "ens", root=tmp_path / "models")
    card = json.loads((out / "model_card.json").read_text())
    # Each member's pooled embedding has class Gaussians of its own, beside the middle blocks'.
    layers = card["trust"]["ood"]["layers"]
    assert [(g["layer"], g.get("member"), g["dim"]) for g in layers[-2:]] == [
        ("pool", 0, 1280), ("pool", 1, 1280)]
    with np.load(out / "trust.npz") as arrays:
        assert arrays[f"whitening_lower_{len(layers) - 1}"].shape == (1280 * 1281 // 2,)
    assert card["architecture"].startswith("2 MobileNetV2 (alpha 1.0) networks sharing")
    assert len(card["training"]["members"]) == 2
    assert card["export_check"]["max_abs_probability_difference_litert_vs_keras"] < 1e-4
    assert Predictor(out).classes == CLASSES
    with pytest.raises(SystemExit, match="is an ensemble"):
        crossfit.crossfit(out)
    with pytest.raises(SystemExit, match="is an ensemble already"):
        ensemble.ensemble([run, first], "again", tmp_path / "runs")


def test_members_split_otherwise_or_alone_are_refused(two_members, tmp_path):
    _, first, second = two_members
    other = Path(shutil.copytree(second, tmp_path / "other"))
    splits = json.loads((other / "splits.json").read_text())
    splits["train"], splits["val"] = splits["train"][1:], splits["val"] + splits["train"][:1]
    (other / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(SystemExit, match="split otherwise"):
        ensemble.ensemble([first, other], "leaky", tmp_path / "runs")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"tune_from_block": 13}))
    with pytest.raises(SystemExit, match="tune_from_block"):
        ensemble.ensemble([first, other], "cut", tmp_path / "runs")
    with pytest.raises(SystemExit, match="at least two"):
        ensemble.ensemble([first], "alone", tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_an_ensemble_of_crossfitted_members_gets_their_joined_out_of_fold_logits(
        two_members, tmp_path):
    _, first, second = two_members
    members = [Path(shutil.copytree(r, tmp_path / r.name)) for r in (first, second)]
    labels, folds = np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1])
    draws = [np.random.default_rng(seed).normal(size=(8, 4, 4)).astype(np.float32)
             for seed in (1, 2)]
    for member, view_logits in zip(members, draws):
        write_crossfit(member, view_logits, labels, folds)
    run = ensemble.ensemble(members, "ens", tmp_path / "runs")
    loaded = crossfit.load(run, 4)
    np.testing.assert_allclose(loaded["logits"], np.mean(draws, axis=0)[:4].mean(axis=0),
                               rtol=1e-6)
    assert json.loads((run / crossfit.JSON_FILE).read_text())["members"] == [
        str(m) for m in members]
    # Without a crossfit of every member the ensemble has none (and export calibrates it on
    # validation, as any model without one).
    (members[1] / crossfit.NPZ_FILE).unlink()
    assert not (ensemble.ensemble(members, "ens", tmp_path / "runs") / crossfit.NPZ_FILE).exists()


def test_a_weight_average_is_one_members_network_holding_the_mean_of_their_weights(
        two_members, tmp_path):
    _, first, second = two_members
    members = [Path(shutil.copytree(r, tmp_path / r.name)) for r in (first, second)]
    for member, seed in zip(members, (1, 2)):  # crossfits that a logit ensemble would join
        write_crossfit(member, np.random.default_rng(seed).normal(size=(8, 4, 4)),
                       np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1]))
    run = ensemble.ensemble(members, "soup", tmp_path / "runs", combine="weights")
    loaded = [keras.models.load_model(r / "model.keras", compile=False) for r in members]
    soup = keras.models.load_model(run / "model.keras", compile=False)
    assert [layer.name for layer in soup.layers] == [layer.name for layer in loaded[0].layers]
    head = [m.get_layer("trainable").get_layer("head").get_weights()[0] for m in loaded]
    assert not np.allclose(*head)  # two draws: the average is not either member
    for averaged, a, b in zip(soup.get_weights(), *(m.get_weights() for m in loaded)):
        np.testing.assert_allclose(averaged, (a + b) / 2, rtol=1e-6, atol=1e-7)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["combined"] == "weights"
    assert summary["initialisation"].startswith("weight average of 2 runs, each initialised")
    assert [m["fit_seed"] for m in summary["members"]] == [3, 11]
    assert set(summary["validation"]) == {"accuracy", "balanced_accuracy", "loss"}
    # The members' held-out logits are not this network's: no out-of-fold logits, and no
    # crossfit of the average either.
    assert not (run / crossfit.NPZ_FILE).exists()
    with pytest.raises(SystemExit, match="averages the weights of runs"):
        crossfit.crossfit(run)

    out = export.export_run(run, "soup", root=tmp_path / "models")
    card = json.loads((out / "model_card.json").read_text())
    assert card["architecture"].endswith("dense softmax (every weight the mean of 2 runs' "
                                         "weights)")
    assert [g.get("member") for g in card["trust"]["ood"]["layers"]] == [None] * 6  # one network
    assert len(card["training"]["members"]) == 2
    assert card["trust"]["fitted_on"]["temperature_and_confidence_threshold"]["source"] == (
        "validation split")
    assert Predictor(out).classes == CLASSES


def test_a_weight_average_of_networks_of_other_shapes_is_refused():
    models = [keras.Sequential([keras.Input((3,)), keras.layers.Dense(n)]) for n in (2, 4)]
    with pytest.raises(SystemExit, match="differ in shape"):
        ensemble.average_weights(models)
