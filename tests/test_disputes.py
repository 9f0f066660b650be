"""The label audit: groups whose given label the out-of-fold models dispute."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CELL_COLORS, CLASSES, make_image
from training import crossfit, disputes
from training.config import TrainConfig


@pytest.fixture
def audited(tmp_path):
    """A run-like folder: an ImageFolder whose identical files form source groups, its
    config and a crossfit whose logits doubt one group's label and accept the others."""
    data = tmp_path / "data"
    files = []
    for name, color in zip(CLASSES, CELL_COLORS):
        first = make_image(data / name / "a.jpg", color)
        shutil.copy(first, data / name / "b.jpg")  # same bytes: one group of two
        make_image(data / name / "c.jpg", (color[0], color[1], 255 - color[2]))
        files += [f"{name}/a.jpg", f"{name}/b.jpg", f"{name}/c.jpg"]
    folder = tmp_path / "run"
    folder.mkdir()
    TrainConfig(data=str(data), source_map="none", field_notes="none").save(
        folder / "config.json")
    labels = np.array([CLASSES.index(f.split("/")[0]) for f in files])
    logits = np.full((8, len(files), 4), -2.0, dtype=np.float32)
    logits[:, np.arange(len(files)), labels] = 2.0
    # The eosinophil group a+b: both images called neutrophil, one firmly, one barely.
    logits[:, 0, [0, 3]] = [-2.0, 2.0]
    logits[:, 1, [0, 3]] = [0.0, 0.5]
    # The lymphocyte's c.jpg, alone in its group: doubted, but above a 0.3 share.
    logits[:, 5, [1, 2]] = [1.0, 1.2]
    np.savez_compressed(folder / crossfit.NPZ_FILE, files=np.array(files), labels=labels,
                        folds=np.arange(len(files)) % 2, logits=logits[:4].mean(axis=0),
                        view_logits=logits)
    (folder / crossfit.JSON_FILE).write_text(json.dumps({
        "folds": 2, "images": len(files), "test_time_augmentation": 4,
        "accuracy": 0.0, "nll": 0.0, "per_fold": []}))
    return folder


def softmax_row(z):
    e = np.exp(np.asarray(z, dtype=np.float64) - max(z))
    return e / e.sum()


def test_a_group_is_disputed_by_its_mean_probability_of_its_own_label(audited):
    report = disputes.disputes(audited)

    eos_a = softmax_row([-2.0, -2.0, -2.0, 2.0])
    eos_b = softmax_row([0.0, -2.0, -2.0, 0.5])
    assert report["groups"] == 8 and report["images"] == 12
    assert report["disputed_groups"] == 1 and report["disputed_images"] == 2
    [entry] = report["disputed"]
    assert entry["label"] == "eosinophil" and entry["called"] == "neutrophil"
    assert entry["files"] == ["eosinophil/a.jpg", "eosinophil/b.jpg"]
    assert entry["p_label"] == round((eos_a[0] + eos_b[0]) / 2, 4)
    assert entry["p_called"] == round((eos_a[3] + eos_b[3]) / 2, 4)
    assert report["files"] == ["eosinophil/a.jpg", "eosinophil/b.jpg"]
    assert report["by_label"] == {"eosinophil": 1, "lymphocyte": 0, "monocyte": 0,
                                  "neutrophil": 0}
    assert report["below"] == 0.3 and report["views"] == 4

    # Raising the bar takes in the lymphocyte image the models only half accept, after it.
    lymph = softmax_row([-2.0, 1.0, 1.2, -2.0])[1]
    looser = disputes.disputes(audited, below=0.5)
    assert [e["files"] for e in looser["disputed"]] == [
        ["eosinophil/a.jpg", "eosinophil/b.jpg"], ["lymphocyte/c.jpg"]]
    assert looser["disputed"][1]["p_label"] == round(lymph, 4)


def test_the_cli_writes_the_report_and_a_contact_sheet_of_the_disputed_cells(audited, tmp_path,
                                                                            capsys):
    out, sheet = tmp_path / "audit" / "disputes.json", tmp_path / "audit" / "sheet.png"
    disputes.main([str(audited), "--out", str(out), "--sheet", str(sheet)])
    assert json.loads(out.read_text())["disputed_groups"] == 1
    assert "1 of 8 groups (2 of 12 images)" in capsys.readouterr().err
    with Image.open(sheet) as image:
        assert image.size == (6 * 224, 224 + 28)
        # The disputed group's first image, as the model sees it, in the first cell.
        assert image.getpixel((112, 112)) != (255, 255, 255)


def test_a_folder_without_a_crossfit_or_with_other_data_is_refused(audited, tmp_path):
    (audited / crossfit.JSON_FILE).rename(tmp_path / "kept.json")
    with pytest.raises(SystemExit, match="has no crossfit: run python -m training.crossfit"):
        disputes.disputes(audited)
    (tmp_path / "kept.json").rename(audited / crossfit.JSON_FILE)
    other = tmp_path / "other"
    make_image(other / "eosinophil" / "x.jpg", CELL_COLORS[0])
    make_image(other / "neutrophil" / "y.jpg", CELL_COLORS[3])
    with pytest.raises(SystemExit, match="12 images of .* are not in .*pass the data"):
        disputes.disputes(audited, data=str(other))
    with pytest.raises(SystemExit, match="--below must be in"):
        disputes.disputes(audited, below=0)
