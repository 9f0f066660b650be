"""Model folders' files are written whole: a process loading the folder meanwhile reads the old
file or the new one."""

import os

import pytest

from hematovision.card import replace_file


def test_a_file_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path, monkeypatch):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"old")
    replace_file(target, b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["model.tflite"]

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        replace_file(target, b"newer")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["model.tflite"]
