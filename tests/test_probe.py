"""The linear probe of frozen features: out of fold, on a crossfit's folds."""

import json

import numpy as np
import pytest

from tests.conftest import CLASSES
from training import probe
from training.config import TrainConfig
from training.crossfit import NPZ_FILE


def _blobs(seed=0, per_class=30, classes=3, dims=5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (classes, dims))
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + rng.normal(0, 1, (len(labels), dims))
    folds = np.tile(np.arange(3), len(labels) // 3)
    return features, labels, folds


def test_a_linear_probe_separates_linearly_separable_classes_out_of_fold():
    features, labels, folds = _blobs()
    logits = probe.out_of_fold_logits(features, labels, folds, l2=0.001)
    result = probe.figures(logits, labels, folds)
    assert result["accuracy"] >= 0.95 and len(result["per_fold"]) == 3
    assert result["nll"] < 0.3
    # Stronger regularisation pulls the logits towards zero: less confident, higher NLL.
    shrunk = probe.figures(probe.out_of_fold_logits(features, labels, folds, l2=10.0),
                           labels, folds)
    assert shrunk["nll"] > result["nll"]


def test_a_held_out_folds_labels_and_statistics_never_reach_its_logits():
    features, labels, folds = _blobs(seed=1)
    before = probe.out_of_fold_logits(features, labels, folds, l2=0.01)
    relabelled, moved = labels.copy(), features.copy()
    held = folds == 0
    relabelled[held] = (labels[held] + 1) % 3
    moved[held] += 100.0  # would shift the standardisation if fold 0 took part in it
    after = probe.out_of_fold_logits(moved, relabelled, folds, l2=0.01)
    # Fold 0's logits are a fixed linear function of its (moved) features...
    mean, spread = features[~held].mean(0), features[~held].std(0) + 1e-6
    w, b = probe.fit_linear((features[~held] - mean) / spread, labels[~held], 3, 0.01)
    np.testing.assert_allclose(after[held], ((moved[held] - mean) / spread) @ w + b, atol=1e-6)
    # ...while the other folds, whose training data includes fold 0, change.
    assert not np.allclose(before[~held], after[~held])


def test_sample_weights_count_an_example_as_often_as_its_weight():
    features, labels, _ = _blobs(seed=2, per_class=12)
    weights = np.tile([1, 2, 3], len(labels) // 3)
    weighted = probe.fit_linear(features, labels, 3, 0.01, weights)
    repeated = probe.fit_linear(np.repeat(features, weights, axis=0),
                                np.repeat(labels, weights), 3, 0.01)
    for a, b in zip(weighted, repeated):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(weighted[0], probe.fit_linear(features, labels, 3, 0.01)[0],
                           atol=1e-3)


def test_a_standardised_fit_is_returned_as_weights_of_the_raw_features():
    features, labels, _ = _blobs(seed=3)
    raw = features * [1, 10, 100, 0.1, 1] + 50.0  # scales a raw head would see
    w, b = probe.standardised_fit(raw, labels, 3, 0.01)
    mean, spread = raw.mean(0), raw.std(0) + 1e-6
    w_std, b_std = probe.fit_linear((raw - mean) / spread, labels, 3, 0.01)
    np.testing.assert_allclose(raw @ w + b, ((raw - mean) / spread) @ w_std + b_std, atol=1e-8)


@pytest.fixture
def crossfit_folder(image_folder, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    TrainConfig(data=str(image_folder), input_size=32, weights="none").save(
        folder / "config.json")
    files = sorted(str(p.relative_to(image_folder)) for p in image_folder.rglob("*.jpg"))
    labels = np.array([CLASSES.index(f.split("/")[0]) for f in files])
    folds = np.array([int(f.split("_")[-1][0]) % 2 for f in files])
    np.savez(folder / NPZ_FILE, files=np.array(files), labels=labels, folds=folds)
    return folder


def test_probe_command_ranks_each_initialisation_on_the_crossfit_images(crossfit_folder, tmp_path,
                                                                        capsys):
    import keras

    from training.model import build_backbone

    keras.utils.set_random_seed(5)
    saved = tmp_path / "backbone.keras"
    build_backbone(32).save(saved)
    out = tmp_path / "probe.json"
    probe.main([str(crossfit_folder), "--weights", "none", str(saved), "--views", "1",
                "--layer", "block_3_project_BN", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["images"] == 24 and result["folds"] == 2 and result["views"] == 1
    assert result["layer"] == "block_3_project_BN" and result["crop"] == "none"
    first, second = result["probes"]
    assert first["weights"] == "none" and first["initialisation"].startswith("random")
    assert second["initialisation"].startswith("backbone.keras: ")
    assert first["features"] == second["features"] == 32  # block 3's output channels
    for row in result["probes"]:
        assert sorted(row["by_l2"]) == sorted(str(l2) for l2 in probe.LAMBDAS)
        for figures in row["by_l2"].values():
            assert 0 <= figures["accuracy"] <= 1 and len(figures["per_fold"]) == 2
    # Each class is its own colour: a probe of even a random network separates them.
    assert max(f["accuracy"] for f in first["by_l2"].values()) == 1.0
    assert "none, crop none: out-of-fold accuracy 1.0" in capsys.readouterr().out


def test_append_adds_a_candidates_row_to_an_earlier_probe_of_the_same_setting(
        crossfit_folder, tmp_path, monkeypatch):
    out = tmp_path / "probe.json"
    with pytest.raises(SystemExit) as nothing_yet:
        probe.main([str(crossfit_folder), "--weights", "none", "--append", "--out", str(out)])
    assert nothing_yet.value.code == 2 and not out.exists()
    common = ["--layer", "block_1_project_BN", "--views", "1", "--out", str(out)]
    probe.main([str(crossfit_folder), "--weights", "none", *common])
    first = json.loads(out.read_text())["probes"][0]
    # A second probe of other weights keeps the first row; probing those weights again
    # replaces their row instead of adding a second one.
    saved = tmp_path / "other.keras"
    _tiny_backbone(saved)
    probe.main([str(crossfit_folder), "--weights", str(saved), *common, "--append"])
    probe.main([str(crossfit_folder), "--weights", str(saved), *common, "--append"])
    rows = json.loads(out.read_text())["probes"]
    assert [r["weights"] for r in rows] == ["none", str(saved)]
    assert rows[0] == first
    # Rows of another setting (here the views averaged) would not compare: refused, file kept,
    # before any image is embedded.
    before = out.read_text()
    monkeypatch.setattr(probe, "embed", lambda *a, **k: pytest.fail("embedded before refusing"))
    with pytest.raises(SystemExit) as other_views:
        probe.main([str(crossfit_folder), "--weights", "none", "--layer", "block_1_project_BN",
                    "--views", "4", "--out", str(out), "--append"])
    assert other_views.value.code == 2 and out.read_text() == before


def _tiny_backbone(path):
    import keras

    from training.model import build_backbone

    keras.utils.set_random_seed(6)
    build_backbone(32).save(path)


def test_probe_command_refuses_what_it_cannot_probe(crossfit_folder, tmp_path):
    with pytest.raises(SystemExit) as missing_weights:
        probe.main([str(crossfit_folder), "--weights", str(tmp_path / "absent.keras")])
    assert missing_weights.value.code == 2
    (crossfit_folder / NPZ_FILE).unlink()
    with pytest.raises(SystemExit) as no_crossfit:
        probe.main([str(crossfit_folder), "--weights", "none"])
    assert no_crossfit.value.code == 2


def test_crop_option_probes_the_images_cropped_so_and_records_it(crossfit_folder, tmp_path,
                                                                  monkeypatch, capsys):
    seen = []

    def fake_embed(weights, paths, config, layer, views):
        seen.append(config.crop)
        return np.eye(len(paths))[:, :4] + np.arange(len(paths))[:, None] % 3, "random"

    monkeypatch.setattr(probe, "embed", fake_embed)
    out = tmp_path / "probe.json"
    common = ["--weights", "none", "--views", "1", "--out", str(out)]
    probe.main([str(crossfit_folder), *common])
    probe.main([str(crossfit_folder), *common, "--crop", "nucleus:0.4", "--append"])
    probe.main([str(crossfit_folder), *common, "--crop", "nucleus:0.4", "--append"])
    result = json.loads(out.read_text())
    assert seen == ["none", "nucleus:0.4", "nucleus:0.4"]
    # The setting keeps the crossfit model's crop; each row its own, one row per weights and crop
    assert result["crop"] == "none"
    assert [(r["weights"], r["crop"]) for r in result["probes"]] == [("none", "none"),
                                                                       ("none", "nucleus:0.4")]
    assert "none, crop nucleus:0.4: out-of-fold accuracy" in capsys.readouterr().out
    # A row written before rows had a crop is read as the setting's crop, and replaced by one of it
    del result["probes"][0]["crop"]
    out.write_text(json.dumps(result))
    assert probe.row_crop(result["probes"][0], result) == "none"
    probe.main([str(crossfit_folder), *common, "--append"])
    assert len(json.loads(out.read_text())["probes"]) == 2
    with pytest.raises(SystemExit) as unknown:
        probe.main([str(crossfit_folder), "--weights", "none", "--crop", "nucleus:3",
                    "--out", str(tmp_path / "x.json")])
    assert unknown.value.code == 2 and len(seen) == 4
