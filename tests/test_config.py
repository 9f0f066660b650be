"""The training config: every option documented once, and saved runs reloaded as they ran."""

import json
import math
from dataclasses import fields
from types import SimpleNamespace

import pytest

from training import train
from training.config import TrainConfig


def test_every_option_has_its_comment_as_help_text(capsys):
    texts = TrainConfig.help()
    assert set(texts) == {f.name for f in fields(TrainConfig)}
    assert texts["patience"] == "epochs without validation-loss improvement before stopping"
    # a comment continued on the next line belongs to the option above it
    assert texts["unassigned"].endswith("never next to validation) | drop")
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--tune-from-block TUNE_FROM_BLOCK MobileNetV2 blocks from here to 16" in shown
    assert "(default: 'auto')" in shown


def test_a_run_saved_before_an_option_existed_loads_as_it_ran(tmp_path):
    path = tmp_path / "config.json"
    TrainConfig(data="d", views=6).save(path)
    saved = json.loads(path.read_text())
    assert saved["field_notes"] == "auto"
    del saved["field_notes"]
    saved["retired_option"] = 1  # options since removed are ignored
    path.write_text(json.dumps(saved))
    loaded = TrainConfig.load(path)
    assert loaded.field_notes == "none" and loaded.views == 6


def test_options_of_a_few_words_refuse_a_typo(capsys):
    for option, typo, phrase in (("--unassigned", "dropp", "invalid choice"),
                                 ("--crop", "nuclues", "unknown crop 'nuclues'"),
                                 ("--crop", "nucleus:0.05", "F from 0.2 to 1")):
        with pytest.raises(SystemExit):
            train.parse_args(["--data", "d", option, typo])
        assert phrase in capsys.readouterr().err
    assert train.parse_args(["--data", "d", "--unassigned", "drop"])[0].unassigned == "drop"
    assert train.parse_args(["--data", "d", "--crop", "nucleus:0.45"])[0].crop == "nucleus:0.45"


@pytest.mark.parametrize("option, value, phrase", [
    ("--views", "0", "views must be at least 1"),
    ("--epochs", "0", "epochs must be at least 1"),
    ("--batch-size", "0", "batch_size must be at least 1"),
    ("--val-fraction", "1.5", "val_fraction must be in (0, 1)"),
    ("--val-fraction", "0", "val_fraction must be in (0, 1)"),
    ("--test-fraction", "0.9", "val_fraction + test_fraction must be below 1"),
    ("--max-per-class", "-1", "max_per_class must be 0 (all) or more"),
    ("--tune-from-block", "1", "tune_from_block must be within 2..16"),
    ("--dropout", "1.5", "dropout must be in [0, 1)"),
    ("--input-size", "16", "input_size must be at least 32"),
    # inf passed "above 0" and started a run; a NaN was refused without saying why
    ("--learning-rate", "inf", "learning_rate must be a finite number, not inf"),
    ("--weight-decay", "inf", "weight_decay must be a finite number, not inf"),
    ("--mixup", "inf", "mixup must be a finite number, not inf"),
    ("--learning-rate", "nan", "learning_rate must be a finite number, not nan"),
])
def test_out_of_range_options_are_refused_before_anything_runs(capsys, option, value, phrase):
    """Keras reads batch size 0 as its default, a fraction over 1 empties the training split,
    --max-per-class -1 dropped each class's last image: each ran on and exited 0, or crashed."""
    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--data", "d", option, value])
    assert stop.value.code == 2 and phrase in capsys.readouterr().err
    assert TrainConfig().problems() == []
    with pytest.raises(SystemExit, match="cannot train: views must be at least 1"):
        train.train(TrainConfig(data="d", views=0))


def test_weights_auto_is_the_fetched_imagenet_backbone_or_a_stop_that_says_how_to_get_it(
        tmp_path, monkeypatch):
    from training import model

    assert TrainConfig().weights == "auto"
    monkeypatch.setattr(model, "DEFAULT_WEIGHTS", tmp_path / "weights" / "backbone.h5")
    with pytest.raises(SystemExit, match="python -m training.pretrained --out weights"):
        model.resolve_weights("auto")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "backbone.h5").write_bytes(b"h5")
    assert model.resolve_weights("auto") == str(tmp_path / "weights" / "backbone.h5")
    assert model.resolve_weights("none") == "none"
    assert model.resolve_weights("runs/x/model.keras") == "runs/x/model.keras"


def test_a_run_records_the_weights_file_auto_chose(tmp_path, monkeypatch, image_folder):
    """The run folder says which file initialised it, not "auto" (which depends on the day's
    weights/ folder); without the file the run stops before it makes a folder."""
    from training import model

    monkeypatch.setattr(model, "DEFAULT_WEIGHTS", tmp_path / "absent.h5")
    config = TrainConfig(data=str(image_folder), out=str(tmp_path / "runs"), val_fraction=0.25)
    with pytest.raises(SystemExit, match="absent.h5"):
        train.train(config)
    assert not (tmp_path / "runs").exists()

    (tmp_path / "backbone.h5").write_bytes(b"h5")
    monkeypatch.setattr(model, "DEFAULT_WEIGHTS", tmp_path / "backbone.h5")

    built, saved = [], []
    monkeypatch.setattr(train, "Classifier", lambda *args: built.append(args[3])
                        or SimpleNamespace(initialisation="stub"))

    def read_config_then_stop(*args):  # the run folder exists here, with its config
        [config_file] = (tmp_path / "runs").glob("*/config.json")
        saved.append(json.loads(config_file.read_text())["weights"])
        raise RuntimeError("stop")

    monkeypatch.setattr(train, "CachedViews", read_config_then_stop)
    with pytest.raises(RuntimeError, match="stop"):
        train.train(config)
    assert built == saved == [str(tmp_path / "backbone.h5")]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_number_option_must_be_finite(value):
    """A non-finite number trains on NaN weights or stops deep in Keras; every option that
    takes a real number (an option added later too) is refused, naming it."""
    numbers = [f.name for f in fields(TrainConfig) if isinstance(f.default, float)]
    assert {"learning_rate", "weight_decay", "mixup", "dropout"} <= set(numbers)
    for name in numbers:
        problems = TrainConfig(data="d", **{name: value}).problems()
        assert problems[0] == f"{name} must be a finite number, not {value}"
