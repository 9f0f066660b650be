"""One-epoch training smoke run, export and evaluation on a tiny generated ImageFolder.

Runs the real MobileNetV2 code path (random init, 4 images per class, 1 epoch) at 224 px, the
size the committed models serve, so that the exported card, the LiteRT file and the heat maps
are checked at their real shapes; other sizes are covered where only the network matters
(`test_the_split_network_equals_the_plain_backbone`, 96 px).
"""

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from hematovision.predictor import MODELS_ROOT, Predictor
from hematovision.trust import softmax
from training import calibrate, evaluate, export, resume, train
from training.config import TrainConfig
from training.stopwatch import ELAPSED_FILE
from tests.conftest import CELL_COLORS, CLASSES


def test_run_folder_holds_everything_needed_to_reproduce(trained_run):
    _, run_dir = trained_run
    for name in ("config.json", "splits.json", "metrics.csv", "curves.png", "model.keras",
                 "summary.json"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["views"] == 2 and config["seed"] == 3
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(header.split(","))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["classes"] == CLASSES
    assert summary["initialisation"] == "random (no pretrained weights)"
    splits = json.loads((run_dir / "splits.json").read_text())
    assert splits["counts"]["train"] == 12 and splits["counts"]["val"] == 4
    # The checkpoint serves interrupted runs only; a finished run has model.keras instead.
    for leftover in ("checkpoint.keras", "checkpoint.json", "checkpoint.trainable.npz", "backup"):
        assert not (run_dir / leftover).exists(), leftover


def test_an_interrupted_run_keeps_its_best_model_so_far(tmp_path):
    from types import SimpleNamespace

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])
    keep = resume.KeepBest(SimpleNamespace(full=model, trainable=model), tmp_path)

    def epoch(kernel_value, number, logs):
        model.get_layer("dense").kernel.assign(np.full((3, 2), kernel_value, np.float32))
        keep.on_epoch_end(number, logs)
        saved = keras.models.load_model(tmp_path / "checkpoint.keras")
        return (float(saved.get_layer("dense").kernel.numpy()[0, 0]),
                json.loads((tmp_path / "checkpoint.json").read_text()))

    assert epoch(1.0, 0, {"loss": 0.9, "val_loss": 0.5, "val_accuracy": 0.75}) == (
        1.0, {"epoch": 1, "val_loss": 0.5, "val_accuracy": 0.75})
    # A worse epoch leaves the best one on disk ...
    assert epoch(2.0, 1, {"loss": 0.2, "val_loss": 0.8, "val_accuracy": 0.5})[0] == 1.0
    # ... a better one replaces it.
    assert epoch(3.0, 2, {"loss": 0.1, "val_loss": 0.4, "val_accuracy": 0.8}) == (
        3.0, {"epoch": 3, "val_loss": 0.4, "val_accuracy": 0.8})
    assert keep.best_weights()[0][0, 0] == 3.0  # what a resumed run's early stopping restores
    # A KeepBest on the same folder (a resumed run) starts from the best loss on disk.
    assert resume.KeepBest(SimpleNamespace(full=model, trainable=model), tmp_path).best == 0.4
    resume.KeepBest.discard(tmp_path)
    assert not list(tmp_path.iterdir())


def test_features_are_cached_between_runs(trained_run):
    base, _ = trained_run
    assert len(list((base / "cache").glob("features-*.npy"))) == 2  # one per view


def test_the_cache_is_reused_only_while_file_contents_and_code_are_unchanged(tmp_path, monkeypatch):
    from training import features
    from tests.conftest import make_image

    bottom = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(2, 3, strides=8)])
    paths = [make_image(tmp_path / "img" / f"{i}.png", CELL_COLORS[i], fmt="PNG")
             for i in range(2)]
    cache = tmp_path / "cache"

    def compute():
        return features.cached_features(bottom, paths, 0, 1, 32, cache)

    first = compute()
    assert len(list(cache.iterdir())) == 1
    loads = []
    real_load = features.load_batch
    monkeypatch.setattr(features, "load_batch", lambda *a: loads.append(1) or real_load(*a))
    np.testing.assert_array_equal(compute(), first)
    assert not loads  # read from disk, not recomputed
    # The same files copied elsewhere (new paths, new modification times) keep their entry.
    copies = [tmp_path / "copied" / p.name for p in paths]
    copies[0].parent.mkdir()
    for src, dst in zip(paths, copies):
        dst.write_bytes(src.read_bytes())
    np.testing.assert_array_equal(
        features.cached_features(bottom, copies, 0, 1, 32, cache), first)
    assert not loads and len(list(cache.iterdir())) == 1
    # A file changed on disk: its activations are recomputed, not read from the old entry.
    make_image(paths[1], CELL_COLORS[3], fmt="PNG")
    changed = compute()
    assert loads and len(list(cache.iterdir())) == 2
    assert not np.array_equal(changed[1], first[1])
    # Preprocessing or augmentation code changed: a new entry too.
    monkeypatch.setattr(features, "code_digest", lambda: "edited")
    compute()
    assert len(list(cache.iterdir())) == 3


def test_export_writes_a_card_and_a_matching_serving_file(trained_run, tmp_path):
    _, trained = trained_run
    # A copy whose config says it trained on nucleus crops: the card must tell serving so.
    run_dir = Path(shutil.copytree(trained, tmp_path / "runs" / trained.name))
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(config | {"crop": "nucleus"}))
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "ece_spread.json").write_text("{}")  # an earlier model's figures
    for kind in ("confusion", "reliability", "coverage"):
        (tmp_path / "smoke" / f"{kind}_test.png").write_bytes(b"old")
    out = export.export_run(run_dir, "smoke", root=tmp_path, description="smoke test")
    card = json.loads((out / "model_card.json").read_text())
    assert card["classes"] == CLASSES
    assert card["input_size"] == [224, 224, 3]
    assert card["initialisation"] == "random (no pretrained weights)"
    assert card["training"]["config"]["epochs"] == 1
    assert card["export_check"]["max_abs_probability_difference_litert_vs_keras"] < 1e-4
    assert not (out / "ece_spread.json").exists()
    assert not list(out.glob("*_test.png"))  # the earlier model's plots went with its figures
    assert (out / "splits.json").is_file() and (out / "curves.png").is_file()
    assert card["preprocessing"]["crop"] == "nucleus"
    predictor = Predictor(out)
    assert predictor.classes == CLASSES and predictor.crop == "nucleus"


def test_export_goes_where_the_app_serves_models_from(trained_run, tmp_path, capsys,
                                                     monkeypatch):
    """HEMATOVISION_MODELS_ROOT (the app's models folder) is where an export goes unless
    --root says otherwise: a researcher's own models never land in the repo's saved_model/."""
    _, run_dir = trained_run
    mine = tmp_path / "my-models"
    monkeypatch.setenv("HEMATOVISION_MODELS_ROOT", str(mine))
    export.main([str(run_dir), "--name", "mycells", "--no-trust"])
    assert capsys.readouterr().out.strip() == str(mine / "mycells")
    assert (mine / "mycells" / "model_card.json").is_file()
    assert not (MODELS_ROOT / "mycells").exists()


def test_export_fits_the_trust_layer_on_validation(trained_run, tmp_path):
    _, run_dir = trained_run
    out = export.export_run(run_dir, "smoke", root=tmp_path)
    section = json.loads((out / "model_card.json").read_text())["trust"]
    assert section["fitted_on"]["temperature_and_confidence_threshold"] == {
        "source": "validation split", "images": 4}
    assert section["fitted_on"]["unfamiliarity_threshold"] == {"split": "val", "images": 4}
    assert section["fitted_on"]["class_gaussians"]["images"] == 12
    assert section["temperature"] > 0 and 0 <= section["confidence_threshold"] <= 1
    assert section["validation_seen_in_training"] is False
    points = {p["target_accuracy"]: p for p in section["operating_points"]}
    assert set(points) == {*calibrate.OPERATING_TARGETS, section["target_accuracy"]}
    assert points[section["target_accuracy"]]["confidence_threshold"] == \
        section["confidence_threshold"]
    thresholds = [points[t]["confidence_threshold"] for t in sorted(points)]
    assert thresholds == sorted(thresholds)  # a stricter target never accepts more
    for target, point in points.items():  # the served threshold of each target is the card's
        assert Predictor(out, accuracy_target=target).trust.confidence_threshold == \
            point["confidence_threshold"]
    predictor = Predictor(out)
    assert predictor.trust.fitted and predictor.trust.temperature == section["temperature"]
    assert predictor.trust.head_kernel.shape == (1280, len(CLASSES))
    # The CAM of the served model decomposes its own logit: mean(map) + bias = logit.
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    outputs = predictor.forward(x, feature_maps=True)
    raw = outputs.feature_maps[0] @ predictor.trust.head_kernel
    np.testing.assert_allclose(raw.mean(axis=(0, 1)) + predictor.trust.head_bias,
                               outputs.logits[0], atol=1e-3)


def test_evaluate_writes_report_confusion_and_records_metrics(trained_run, tmp_path):
    base, run_dir = trained_run
    model_dir = export.export_run(run_dir, "smoke", root=tmp_path)
    out = tmp_path / "eval"
    metrics = evaluate.evaluate(model_dir, base / "data", out)
    evaluate.record(model_dir, "test", metrics, out)
    assert metrics["n"] == 16
    assert np.array(metrics["confusion_matrix"]).sum() == 16
    assert set(metrics["per_class"]) == set(CLASSES)
    assert (out / "confusion.png").is_file()
    assert "macro-F1" in (out / "classification_report.txt").read_text()
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["metrics"]["test"]["accuracy"] == metrics["accuracy"]
    assert (model_dir / "confusion_test.png").is_file()
    assert (model_dir / "reliability_test.png").is_file()
    calibration = card["metrics"]["test"]["calibration"]
    assert calibration["bins"] == 15 and 0 <= calibration["ece_after"] <= 1
    rates = card["metrics"]["test"]["trust"]
    assert rates["accepted_rate"] + rates["unidentified_rate"] + rates["not_a_cell_rate"] == \
        pytest.approx(1.0, abs=1e-3)
    # Every operating point of the card is measured; the served one gives the served statuses.
    recorded = card["metrics"]["test"]["operating_points"]
    assert [p["target_accuracy"] for p in recorded] == \
        [p["target_accuracy"] for p in card["trust"]["operating_points"]]
    served = [p for p in recorded if p["target_accuracy"] == card["trust"]["target_accuracy"]]
    assert {k: served[0][k] for k in rates} == rates
    assert (model_dir / "coverage_test.png").is_file()


def test_cli_help_lists_an_example(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert "example: python -m training.train" in capsys.readouterr().out


def test_cli_arguments_map_onto_the_config_and_the_card():
    config, export_name, card, resume = train.parse_args(
        ["--data", "d", "--crop", "nucleus", "--views", "2", "--no-class-balance",
         "--export", "wbc4", "--expects", "smear crops"])
    assert (config.data, config.crop, config.views, config.class_balance) == ("d", "nucleus", 2, False)
    assert export_name == "wbc4"
    assert card == {"description": "", "expects": "smear crops", "replace": False}
    assert resume is None


def test_resume_takes_the_runs_own_config_and_data_is_otherwise_required(tmp_path, capsys):
    TrainConfig(data="d", views=3, name="x").save(tmp_path / "config.json")
    config, _, _, resume = train.parse_args(["--resume", str(tmp_path), "--views", "1"])
    assert (config.data, config.views, resume) == ("d", 3, tmp_path)
    with pytest.raises(SystemExit):
        train.parse_args(["--views", "2"])
    assert "--data is required" in capsys.readouterr().err


def test_a_stopped_run_resumes_after_its_last_finished_epoch(tmp_path, monkeypatch):
    """The session ends during epoch 3: `--resume` goes on from epoch 3 with the learning rate,
    early-stopping state and best weights the first two epochs left, and the run then ends
    exactly as a run that was never stopped does (same files, one log row per epoch)."""
    import csv

    from tests.test_data import kaggle_like

    root = kaggle_like(tmp_path, sources_per_class=3, images_per_source=2, unmatched=0)
    config = TrainConfig(data=str(root), out=str(tmp_path / "runs"), views=1, epochs=5,
                         patience=5, batch_size=8, val_fraction=0.34, learning_rate=1e-3,
                         cache_dir=str(tmp_path / "cache"), unassigned="drop", seed=5, weights="none")

    class StopInEpoch3(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **k: real_fit(
        *a, **{**k, "extra_callbacks": [StopInEpoch3()]}))
    with pytest.raises(SystemExit, match="stopped after epoch 2: `python -m training.train "
                                         "--resume .*` goes on from there"):
        train.train(config)
    run_dir = next((tmp_path / "runs").iterdir())
    assert resume.Backup(run_dir).finished_epochs() == 2
    # Its best model so far can start a new run, whose card then says where it came from.
    from training.model import weights_provenance

    best = json.loads((run_dir / "checkpoint.json").read_text())
    assert weights_provenance(str(run_dir / "checkpoint.keras")) == (
        f"best checkpoint (epoch {best['epoch']}, validation loss {best['val_loss']:.4f}) of the "
        f"unfinished HematoVision model {run_dir.name} trained on {root} "
        f"(classes {', '.join(CLASSES)}), itself initialised from none")
    assert best["epoch"] in (1, 2)
    with open(run_dir / "metrics.csv") as f:
        first = list(csv.DictReader(f))
    assert len(first) == 2 and not (run_dir / "summary.json").exists()
    first_session = json.loads((run_dir / ELAPSED_FILE).read_text())["seconds"]
    assert first_session > 0  # building the model, caching and two epochs
    # The same stopped run as a run from before its time was kept: no elapsed file.
    untimed = tmp_path / "untimed" / run_dir.name
    shutil.copytree(run_dir, untimed)
    (untimed / ELAPSED_FILE).unlink()

    seen = {}

    class Observe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):  # after every on_train_begin
            seen.setdefault("first_epoch", epoch)
            seen.setdefault("rate", float(self.model.optimizer.learning_rate.numpy()))

    monkeypatch.setattr(train, "fit", lambda *a, **k: real_fit(
        *a, **{**k, "extra_callbacks": [Observe()]}))
    started = time.time()
    assert train.train(config, resume=run_dir) == run_dir
    second_session = time.time() - started
    val_losses = [float(row["val_loss"]) for row in first]
    _, next_rate, _ = resume.replay_plateau(val_losses, config)
    assert seen["first_epoch"] == 2
    assert seen["rate"] == pytest.approx(next_rate)
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(5))
    assert rows[:2] == first  # the finished epochs are kept, not redone
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 5
    assert summary["best_epoch"] == int(np.argmin([float(r["val_loss"]) for r in rows])) + 1
    # The training time counts both sessions, not only the last.
    assert summary["train_seconds"] == pytest.approx(first_session + second_session, abs=1.0)
    for leftover in ("checkpoint.keras", "checkpoint.trainable.npz", "backup", "elapsed.json"):
        assert not (run_dir / leftover).exists(), leftover
    with pytest.raises(SystemExit, match="nothing to resume"):
        train.train(config, resume=run_dir)
    # Its earlier session's time is unknown: none, rather than the last session's as the whole.
    train.train(config, resume=untimed)
    assert json.loads((untimed / "summary.json").read_text())["train_seconds"] is None


def test_resumed_fits_carry_early_stopping_and_the_plateau_schedule_over():
    from types import SimpleNamespace

    config = TrainConfig(data="d", learning_rate=0.3, min_learning_rate=0.01)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="mse")
    early = keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True)
    plateau = keras.callbacks.ReduceLROnPlateau(patience=1)
    best_weights = [np.full((3, 2), 7.0), np.zeros(2)]
    keep_best = SimpleNamespace(best_weights=lambda: best_weights)
    losses = [0.5, 0.4, 0.45, 0.42]  # best at epoch 2; two epochs without improvement since
    resumed = resume.Resumed(losses, config, early, plateau, keep_best, backup=None)
    resumed.set_model(model)
    for callback in (early, plateau, resumed):  # the order fit puts them in
        callback.set_model(model)
        callback.on_train_begin()
    assert (early.best, early.best_epoch, early.wait) == (0.4, 1, 2)
    assert early.best_weights is best_weights
    assert plateau.best == 0.4
    # Rate cut after epochs 3 and 4 (no improvement): 0.3 -> 0.1 -> 0.0333.
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.3 / 9)


@pytest.mark.parametrize("block", [11, 13, 14, 16])
def test_the_split_network_equals_the_plain_backbone(block):
    """bottom + trainable must compute exactly MobileNetV2 + head, wherever the cut is."""
    import keras

    from training.model import Classifier

    classifier = Classifier(3, 96, dropout=0.0, tune_from_block=block)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3)).astype("float32")
    pooled = keras.layers.GlobalAveragePooling2D()(classifier.backbone(x, training=False))
    expected = classifier.head(pooled).numpy()
    np.testing.assert_allclose(classifier.full(x, training=False).numpy(), expected, atol=1e-5)
    assert classifier.bottom.output_shape[1:][-1] == {11: 96, 13: 96, 14: 160, 16: 160}[block]


def test_a_new_export_over_a_served_model_keeps_its_text_and_drops_stale_figures(
        trained_run, tmp_path):
    base, run_dir = trained_run
    model_dir = export.export_run(run_dir, "smoke", root=tmp_path, description="first",
                                  expects="smear crops", trust=False)
    evaluate.record(model_dir, "test", evaluate.evaluate(model_dir, base / "data", tmp_path / "e"),
                    tmp_path / "e")
    (model_dir / "refit_metrics.csv").write_text("epoch\n")  # from an earlier, refitted run
    assert (model_dir / "confusion_test.png").is_file()
    export.export_run(run_dir, "smoke", root=tmp_path, trust=False)
    card = json.loads((model_dir / "model_card.json").read_text())
    assert (card["description"], card["expects"], card["metrics"]) == ("first", "smear crops", {})
    assert not (model_dir / "refit_metrics.csv").exists()
    assert not list(model_dir.glob("confusion_*.png"))
    assert (model_dir / "curves.png").is_file()


def test_tta_serves_the_mean_of_four_flips_and_can_be_turned_off(trained_run, tmp_path):
    _, run_dir = trained_run
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    x = np.random.default_rng(1).uniform(-1, 1, (3, 224, 224, 3)).astype(np.float32)
    with_tta = export.export_run(run_dir, "tta", root=tmp_path, trust=False)
    without = export.export_run(run_dir, "plain", root=tmp_path, trust=False, views=1)
    assert json.loads((with_tta / "model_card.json").read_text())[
        "test_time_augmentation"]["views"] == ["as is", "flipped left-right", "flipped up-down",
                                               "both"]
    assert json.loads((without / "model_card.json").read_text())["test_time_augmentation"] is None
    single = model.predict(x, verbose=0)
    np.testing.assert_allclose(Predictor(without).predict_arrays(x), single, atol=1e-5)
    flips = [model.predict(np.ascontiguousarray(v), verbose=0)
             for v in (x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1])]
    expected = softmax(np.mean(np.log(flips), axis=0))
    np.testing.assert_allclose(Predictor(with_tta).predict_arrays(x), expected, atol=1e-5)
    # The averaged maps are flipped back: a left-right mirrored image gets the mirrored map.
    maps = Predictor(with_tta).forward(x, feature_maps=True).feature_maps
    mirrored = Predictor(with_tta).forward(np.ascontiguousarray(x[:, :, ::-1]),
                                           feature_maps=True).feature_maps
    np.testing.assert_allclose(mirrored, maps[:, :, ::-1], atol=1e-4)


def test_eight_views_add_the_quarter_turns_and_turn_the_maps_back(trained_run, tmp_path):
    _, run_dir = trained_run
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
    eight = Predictor(export.export_run(run_dir, "eight", root=tmp_path, trust=False, views=8))
    names = eight.card["test_time_augmentation"]["views"]
    assert len(names) == 8 and names[5] == "turned 90° clockwise"
    turns = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]  # k=1: anticlockwise
    orientations = [*turns, *(t[:, :, ::-1] for t in turns)]  # all 8, each once
    logits = [np.log(model.predict(np.ascontiguousarray(v), verbose=0)) for v in orientations]
    np.testing.assert_allclose(eight.predict_arrays(x), softmax(np.mean(logits, axis=0)),
                               atol=1e-5)
    # Every orientation is averaged, so a turned image gets the same answer and a turned map.
    turned = np.ascontiguousarray(np.rot90(x, -1, axes=(1, 2)))
    np.testing.assert_allclose(eight.predict_arrays(turned), eight.predict_arrays(x), atol=1e-5)
    maps = eight.forward(x, feature_maps=True).feature_maps
    np.testing.assert_allclose(eight.forward(turned, feature_maps=True).feature_maps,
                               np.rot90(maps, -1, axes=(1, 2)), atol=1e-4)
    with pytest.raises(ValueError, match="one of"):
        export.serving_model(model, views=3)


def test_colour_jitter_can_be_left_out_of_the_augmentation():
    from training.features import build_augmenter

    with_colour = [type(layer).__name__ for layer in build_augmenter(0).layers]
    without = [type(layer).__name__ for layer in build_augmenter(0, colour=False).layers]
    assert without == ["RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation"]
    assert with_colour == without + ["RandomHue", "RandomSaturation", "RandomBrightness",
                                     "RandomContrast"]
    assert TrainConfig().colour_jitter is True
    assert train.parse_args(["--data", "d", "--no-colour-jitter"])[0].colour_jitter is False


def test_extra_data_only_adds_training_images(trained_run, tmp_path):
    from tests.conftest import make_image

    base, plain_run = trained_run
    for name, color in zip(CLASSES[:2] + ["platelet"], CELL_COLORS[:3]):
        for i in range(3):
            make_image(tmp_path / "extra" / name / f"x_{i}.png", color, fmt="PNG")
    config = TrainConfig(data=str(base / "data"), out=str(tmp_path / "runs"), views=1, epochs=1,
                         batch_size=8, val_fraction=0.25, cache_dir=str(tmp_path / "cache"),
                         seed=3, extra_data=str(tmp_path / "extra"), weights="none")
    run_dir = train.train(config)
    splits = json.loads((run_dir / "splits.json").read_text())
    plain = json.loads((plain_run / "splits.json").read_text())
    assert (splits["train"], splits["val"]) == (plain["train"], plain["val"])
    assert sorted(Path(p).parent.name for p in splits["extra_train"]) == \
        sorted(CLASSES[:2] * 3)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["extra_training_images"] == 6
    assert json.loads((run_dir / "config.json").read_text())["extra_data"] == config.extra_data


def test_provenance_of_a_served_model_names_its_training_run(tmp_path):
    from training.model import weights_provenance

    folder = tmp_path / "pbc8"
    folder.mkdir()
    (folder / "model_card.json").write_text(json.dumps({
        "classes": ["a", "b"], "initialisation": "random (no pretrained weights)",
        "training": {"config": {"data": "../shared/data/pbc", "weights": "none"},
                     "run_folder": "20261123-052941-mobilenetv2-224-pbc8-b11"}}))
    (folder / "summary.json").write_text(json.dumps({"classes": ["a", "b"]}))
    assert weights_provenance(str(folder / "model.keras")) == (
        "HematoVision model pbc8 (run 20261123-052941-mobilenetv2-224-pbc8-b11) trained on "
        "../shared/data/pbc (classes a, b), itself initialised from random (no pretrained weights)")


def test_provenance_of_a_model_tuned_further_over_itself_ends_instead_of_going_round(tmp_path):
    """A served model tuned further (--weights its own model.keras) and exported under its own
    name records its own file as its weights: a third run from it once recursed for ever."""
    from training.model import weights_provenance

    folder = tmp_path / "mycells"
    folder.mkdir()
    (folder / "model_card.json").write_text(json.dumps({
        "classes": ["a", "b"], "initialisation": "mycells (earlier)",
        "training": {"config": {"data": "cells", "weights": str(folder / "model.keras")}}}))
    assert weights_provenance(str(folder / "model.keras")) == (
        "HematoVision model mycells trained on cells (classes a, b), itself initialised from "
        "mycells (earlier) [an earlier version of itself (exported over it under the same "
        "name)]")


def test_head_weights_starts_from_a_model_of_the_same_classes_whole_and_refuses_others(
        trained_run, tmp_path):
    from training.model import HEAD_COPIED, Classifier

    base, run = trained_run
    source = run / "model.keras"
    served = keras.models.load_model(source, compile=False)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 224, 224, 3)).astype("float32")
    same = Classifier(len(CLASSES), weights=str(source), classes=CLASSES, head="weights")
    assert same.initialisation.endswith(HEAD_COPIED)
    # Backbone and head both taken over: the new network starts as the model it came from.
    np.testing.assert_allclose(same.full.predict(images, verbose=0),
                               served.predict(images, verbose=0), atol=1e-6)
    # By default the head is drawn afresh, as for another --fit-seed of an ensemble.
    fresh = Classifier(len(CLASSES), weights=str(source), classes=CLASSES)
    assert not fresh.initialisation.endswith(HEAD_COPIED)
    assert not np.allclose(fresh.head.kernel.numpy(), same.head.kernel.numpy())
    with pytest.raises(SystemExit, match="is not a HematoVision model .*its record names "
                                         + ", ".join(CLASSES)):
        Classifier(len(CLASSES), weights=str(source), classes=CLASSES[::-1], head="weights")
    alone = tmp_path / "elsewhere.keras"  # the same file, no record beside it
    shutil.copy(source, alone)
    with pytest.raises(SystemExit, match="no model card, run summary or split file beside it"):
        Classifier(len(CLASSES), weights=str(alone), classes=CLASSES, head="weights")
    # A mistyped path says so, not that the (absent) file is of other classes.
    with pytest.raises(SystemExit, match="Weights file not found: .*missing.keras"):
        Classifier(len(CLASSES), weights=str(tmp_path / "missing.keras"), classes=CLASSES,
                   head="weights")
    # A run started with it records that its head was copied.
    config = TrainConfig(data=str(base / "data"), out=str(tmp_path / "runs"), views=1, epochs=1,
                         batch_size=8, val_fraction=0.25, cache_dir=str(tmp_path / "cache"),
                         seed=3, weights=str(source), head="weights")
    summary = json.loads((train.train(config) / "summary.json").read_text())
    assert summary["initialisation"] == same.initialisation
    assert TrainConfig(weights="auto", head="weights").problems() == [
        "head weights needs --weights PATH: a HematoVision model of these classes"]


def test_a_probe_head_is_the_linear_probe_of_the_pooled_features_weighted_like_the_loss():
    from training.model import Classifier
    from training.probe import fit_head, standardised_fit

    keras.utils.set_random_seed(4)
    classifier = Classifier(len(CLASSES), input_size=96)
    rng = np.random.default_rng(0)
    shape = classifier.trainable.input_shape[1:]
    # Each class its own pattern of cut-layer activations, unequal counts (10, 4, 4, 4).
    labels = np.array([0] * 10 + [1, 2, 3] * 4)
    patterns = rng.normal(0, 1, (len(CLASSES), *shape))
    x = (patterns[labels] + rng.normal(0, 0.3, (len(labels), *shape))).astype(np.float32)
    accuracy = fit_head(classifier, x, labels)

    features = classifier.embed.predict(x, verbose=0).astype(np.float64)
    counts = np.bincount(labels)  # inverse-frequency weights, as the loss's class weights
    kernel, bias = standardised_fit(features, labels, len(CLASSES), 0.01,
                                    (len(labels) / (len(CLASSES) * counts))[labels])
    np.testing.assert_allclose(classifier.head.kernel.numpy(), kernel, rtol=1e-4, atol=1e-6)
    probabilities = classifier.trainable.predict(x, verbose=0)  # dropout off when predicting
    np.testing.assert_allclose(probabilities, softmax(features @ kernel + bias), atol=1e-4)
    assert accuracy == float(np.mean(probabilities.argmax(1) == labels)) == 1.0
    # --augment online: only the cached clean views (first in its examples) are probed.
    from types import SimpleNamespace

    kernel_before = classifier.head.kernel.numpy().copy()
    fit_head(classifier, SimpleNamespace(clean=x), np.concatenate([labels, labels[::-1]]))
    np.testing.assert_allclose(classifier.head.kernel.numpy(), kernel_before, rtol=1e-6)


def test_a_run_with_a_probe_head_records_the_probes_figures_before_fine_tuning(
        trained_run, tmp_path, monkeypatch):
    base, _ = trained_run
    fitted = []
    real = train.fit_head
    monkeypatch.setattr(train, "fit_head", lambda classifier, x, y, *a, **k: (
        fitted.append(len(y)), real(classifier, x, y, *a, **k))[1])
    config = TrainConfig(data=str(base / "data"), out=str(tmp_path / "runs"), views=2, epochs=1,
                         batch_size=8, val_fraction=0.25, cache_dir=str(tmp_path / "cache"),
                         seed=3, weights="none", head="probe")
    run = train.train(config)
    summary = json.loads((run / "summary.json").read_text())
    assert fitted == [2 * summary["counts"]["train"]]  # every view of the training split, once
    probed = summary["head_probe"]
    assert 0 <= probed["training_accuracy"] <= 1
    assert set(probed["validation"]) == {"accuracy", "balanced_accuracy"}
    assert TrainConfig.load(run / "config.json").head == "probe"
    # Unlike --head weights, it needs no weights file of the same classes.
    assert TrainConfig(weights="none", head="probe").problems() == []
    # Without it, a run records no probe.
    assert "head_probe" not in json.loads((trained_run[1] / "summary.json").read_text())


def test_provenance_of_an_unfinished_runs_checkpoint_says_which_epoch_it_is(tmp_path):
    from training.model import weights_provenance

    run = tmp_path / "20261203-161646-mobilenetv2-224-pbc8-b4-ema"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": "../shared/data/pbc", "weights": "none"}))
    (run / "splits.json").write_text(json.dumps({"classes": ["a", "b"], "train": [], "val": []}))
    (run / resume.KeepBest.RECORD).write_text(json.dumps(
        {"epoch": 5, "val_loss": 0.051234, "val_accuracy": 0.98}))
    assert weights_provenance(str(run / resume.KeepBest.MODEL)) == (
        "best checkpoint (epoch 5, validation loss 0.0512) of the unfinished HematoVision model "
        f"{run.name} trained on ../shared/data/pbc (classes a, b), itself initialised from none")
    # A finished model file beside a leftover record is described as the model it is.
    assert weights_provenance(str(run / "model.keras")).startswith("HematoVision model ")


def test_plateau_schedule_replays_what_keras_did_in_a_validated_fit():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = keras.utils.to_categorical(x[:, 0] > 0, 2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    config = TrainConfig(learning_rate=0.5, min_learning_rate=0.01)
    model.compile(optimizer=keras.optimizers.SGD(config.learning_rate),
                  loss="categorical_crossentropy")
    seen = []
    history = model.fit(
        # Flipped validation labels: learning raises the validation loss.
        x, y, epochs=8, batch_size=16, verbose=0, validation_data=(x, y[:, ::-1]),
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(
                       float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))),
                   keras.callbacks.ReduceLROnPlateau(
                       monitor="val_loss", factor=train.PLATEAU_FACTOR, patience=1,
                       min_delta=train.PLATEAU_MIN_DELTA, min_lr=config.min_learning_rate)])
    replayed = resume.plateau_schedule(history.history["val_loss"], config)
    assert replayed == pytest.approx(seen, rel=1e-6)
    assert len(set(seen)) > 2  # the schedule did cut the rate, more than once, to its floor
    assert seen[-1] == pytest.approx(config.min_learning_rate)


def test_plateau_schedule_on_a_hand_checked_history():
    config = TrainConfig(learning_rate=0.9, min_learning_rate=0.05)
    # better, worse (cut), better, worse (cut), better by less than 1e-4 (cut, to the floor)
    assert resume.plateau_schedule([0.5, 0.7, 0.4, 0.6, 0.39995, 0.1], config) == pytest.approx(
        [0.9, 0.9, 0.3, 0.3, 0.1, 0.05])


def test_refit_replays_the_validated_fits_learning_rates(tmp_path, monkeypatch):
    """Images of unknown source join only the final refit, which runs for the best epoch count
    at the learning rates the plateau schedule gave the validated fit."""
    import csv

    from tests.test_data import kaggle_like

    replayed = []

    def schedule(val_losses, config):  # none is the starting rate: the log shows the replay
        replayed.append(list(val_losses))
        return [config.learning_rate / 2 ** (k + 1) for k in range(len(val_losses))]

    monkeypatch.setattr(train, "plateau_schedule", schedule)
    real_fit, starts = train.fit, []

    def recorded(classifier, *args, **kwargs):
        starts.append({v.path: v.numpy().copy() for v in classifier.trainable.variables})
        return real_fit(classifier, *args, **kwargs)

    monkeypatch.setattr(train, "fit", recorded)

    root = kaggle_like(tmp_path, sources_per_class=3, images_per_source=2, unmatched=1)
    config = TrainConfig(data=str(root), out=str(tmp_path / "runs"), views=1, epochs=4,
                         patience=4, batch_size=8, val_fraction=0.34, learning_rate=1e-3,
                         cache_dir=str(tmp_path / "cache"), unassigned="refit", seed=5, weights="none")
    run_dir = train.train(config)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["refit_on_all_training_data"] is True
    assert summary["trained_on"]["files"] == 4 * (3 * 2 + 1)
    with open(run_dir / "metrics.csv") as f:
        val_losses = [float(row["val_loss"]) for row in csv.DictReader(f)]
    with open(run_dir / "refit_metrics.csv") as f:
        refit_rates = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    best = summary["best_epoch"]
    assert replayed == [pytest.approx(val_losses[:best])]
    assert refit_rates == pytest.approx([1e-3 / 2 ** (k + 1) for k in range(best)])
    # The refit starts where the validated fit did, the dropout's random-number state included.
    assert len(starts) == 2 and any("seed" in path for path in starts[0])
    for path, value in starts[0].items():
        np.testing.assert_array_equal(starts[1][path], value, err_msg=path)


def test_a_class_without_training_images_stops_the_run_before_any_caching(tmp_path):
    """Every eosinophil image has an unknown source (unassigned): nothing could learn the class."""
    from tests.test_data import kaggle_like

    root = kaggle_like(tmp_path, sources_per_class=3, images_per_source=2, unmatched=1)
    for path in (root / "eosinophil").glob("_[0-8]_*.jpeg"):
        path.unlink()
    config = TrainConfig(data=str(root), out=str(tmp_path / "runs"), views=1, epochs=1,
                         val_fraction=0.34, cache_dir=str(tmp_path / "cache"), weights="none")
    with pytest.raises(SystemExit, match="No training image of known source for eosinophil"):
        train.train(config)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def test_an_unreadable_training_image_stops_the_run_with_its_name(tmp_path, image_folder):
    broken = image_folder / "monocyte" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    config = TrainConfig(data=str(image_folder), out=str(tmp_path / "runs"), views=1, epochs=1,
                         val_fraction=0.25, cache_dir=str(tmp_path / "cache"), weights="none")
    with pytest.raises(SystemExit, match=f"Cannot train on {broken}: The file is not an image"):
        train.train(config)
    # Nothing was trained: no run folder is left to shadow the next run (runs/*-NAME).
    assert list((tmp_path / "runs").iterdir()) == []


def test_every_unreadable_training_image_is_named_in_one_stop(tmp_path, image_folder):
    """A folder with a few bad files: one run names them all, rather than one per run."""
    broken = [image_folder / "monocyte" / "broken.jpg", image_folder / "lymphocyte" / "empty.png",
              image_folder / "neutrophil" / "notes.jpg"]
    broken[0].write_bytes(b"\xff\xd8 not really a JPEG")
    broken[1].write_bytes(b"")
    broken[2].write_text("slide 4, stained 3 May")
    config = TrainConfig(data=str(image_folder), out=str(tmp_path / "runs"), views=1, epochs=1,
                         val_fraction=0.25, cache_dir=str(tmp_path / "cache"), weights="none")
    with pytest.raises(SystemExit) as stop:
        train.train(config)
    message = str(stop.value)
    assert message.startswith("Cannot train on 3 images that cannot be read:\n")
    assert all(f"  {path}: " in message for path in broken)
    assert message.endswith("Remove or replace them, then run again.")
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_mistyped_data_folder_is_what_a_run_is_told_of_first(tmp_path, monkeypatch):
    """Not the weights file a first run has not fetched yet: the folder it was pointed at."""
    from training import model

    monkeypatch.setattr(model, "DEFAULT_WEIGHTS", tmp_path / "weights" / "missing.h5")
    config = TrainConfig(data=str(tmp_path / "my_cels"), out=str(tmp_path / "runs"),
                         weights="auto")
    with pytest.raises(SystemExit, match="my_cels is not a folder"):
        train.train(config)


def test_ctrl_c_before_the_first_epoch_leaves_no_run_folder(tmp_path, image_folder, monkeypatch):
    config = TrainConfig(data=str(image_folder), out=str(tmp_path / "runs"), views=1, epochs=1,
                         val_fraction=0.25, cache_dir=str(tmp_path / "cache"), weights="none")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", interrupted)
    with pytest.raises(SystemExit, match="stopped before the first epoch ended; .* removed"):
        train.train(config)
    assert list((tmp_path / "runs").iterdir()) == []


def test_evaluate_refuses_an_unknown_or_empty_split_instead_of_scoring_nothing(
        trained_run, tmp_path):
    base, run_dir = trained_run
    model_dir = export.export_run(run_dir, "smoke", root=tmp_path, trust=False)
    splits = run_dir / "splits.json"  # trained with --test-fraction 0: its test split is empty
    with pytest.raises(SystemExit, match="has no split named 'tset' \\(it has train, val, test"):
        evaluate.evaluate(model_dir, base / "data", tmp_path / "e", splits, "tset")
    with pytest.raises(SystemExit, match="splits.json:test is empty: .*--test-fraction 0"):
        evaluate.evaluate(model_dir, base / "data", tmp_path / "e", splits, "test")
    (tmp_path / "elsewhere" / "eosinophil").mkdir(parents=True)
    shutil.copy(base / "data" / "eosinophil" / "eosinophil_0.jpg",
                tmp_path / "elsewhere" / "eosinophil" / "other.jpg")
    # Scored anyway, the images that are there would be recorded as the split's figures.
    with pytest.raises(SystemExit, match="4 of the 4 images of .*splits.json:val are not under "
                                         ".*elsewhere \\(first: .*\\): evaluate on the data"):
        evaluate.evaluate(model_dir, tmp_path / "elsewhere", tmp_path / "e", splits, "val")
    other = json.loads(splits.read_text()) | {"classes": ["basophil", "platelet"]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="made for the classes basophil, platelet; the model has "
                                         "eosinophil, lymphocyte"):
        evaluate.evaluate(model_dir, base / "data", tmp_path / "e", tmp_path / "other.json", "val")
    assert evaluate.evaluate(model_dir, base / "data", tmp_path / "e", splits, "val")["n"] == 4
    (tmp_path / "notes.txt").write_text("not JSON")
    for bad, reason in ((tmp_path / "missing.json", "Cannot read the split file"),
                        (tmp_path / "notes.txt", "is not a split file .* it is not JSON")):
        with pytest.raises(SystemExit, match=reason):
            evaluate.evaluate(model_dir, base / "data", tmp_path / "e", bad, "val")


def test_one_class_or_no_validation_image_is_refused_before_a_run_folder_exists(tmp_path):
    from tests.conftest import make_image

    for i in range(4):
        make_image(tmp_path / "one" / "neutrophil" / f"n{i}.jpg", CELL_COLORS[3])
    runs = tmp_path / "runs"
    config = TrainConfig(data=str(tmp_path / "one"), out=str(runs), views=1, epochs=1,
                         weights="none", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(SystemExit, match="Only one class with images \\(neutrophil\\)"):
        train.train(config)
    # One image per class: a class's only source group must train, so none is left to validate.
    for name, color in zip(CLASSES[:2], CELL_COLORS):
        make_image(tmp_path / "tiny" / name / "only.jpg", color)
    with pytest.raises(SystemExit, match=r"No validation image: the data holds 2 source group"):
        train.train(replace(config, data=str(tmp_path / "tiny")))
    assert not runs.exists()


def test_a_model_of_other_classes_exported_under_an_old_name_does_not_inherit_its_text(
        trained_run, tmp_path):
    _, run_dir = trained_run
    model_dir = export.export_run(run_dir, "smoke", root=tmp_path, description="four types",
                                  expects="smear crops", trust=False)
    card = json.loads((model_dir / "model_card.json").read_text())
    card["classes"] = ["basophil", "platelet"]  # the folder held another model
    (model_dir / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(SystemExit, match="holds a model of other classes \\(basophil, platelet\\); "
                                         "exporting this one .* pass --replace"):
        export.export_run(run_dir, "smoke", root=tmp_path, trust=False)
    export.export_run(run_dir, "smoke", root=tmp_path, trust=False, replace=True)
    card = json.loads((model_dir / "model_card.json").read_text())
    assert (card["description"], card["expects"]) == ("", "")


def test_a_run_resumes_only_on_the_classes_it_started_with(trained_run, tmp_path):
    """A class folder emptied (or, before image-less folders were left out, an empty one that
    counted as a class) would change the model's outputs under a resumed run's weights."""
    base, run_dir = trained_run
    stopped = tmp_path / "stopped"
    shutil.copytree(run_dir, stopped)
    (stopped / "summary.json").unlink()
    saved = json.loads((stopped / "splits.json").read_text())
    (stopped / "splits.json").write_text(json.dumps({**saved, "classes": [*CLASSES, "empty"]}))
    config = TrainConfig.load(stopped / "config.json")
    with pytest.raises(SystemExit, match="no longer splits as when the run started"):
        train.train(config, resume=stopped)


@pytest.mark.parametrize("name", ["my/cells", "../up", ".hidden", "", "a b"])
def test_an_export_name_the_app_would_not_serve_is_refused(tmp_path, name):
    with pytest.raises(SystemExit, match="use one folder name of letters, digits"):
        export.check_target(name, CLASSES, tmp_path)


def test_a_run_that_has_not_finished_does_not_export_with_a_traceback(trained_run, tmp_path):
    _, run_dir = trained_run
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copy(run_dir / "config.json", stopped / "config.json")
    with pytest.raises(SystemExit, match="has not finished \\(no summary.json\\): `python -m "
                                         "training.train --resume .*stopped` goes on with it"):
        export.export_run(stopped, "x", root=tmp_path / "models")
    with pytest.raises(SystemExit, match="is not a training run folder \\(no config.json\\)"):
        export.export_run(tmp_path / "nowhere", "x", root=tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_export_prints_only_the_model_folder_on_stdout(trained_run, tmp_path, capfd):
    _, run_dir = trained_run
    export.main([str(run_dir), "--name", "quiet", "--root", str(tmp_path), "--no-trust"])
    assert capfd.readouterr().out.splitlines() == [str(tmp_path / "quiet")]


def test_training_refuses_to_replace_a_model_of_other_classes_before_it_starts(
        trained_run, tmp_path):
    """The committed 8-class pbc8 must not be overwritten by hours of 4-class training."""
    base, _ = trained_run
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit, match="saved_model/pbc8 holds a model of other classes "
                                         "\\(basophil, .*\\); exporting this one \\(eosinophil"):
        train.main(["--data", str(base / "data"), "--out", str(runs), "--weights", "none",
                    "--export", "pbc8"])
    assert not runs.exists()


def test_weight_averaging_serves_the_average_and_survives_a_resume(tmp_path):
    """With `ema_momentum` close to 1 the average hardly leaves the weights of the first step,
    while the last step's weights travel: the fitted model must be the average, also when the
    fit was stopped in epoch 3 and resumed from its backup (which holds the two swapped)."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype(int)
    config = TrainConfig(learning_rate=1e-2, patience=10, batch_size=8, class_balance=False,
                         dropout=0.0)

    def fitted(momentum: float, run_dir: Path, stop_in_epoch: int | None = None):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        start = [w.copy() for w in model.get_weights()]
        ema = replace(config, ema_momentum=momentum)
        classifier = SimpleNamespace(trainable=model, full=model)

        class Stop(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == stop_in_epoch:
                    raise KeyboardInterrupt

        run_dir.mkdir()
        keep = resume.KeepBest(classifier, run_dir)
        if stop_in_epoch is not None:
            with pytest.raises(KeyboardInterrupt):
                train.fit(classifier, ema, x, y, (x, y), 5, run_dir, keep_best=keep,
                          extra_callbacks=[Stop()])
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((4,)),
                                      keras.layers.Dense(2, activation="softmax")])
            classifier = SimpleNamespace(trainable=model, full=model)
            keep = resume.KeepBest(classifier, run_dir)
        train.fit(classifier, ema, x, y, (x, y), 5, run_dir, keep_best=keep)
        return sum(float(np.abs(w - s).sum()) for w, s in zip(model.get_weights(), start))

    travelled = fitted(0.0, tmp_path / "plain")
    averaged = fitted(1 - 1e-7, tmp_path / "ema")
    resumed = fitted(1 - 1e-7, tmp_path / "resumed", stop_in_epoch=2)
    assert travelled > 0.1
    assert averaged < 0.2 * travelled
    assert resumed < 0.2 * travelled
    assert resumed == pytest.approx(averaged, rel=0.05)
    assert TrainConfig(ema_momentum=1.0).problems() == ["ema_momentum must be in [0, 1) (0: off)"]


def test_mixup_blends_activations_labels_and_class_weights_by_the_same_share():
    """With the activations equal to the one-hot labels, every blended input must equal its
    blended target, and its weight the same blend of the two class weights; each epoch holds
    every example once as its own part."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=50)
    x = np.eye(3, dtype=np.float16)[y]
    np.random.seed(0)
    batches = train.MixedBatches(x, y, 3, batch_size=16, alpha=1.0,
                                 class_weight={0: 1.0, 1: 2.0, 2: 4.0})
    assert len(batches) == 4
    for _ in range(2):  # two epochs
        sizes, mixed = [], []
        for i in range(len(batches)):
            xb, yb, wb = batches[i]
            assert xb.shape == (len(yb), 3) and xb.dtype == np.float32
            np.testing.assert_allclose(xb, yb, atol=1e-3)  # float16 activations
            np.testing.assert_allclose(yb.sum(axis=1), 1.0, rtol=1e-6)
            np.testing.assert_allclose(wb, yb @ np.array([1.0, 2.0, 4.0]), rtol=1e-5)
            sizes.append(len(yb))
            mixed.append(yb.max(axis=1) < 0.9)
        batches.on_epoch_end()
        assert sorted(sizes) == [2, 16, 16, 16]
        assert np.concatenate(mixed).mean() > 0.2  # alpha 1: blends spread over (0, 1)


def test_mixup_trains_a_model_through_fit(tmp_path):
    from types import SimpleNamespace

    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = (x[:, 0] > 0).astype(int)
    config = TrainConfig(learning_rate=5e-2, patience=10, batch_size=16, dropout=0.0,
                         mixup=0.4)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    history = train.fit(SimpleNamespace(trainable=model, full=model), config, x, y, (x, y), 5,
                        tmp_path)
    assert len(history["val_loss"]) == 5  # patience 10: every epoch ran
    assert history["val_accuracy"][-1] > 0.9
    assert np.mean(model.predict(x, verbose=0).argmax(axis=1) == y) > 0.9
    assert TrainConfig(mixup=-0.1).problems() == [
        "mixup must be 0 (off) or above (the Beta distribution's alpha)"]


def test_weight_decay_shrinks_kernels_by_the_rate_each_step_and_leaves_biases_alone(tmp_path):
    """All-zero inputs give the kernel no gradient, so Adam leaves it where it is and only the
    decay moves it: by (1 - learning_rate * weight_decay) per step. The output then depends on
    the bias alone, so the bias must travel exactly as it does without decay."""
    from types import SimpleNamespace

    x = np.zeros((64, 4), dtype="float32")
    y = np.arange(64) % 3 == 0
    config = TrainConfig(learning_rate=1e-2, batch_size=8, class_balance=False, dropout=0.0)

    def fitted(weight_decay: float, run_dir: Path):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        start = [w.copy() for w in model.get_weights()]
        run_dir.mkdir()
        train.fit(SimpleNamespace(trainable=model, full=model),
                  replace(config, weight_decay=weight_decay), x, y.astype(int), None, 2, run_dir)
        return start, model.get_weights()

    (kernel0, bias0), (plain_kernel, plain_bias) = fitted(0.0, tmp_path / "plain")
    _, (decayed_kernel, decayed_bias) = fitted(0.5, tmp_path / "decayed")
    steps = 2 * 64 // 8
    np.testing.assert_allclose(plain_kernel, kernel0, rtol=1e-6)
    np.testing.assert_allclose(decayed_kernel, kernel0 * (1 - 1e-2 * 0.5) ** steps, rtol=1e-4)
    assert np.abs(plain_bias - bias0).max() > 0.05  # the bias did learn
    np.testing.assert_allclose(decayed_bias, plain_bias, rtol=1e-5)
    assert TrainConfig(weight_decay=-0.1).problems() == ["weight_decay must be 0 (off) or above"]


def test_the_cache_keys_a_crop_by_its_size_not_its_spelling():
    from training import features

    bottom = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(2, 3, strides=8)])

    def key(crop):
        return features.cache_key(bottom, [], 0, 1, 32, crop)

    assert key("nucleus") == key("nucleus:0.55")
    assert key("nucleus:0.4") == key("nucleus:0.40") != key("nucleus")
    assert len({key("none"), key("nucleus"), key("nucleus:0.4"), key("nucleus:0.7")}) == 4


def test_zoom_sets_how_far_augmented_views_change_magnification_and_keys_their_cache():
    """A dot's width in 200 augmented views: with the default zoom it stays within 0.83-1.25
    times its size, with --zoom 0.4 it reaches past 1.5 times (as a 1.5x objective would show
    it) and below 0.75; the cache keeps the two apart, and the clean view under one key."""
    from training import features

    image = np.full((1, 64, 64, 3), -1.0, np.float32)
    image[:, 24:40, 24:40] = 1.0  # a 16-pixel square, centred

    def widths(zoom: float) -> np.ndarray:
        out = []
        for seed in range(200):
            zoomer = features.build_augmenter(seed, colour=False, zoom=zoom).layers[2]
            view = np.asarray(zoomer(image, training=True))[0, 32, :, 0]
            out.append((view > 0).sum() / 16)
        return np.array(out)

    default, wide = widths(features.DEFAULT_ZOOM), widths(0.4)
    assert default.min() >= 0.75 and default.max() <= 1.3
    assert wide.max() >= 1.5 and wide.min() <= 0.75
    assert TrainConfig().zoom == features.DEFAULT_ZOOM
    assert train.parse_args(["--data", "d", "--zoom", "0.4"])[0].zoom == 0.4
    assert TrainConfig(zoom=1).problems() == [
        "zoom must be in [0, 1) (a share of the image's side)"]

    bottom = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(2, 3, strides=8)])

    def key(view, zoom):
        return features.cache_key(bottom, [], view, 1, 32, "none", True, zoom)

    assert key(1, 0.4) != key(1, features.DEFAULT_ZOOM) == features.cache_key(bottom, [], 1, 1, 32)
    assert key(0, 0.4) == key(0, features.DEFAULT_ZOOM)  # the clean view is not zoomed


def test_warmup_ramps_the_rate_up_within_the_first_epoch_and_the_schedule_then_holds(tmp_path):
    """--warmup-epochs 0.5 over 8 steps per epoch: steps 1-4 at 1/4 .. 4/4 of the rate, every
    later step at the rate; a replayed schedule's first-epoch rate is the one ramped up to."""
    from types import SimpleNamespace

    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = np.arange(64) % 2
    config = TrainConfig(learning_rate=1e-2, batch_size=8, class_balance=False,
                         warmup_epochs=0.5)

    def rates_used(run_dir: Path, rates=None) -> list[float]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        seen = []
        record = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda b, logs: seen.append(
            float(model.optimizer.learning_rate)))
        run_dir.mkdir()
        train.fit(SimpleNamespace(trainable=model, full=model), config, x, y, None, 2, run_dir,
                  extra_callbacks=[record], rates=rates)
        return seen

    np.testing.assert_allclose(rates_used(tmp_path / "plain"),
                               [2.5e-3, 5e-3, 7.5e-3, 1e-2] + [1e-2] * 12, rtol=1e-6)
    np.testing.assert_allclose(rates_used(tmp_path / "replayed", rates=[4e-3, 1e-3]),
                               [1e-3, 2e-3, 3e-3, 4e-3] + [4e-3] * 4 + [1e-3] * 8, rtol=1e-6)
    assert TrainConfig(warmup_epochs=1.5).problems() == [
        "warmup_epochs must be in [0, 1] (0: off; a share of the first epoch)"]


def test_a_fit_that_stalled_at_chance_is_called_out():
    # a fit stuck on one class of 8 (the first pbc8 run with --fit-seed 2 reached 0.085)
    assert "did not learn" in train.stalled({"accuracy": 0.085, "balanced_accuracy": 0.125}, 8)
    assert train.stalled({"accuracy": 0.5, "balanced_accuracy": 0.45}, 4) is None
    assert train.stalled({}, 4) is None  # nothing validated


def test_excluded_images_keep_their_split_but_never_train(trained_run, tmp_path, monkeypatch):
    base, plain_run = trained_run
    plain = json.loads((plain_run / "splits.json").read_text())
    left_out = plain["train"][:3] + plain["val"][:1]
    listing = tmp_path / "left_out.txt"
    listing.write_text("# doubtful labels\n" + "\n".join(left_out) + "\n")
    trained_on = []
    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda classifier, config, x, y, *a, **k: (
        trained_on.append(len(y)), real_fit(classifier, config, x, y, *a, **k))[1])
    config = TrainConfig(data=str(base / "data"), out=str(tmp_path / "runs"), views=2, epochs=1,
                         batch_size=8, val_fraction=0.25, cache_dir=str(tmp_path / "cache"),
                         seed=3, weights="none", exclude_from_training=str(listing))
    run_dir = train.train(config)
    splits = json.loads((run_dir / "splits.json").read_text())
    assert (splits["train"], splits["val"]) == (plain["train"], plain["val"])
    # Two views of each training image but the three listed; the listed validation image is
    # still validated (the split is unchanged).
    assert trained_on == [2 * (len(plain["train"]) - 3)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["excluded_from_training"] == 3
    assert summary["trained_on"]["files"] == len(plain["train"]) - 3
    assert summary["counts"]["val"] == len(plain["val"])


def test_an_exclusion_list_naming_other_data_is_refused_before_a_run_folder_exists(
        trained_run, tmp_path):
    base, _ = trained_run
    listing = tmp_path / "other.txt"
    listing.write_text("eosinophil/eosinophil_0.jpg\nbasophil/b_1.jpg\n")
    runs = tmp_path / "runs"
    config = TrainConfig(data=str(base / "data"), out=str(runs), views=1, epochs=1,
                         cache_dir=str(tmp_path / "cache"), seed=3, weights="none",
                         exclude_from_training=str(listing))
    with pytest.raises(SystemExit, match=r"1 of its 2 images are not in .*basophil/b_1.jpg"):
        train.train(config)
    assert not runs.exists()


@pytest.mark.parametrize("source_map", ["none", "auto"])
def test_field_notes_that_are_a_folder_or_missing_stop_the_run_with_or_without_a_source_map(
        tmp_path, image_folder, monkeypatch, source_map):
    """The notes were looked for only beside a source map: without one (no map beside this
    data), a folder or a typo given as --field-notes went unnoticed and training started."""
    from training import data as data_lib

    def no_listing(*args, **kwargs):
        raise AssertionError("the data was listed before the notes were checked")

    monkeypatch.setattr(data_lib, "list_image_folder", no_listing)
    runs = tmp_path / "runs"
    for notes, reason in ((tmp_path, "a folder, not a CSV file"),
                          (tmp_path / "absent.csv", "no such file")):
        with pytest.raises(SystemExit, match=f"--field-notes {notes}: {reason}"):
            train.main(["--data", str(image_folder), "--out", str(runs), "--weights", "none",
                        "--source-map", source_map, "--field-notes", str(notes)])
    assert not runs.exists()


def test_online_views_keep_the_clean_views_and_draw_the_others_by_their_key(image_folder):
    """Clean views come from the cache unchanged; an augmented look depends on the seed and its
    (epoch, batch) key alone: another key draws another view, the same key (a resumed run's
    epoch) the same one."""
    paths = sorted(image_folder.rglob("*.jpg"))[:5]
    bottom = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.AveragePooling2D(4)])
    clean = np.arange(2 * 8 * 8 * 3, dtype=np.float16).reshape(2, 8, 8, 3)
    views = train.OnlineViews(bottom, clean, paths, 32, "none", seed=5)
    assert len(views) == 7
    first = views.look(np.array([1, 2, 5]), (0, 0))
    assert first.shape == (3, 8, 8, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first[0], clean[1])  # position 1: a cached clean view
    assert not np.allclose(views.look(np.array([1, 2, 5]), (1, 0))[1:], first[1:])  # next epoch
    assert not np.allclose(views.look(np.array([1, 2, 5]), (0, 1))[1:], first[1:])  # other batch
    again = train.OnlineViews(bottom, clean, paths, 32, "none", seed=5)
    np.testing.assert_array_equal(again.look(np.array([1, 2, 5]), (0, 0)), first)
    other_seed = train.OnlineViews(bottom, clean, paths, 32, "none", seed=6)
    assert not np.allclose(other_seed.look(np.array([2, 5]), (0, 0)), first[1:])
    # Batches key their looks by epoch: a fit resumed at epoch 1 draws epoch 1's views.
    y = np.arange(7) % 2
    np.random.seed(0)
    fresh = train.ShuffledBatches(views, y, 2, batch_size=8)
    fresh.on_epoch_end()
    np.random.seed(0)
    resumed = train.ShuffledBatches(views, y, 2, batch_size=8, first_epoch=1)
    resumed.order = fresh.order  # the order is not what this checks
    np.testing.assert_array_equal(resumed[0][0], fresh[0][0])
    assert fresh.epoch == resumed.epoch == 1


def test_shuffled_batches_hold_every_example_once_an_epoch_with_its_class_weight():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    x = np.arange(10, dtype=np.float16).reshape(10, 1)
    np.random.seed(0)
    batches = train.ShuffledBatches(x, y, 3, batch_size=4, class_weight={0: 1.0, 1: 2.0, 2: 0.5})
    orders = []
    for _ in range(2):
        seen = []
        for i in range(len(batches)):
            xb, yb, wb = batches[i]
            index = xb[:, 0].astype(int)
            np.testing.assert_array_equal(yb.argmax(axis=1), y[index])
            np.testing.assert_array_equal(wb, np.array([1.0, 2.0, 0.5])[y[index]])
            seen += list(index)
        assert sorted(seen) == list(range(10)) and len(batches) == 3
        orders.append(batches.order.copy())
        batches.on_epoch_end()
    assert not np.array_equal(orders[0], batches.order)  # reshuffled


def test_online_augmentation_trains_a_run_and_caches_only_the_clean_views(tmp_path, image_folder):
    from tests.conftest import make_image
    from training import crossfit

    for name, color in zip(CLASSES[:2], CELL_COLORS[:2]):
        for i in range(2):
            make_image(tmp_path / "extra" / name / f"x_{i}.png", color, fmt="PNG")
    config = TrainConfig(data=str(image_folder), out=str(tmp_path / "runs"), views=3, epochs=2,
                         batch_size=8, val_fraction=0.25, cache_dir=str(tmp_path / "cache"),
                         seed=3, weights="none", input_size=32, augment="online",
                         extra_data=str(tmp_path / "extra"))
    run_dir = train.train(config)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["trained_on"] == {"files": 16, "views_per_file": 3, "augment": "online"}
    assert summary["epochs_run"] == 2 and (run_dir / "model.keras").is_file()
    assert (run_dir / "metrics.csv").read_text().count("\n") == 3
    # The clean views only (of the data and of the extra images): no augmented view is cached.
    assert len(list((tmp_path / "cache").glob("features-*.npy"))) == 2
    # The clean view of each of the 16 files and 4 extra images, then two fresh views of each:
    # as long as a cached epoch.
    features = train.CachedViews(*_online_parts(config, run_dir))
    x, y = features.for_training(json.loads((run_dir / "splits.json").read_text())["train"])
    assert len(x) == len(y) == 60 and list(y[:20]) == list(y[20:40]) == list(y[40:])
    assert len(x.clean) == 20 and x.paths[:20] == x.paths[20:40]
    assert [Path(p).parent.parent.name for p in x.paths[16:20]] == ["extra"] * 4
    # A crossfit of the run trains its fold models online too.
    summary = crossfit.crossfit(run_dir, folds=2)
    assert summary["images"] == 24 and len(summary["per_fold"]) == 2
    assert json.loads((run_dir / "config.json").read_text())["augment"] == "online"
    assert train.parse_args(["--data", "d", "--augment", "online"])[0].augment == "online"
    assert TrainConfig(augment="sometimes").problems() == ["augment must be one of cached, online"]


def test_a_seeded_online_run_repeats_bit_for_bit_and_another_fit_seed_does_not(tmp_path,
                                                                               image_folder):
    # The README says an online run repeats: its fresh views are drawn by (seed, epoch, batch),
    # and TensorFlow's CPU kernels must not add noise of their own on top.
    def weights(name: str, fit_seed: int) -> list[np.ndarray]:
        config = TrainConfig(data=str(image_folder), out=str(tmp_path / name), views=2, epochs=2,
                             batch_size=8, val_fraction=0.25, cache_dir=str(tmp_path / "cache"),
                             seed=3, fit_seed=fit_seed, weights="none", input_size=32,
                             augment="online", ema_momentum=0.9)
        return keras.saving.load_model(train.train(config) / "model.keras").get_weights()

    first, again, other = weights("a", 0), weights("b", 0), weights("c", 5)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other))


def test_mixup_blends_two_fresh_online_views(image_folder):
    paths = sorted(image_folder.rglob("*.jpg"))[:6]
    bottom = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.AveragePooling2D(4)])
    views = train.OnlineViews(bottom, np.zeros((0, 8, 8, 3), np.float16), paths, 32, "none",
                              seed=1)
    np.random.seed(0)
    batches = train.MixedBatches(views, np.array([0, 1, 2, 0, 1, 2]), 3, batch_size=4, alpha=1.0)
    xb, yb, wb = batches[0]
    assert xb.shape == (4, 8, 8, 3) and yb.shape == (4, 3) and wb.shape == (4,)
    np.testing.assert_allclose(yb.sum(axis=1), 1.0, rtol=1e-6)


def _online_parts(config, run_dir):
    """(classifier, config, dataset, split) of a finished run, for its CachedViews."""
    from training import data as data_lib
    from training.model import Classifier

    dataset = data_lib.grouped_image_folder(Path(config.data), 0, "none", "none")
    split = data_lib.load_split(run_dir / "splits.json", dataset)
    classifier = Classifier(len(dataset.classes), config.input_size, config.dropout, "none",
                            config.tune_from_block)
    extra = data_lib.list_extra(config.extra_data, dataset.classes, 0)
    return classifier, config, dataset, split, *extra


def _sources_dataset(samples: int, unassigned: int = 0):
    """A Dataset of `samples` app samples holding 2 cells of each class, and `unassigned`
    images of no known source (no files on disk: only the split is made)."""
    from training import data as data_lib

    files, labels, groups = [], [], []
    for s in range(samples):
        for c, name in enumerate(CLASSES):
            for i in range(2):
                files.append(f"{name}/s{s}-{i}.jpg")
                labels.append(c)
                groups.append(f"sample:{s}")
    for i in range(unassigned):
        files.append(f"{CLASSES[i % 4]}/u{i}.jpg")
        labels.append(i % 4)
        groups.append(None)
    return data_lib.Dataset(Path("/data"), list(CLASSES), files, labels, groups,
                            sources_hold_many_cells=True, source_tables=["/data/reviewed-a.csv"])


def test_a_split_whose_held_out_figures_rest_on_few_sources_is_warned_about():
    from training import data as data_lib

    dataset = _sources_dataset(2, unassigned=40)
    config = TrainConfig(val_fraction=0.15, test_fraction=0.1)
    split = data_lib.make_split(dataset, config.val_fraction, config.test_fraction, 0)
    assert len(split["test"]) == 0 and len(split["val"]) == 8
    warnings = train.split_warnings(config, dataset, split)
    assert warnings[0] == "warning: the val split holds 1 source group(s) (8 images): its " \
                          "figures rest on them alone"
    assert warnings[1].startswith("warning: --test-fraction 0.1 got no source group: the test "
                                  "split is empty (a group is one source of the source map: a "
                                  "slide, a patient or an app sample)")
    assert warnings[2].startswith("warning: 40 of 56 images (71%) have no source in the source "
                                  "map: they are never validated and train only in a final "
                                  "refit on all data")
    assert "(--unassigned refit|drop)" in warnings[2]
    many = _sources_dataset(8)
    split = data_lib.make_split(many, 0.4, 0.4, 0)
    assert train.split_warnings(replace(config, val_fraction=0.4, test_fraction=0.4), many,
                                split) == []


def test_a_class_with_too_few_sources_to_train_on_is_warned_about(capsys):
    """Three images of a class split 1 / 1 / 1: it trains on one image."""
    from training import data as data_lib

    files, labels = [], []
    for c, name in enumerate(CLASSES):
        for i in range(3 if c == 0 else 20):
            files.append(f"{name}/{i}.jpg")
            labels.append(c)
    dataset = data_lib.Dataset(Path("/data"), list(CLASSES), files, labels, list(files))
    split = data_lib.make_split(dataset, 0.15, 0.15, 0)
    train.check_classes(dataset, split)
    err = capsys.readouterr().err
    assert (f"warning: {CLASSES[0]} has only 1 source group(s) to train on (train 1, val 1, "
            "test 1; without a source map a group is an image with its byte-identical copies): "
            "it is learned from too few") in err
    assert not any(f"warning: {name} has only" in err for name in CLASSES[1:])


def test_a_single_sample_is_refused_with_what_a_group_is_and_the_map_logged(tmp_path, capsys):
    from tests.conftest import make_image

    data = tmp_path / "one"
    rows = ["file,group"]
    for name, color in zip(CLASSES, CELL_COLORS):
        make_image(data / name / "0.jpg", color)
        rows.append(f"{name}/0.jpg,sample:PT-001")
    (data / "reviewed-1.csv").write_text("\n".join(rows) + "\n")
    config = TrainConfig(data=str(data), out=str(tmp_path / "runs"), views=1, epochs=1,
                         weights="none", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(SystemExit, match=r"No validation image: the data holds 1 source group\(s\) "
                                         r"\(a group is one source of the source map: a slide, a "
                                         r"patient or an app sample\).*Add images of more sources"):
        train.train(config)
    err = capsys.readouterr().err
    assert f"[train] source map: {(data / 'reviewed-1.csv').resolve()}, 1 groups, 0 of 4 " \
           "images not named" in err
    assert not (tmp_path / "runs").exists()


def test_a_fit_at_chance_that_ran_to_the_epoch_limit_may_simply_be_too_short():
    limit = train.stalled({"balanced_accuracy": 0.25}, 4, hit_epoch_limit=True)
    assert "It stopped at the --epochs limit: it may simply have had too few epochs" in limit
    assert "--fit-seed" not in limit
    early = train.stalled({"balanced_accuracy": 0.25}, 4)
    assert "another --fit-seed" in early and "--epochs limit" not in early


def test_the_run_records_the_source_map_read_and_its_chance_warning(trained_run):
    _, run_dir = trained_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["source_map"] == "auto" and config["source_map_tables"] == []
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["source_map_tables"] == [] and "stalled" in summary
    assert TrainConfig.load(run_dir / "config.json").source_map == "auto"


def test_export_repeats_a_runs_chance_warning(capsys):
    assert export.run_warning({"stalled": "warning: x"}, {}) == "warning: x"
    assert export.run_warning({"stalled": None}, {}) is None
    # A summary from before the warning was kept: worked out from its figures.
    old = {"classes": CLASSES, "validation": {"balanced_accuracy": 0.25}, "epochs_run": 1}
    assert "--epochs limit" in export.run_warning(old, {"epochs": 1})
    assert export.run_warning({**old, "validation": {"balanced_accuracy": 0.9}}, {}) is None


def test_the_conversion_keeps_its_trace_back_unless_it_fails(tiny_keras_model, tmp_path, capsys,
                                                              monkeypatch):
    # A network of its own (weights drawn again): converted here, not given a file another
    # test's conversion left (conftest.convert_each_model_once).
    tiny_keras_model = keras.models.clone_model(tiny_keras_model)
    export.convert_to_tflite(tiny_keras_model, tmp_path / "m.tflite", views=1)
    captured = capsys.readouterr()
    assert (tmp_path / "m.tflite").stat().st_size > 0
    assert "Saved artifact" not in captured.out + captured.err

    class Failing:
        def convert(self):
            print("Saved artifact at '/tmp/x'. Captures: the reason")
            raise RuntimeError("conversion failed")

    monkeypatch.setattr(export.tf.lite.TFLiteConverter, "from_keras_model",
                        lambda model: Failing())
    with pytest.raises(RuntimeError, match="conversion failed"):
        export.convert_to_tflite(tiny_keras_model, tmp_path / "n.tflite", views=1)
    assert "Captures: the reason" in capsys.readouterr().err


def test_train_with_export_prints_where_the_model_went(image_folder, tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.setattr(train, "train", lambda config, resume: tmp_path / "run")
    monkeypatch.setattr(export, "export_run", lambda run, name, **kw: tmp_path / "models" / name)
    train.main(["--data", str(image_folder), "--export", "printed-here-test"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "models" / "printed-here-test")


def test_progress_is_one_line_per_pass_when_stderr_is_no_terminal(capsys):
    from training.features import progress_line

    for done in (64, 128, 150):
        progress_line(f"[features x view 0] {done}/150", last=done == 150)
    assert capsys.readouterr().err == "[features x view 0] 150/150\n"
