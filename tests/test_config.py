"""The training config: every option documented once, and saved runs reloaded as they ran."""

import json
from dataclasses import fields

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
