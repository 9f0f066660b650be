import re
import shutil

import numpy as np
import pytest

from training.evaluate import (classification_metrics, group_bootstrap, hardest_smears,
                               intervals, macro_f1, no_white_cell_figures, per_source_accuracy)


def test_metrics_on_a_hand_checked_example():
    classes = ["a", "b", "c"]
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 1, 0]
    m = classification_metrics(y_true, y_pred, classes)
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["a"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "support": 3}
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.6667, abs=1e-4)
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.6667 + 0.8 + 0) / 3, abs=1e-4)


def test_per_source_majority_vote_ignores_unknown_sources():
    groups = ["s1", "s1", "s1", "s2", "s2", None]
    y_true = [0, 0, 0, 1, 1, 1]
    y_pred = [0, 1, 0, 0, 0, 1]
    result = per_source_accuracy([""] * 6, y_true, y_pred, groups)
    assert result == {"sources": 2, "accuracy": 0.5, "images_with_known_source": 5}


def test_hardest_smears_are_those_with_the_most_wrong_images():
    classes = ["a", "b", "c"]
    # s1: 3 of 3 wrong (called b twice, c once); s2: 1 of 4; s3: all right; s4: 2 of 2 wrong.
    groups = ["s1"] * 3 + ["s2"] * 4 + ["s3"] * 2 + ["s4"] * 2 + [None] * 3
    y_true = [0] * 3 + [1] * 4 + [2] * 2 + [2] * 2 + [0] * 3
    y_pred = [1, 2, 1] + [1, 1, 0, 1] + [2, 2] + [0, 0] + [1, 1, 1]
    result = hardest_smears(y_true, y_pred, groups, classes, top=2)
    assert result == {
        "errors_with_known_source": 6, "smears_wrong_in_every_image": 2,
        "errors_in_those_smears": 5,
        "hardest": [{"smear": "s1", "label": "a", "images": 3, "wrong": 3,
                     "called": {"b": 2, "c": 1}},
                    {"smear": "s4", "label": "c", "images": 2, "wrong": 2, "called": {"a": 2}}]}
    assert hardest_smears([0, 1], [0, 1], ["s1", None], classes)["hardest"] == []


def test_per_source_accuracy_of_no_known_source_is_not_a_number():
    result = per_source_accuracy([""] * 2, [0, 1], [0, 1], [None, None])
    assert result == {"sources": 0, "accuracy": None, "images_with_known_source": 0}


def test_bootstrap_resamples_whole_smears_not_their_images():
    # 10 smears of 50 augmented images each: five smears all right, five all wrong.
    correct = np.repeat([1.0] * 5 + [0.0] * 5, 50)
    smears = np.repeat(np.arange(10), 50).tolist()
    by_smear = group_bootstrap(lambda i: correct[i].mean(), smears)
    by_image = group_bootstrap(lambda i: correct[i].mean(), list(range(500)))
    # Ten independent draws leave the accuracy very uncertain; 500 images would pretend not.
    assert by_smear[0] <= 0.25 and by_smear[1] >= 0.75
    assert by_image[1] - by_image[0] < 0.1
    assert group_bootstrap(lambda i: correct[i].mean(), smears) == by_smear  # seeded


def test_intervals_name_what_was_resampled():
    y = np.array([0, 1, 0, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    files = ["a", "b", "c", "d"]
    unknown = intervals(files, [None] * 4, y, probabilities.argmax(axis=1), 2)
    assert unknown["resampled"] == "images" and unknown["units"] == 4
    # Two smears are below MIN_SOURCES: allowed here to see what is resampled.
    smears = intervals(files, ["s1", "s1", "s2", None], y, probabilities.argmax(axis=1), 2,
                       min_sources=2)
    # Only the images of known smears are resampled: "d" is a view of s1 or s2, not a third draw.
    assert smears["resampled"] == "source smears"
    assert (smears["units"], smears["images"]) == (2, 3)
    assert smears["accuracy"] == [1.0, 1.0]  # a, b, c are right; d (wrong) is not resampled
    assert smears["macro_f1"] == [1.0, 1.0]


def test_macro_f1_agrees_with_the_report_and_skips_absent_classes():
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    report = classification_metrics(list(y_true), list(y_pred), ["a", "b", "c", "d"])
    assert macro_f1(y_true, y_pred, 4) == pytest.approx(report["macro_f1"], abs=1e-4)
    # Class 2 never occurs (a resample that drew none of its smears) but is predicted once:
    # it is left out of the mean, its wrong prediction still costs class 0 its recall.
    assert macro_f1(np.array([0, 0, 1]), np.array([0, 2, 1]), 3) == pytest.approx((2 / 3 + 1) / 2)


def test_macro_f1_interval_resamples_smears():
    # 6 smears of 20 images: class 0 smears right, class 1 smears half wrong.
    y_true = np.repeat([0, 0, 0, 1, 1, 1], 20)
    y_pred = np.repeat([0, 0, 0, 1, 0, 1], 20)
    smears = np.repeat(np.arange(6), 20).tolist()
    result = intervals([str(i) for i in range(120)], smears, y_true, y_pred, 2)
    assert result["units"] == 6
    low, high = result["macro_f1"]
    assert low < macro_f1(y_true, y_pred, 2) < high


def test_evaluating_a_folder_with_some_of_the_models_classes(tiny_model_dir, tmp_path):
    """A test folder may hold only some of the model's classes: each image's truth is its
    folder's class in the model's order, not the folder's position in the listing."""
    from hematovision.predictor import Predictor
    from tests.conftest import CELL_COLORS, CLASSES, make_image
    from training.evaluate import evaluate

    present = {"lymphocyte": CELL_COLORS[1], "neutrophil": CELL_COLORS[3]}
    paths = {name: [make_image(tmp_path / "data" / name / f"{i}.jpg", color) for i in range(3)]
             for name, color in present.items()}
    metrics = evaluate(tiny_model_dir, tmp_path / "data", tmp_path / "out")
    assert {c: m["support"] for c, m in metrics["per_class"].items()} == {
        "eosinophil": 0, "lymphocyte": 3, "monocyte": 0, "neutrophil": 3}
    predictor = Predictor(tiny_model_dir)
    right = sum(predictor.predict(p).label == name for name, ps in paths.items() for p in ps)
    assert metrics["accuracy"] == round(right / 6, 4)
    predicted = [predictor.predict(p).label for ps in paths.values() for p in ps]
    assert np.array(metrics["confusion_matrix"]).sum(axis=0).tolist() == [
        predicted.count(c) for c in CLASSES]


def test_known_classes_only_scores_another_datasets_matching_classes(tiny_model_dir, tmp_path,
                                                                     capsys):
    """PBC's eight classes for a four-class model: without the option a clear stop, with it
    only the images of the model's classes are scored (its split file too, though made for
    other classes), and the classes left out are named."""
    import json

    from tests.conftest import CELL_COLORS, make_image
    from training.evaluate import evaluate, main

    data = tmp_path / "data"
    for name, color in (("lymphocyte", CELL_COLORS[1]), ("neutrophil", CELL_COLORS[3]),
                        ("platelet", (200, 200, 40)), ("basophil", (90, 20, 90))):
        for i in range(3):
            make_image(data / name / f"{i}.jpg", color)
    with pytest.raises(SystemExit, match=r"does not know: \['basophil', 'platelet'\].*"
                                         "--known-classes-only"):
        evaluate(tiny_model_dir, data, tmp_path / "out")
    metrics = evaluate(tiny_model_dir, data, tmp_path / "out", known_classes_only=True)
    assert metrics["n"] == 6 and metrics["classes_left_out"] == ["basophil", "platelet"]
    assert metrics["per_class"]["lymphocyte"]["support"] == 3

    split = tmp_path / "splits.json"
    split.write_text(json.dumps({
        "classes": ["basophil", "lymphocyte", "neutrophil", "platelet"],
        "test": ["basophil/0.jpg", "lymphocyte/0.jpg", "lymphocyte/1.jpg", "platelet/2.jpg",
                 "neutrophil/2.jpg"]}))
    main(["--data", str(data), "--model-dir", str(tiny_model_dir), "--out", str(tmp_path / "e"),
          "--split-file", str(split), "--known-classes-only"])
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["n"] == 3 and saved["split"] == "splits.json:test"
    assert "left out (classes the model does not know): basophil, platelet" in (
        capsys.readouterr().out)
    card = (tiny_model_dir / "model_card.json").read_text()
    with pytest.raises(SystemExit):
        main(["--data", str(data), "--model-dir", str(tiny_model_dir), "--known-classes-only",
              "--record", "pbc", "--out", str(tmp_path / "r")])
    assert "is not recorded in the model card" in capsys.readouterr().err
    assert (tiny_model_dir / "model_card.json").read_text() == card
    assert not (tmp_path / "r").exists()


def test_evaluate_stops_with_a_message_for_an_unknown_model_or_no_readable_image(
        tiny_model_dir, tmp_path, capsys):
    from tests.conftest import make_image
    from training.evaluate import evaluate

    make_image(tmp_path / "data" / "neutrophil" / "good.jpg", (60, 60, 200))
    with pytest.raises(SystemExit, match="(?s)No model card at .*available models: "):
        evaluate(tmp_path / "nosuch", tmp_path / "data", tmp_path / "out")
    for name in ("a.jpg", "b.png"):
        (tmp_path / "bad" / "neutrophil").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / "neutrophil" / name).write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="None of the 2 images could be read"):
        evaluate(tiny_model_dir, tmp_path / "bad", tmp_path / "out")
    (tmp_path / "data" / "neutrophil" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    assert evaluate(tiny_model_dir, tmp_path / "data", tmp_path / "out")["n"] == 1
    assert f"unreadable, left out: {tmp_path / 'data' / 'neutrophil' / 'broken.jpg'}" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("name", ["unfamiliar", "robustness"])
def test_record_refuses_the_names_other_figures_hold(name, capsys):
    from training import evaluate

    with pytest.raises(SystemExit):
        evaluate.main(["--data", "anything", "--record", name])
    assert f"--record {name}: the card keeps the figures of training.{name}" in (
        capsys.readouterr().err)


def test_no_white_cell_figures_count_what_the_rule_sets_aside():
    missing = np.array([True, True, True, False, False, False])
    correct = np.array([True, False, True, True, False, True])
    confident = np.array([True, True, False, True, False, True])
    assert no_white_cell_figures(missing, correct, confident) == {
        "images": 3, "rate": 0.5, "accuracy": 0.6667, "set_aside": 2, "set_aside_right": 1,
        "accuracy_accepted_without_rule": 0.75, "accuracy_accepted": 1.0}
    none = no_white_cell_figures(np.zeros(2, bool), np.ones(2, bool), np.zeros(2, bool))
    assert none["accuracy"] is None and none["accuracy_accepted"] is None


def model_copy(model_dir, tmp_path):
    """A copy of the tiny model to record into: the session's own stays as exported."""
    import shutil

    return shutil.copytree(model_dir, tmp_path / "model")


def folder_state(folder) -> dict:
    """Every file of `folder` and its bytes: what a refused command must leave as it was."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def no_image_may_be_read(monkeypatch):
    from training import evaluate

    def refuse(*args, **kwargs):
        raise AssertionError("images were read before the options were checked")

    monkeypatch.setattr(evaluate, "forward_files", refuse)


@pytest.mark.parametrize("out, reason", [
    ("taken", "a file, not a folder"),
    ("taken/report", "cannot write there (Not a directory)"),
])
def test_an_output_folder_that_cannot_be_made_is_refused_before_any_image_is_read(
        tiny_model_dir, tmp_path, monkeypatch, capsys, out, reason):
    """It crashed in os.mkdir after the whole evaluation had run."""
    from tests.conftest import CELL_COLORS, make_image
    from training.evaluate import main

    make_image(tmp_path / "data" / "lymphocyte" / "0.jpg", CELL_COLORS[1])
    (tmp_path / "taken").write_text("a file\n")
    no_image_may_be_read(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        main(["--data", str(tmp_path / "data"), "--model-dir", str(tiny_model_dir),
              "--out", str(tmp_path / out)])
    assert stop.value.code == 2
    assert f"error: --out {tmp_path / out}: {reason}\n" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file\n"


def test_checking_the_output_folder_leaves_nothing_behind_when_the_evaluation_stops(
        tiny_model_dir, tmp_path):
    from tests.conftest import make_image
    from training.evaluate import main

    make_image(tmp_path / "data" / "platelet" / "0.jpg", (200, 200, 40))
    with pytest.raises(SystemExit, match="has classes the model does not know"):
        main(["--data", str(tmp_path / "data"), "--model-dir", str(tiny_model_dir),
              "--out", str(tmp_path / "new" / "report")])
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["a/b", "..", "../test", "test simple", ".hidden"])
def test_a_record_name_that_is_not_a_plain_name_is_refused_before_anything_is_written(
        tiny_model_dir, tmp_path, monkeypatch, capsys, name):
    """--record a/b wrote metrics["a/b"] into the card, then crashed copying confusion_a/b.png,
    leaving the card naming figures without their plots."""
    from training.evaluate import main

    model = model_copy(tiny_model_dir, tmp_path)
    before = folder_state(model)
    no_image_may_be_read(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        main(["--data", str(tmp_path / "data"), "--model-dir", str(model),
              "--out", str(tmp_path / "out"), "--record", name])
    assert stop.value.code == 2
    assert f"error: --record {name}: a name of letters, digits" in capsys.readouterr().err
    assert folder_state(model) == before and not (tmp_path / "out").exists()


def test_the_recorded_sets_names_stay_valid_and_record_into_the_card(tiny_model_dir, tmp_path):
    import json

    from tests.conftest import CELL_COLORS, make_image
    from training.evaluate import RECORD_NAME, main

    assert all(RECORD_NAME.fullmatch(name) for name in ("test", "test_simple", "pbc-2.v1"))
    make_image(tmp_path / "data" / "lymphocyte" / "0.jpg", CELL_COLORS[1])
    model = model_copy(tiny_model_dir, tmp_path)
    main(["--data", str(tmp_path / "data"), "--model-dir", str(model),
          "--out", str(tmp_path / "out"), "--record", "test_simple"])
    assert json.loads((model / "model_card.json").read_text())["metrics"]["test_simple"]["n"] == 1
    assert {p.name for p in model.glob("*_test_simple.png")} == {
        "confusion_test_simple.png", "reliability_test_simple.png", "coverage_test_simple.png"}


def test_a_record_that_fails_to_copy_its_plots_leaves_the_card_unchanged(tiny_model_dir,
                                                                         tmp_path):
    from training.evaluate import record

    model = model_copy(tiny_model_dir, tmp_path)
    card = (model / "model_card.json").read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    for plot in ("confusion", "reliability"):  # coverage.png is missing
        (out / f"{plot}.png").write_bytes(b"png")
    with pytest.raises(FileNotFoundError, match="coverage.png"):
        record(model, "test", {"n": 1}, out)
    assert (model / "model_card.json").read_bytes() == card


@pytest.mark.parametrize("entries, first", [
    ([{"a": 1}], '{"a": 1}'),
    ([["a"]], '["a"]'),
    (["lymphocyte/0.jpg", 3], "3"),
])
def test_a_split_of_entries_that_are_not_paths_is_refused_with_its_file_and_name(
        tiny_model_dir, tmp_path, monkeypatch, capsys, entries, first):
    """Such a split crashed with "unhashable type" (or, from another command, scored a
    subset) instead of saying what is wrong with the file."""
    import json

    from tests.conftest import CELL_COLORS, make_image
    from training.evaluate import evaluate, main

    make_image(tmp_path / "data" / "lymphocyte" / "0.jpg", CELL_COLORS[1])
    split = tmp_path / "splits.json"
    split.write_text(json.dumps({"test": entries}))
    said = f"{split}:test holds entries that are not image paths (1 of {len(entries)}, first: "
    with pytest.raises(SystemExit, match=re.escape(said + first + ")")):
        evaluate(tiny_model_dir, tmp_path / "data", tmp_path / "e", split, "test")
    no_image_may_be_read(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        main(["--data", str(tmp_path / "data"), "--model-dir", str(tiny_model_dir),
              "--out", str(tmp_path / "out"), "--split-file", str(split)])
    assert stop.value.code == 2 and f"error: {said}{first})" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "e").exists()


def test_a_split_made_for_classes_that_are_not_names_is_refused_with_them(tiny_model_dir,
                                                                          tmp_path):
    import json

    from tests.conftest import CELL_COLORS, make_image
    from training.evaluate import evaluate

    make_image(tmp_path / "data" / "lymphocyte" / "0.jpg", CELL_COLORS[1])
    split = tmp_path / "splits.json"
    split.write_text(json.dumps({"classes": [1, 2], "test": ["lymphocyte/0.jpg"]}))
    with pytest.raises(SystemExit, match="was made for the classes 1, 2; the model has"):
        evaluate(tiny_model_dir, tmp_path / "data", tmp_path / "e", split, "test")


def _sample_folder(root, per_class: int = 3, groups=("sample:A",)):
    """An app-style folder: images of every class, a reviewed-x.csv putting them on
    `groups` (samples holding every class), in turn."""
    import csv

    from tests.conftest import CELL_COLORS, CLASSES, make_image

    rows = []
    for name, color in zip(CLASSES, CELL_COLORS):
        for i in range(per_class):
            make_image(root / name / f"{i}.jpg", color)
            rows.append([f"{name}/{i}.jpg", groups[i % len(groups)]])
    with open(root / "reviewed-x.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "group"], *rows])
    return root


def test_sources_of_several_classes_are_scored_over_their_own_images_not_by_one_label():
    """A sample of 10 cells, 2 monocytes read right and 8 others read as monocytes: 0.2, with
    8 wrong, where one label for the sample made it 10 of 10 wrong (or all right)."""
    from training.evaluate import per_source_figures

    classes = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    y_true = [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    y_pred = [2] * 10
    figures = per_source_figures(y_true, y_pred, ["batch:1"] * 10, classes)
    assert figures["sources"] == 1 and figures["images_with_known_source"] == 10
    (lowest,) = figures["lowest"]
    assert lowest == {"source": "batch:1", "images": 10, "wrong": 8, "accuracy": 0.2,
                      "confusions": {"lymphocyte as monocyte": 3, "neutrophil as monocyte": 3,
                                     "eosinophil as monocyte": 2}}
    # A source read right throughout is not among the lowest.
    assert per_source_figures([0, 1], [0, 1], ["s", "s"], classes)["lowest"] == []


def test_no_interval_below_the_minimum_of_sources_and_the_reason_is_given():
    from training.evaluate import MIN_SOURCES, interval_text

    y = np.array([0, 1, 0, 1] * 5)
    one = intervals([f"{i}" for i in range(20)], ["slide02"] * 20, y, y[::-1].copy(), 2)
    assert "accuracy" not in one and "macro_f1" not in one
    assert one["units"] == 1 and one["images"] == 20
    assert f"only 1 source(s) in the evaluated set; a resampled interval needs at least " \
           f"{MIN_SOURCES}" in one["omitted"]
    assert interval_text(one).startswith("no 95 % interval: only 1 source(s)")
    enough = intervals([f"{i}" for i in range(20)], [f"s{i % MIN_SOURCES}" for i in range(20)],
                       y, y.copy(), 2)
    assert enough["accuracy"] == [1.0, 1.0] and enough["units"] == MIN_SOURCES
    assert "1000 resamples of 5 source smears" in interval_text(enough)
    # Without any known source each image is its own unit, as before (PBC).
    assert intervals([f"{i}" for i in range(4)], [None] * 4, y[:4], y[:4], 2)["units"] == 4


def test_app_samples_get_no_majority_vote_nor_interval_in_the_card(tiny_model_dir, tmp_path,
                                                                  capsys):
    """A reviewed-cell folder of one sample holding every class: evaluate scores the sample
    over its own images, gives no interval (one source), and records neither a vote nor an
    interval that the model page or the tables would show."""
    from hematovision.card import read_card
    from training.evaluate import main

    data = _sample_folder(tmp_path / "reviewed")
    model = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model_dir, model)
    main(["--data", str(data), "--model-dir", str(model), "--out", str(tmp_path / "out"),
          "--record", "test"])
    out = capsys.readouterr().out
    assert "per source smear (majority vote)" not in out
    assert "per source (1 source(s) of several classes, no majority vote)" in out
    assert "no 95 % interval: only 1 source(s)" in out
    recorded = read_card(model)["metrics"]["test"]
    assert "per_source_smear" not in recorded and "accuracy" not in recorded["intervals"]
    assert recorded["per_source"]["sources"] == 1
    assert recorded["source_map"] == str(data)


def _trained_with_map(tiny_model_dir, tmp_path, table):
    """A copy of the tiny model whose card says it was trained with the source map `table`."""
    from hematovision.card import read_card, write_card

    model = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model_dir, model)
    card = read_card(model)
    card["training"] = {"config": {"source_map": str(table)}}
    write_card(model, card)
    return model


def test_evaluate_reads_the_source_map_the_model_was_trained_with(tiny_model_dir, tmp_path):
    """The model's card names the map it was trained with (a CSV outside the data): evaluate
    groups by it by default; --source-map none and a map given on the line override it."""
    import json

    from training.evaluate import evaluate

    data = _sample_folder(tmp_path / "cells", groups=("slide1", "slide2"))
    table = tmp_path / "slides.csv"
    (data / "reviewed-x.csv").rename(table)
    model = _trained_with_map(tiny_model_dir, tmp_path, table)
    metrics = evaluate(model, data, tmp_path / "a")
    assert metrics["source_map"] == str(table) and metrics["per_source"]["sources"] == 2
    assert metrics["intervals"]["units"] == 2 and "accuracy" not in metrics["intervals"]
    alone = evaluate(model, data, tmp_path / "b", source_map="none")
    assert "per_source" not in alone and alone["intervals"]["resampled"] == "images"
    assert alone["intervals"]["units"] == 12
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["source_map"] == str(table)


def test_a_trained_with_map_naming_none_of_the_images_gives_way_to_the_datas_own(
        tiny_model_dir, tmp_path, capsys):
    """The app's reviewed cells of three samples, scored by a model trained with a slide map
    of other data: that map names none of them, so the folder's own tables group them (no
    interval of 3 sources), not each image alone (an interval far too narrow)."""
    from training.evaluate import evaluate

    data = _sample_folder(tmp_path / "cells", groups=("s1", "s2", "s3"))
    other = tmp_path / "slides.csv"
    other.write_text("file,group\nneutrophil/elsewhere.jpg,slide9\n")
    model = _trained_with_map(tiny_model_dir, tmp_path, other)
    metrics = evaluate(model, data, tmp_path / "a")
    assert metrics["source_map"] == str(data) and metrics["per_source"]["sources"] == 3
    assert metrics["intervals"]["units"] == 3 and "accuracy" not in metrics["intervals"]
    assert (f"note: the source map {other} names none of the images scored: the data "
            "folder's own is read instead (--source-map auto)") in capsys.readouterr().err
    # Given on the command line, the map is what was asked for, and its note says so.
    alone = evaluate(model, data, tmp_path / "b", source_map=str(other))
    assert alone["intervals"]["resampled"] == "images"
    assert "names none of the images scored: each image is resampled as its own source" in (
        capsys.readouterr().err)


def test_an_empty_test_split_says_why_from_the_runs_config(tmp_path):
    """A run that asked for a test share and got no source for it is not told it was trained
    with --test-fraction 0."""
    import json

    from training import data as data_lib
    from training.evaluate import split_files

    run = tmp_path / "run"
    run.mkdir()
    (run / "splits.json").write_text(json.dumps(
        {"train": [], "val": [], "test": [], "groups": {"train": 1, "val": 1, "test": 0}}))
    dataset = data_lib.Dataset(tmp_path, ["a", "b"], [], [])
    (run / "config.json").write_text(json.dumps({"test_fraction": 0.1}))
    with pytest.raises(SystemExit, match=r"the run asked for --test-fraction 0\.1, but its data "
                                         r"had too few source groups \(2 source groups in all\)"):
        split_files(run / "splits.json", "test", dataset, tmp_path)
    (run / "config.json").write_text(json.dumps({"test_fraction": 0.0}))
    with pytest.raises(SystemExit, match="the run was trained with --test-fraction 0, which"):
        split_files(run / "splits.json", "test", dataset, tmp_path)
    (run / "config.json").unlink()
    with pytest.raises(SystemExit, match="a run trained with --test-fraction 0 keeps no test"):
        split_files(run / "splits.json", "test", dataset, tmp_path)


def test_a_trained_with_map_that_is_gone_is_refused_before_any_image_is_read(tiny_model_dir,
                                                                          tmp_path, capsys):
    from hematovision.card import read_card, write_card
    from training.evaluate import main

    model = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model_dir, model)
    card = read_card(model)
    card["training"] = {"config": {"source_map": str(tmp_path / "gone.csv")}}
    write_card(model, card)
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--model-dir", str(model), "--out", str(tmp_path / "o")])
    assert (f"--source-map {tmp_path / 'gone.csv'}: no such file (or give 'auto' or 'none') (the "
            "map the model was trained with; pass --source-map PATH, auto or none)"
            in capsys.readouterr().err)
