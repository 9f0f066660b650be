"""Out-of-fold logits by source group, and what the trust layer is fitted on."""

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from hematovision.trust import softmax, threshold_for_target
from training import crossfit
from training import data as data_lib
from training.config import TrainConfig
from training.calibrate import (TARGET_ACCURACY, fit_temperature, fit_trust,
                                lowest_ece_temperature, reliability)
from training.stopwatch import ELAPSED_FILE


def test_folds_keep_groups_whole_and_spread_every_class():
    files = [f"f{i}" for i in range(60)]
    groups = [f"g{i // 3}" for i in range(60)]  # 20 groups of 3 files
    labels = [0 if i < 30 else 1 for i in range(60)]  # 10 groups per class
    fold_of = crossfit.assign_folds(files, groups, labels, folds=5, seed=1)
    for g in set(groups):
        assert len({fold_of[f] for f, h in zip(files, groups) if h == g}) == 1
    for label in (0, 1):
        per_fold = [len({g for f, g, y in zip(files, groups, labels)
                         if y == label and fold_of[f] == k}) for k in range(5)]
        assert per_fold == [2] * 5
    assert crossfit.assign_folds(files, groups, labels, 5, seed=1) == fold_of
    assert crossfit.assign_folds(files, groups, labels, 5, seed=2) != fold_of


def test_crossfit_scores_every_pool_image_once_and_leaves_the_model_alone(trained_run, tmp_path):
    _, run_dir = trained_run
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    before = hashlib.sha256((folder / "model.keras").read_bytes()).hexdigest()
    summary = crossfit.crossfit(folder, folds=2)
    assert hashlib.sha256((folder / "model.keras").read_bytes()).hexdigest() == before
    split = json.loads((folder / "splits.json").read_text())
    with np.load(folder / crossfit.NPZ_FILE) as arrays:
        files, logits, labels, folds = (arrays[k] for k in ("files", "logits", "labels", "folds"))
    assert sorted(files) == sorted(split["train"] + split["val"])
    assert logits.shape == (16, 4) and np.all(np.isfinite(logits))
    assert sorted(set(folds)) == [0, 1]
    assert [f["images"] for f in summary["per_fold"]] == [int(np.sum(folds == k)) for k in (0, 1)]
    assert summary["accuracy"] == round(float(np.mean(logits.argmax(1) == labels)), 4)
    assert json.loads((folder / crossfit.JSON_FILE).read_text()) == summary
    assert summary["test_time_augmentation"] == 4
    # Every orientation is kept: each count is the mean of the first ones, on the same folds.
    with np.load(folder / crossfit.NPZ_FILE) as arrays:
        view_logits = arrays["view_logits"]
    assert view_logits.shape == (8, 16, 4)
    np.testing.assert_allclose(logits, view_logits[:4].mean(axis=0), rtol=1e-6)
    assert not np.array_equal(view_logits[0], view_logits[4])  # a transpose is another view
    for views in (1, 4, 8):
        loaded = crossfit.load(folder, views)
        np.testing.assert_allclose(loaded["logits"], view_logits[:views].mean(axis=0), rtol=1e-6)
        assert loaded["accuracy"] == summary["by_views"][str(views)]["accuracy"] == round(
            float(np.mean(loaded["logits"].argmax(1) == labels)), 4)
        assert loaded["test_time_augmentation"] == views and loaded["images"] == 16
    assert summary["accuracy"] == summary["by_views"]["4"]["accuracy"]

    # A crossfit from before the orientations were kept serves only the count it was run with.
    np.savez_compressed(folder / crossfit.NPZ_FILE, files=files, labels=labels, folds=folds,
                        logits=logits)
    assert crossfit.load(folder, 4)["images"] == 16
    assert crossfit.load(folder, 1) is None and crossfit.load(folder, 8) is None  # other modes
    for recorded, views in ((1, 1), (8, 8), (True, 4), (False, 1)):  # bools: before 8 views
        (folder / crossfit.JSON_FILE).write_text(json.dumps(
            summary | {"test_time_augmentation": recorded}))
        assert [v for v in (1, 4, 8) if crossfit.load(folder, v)] == [views], recorded


def test_orientation_logits_average_to_what_the_served_graph_computes(trained_run, tmp_path):
    import keras

    from training.export import serving_model

    _, run_dir = trained_run
    config = TrainConfig.load(run_dir / "config.json")
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    paths = [Path(config.data) / f for f in json.loads((run_dir / "splits.json").read_text())["val"]]
    per_view = crossfit.orientation_logits(serving_model(model, 1), paths, config)
    assert per_view.shape == (8, len(paths), 4)
    batch = np.concatenate(list(data_lib.preprocessed_batches(paths, config.input_size,
                                                              config.crop)))
    for views in (4, 8):
        served = serving_model(model, views)(batch, training=False)[0].numpy()
        np.testing.assert_allclose(per_view[:views].mean(axis=0), served, atol=1e-4)


def test_calibration_uses_out_of_fold_logits_when_present(trusted_model_dir, tmp_path):
    folder = tmp_path / "trusted"
    shutil.copytree(trusted_model_dir, folder)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4)) + 6.0 * np.eye(4)[labels]  # confident, often right
    logits[:60] = rng.normal(0, 1, (60, 4)) * 6.0  # and some confident mistakes
    np.savez_compressed(folder / crossfit.NPZ_FILE, files=np.array([f"x{i}" for i in range(400)]),
                        labels=labels, folds=labels % 2, logits=logits)
    (folder / crossfit.JSON_FILE).write_text(json.dumps(
        {"folds": 2, "groups": 400, "images": 400, "accuracy": 0.5,
         "test_time_augmentation": True}))  # as recorded before 8 views: the four flips

    section = fit_trust(folder, progress=False)
    temperature = fit_temperature(logits, labels)
    assert section["temperature"] == pytest.approx(temperature, abs=1e-4)
    p = softmax(logits, temperature)
    assert section["confidence_threshold"] == threshold_for_target(
        p.max(1), p.argmax(1) == labels, TARGET_ACCURACY)
    source = section["fitted_on"]["temperature_and_confidence_threshold"]
    assert source["images"] == 400 and source["source"].startswith("out-of-fold")
    assert section["fitted_on"]["unfamiliarity_threshold"]["split"] == "val"
    assert "out-of-fold" in section["rule"]

    assert section["temperature_fit"] == "nll"
    # Fitted by ECE instead: the grid temperature with the lowest ECE on the same logits, kept
    # by a later refit that does not say otherwise.
    by_ece = fit_trust(folder, progress=False, temperature_fit="ece")
    assert by_ece["temperature"] == pytest.approx(lowest_ece_temperature(logits, labels), abs=1e-4)
    assert by_ece["temperature_fit"] == "ece" and "expected calibration error" in \
        by_ece["temperature_rule"]
    p = softmax(logits, by_ece["temperature"])
    assert reliability(p, labels)["ece"] < reliability(softmax(logits, temperature), labels)["ece"]
    assert fit_trust(folder, progress=False)["temperature_fit"] == "ece"
    fit_trust(folder, progress=False, temperature_fit="nll")

    (folder / crossfit.NPZ_FILE).unlink()  # without them: the validation split, as before
    section = fit_trust(folder, progress=False)
    assert section["fitted_on"]["temperature_and_confidence_threshold"]["source"] == \
        "validation split"
    assert section["temperature"] != pytest.approx(temperature, abs=1e-4)


def test_images_of_unknown_source_stay_out_of_the_unfamiliarity_fit(trusted_model_dir, tmp_path):
    # They may be siblings of validation images: Gaussians fitted on them would make validation
    # look familiar and set the not-a-cell threshold too low for new smears.
    folder = tmp_path / "trusted"
    shutil.copytree(trusted_model_dir, folder)
    split = json.loads((folder / "splits.json").read_text())
    without = fit_trust(folder, progress=False)
    split["unassigned"] = split["val"]
    (folder / "splits.json").write_text(json.dumps(split))
    with_unassigned = fit_trust(folder, progress=False)
    assert with_unassigned == without
    assert without["fitted_on"]["class_gaussians"] == {"splits": ["train"],
                                                       "images": len(split["train"])}


def test_crossfit_refuses_an_initialisation_the_model_did_not_start_from(trained_run, tmp_path):
    _, run_dir = trained_run
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["seed"] += 1  # the run's random initialisation, drawn differently
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="is not the initialisation of"):
        crossfit.crossfit(folder, folds=2)
    assert not (folder / crossfit.NPZ_FILE).exists()


def test_crossfit_refuses_a_run_started_from_a_model_of_its_own_data(trained_run, tmp_path):
    from training.model import trained_on

    # Such a run (a served model tuned further, a checkpoint restarted) starts every fold model
    # from weights that the held-out fold's images trained.
    _, run_dir = trained_run
    source, folder = tmp_path / "source", tmp_path / "run"
    shutil.copytree(run_dir, source)
    shutil.copytree(run_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    weights = str(source / "model.keras")
    (folder / "config.json").write_text(json.dumps(config | {"weights": weights}))
    with pytest.raises(SystemExit, match="was itself trained on .* would not be out of fold"):
        crossfit.crossfit(folder, folds=2)
    assert not (folder / crossfit.NPZ_FILE).exists()
    # What the refusal reads: the data named beside the weights, and nothing for other files.
    assert trained_on(weights) == config["data"]
    (source / "config.json").write_text(json.dumps(config | {"data": str(tmp_path / "other")}))
    assert trained_on(weights) == str(tmp_path / "other")
    assert trained_on(str(tmp_path / "dog_breed_mobilenetv2.h5")) is None


def test_fold_models_replay_the_served_models_epochs_and_learning_rates(
        trained_run, tmp_path, monkeypatch):
    from training import train

    _, run_dir = trained_run
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    summary = json.loads((folder / "summary.json").read_text())
    summary["best_epoch"] = 3
    (folder / "summary.json").write_text(json.dumps(summary))
    # Validation loss rose after epoch 1, so the plateau schedule cut the rate for epoch 3.
    (folder / "metrics.csv").write_text(
        "epoch,loss,val_loss\n0,1.0,0.5\n1,0.8,0.7\n2,0.6,0.4\n3,0.5,0.6\n")
    rate = json.loads((folder / "config.json").read_text())["learning_rate"]
    calls = []
    real_fit = train.fit

    def recording_fit(classifier, config, x, y, validation, epochs, *args, **kwargs):
        rates = kwargs.get("rates")
        calls.append((validation, epochs, list(rates) if rates is not None else None))
        return real_fit(classifier, config, x, y, validation, epochs, *args, **kwargs)

    monkeypatch.setattr(train, "fit", recording_fit)
    result = crossfit.crossfit(folder, folds=2, stopping="served-epochs")
    assert calls == [(None, 3, pytest.approx([rate, rate, rate / 3]))] * 2
    assert [f["epochs"] for f in result["per_fold"]] == [3, 3]
    assert "served model's 3 epochs and learning rates" in result["stopping"]
    assert result["stopping_mode"] == "served-epochs"

    # A final refit before the schedule replay was trained at a constant rate and logged none.
    summary["refit_on_all_training_data"] = True
    (folder / "summary.json").write_text(json.dumps(summary))
    assert crossfit.served_schedule(folder, TrainConfig.load(folder / "config.json")) == [
        rate] * 3
    # A refit now replays the validated fit's rates and logs them: those are the served ones.
    (folder / "refit_metrics.csv").write_text(
        f"epoch,loss,learning_rate\n0,1.0,{rate}\n1,0.8,{rate}\n2,0.6,{rate / 3}\n")
    assert crossfit.served_schedule(folder, TrainConfig.load(folder / "config.json")) == (
        pytest.approx([rate, rate, rate / 3]))

    calls.clear()
    result = crossfit.crossfit(folder, folds=2)  # the default: early stopping on held-out
    assert [(v is not None, s) for v, _, s in calls] == [(True, None), (True, None)]
    assert result["stopping"] == "early stopping on each held-out fold"
    assert result["stopping_mode"] == "held-out"


def test_a_stopped_crossfit_resumes_at_its_first_unfinished_fold(trained_run, tmp_path,
                                                                  monkeypatch):
    from training import train

    _, run_dir = trained_run
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    real_fit, fits = train.fit, []

    def stopped_in_fold_2(*args, **kwargs):
        fits.append(kwargs.get("log_name"))
        if len(fits) == 2:
            raise KeyboardInterrupt  # the session ends during the second fold
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", stopped_in_fold_2)
    with pytest.raises(KeyboardInterrupt):
        crossfit.crossfit(folder, folds=2)
    assert not (folder / crossfit.NPZ_FILE).exists()
    with np.load(folder / crossfit.PARTIAL_DIR / "fold0.npz") as arrays:
        first_fold = arrays["view_logits"]
    first_session = json.loads(
        (folder / crossfit.PARTIAL_DIR / ELAPSED_FILE).read_text())["seconds"]
    assert first_session > 0

    monkeypatch.setattr(train, "fit", lambda *a, **k: (fits.append(k.get("log_name")),
                                                       real_fit(*a, **k))[1])
    started = time.time()
    summary = crossfit.crossfit(folder, folds=2)
    # Its time counts the first session up to its finished fold, and all of the second.
    assert summary["seconds"] == pytest.approx(first_session + time.time() - started, abs=1.0)
    assert fits == ["fold0.csv", "fold1.csv", "fold1.csv"]  # fold 0 was not trained again
    with np.load(folder / crossfit.NPZ_FILE) as arrays:
        np.testing.assert_array_equal(arrays["view_logits"][:, arrays["folds"] == 0], first_fold)
    assert [f["fold"] for f in summary["per_fold"]] == [0, 1]
    assert not (folder / crossfit.PARTIAL_DIR).exists()  # finished: nothing left to resume


def test_every_fold_starts_from_the_same_state_random_numbers_included(trained_run, tmp_path,
                                                                         monkeypatch):
    """A resumed crossfit skips its finished folds, so its dropout has drawn nothing when the
    next fold starts, where in one session it has drawn all of the earlier folds' masks: each
    fold must start from one state, or the fold models would depend on where it was resumed."""
    from training import train

    _, run_dir = trained_run
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    real_fit, starts = train.fit, []

    def recorded(classifier, *args, **kwargs):
        starts.append({v.path: v.numpy().copy() for v in classifier.trainable.variables})
        return real_fit(classifier, *args, **kwargs)

    monkeypatch.setattr(train, "fit", recorded)
    crossfit.crossfit(folder, folds=2)
    assert len(starts) == 2 and starts[0].keys() == starts[1].keys()
    assert any("seed" in path for path in starts[0])  # the dropout's state is among them
    for path, value in starts[0].items():
        np.testing.assert_array_equal(starts[1][path], value, err_msg=path)


def test_finished_folds_of_other_settings_are_not_resumed(trained_run, tmp_path, monkeypatch):
    from training import train

    _, run_dir = trained_run
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    partial = folder / crossfit.PARTIAL_DIR
    partial.mkdir()
    (partial / "settings.json").write_text(json.dumps({"folds": 3}))
    np.savez(partial / "fold0.npz", logits=np.zeros((1, 4)), record=json.dumps({"fold": 0}))
    real_fit, fits = train.fit, []
    monkeypatch.setattr(train, "fit", lambda *a, **k: (fits.append(k.get("log_name")),
                                                       real_fit(*a, **k))[1])
    crossfit.crossfit(folder, folds=2)
    assert fits == ["fold0.csv", "fold1.csv"]


def write_crossfit(folder: Path, view_logits: np.ndarray, labels: np.ndarray,
                   folds: np.ndarray, **summary) -> None:
    """A member's crossfit files as training.crossfit writes them (4 views served)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = np.array([f"c/{i}.jpg" for i in range(len(labels))])
    np.savez_compressed(folder / crossfit.NPZ_FILE, files=files, labels=labels, folds=folds,
                        logits=view_logits[:4].mean(axis=0), view_logits=view_logits)
    per_fold = [{"fold": k, "images": int(np.sum(folds == k)), "groups": 3, "epochs": k + 1,
                 "accuracy": 0.5} for k in sorted(set(folds.tolist()))]
    (folder / crossfit.JSON_FILE).write_text(json.dumps(
        {"folds": len(per_fold), "grouped_by": "source group", "images": len(labels),
         "groups": 6, "test_time_augmentation": 4,
         "stopping": "early stopping on each held-out fold", "accuracy": 0.5, "nll": 1.0,
         "per_fold": per_fold, "seconds": 10.0} | summary))


def test_an_ensembles_out_of_fold_logits_are_the_mean_of_its_members(tmp_path):
    rng = np.random.default_rng(0)
    labels, folds = np.array([0, 1, 2, 3, 0, 1]), np.array([0, 0, 0, 1, 1, 1])
    # Each member is wrong on a different image of fold 0; their mean is right on both.
    first, second = (rng.normal(0, 0.1, (8, 6, 4)).astype(np.float32) for _ in range(2))
    for member in (first, second):
        member[:, np.arange(6), labels] += 2.0
    first[:, 0, 3] += 3.0
    second[:, 1, 0] += 3.0
    write_crossfit(tmp_path / "a", first, labels, folds)
    write_crossfit(tmp_path / "b", second, labels, folds, seconds=20.0,
                   stopping_mode="held-out")  # the mode as newer crossfits record it
    (tmp_path / "ens").mkdir()

    summary = crossfit.join([tmp_path / "a", tmp_path / "b"], tmp_path / "ens")

    with np.load(tmp_path / "ens" / crossfit.NPZ_FILE) as arrays:
        np.testing.assert_allclose(arrays["view_logits"], (first + second) / 2, rtol=1e-6)
        np.testing.assert_allclose(arrays["logits"], ((first + second) / 2)[:4].mean(axis=0),
                                   rtol=1e-6)
        assert list(arrays["folds"]) == list(folds)
    member_accuracy = [float(np.mean(m[:4].mean(axis=0).argmax(1) == labels))
                       for m in (first, second)]
    assert member_accuracy == [5 / 6, 5 / 6] and summary["accuracy"] == 1.0
    assert [f["accuracy"] for f in summary["per_fold"]] == [1.0, 1.0]
    assert [f["epochs"] for f in summary["per_fold"]] == [[1, 1], [2, 2]]
    assert summary["by_views"]["4"]["accuracy"] == 1.0 and summary["seconds"] == 30.0
    assert summary["stopping_mode"] == "held-out"
    assert summary["members"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert json.loads((tmp_path / "ens" / crossfit.JSON_FILE).read_text()) == summary
    assert crossfit.load(tmp_path / "ens", 4)["accuracy"] == 1.0


def test_crossfits_that_cannot_be_joined_give_no_ensemble_logits(tmp_path, capsys):
    view_logits = np.zeros((8, 6, 4), dtype=np.float32)
    labels, folds = np.array([0, 1, 2, 3, 0, 1]), np.array([0, 0, 0, 1, 1, 1])
    write_crossfit(tmp_path / "a", view_logits, labels, folds)
    write_crossfit(tmp_path / "other-folds", view_logits, labels, folds[::-1])
    write_crossfit(tmp_path / "replayed", view_logits, labels, folds,
                   stopping_mode="served-epochs")
    (tmp_path / "alone").mkdir()
    (tmp_path / "ens").mkdir()
    for other, reason in (("other-folds", "in folds"), ("replayed", "in stopping"),
                          ("alone", "has no crossfit")):
        assert crossfit.join([tmp_path / "a", tmp_path / other], tmp_path / "ens") is None
        assert reason in capsys.readouterr().err
    assert list((tmp_path / "ens").iterdir()) == []


def test_excluded_images_are_scored_out_of_fold_but_train_no_fold_model(trained_run, tmp_path,
                                                                         monkeypatch):
    from training import train

    _, run_dir = trained_run
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    split = json.loads((folder / "splits.json").read_text())
    left_out = sorted(split["train"])[:2] + sorted(split["val"])[:1]
    (tmp_path / "left_out.txt").write_text("\n".join(left_out))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(
        config | {"exclude_from_training": str(tmp_path / "left_out.txt")}))
    trained_on = []
    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda classifier, config, x, y, *a, **k: (
        trained_on.append(len(y)), real_fit(classifier, config, x, y, *a, **k))[1])

    summary = crossfit.crossfit(folder, folds=2)

    with np.load(folder / crossfit.NPZ_FILE) as arrays:
        files, folds = list(arrays["files"]), arrays["folds"]
    assert sorted(files) == sorted(split["train"] + split["val"])  # every image scored
    assert summary["images"] == 16
    views = config["views"]
    expected = [views * sum(1 for f, k in zip(files, folds) if k != fold and f not in left_out)
                for fold in (0, 1)]
    assert trained_on == expected and sum(expected) == views * (16 - 3)


def test_with_a_probe_head_every_fold_model_starts_from_a_probe_of_its_own_folds(
        trained_run, tmp_path, monkeypatch):
    """A head fitted on all the pool's images would carry the held-out fold's labels into its
    fold model: each fold fits its own, from the folds it trains on, before it trains."""
    from training import train

    _, run_dir = trained_run
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"head": "probe"}))
    probed, starts = [], []
    real_probe, real_fit = train.fit_head, train.fit

    def probe(classifier, x, y, *args, **kwargs):
        accuracy = real_probe(classifier, x, y, *args, **kwargs)
        probed.append((np.bincount(y, minlength=4), classifier.head.kernel.numpy().copy()))
        return accuracy

    monkeypatch.setattr(train, "fit_head", probe)
    monkeypatch.setattr(train, "fit", lambda classifier, config, x, y, *a, **k: (
        starts.append(classifier.head.kernel.numpy().copy()),
        real_fit(classifier, config, x, y, *a, **k))[1])

    crossfit.crossfit(folder, folds=2)

    with np.load(folder / crossfit.NPZ_FILE) as arrays:
        folds, labels = arrays["folds"], arrays["labels"]
    assert len(probed) == len(starts) == 2
    for k, (counts, kernel) in enumerate(probed):
        # Every view of the fold's training images, and none of its held-out ones...
        np.testing.assert_array_equal(
            counts, config["views"] * np.bincount(labels[folds != k], minlength=4))
        # ...and its fold model starts from that probe, not from the run's random head.
        np.testing.assert_array_equal(starts[k], kernel)
