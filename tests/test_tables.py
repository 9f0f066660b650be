"""README figures come from the model cards and result files, never typed by hand."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from training import tables
from training.model import HEAD_COPIED

ROOT = Path(__file__).resolve().parent.parent


def column(table: str, header: str) -> list[str]:
    """The cells of one column of a Markdown table, found by its header."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in table.splitlines()]
    index = rows[0].index(header)
    return [row[index] for row in rows[2:]]


def test_generated_tables_are_what_the_generator_writes(tmp_path):
    copies = []
    for document in tables.DOCUMENTS:
        copy = tmp_path / document
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / document, copy)
        copies.append(copy)
    tables.main(["readme", *map(str, copies)])
    for document, copy in zip(tables.DOCUMENTS, copies):
        assert copy.read_text() == (ROOT / document).read_text(), (
            f"{document}: tables are stale: run `python -m training.tables readme`")


def test_every_block_has_a_generator_and_every_generator_a_block():
    """A table added to the generator but to neither document (or left in one after its
    generator went) would never be checked for staleness."""
    found = set().union(*(tables.markers((ROOT / d).read_text()) for d in tables.DOCUMENTS))
    assert found == set(tables.readme_blocks())
    # The ablation's summary by initialisation is the table issue 2 asks of the README.
    assert {"initialisations-wbc4", "initialisations-pbc8"} <= tables.markers(
        (ROOT / "README.md").read_text())


def test_relative_links_in_the_documents_resolve():
    for document in tables.DOCUMENTS:
        links = re.findall(r"\]\((?!https?:|#)([^)\s]+)\)", (ROOT / document).read_text())
        for link in links:
            target = (ROOT / document).parent / link.split("#")[0]
            assert target.exists(), f"{document} links to {link}, which is not there"


def test_models_table_quotes_the_card_metrics():
    card = json.loads((ROOT / "saved_model" / "wbc4" / "model_card.json").read_text())
    assert f"{card['metrics']['test']['accuracy']:.4f}" in tables.models_table()


def test_a_missing_block_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# nothing here\n")
    with pytest.raises(SystemExit, match="tables:models"):
        tables.rewrite([readme], {"models": "x"})


def test_a_block_is_rewritten_in_every_document_and_an_unknown_marker_is_an_error(tmp_path):
    readme, doc = tmp_path / "README.md", tmp_path / "experiments.md"
    readme.write_text("a\n<!-- tables:models -->\nold\n<!-- /tables:models -->\n")
    doc.write_text("<!-- tables:models -->\n<!-- /tables:models -->\n"
                   "<!-- tables:probe -->\nold\n<!-- /tables:probe -->\n")
    tables.rewrite([readme, doc], {"models": "M", "probe": "P"})
    assert readme.read_text() == "a\n<!-- tables:models -->\nM\n<!-- /tables:models -->\n"
    assert doc.read_text() == ("<!-- tables:models -->\nM\n<!-- /tables:models -->\n"
                               "<!-- tables:probe -->\nP\n<!-- /tables:probe -->\n")
    with pytest.raises(SystemExit, match="tables:probe --> has no generator"):
        tables.rewrite([readme, doc], {"models": "M2"})
    assert "M2" not in readme.read_text()  # nothing written when a document fails


def test_initialisation_table_groups_rows_by_initialisation():
    def row(run, init, val, oof=None):
        return {"run": run, "init": init, "val_accuracy": val,
                **({"out_of_fold": {"accuracy": oof}} if oof is not None else {})}

    rows = [row("r1", "random", 0.25), row("r2", "pbc8", 0.85, 0.84), row("r3", "pbc8", 0.9),
            row("r4", "pbc8", 0.88, 0.86)]
    table = tables.initialisation_table(rows, ("r3", {"out_of_fold": {"accuracy": 0.83}}))
    assert column(table, "initialisation") == ["random", "pbc8"]
    assert column(table, "rows") == ["1", "3"]
    assert column(table, "val accuracy: lowest to highest") == ["0.2500", "0.8500 to 0.9000"]
    # The served run's out-of-fold figure comes from its model folder.
    assert column(table, "out-of-fold accuracy: lowest to highest (rows measured)") == [
        "n/a", "0.8300 to 0.8600 (3)"]
    assert column(table, "served") == ["no", "yes"]


def test_documented_commands_exist_and_have_help(capsys):
    """Every `python -m` command the README and docs/ document runs with --help."""
    import importlib

    text = "".join((ROOT / d).read_text() for d in tables.DOCUMENTS)
    modules = set(re.findall(r"python -m ((?:training|hematovision)\.\w+)", text))
    assert {"training.train", "training.evaluate", "hematovision.predict"} <= modules
    for name in sorted(modules):
        module = importlib.import_module(name)
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0
        assert "example:" in capsys.readouterr().out, name


def test_ablation_rows_name_the_extra_training_data(tmp_path):
    from training.config import TrainConfig
    from training.tables import ablation_table, collect_ablation

    runs = []
    for name, extra, images, left_out in (("plain", "", 0, None),
                                          ("mixed", "../shared/data/pbc", 9080, 245)):
        run = tmp_path / name
        run.mkdir()
        TrainConfig(data="d", extra_data=extra,
                    exclude_from_training="audit/disputes.json" if left_out else "").save(
            run / "config.json")
        (run / "summary.json").write_text(json.dumps({
            "initialisation": "random", "best_epoch": 2, "train_seconds": 12.0,
            "validation": {"accuracy": 0.5, "balanced_accuracy": 0.25}, "counts": {"val": 8},
            **({"extra_training_images": images} if images else {}),
            **({"excluded_from_training": left_out} if left_out else {})}))
        runs.append(run)
    rows = collect_ablation(runs)
    assert [r["extra_data"] for r in rows] == ["none", "pbc (9080)"]
    assert [r["excluded"] for r in rows] == ["none", "disputes.json (245)"]
    lines = ablation_table(rows).splitlines()
    assert "| extra training images | left out of training |" in lines[0]
    assert lines[0].count("|") == lines[1].count("|") == lines[3].count("|")
    assert "| none | none | 1337 |" in lines[2]
    # no metrics.csv: no loss
    assert "| pbc (9080) | disputes.json (245) | 1337 | 2 | n/a | 0.5000 |" in lines[3]


@pytest.mark.parametrize("option, value, header, shown, default_shown", [
    ("dropout", 0.5, "dropout", "0.5", "0.3"),
    ("weight_decay", 0.05, "weight decay", "0.05", "0"),
    # online augmentation has no cached views to count; rows before it cached 3 (the default)
    ("augment", "online", "views", "3, fresh each epoch", "3"),
])
def test_ablation_gives_each_runs_option_and_the_default_for_rows_recorded_before(
        tmp_path, option, value, header, shown, default_shown):
    from training.config import TrainConfig
    from training.tables import ablation_table, collect_ablation

    run = tmp_path / option
    run.mkdir()
    TrainConfig(data="d", **{option: value}).save(run / "config.json")
    (run / "summary.json").write_text(json.dumps({
        "initialisation": "random", "best_epoch": 1, "train_seconds": 3.0,
        "validation": {"accuracy": 0.5, "balanced_accuracy": 0.25}, "counts": {"val": 8}}))
    [row] = collect_ablation([run])
    assert row[option] == value
    earlier = {k: v for k, v in row.items() if k != option}
    assert column(ablation_table([row, earlier]), header) == [shown, default_shown]


def test_ablation_names_each_fits_seed_and_warmup_and_an_ensembles_members_and_recipes(
        tmp_path):
    from training.config import TrainConfig
    from training.tables import ablation_table, collect_ablation

    record = {"initialisation": "random", "best_epoch": 3, "train_seconds": 3.0,
              "validation": {"accuracy": 0.5, "balanced_accuracy": 0.25}, "counts": {"val": 8}}
    runs = []
    for name, config, summary in (
            ("plain", TrainConfig(data="d", seed=7), record),
            ("member", TrainConfig(data="d", seed=7, fit_seed=2, warmup_epochs=1.0), record),
            ("ensemble", TrainConfig(data="d", seed=7), record | {
                "best_epoch": [3, 5], "train_seconds": 6.0,
                "validation": {"accuracy": 0.75, "balanced_accuracy": 0.5, "loss": 0.4321},
                # Two recipes: each member's own weight decay (training.ensemble).
                "members": [{"fit_seed": 7, "warmup_epochs": 0.0,
                             "settings": {"weight_decay": 0.0, "exclude_from_training": ""}},
                            {"fit_seed": 2, "warmup_epochs": 1.0,
                             "settings": {"weight_decay": 1.0,
                                          "exclude_from_training": "a/disputes.json"}}]})):
        run = tmp_path / name
        run.mkdir()
        config.save(run / "config.json")
        (run / "summary.json").write_text(json.dumps(summary))
        runs.append(run)
    rows = collect_ablation(runs)
    earlier = {k: v for k, v in rows[0].items() if k != "fit"}  # recorded before the column
    table = ablation_table([*rows, earlier])
    assert column(table, "fit seed") == ["7", "2 (warm-up 1 epoch)",
                                         "mean of 2: 7; 2 (warm-up 1 epoch)", "--seed"]
    assert column(table, "best epoch") == ["3", "3", "3 / 5", "3"]
    assert column(table, "val loss")[2] == "0.4321"  # measured when the ensemble was formed
    # The ensemble's config.json is its first member's; the table reads each member's own.
    assert column(table, "weight decay") == ["0", "0", "0 / 1", "0"]
    assert column(table, "dropout") == ["0.3"] * 4
    assert column(table, "left out of training") == ["none", "none", "none / disputes.json",
                                                     "none"]
    # A weight average (training.ensemble --combine weights) says so where the mean of logits
    # says "mean of".
    soup = tmp_path / "soup"
    soup.mkdir()
    TrainConfig(data="d", seed=7).save(soup / "config.json")
    ensemble = json.loads((runs[2] / "summary.json").read_text())
    (soup / "summary.json").write_text(json.dumps(ensemble | {"combined": "weights"}))
    assert column(ablation_table(collect_ablation([soup])), "fit seed") == [
        "weight average of 2: 7; 2 (warm-up 1 epoch)"]


def test_ablation_says_whether_smears_of_one_field_of_view_were_grouped(tmp_path):
    from training.config import TrainConfig
    from training.data import FIELD_NOTES, SOURCE_MAP_NAME
    from training.tables import ablation_table, collect_ablation

    data = tmp_path / "kaggle" / "train"
    data.mkdir(parents=True)
    (data.parent / SOURCE_MAP_NAME).write_text("file,group\n")
    (tmp_path / FIELD_NOTES).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / FIELD_NOTES).write_text("image,same_field_of_view_as\n")
    # Data without a source map (PBC's layout): each image is its own group, the notes unused.
    no_map = tmp_path / "pbc"
    no_map.mkdir()
    runs = []
    for name, setting, root in (("before", None, data), ("none", "none", data),
                                ("auto", "auto", data), ("no map", "auto", no_map)):
        run = tmp_path / name
        run.mkdir()
        TrainConfig(data=str(root), field_notes=setting or "none").save(run / "config.json")
        if setting is None:  # a run saved before the option existed
            config = json.loads((run / "config.json").read_text())
            del config["field_notes"]
            (run / "config.json").write_text(json.dumps(config))
        (run / "summary.json").write_text(json.dumps({
            "initialisation": "random", "best_epoch": 1, "train_seconds": 1.0,
            "validation": {"accuracy": 0.5, "balanced_accuracy": 0.5}, "counts": {"val": 8}}))
        runs.append(run)
    rows = collect_ablation(runs)
    assert [r["field_groups"] for r in rows] == [False, False, True, False]
    assert column(ablation_table(rows), "smears of one field of view grouped") == [
        "no", "no", "yes", "no"]


def test_ablation_gives_the_best_epochs_validation_loss_and_a_rerun_replaces_its_row(tmp_path):
    from training.config import TrainConfig

    summary = {"initialisation": "random", "best_epoch": 2, "train_seconds": 12.0,
               "validation": {"accuracy": 0.5, "balanced_accuracy": 0.25}, "counts": {"val": 8}}
    runs = []
    for name in ("r0", "r1"):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        TrainConfig(data="d", learning_rate=1e-4 if name == "r1" else 3e-4,
                    ema_momentum=0.998 if name == "r1" else 0.0,
                    mixup=0.4 if name == "r1" else 0.0).save(run / "config.json")
        # r1 was resumed from a session whose time was not kept
        (run / "summary.json").write_text(json.dumps(
            summary | ({"train_seconds": None} if name == "r1" else {})))
        (run / "metrics.csv").write_text(
            "epoch,loss,val_loss\n0,1.0,0.61\n1,0.9,0.5432\n2,0.8,0.7\n")
        runs.append(run)
    out = tmp_path / "ablation.json"
    tables.main(["ablation", str(runs[0]), "--out", str(out)])
    tables.main(["ablation", str(runs[1]), "--out", str(out), "--append"])
    rows = json.loads(out.read_text())
    assert [r["run"] for r in rows] == ["r0", "r1"] and rows[0]["val_loss"] == 0.5432
    assert column(tables.ablation_table(rows), "learning rate") == ["0.0003", "0.0001"]
    # A row recorded before the column existed ran at the default rate.
    old = {k: v for k, v in rows[1].items() if k != "learning_rate"}
    assert column(tables.ablation_table([old]), "learning rate") == ["0.0003"]
    assert column(tables.ablation_table(rows), "weight averaging (EMA)") == [
        "no", "momentum 0.998"]
    # ... and without weight averaging, which did not exist before the column.
    old = {k: v for k, v in rows[1].items() if k != "ema_momentum"}
    assert column(tables.ablation_table([old]), "weight averaging (EMA)") == ["no"]
    assert column(tables.ablation_table(rows), "mixup") == ["no", "alpha 0.4"]
    old = {k: v for k, v in rows[1].items() if k != "mixup"}
    assert column(tables.ablation_table([old]), "mixup") == ["no"]
    assert column(tables.ablation_table(rows), "train time (s)") == [
        "12", "not recorded"]
    summary["validation"]["accuracy"] = 0.75
    (runs[0] / "summary.json").write_text(json.dumps(summary))
    tables.main(["ablation", str(runs[0]), "--out", str(out), "--append"])
    rows = json.loads(out.read_text())
    assert [(r["run"], r["val_accuracy"]) for r in rows] == [("r0", 0.75), ("r1", 0.5)]


def test_models_table_gives_the_smear_bootstrap_interval_where_the_card_has_one(tmp_path):
    card = json.loads((ROOT / "saved_model" / "wbc4" / "model_card.json").read_text())
    test = card["metrics"]["test"]
    test["intervals"] = {"accuracy": [0.81234, 0.9], "macro_f1": [0.7, 0.91], "units": 70,
                         "resampled": "source smears"}
    card["metrics"] = {"test": test}
    folder = tmp_path / "wbc4"
    folder.mkdir()
    (folder / "model_card.json").write_text(json.dumps(card))
    (folder / "model.tflite").write_bytes(b"")
    row = tables.models_table(tmp_path)
    assert f"{test['accuracy']:.4f} (0.812-0.900, 70 source smears) | " in row
    assert f"| {test['macro_f1']:.4f} (0.700-0.910) | " in row
    test["per_source_smear"] |= {"errors_with_known_source": 198,
                                 "smears_wrong_in_every_image": 4, "errors_in_those_smears": 124}
    (folder / "model_card.json").write_text(json.dumps(card))
    assert "wrong in every image: 4 smears, 124 of the 198 errors of known-smear images" in (
        tables.models_table(tmp_path))
    del test["intervals"]  # cards written before intervals existed: the figure alone
    (folder / "model_card.json").write_text(json.dumps(card))
    assert f"{test['accuracy']:.4f} | " in tables.models_table(tmp_path)


def test_ablation_names_the_run_behind_a_served_model_folder_not_the_folder(tmp_path):
    # A folder such as saved_model/pbc8 is replaced when a better model is adopted; the run
    # its card names stays true of the weights a training run started from.
    folder = tmp_path / "pbc8"
    folder.mkdir()
    (folder / "model_card.json").write_text(json.dumps({"training": {
        "run_folder": "20261123-052941-mobilenetv2-224-pbc8-b11",
        "config": {"data": "../shared/data/pbc"}}}))
    assert (tables._init_label(str(folder / "model.keras"))
            == "HematoVision run 20261123-052941-mobilenetv2-224-pbc8-b11, trained on pbc")
    # A run started with --head weights: its summary's initialisation says so, and so does
    # the column.
    copied = "model.keras: 104 of 104 backbone layers copied by name [...]" + HEAD_COPIED
    assert (tables._init_label(str(folder / "model.keras"), copied)
            == "HematoVision run 20261123-052941-mobilenetv2-224-pbc8-b11, trained on pbc, "
               "its head too")
    # --head probe: from its config, whatever the initialisation text.
    assert (tables._init_label(str(folder / "model.keras"), "model.keras: ...", "probe")
            == "HematoVision run 20261123-052941-mobilenetv2-224-pbc8-b11, trained on pbc, "
               "head fitted as a linear probe first (LP-FT)")


def test_models_table_names_the_most_frequent_errors():
    matrix = [[5, 2, 0], [7, 9, 2], [0, 2, 4]]
    assert (tables._top_confusions(matrix, ["a", "b", "c"], top=2)
            == "most errors: b called a 7, a called b 2 (of 13)")
    assert tables._top_confusions([[3, 0], [0, 4]], ["a", "b"]) == "no errors"


def test_ablation_quotes_a_runs_out_of_fold_accuracy_and_the_served_models(tmp_path):
    from training.config import TrainConfig

    summary = {"initialisation": "random", "best_epoch": 1, "train_seconds": 5.0,
               "validation": {"accuracy": 0.5, "balanced_accuracy": 0.25}, "counts": {"val": 8}}
    crossfit = {"folds": 5, "images": 40, "groups": 10, "accuracy": 0.81234, "nll": 0.7,
                "per_fold": [{"fold": k, "accuracy": 0.8} for k in range(5)], "seconds": 1.0}
    for name in ("trial", "served-run"):
        run = tmp_path / name
        run.mkdir()
        TrainConfig(data="d").save(run / "config.json")
        (run / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "trial" / "crossfit.json").write_text(json.dumps(crossfit))
    trial, served = tables.collect_ablation([tmp_path / "trial", tmp_path / "served-run"])
    assert trial["out_of_fold"]["accuracy"] == 0.81234
    assert trial["out_of_fold"]["per_fold"] == [0.8] * 5
    assert "out_of_fold" not in served
    assert "by_views" not in trial["out_of_fold"]  # an older crossfit: one count only
    by_views = {"1": {"accuracy": 0.7, "nll": 0.9}, "8": {"accuracy": 0.83, "nll": 0.6}}
    (tmp_path / "trial" / "crossfit.json").write_text(json.dumps(crossfit | {"by_views": by_views}))
    assert tables.collect_ablation([tmp_path / "trial"])[0]["out_of_fold"]["by_views"] == by_views
    lines = tables.ablation_table(
        [trial, served], ("served-run", {"out_of_fold": {"accuracy": 0.7}})).splitlines()
    assert "| out-of-fold accuracy |" in lines[0]
    assert lines[2].endswith("| 0.8123 | 5 |") and lines[3].endswith("| 0.7000 | 5 |")
    assert tables.ablation_table([served]).splitlines()[2].endswith("| n/a | 5 |")
    # A crossfit whose fold models trained fixed epochs is marked, and says so in the record.
    fixed = ("every fold trained for the served model's 3 epochs and learning rates "
             "(held-out fold not looked at)")
    (tmp_path / "trial" / "crossfit.json").write_text(json.dumps(crossfit | {"stopping": fixed}))
    trial = tables.collect_ablation([tmp_path / "trial"])[0]
    assert trial["out_of_fold"]["stopping"] == fixed
    assert tables.ablation_table([trial]).splitlines()[2].endswith(
        "| 0.8123 (epochs fixed) | 5 |")
    early = crossfit | {"stopping": "early stopping on each held-out fold"}
    (tmp_path / "trial" / "crossfit.json").write_text(json.dumps(early))
    assert tables.ablation_table(tables.collect_ablation([tmp_path / "trial"])).splitlines()[
        2].endswith("| 0.8123 | 5 |")
    # Crossfits now record the mode by name; the table reads it, whatever the prose says.
    for mode, prose, mark in (("served-epochs", "fold models trained 3 epochs", " (epochs fixed)"),
                              ("held-out", "every fold stopped early", "")):
        (tmp_path / "trial" / "crossfit.json").write_text(
            json.dumps(crossfit | {"stopping_mode": mode, "stopping": prose}))
        trial = tables.collect_ablation([tmp_path / "trial"])[0]
        assert trial["out_of_fold"]["stopping_mode"] == mode
        assert tables.ablation_table([trial]).splitlines()[2].endswith(f"| 0.8123{mark} | 5 |")


def test_ablation_keeps_a_candidates_figures_as_served_from_its_scratch_export(tmp_path):
    """A candidate exported to a scratch folder and not adopted: its served validation figures
    (what the adoption rule read) stay in its row; the served model's come from its card."""
    from training.config import TrainConfig

    summary = {"initialisation": "random", "best_epoch": 1, "train_seconds": 5.0,
               "validation": {"accuracy": 0.5, "balanced_accuracy": 0.25}, "counts": {"val": 8}}
    for name in ("served-run", "candidate"):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        TrainConfig(data="d").save(run / "config.json")
        (run / "summary.json").write_text(json.dumps(summary))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    validation = {"n": 8, "accuracy": 0.875, "nll_before": 0.31, "nll_after": 0.3,
                  "ece_after": 0.05, "accepted_rate": 0.75, "not_a_cell_rate": 0.0}
    (scratch / "model_card.json").write_text(json.dumps({
        "test_time_augmentation": {"views": ["as is", "flipped left-right"]},
        "trust": {"temperature": 0.58, "validation": validation}}))
    out = tmp_path / "ablation.json"
    tables.main(["ablation", str(tmp_path / "runs" / "served-run"), str(tmp_path / "runs" /
                 "candidate"), "--out", str(out), "--exported", f"candidate={scratch}"])
    served, candidate = json.loads(out.read_text())
    assert candidate["served_validation"] == {
        "n": 8, "accuracy": 0.875, "nll_before": 0.31, "nll_after": 0.3, "ece_after": 0.05,
        "accepted_rate": 0.75, "not_a_cell_rate": 0.0, "temperature": 0.58, "views": 2}
    assert "served_validation" not in served
    lines = tables.ablation_table(
        [served, candidate], ("served-run", {"served_validation": {"accuracy": 0.9, "views": 4}})
    ).splitlines()
    assert lines[0].endswith("| val accuracy as served |")
    assert lines[2].endswith("| 0.9000 (4 views) |") and lines[3].endswith("| 0.8750 (2 views) |")
    # Without any kept export the column is left out (the wbc4 table).
    assert "as served" not in tables.ablation_table([served]).splitlines()[0]
    # The run may be named by the same path the positional arguments take.
    tables.main(["ablation", "--out", str(out), "--append", "--exported",
                 f"{tmp_path / 'runs' / 'candidate'}={scratch}"])
    assert json.loads(out.read_text())[1]["served_validation"]["accuracy"] == 0.875
    with pytest.raises(SystemExit, match="no row for run 'other'"):
        tables.main(["ablation", "--out", str(out), "--append", "--exported",
                     f"other={scratch}"])


def test_crossfit_table_shows_what_the_fitted_temperature_does_on_validation(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "model_card.json").write_text(json.dumps({"classes": ["a", "b"], "trust": {
        "temperature": 2.0, "validation": {"accuracy": 0.9, "nll_before": 0.19,
                                           "nll_after": 0.24, "ece_before": 0.03,
                                           "ece_after": 0.07}}}))
    (model / "crossfit.json").write_text(json.dumps(
        {"folds": 5, "images": 40, "groups": 10, "accuracy": 0.8, "nll": 0.7,
         "per_fold": [{"fold": k, "accuracy": 0.7 + k / 50} for k in range(5)]}))
    (model / "model.tflite").write_bytes(b"")  # listed as a model folder
    row = tables.crossfit_table(tmp_path).splitlines()[2]
    assert row.endswith("| n/a | 0.9000 | 2.0000 | 0.1900 -> 0.2400 | 0.0300 -> 0.0700 |")
    assert "| 0.7000 to 0.7800 |" in row
    (model / "splits.json").write_text(json.dumps(
        {"counts": {"train": 30, "val": 10}, "groups": {"train": 8, "val": 2}}))
    assert "| 0.7000 to 0.7800 | 10 (2) | 0.9000 |" in tables.crossfit_table(tmp_path)


def test_temperature_fits_table_adds_the_bias_corrected_fit_where_it_was_compared(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.tflite").write_bytes(b"")  # listed as a model folder
    (model / "model_card.json").write_text(json.dumps(
        {"classes": ["a", "b"], "trust": {"temperature_fit": "ece"}}))
    fit = {"temperature": [1.2, 1.3], "ece": [0.02, 0.04], "nll": [0.3, 0.5]}
    fits = {"folds": [0, 1], "nll": fit, "ece": fit}
    (model / "ece_spread.json").write_text(json.dumps({"temperature_fits_held_out": fits}))
    table = tables.temperature_fits_table(tmp_path)  # written before BCTS was compared
    assert column(table, "calibration fitted by") == ["lowest NLL", "lowest ECE"]
    assert column(table, "held-out accuracy, all folds") == ["n/a", "n/a"]
    assert column(table, "served") == ["no", "yes"]
    fits["bcts"] = fit | {"bias": [[0, 0.5], [0, 0.7]], "pooled": {"accuracy": 0.8123}}
    (model / "ece_spread.json").write_text(json.dumps({"temperature_fits_held_out": fits}))
    table = tables.temperature_fits_table(tmp_path)
    assert column(table, "calibration fitted by")[2].endswith("(BCTS)")
    assert column(table, "held-out accuracy, all folds")[2] == "0.8123"
    assert column(table, "served") == ["no", "yes", "no"]
    assert column(table, "mean held-out ECE")[2] == "0.0300"


def test_crossfit_table_scores_the_views_the_model_is_served_with(tmp_path):
    from training import crossfit, views

    model = tmp_path / "m"
    model.mkdir()
    (model / "model.tflite").write_bytes(b"")
    card = {"classes": ["a", "b"], "trust": {"temperature": 1.0, "validation": {}},
            "test_time_augmentation": {"views": list(views.VIEW_NAMES)}}  # serves 8
    (model / "model_card.json").write_text(json.dumps(card))
    labels, folds = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    view_logits = np.zeros((8, 4, 2), np.float32)
    view_logits[:4, :, 0] = 1.0  # the four flips say "a" for every image: half right
    view_logits[4:, :, 1] = 3.0  # the transposes outvote them for "b" ...
    view_logits[4:, 0, 1] = -3.0  # ... except on the first image: three of four right
    np.savez(model / crossfit.NPZ_FILE, files=np.array(list("wxyz")), labels=labels, folds=folds,
             logits=view_logits[:4].mean(axis=0), view_logits=view_logits)
    (model / crossfit.JSON_FILE).write_text(json.dumps(
        {"folds": 2, "images": 4, "groups": 4, "accuracy": 0.5, "test_time_augmentation": 4,
         "per_fold": [{"fold": 0, "accuracy": 0.5}, {"fold": 1, "accuracy": 0.5}]}))
    row = tables.crossfit_table(tmp_path).splitlines()[2]
    assert "| 4 | 8 | 0.7500 | 0.5000 to 1.0000 |" in row
    card["test_time_augmentation"] = {"views": list(views.VIEW_NAMES[:4])}  # serves 4
    (model / "model_card.json").write_text(json.dumps(card))
    assert "| 4 | 4 | 0.5000 | 0.5000 to 0.5000 |" in tables.crossfit_table(tmp_path)


def test_a_heat_map_cost_within_timing_noise_is_not_reported_as_a_cost():
    assert "no cost this benchmark can tell" in tables._heat_map_cost(0.92)
    assert "no cost this benchmark can tell" in tables._heat_map_cost(1.04)
    assert tables._heat_map_cost(1.3) == "1.3x the plain prediction, paid only when a map is asked for"


def test_benchmark_text_names_the_commit_model_and_load_it_was_measured_on(tmp_path):
    import json

    inference = json.loads((tables.BENCH_DIR / "inference.json").read_text())
    inference.update(commit="abc1234", model_exported="2026-12-01T06:00:00+0000",
                     measured="2026-12-01T07:00:00+0000", cpus=2, processor="x86_64",
                     load_average_1min_before=1.75)
    (tmp_path / "inference.json").write_text(json.dumps(inference))
    text = tables.benchmarks_text(tmp_path)
    assert ("Measured at commit `abc1234` on the model exported 2026-12-01T06:00:00+0000, "
            "2026-12-01T07:00:00+0000, 2 CPUs; 1-minute load average just before: 1.75.") in text
    # Results saved before provenance was recorded get no such line, not a KeyError.
    inference = {k: v for k, v in inference.items() if k != "commit"}
    (tmp_path / "inference.json").write_text(json.dumps(inference))
    assert "Measured at commit" not in tables.benchmarks_text(tmp_path)


def test_operating_points_table_pairs_the_held_out_and_the_test_figures(tmp_path):
    card = json.loads((ROOT / "saved_model" / "wbc4" / "model_card.json").read_text())
    card["trust"]["target_accuracy"] = 0.99
    card["trust"]["operating_points"] = [
        {"target_accuracy": 0.95, "confidence_threshold": 0.8123, "accepted_rate": 0.6,
         "accuracy_accepted": 0.9512},
        {"target_accuracy": 0.99, "confidence_threshold": 0.9861, "accepted_rate": 0.2,
         "accuracy_accepted": 0.9901}]
    test = card["metrics"]["test"]
    test["operating_points"] = [
        {"target_accuracy": 0.95, "confidence_threshold": 0.8123, "accepted_rate": 0.4567,
         "unidentified_rate": 0.5, "not_a_cell_rate": 0.0433, "accuracy_accepted": 0.9321},
        {"target_accuracy": 0.99, "confidence_threshold": 0.9861, "accepted_rate": 0.115,
         "unidentified_rate": 0.87, "not_a_cell_rate": 0.015, "accuracy_accepted": None}]
    card["metrics"] = {"test": test}
    folder = tmp_path / "wbc4"
    folder.mkdir()
    (folder / "model_card.json").write_text(json.dumps(card))
    (folder / "model.tflite").write_bytes(b"")
    rows = tables.operating_points_table(tmp_path).splitlines()[2:]
    assert rows == [
        f"| `wbc4` | 95% | 0.812 | 60.0% (0.9512) | test, n={test['n']} | 45.7% | 0.9321 |",
        f"| `wbc4` | 99% (served) | 0.986 | 20.0% (0.9901) | test, n={test['n']} | 11.5% | n/a |"]
    assert tables.operating_points_summary(tmp_path) == (
        "- `wbc4` on test: accuracy on accepted at or above the target at 0 of 2 targets; below "
        "it at 95% (by 1.8 points); none accepted at 99%.")
    # Refitted since (another threshold for a target): the table refuses stale test figures.
    card["metrics"]["test"]["operating_points"][0]["confidence_threshold"] = 0.8
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(SystemExit, match="measured at another threshold for the 95% target"):
        tables.operating_points_table(tmp_path)


def test_splits_table_counts_images_and_groups_from_each_models_split_file(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_card.json").write_text("{}")
        (tmp_path / name / "model.tflite").write_bytes(b"")
    (tmp_path / "a" / "splits.json").write_text(json.dumps({
        "root": "../shared/data/kaggle_blood_cells/train",
        "counts": {"train": 3792, "val": 667, "test": 0, "unassigned": 5388,
                   "excluded_groups": 2, "extra_train": 0},
        "groups": {"train": 217, "val": 39, "test": 0}}))
    (tmp_path / "b" / "splits.json").write_text(json.dumps({"root": "d", "train": ["x.jpg"]}))
    lines = tables.splits_table(tmp_path).splitlines()
    assert len(lines) == 3  # "b"'s split file predates the counts: no row
    assert lines[2] == ("| `a` | kaggle_blood_cells/train | 3,792 (217 groups) | 667 (39 groups) "
                        "| 0 | 5,388 | 2 |")


def test_benchmark_text_names_the_views_and_says_nothing_of_them_for_one(tmp_path):
    r = json.loads((tables.BENCH_DIR / "inference.json").read_text())
    for recorded, said in ((8, "eight views: the four flips and their transposes"),
                           (True, "four flipped views"), (1, None), (False, None)):
        (tmp_path / "inference.json").write_text(json.dumps(r | {"test_time_augmentation":
                                                                recorded}))
        text = tables.benchmarks_text(tmp_path)
        if said:
            assert f"Test-time augmentation ({said} per image)" in text, recorded
        else:
            assert "Test-time augmentation" not in text, recorded


def test_probe_table_gives_each_initialisations_figures_at_every_l2(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model_card.json").write_text("{}")
    (tmp_path / "a" / "model.tflite").write_bytes(b"")
    assert tables.probe_table(tmp_path) == ""  # no probe: no table
    figures = {"0.01": {"accuracy": 0.8, "nll": 0.6, "per_fold": [0.7, 0.9]},
               "0.1": {"accuracy": 0.75, "nll": 0.5, "per_fold": [0.8, 0.7]}}
    (tmp_path / "a" / "probe.json").write_text(json.dumps({
        "layer": "block_13_project_BN", "views": 4, "l2": [0.01, 0.1], "crop": "nucleus",
        "probes": [{"weights": "weights/a.h5", "features": 160,  # written before rows had crops
                    "by_l2": figures, "seconds": 301.4},
                   {"weights": "weights/a.h5", "crop": "nucleus:0.4", "features": 160,
                    "by_l2": figures, "seconds": 290.0}]}))
    table = tables.probe_table(tmp_path)
    assert column(table, "L2 0.01: accuracy (NLL)") == ["0.8000 (0.6000)"] * 2
    assert column(table, "L2 0.1: accuracy (NLL)") == ["0.7500 (0.5000)"] * 2
    assert column(table, "accuracy per fold (best L2)") == ["0.700, 0.900"] * 2  # at 0.01
    assert column(table, "layer (channels), views") == ["block_13_project_BN (160), 4"] * 2
    assert column(table, "time (s)") == ["301", "290"]
    assert column(table, "initialisation (`--weights`)") == ["`weights/a.h5`"] * 2
    assert column(table, "crop") == ["nucleus", "nucleus:0.4"]


def test_benchmarks_text_reports_each_storage_result(tmp_path):
    result = {"model_dir": "saved_model/wbc4", "total_bytes": 22_700_000, "budget_bytes": 30 * 10**6,
              "within_budget": True, "trust_file_measured": True,
              "files": {"model.keras": 9_639_016, "model.tflite": 8_910_916,
                        "trust.npz": 3_452_767, "splits.json": 287_940},
              "whitening": {"whole": 6_790_000, "packed": 3_400_000, "layers": 6, "widest": 1280},
              "float16_weights": {"images": 256, "parameters": 2_400_000,
                                  "bytes_saved_per_model_file": 4_800_000,
                                  "all weights": {"max_abs_probability_change": 0.08,
                                                  "mean_abs_probability_change": 0.0036,
                                                  "top_class_changes": 2},
                                  "kernels only": {"max_abs_probability_change": 0.09,
                                                   "mean_abs_probability_change": 0.0046,
                                                   "top_class_changes": 1}}}
    (tmp_path / "storage.json").write_text(json.dumps(result))
    trial = {**result, "model_dir": "/tmp/models/ens", "total_bytes": 45_000_000,
             "within_budget": False}
    del trial["float16_weights"]
    (tmp_path / "storage-trial.json").write_text(json.dumps(trial))
    text = tables.benchmarks_text(tmp_path)
    assert ("python benchmarks/bench_storage.py --model-dir saved_model/wbc4 --json > "
            "benchmarks/results/storage.json") in text
    assert ("Storage of `saved_model/wbc4`: 22.7 MB against the ~30.0 MB budget (within it); "
            "`model.keras` 9.6 MB, `model.tflite` 8.9 MB, `trust.npz` 3.5 MB.") in text
    assert "6 whitening matrices (widest 1280) take 3.4 MB as packed lower triangles, 6.8 MB whole" in text
    assert ("all weights: up to 0.08, mean 0.0036, top class changed on 2; kernels only: up to "
            "0.09, mean 0.0046, top class changed on 1), so the weights stay float32.") in text
    assert text.index("storage.json") < text.index("storage-trial.json")  # served one first
    assert "--model-dir /tmp/models/ens --images 0 --json > benchmarks/results/storage-trial.json" in text
    assert "45.0 MB against the ~30.0 MB budget (over it)" in text


def test_training_time_table_reads_the_cards_and_the_crossfit():
    table = tables.training_time_table()
    card = json.loads((ROOT / "saved_model" / "wbc4" / "model_card.json").read_text())
    crossfit_json = json.loads((ROOT / "saved_model" / "wbc4" / "crossfit.json").read_text())
    [row] = [r for r in table.splitlines() if r.startswith("| `wbc4`")]
    assert f"{card['training']['train_seconds']:,.0f} s" in row
    assert f"{crossfit_json['seconds']:,.0f} s" in row and "5 fold models" in row
    [row] = [r for r in table.splitlines() if r.startswith("| `pbc8`")]
    assert row.endswith("| n/a |")  # no crossfit was run for pbc8


def test_white_cell_rule_table_gives_the_pool_each_test_set_and_the_red_cell_fields(tmp_path):
    def figures(images, rate, set_aside, before, after):
        return {"images": images, "rate": rate, "accuracy": 0.45, "set_aside": set_aside,
                "set_aside_right": 1, "accuracy_accepted_without_rule": before,
                "accuracy_accepted": after}

    folder = tmp_path / "wbc4"
    folder.mkdir()
    (folder / "model.tflite").write_bytes(b"")
    (folder / "model_card.json").write_text(json.dumps({"metrics": {
        "test": {"n": 100, "no_white_cell": figures(3, 0.03, 2, 0.98, 0.99)},
        "other": {"n": 50}}}))  # recorded before the rule: no row
    (folder / "fields_check.json").write_text(json.dumps({
        "white_cell_rule_out_of_fold": {"pool": {"images": 400, "groups": 20, "views": 4},
                                        **figures(4, 0.01, 0, 0.99, 0.99)},
        "red_cells_only": {"fields": 10, "with_a_white_cell_found": 1,
                           "accepted_without_white_cell_rule": 2}}))
    rows = tables.white_cell_rule_table(tmp_path).splitlines()[2:]
    assert rows == [
        "| `wbc4` | out of fold, 400 images of 20 smears (the rule was judged here) | 4 (1.0%) "
        "| 45.0% | 0 (1) | 0.9900 -> 0.9900 |",
        "| `wbc4` | test, n=100 | 3 (3.0%) | 45.0% | 2 (1) | 0.9800 -> 0.9900 |",
        "| `wbc4` | fields of red cells only, 10 | 9 | n/a (no white cell) | 2 (0) | n/a |"]


def test_flags_table_gives_each_scenarios_detected_and_false_flag_rates():
    table = tables.flags_table()
    card = json.loads((ROOT / "saved_model" / "wbc4" / "model_card.json").read_text())
    scenarios = card["metrics"]["flags"]["scenarios"]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert set(scenarios) <= set(rows)
    accepted = column(table, "`wbc4`: accepted only")
    names = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    normal = scenarios["normal adult"]["ways"]["accepted only"]
    assert accepted[names.index("normal adult")] == f"— / {normal['false_flag']:.1%}"
    raised = scenarios["eosinophilia"]["ways"]["accepted only"]
    assert accepted[names.index("eosinophilia")] == (
        f"{raised['detected']:.1%} / {raised['false_flag']:.1%}")
    # wbc4 has no basophils: its cells in that row are empty.
    assert accepted[names.index("basophilia")] == ""


def test_review_order_table_gives_each_share_checked_and_what_each_order_found():
    table = tables.review_order_table()
    card = json.loads((ROOT / "saved_model" / "wbc4" / "model_card.json").read_text())
    recorded = card["metrics"]["review_order"]
    header = table.splitlines()[0]
    assert (f"`wbc4` ({recorded['accepted_per_film']:g} accepted, "
            f"{recorded['wrong_per_film']:g} wrong): cells") in header
    rows, sentence = table.split("\n\n")
    shares = [line.split("|")[1].strip() for line in rows.splitlines()[2:]]
    row = recorded["fractions"][1]
    at = shares.index(f"{row['fraction']:.0%}")
    assert column(rows, "`wbc4`: least sure first")[at] == f"{row['found_least_sure']:.1%}"
    assert column(rows, "`wbc4`: each class least sure (cells)")[at] == (
        f"{row['by_class']['found']:.1%} ({row['by_class']['checked_per_film']:g})")
    marked = recorded["near_threshold"]
    assert (f"`wbc4` {marked['checked_per_film']:g} a film, holding {marked['found']:.1%} of "
            "the wrongly accepted ones") in sentence


def test_benchmarks_text_gives_each_load_run_single_images_first_and_each_call_size(tmp_path):
    single = json.loads((tables.BENCH_DIR / "load.json").read_text())
    batches = {**single, "requests": 8, "concurrency": 4, "images_per_request": 100,
               "workers": [{"pid": 1, "rss_mib": 201.4, "peak_rss_mib": 410.2}]}
    (tmp_path / "load-100-images.json").write_text(json.dumps(batches))
    (tmp_path / "load.json").write_text(json.dumps(single))
    chunk = json.loads((tables.BENCH_DIR / "chunk-wbc4.json").read_text())
    (tmp_path / "chunk-wbc4.json").write_text(json.dumps(chunk))
    text = tables.benchmarks_text(tmp_path)
    assert text.index("single-image `POST /api/predict`") < text.index(
        "8 100-image `POST /api/predict` requests from 4 concurrent clients")
    assert ("--images-per-request 100 --warmup 0 --json > benchmarks/results/"
            "load-100-images.json") in text
    assert "worker RSS 201 MiB (peak 410 MiB)." in text
    served = next(c for c in chunk["candidates"]
                  if c["views_per_call"] == chunk["served_views_per_call"])
    assert (f"| {served['views_per_call']} (served) | {served['images_per_call']} | "
            f"{served['images_per_second']:.1f} | {served['peak_rss_mib']:.0f} MiB") in text


def test_the_magnification_table_gives_each_models_training_resolution(tmp_path,
                                                                       tiny_model_dir):
    from tests.web_helpers import make_models_root

    check = {"n": 10, "rows": [{"name": "as recorded", "median_ratio": 1.0,
                                "single_outside": 0.02, "batches_outside": 0.01}]}
    entry = {"red_cell_scale": 0.149, "single_image_range": [0.78, 2.61],
             "batch_range": [0.8333, 1.25], "min_batch_images": 5,
             "reference": {"images": 1500}, "check": check}
    make_models_root(tmp_path, tiny_model_dir, names=("a",),
                     card={"magnification": {**entry, "max_short_side": 240}})
    make_models_root(tmp_path, tiny_model_dir, names=("b",), card={"magnification": entry})
    row = next(line for line in tables.magnification_table(tmp_path).splitlines()
               if "largest short side" in line)
    assert row == ("| training images' largest short side (finer images are brought down to "
                   "it) | 240 px | | | not recorded | | |")


def test_the_resolution_table_reads_the_fields_check(tmp_path, tiny_model_dir):
    from tests.web_helpers import make_models_root

    counts = {"cells": 10, "accepted": 6, "unidentified": 3, "not_a_cell": 1}
    result = {"resolution": {"smears": 4, "sizes": {"640x480": 4}, "short_side": 240,
                             "served": counts, "full_resolution": {**counts, "accepted": 0,
                                                                   "not_a_cell": 7}}}
    make_models_root(tmp_path, tiny_model_dir, names=("a",),
                     files={"fields_check.json": json.dumps(result).encode()})
    assert tables.resolution_table(tmp_path).splitlines()[2:] == [
        "| `a` | 4 (all 640x480) | as served: brought down to 240 px | 10 | 6 | 3 | 1 |",
        "| `a` | 4 (all 640x480) | at full resolution (before) | 10 | 0 | 3 | 7 |"]
