"""training.robustness: each change does what it says, and the figures are the served model's."""

import colorsys
import json

import numpy as np
import pytest
from PIL import Image

from hematovision.card import recorded_evaluations
from hematovision.predictor import Predictor
from hematovision.preprocess import load_image
from tests.conftest import CLASSES
from training import robustness, tables
from training.robustness import PERTURBATIONS, evaluate_robustness, hue, zoom


def test_zoom_in_enlarges_the_centre_and_keeps_the_frame():
    array = np.zeros((80, 100, 3), np.uint8)
    array[30:50, 40:60] = 255  # a 20 x 20 square in the centre
    out = np.asarray(zoom(2.0)(Image.fromarray(array)))
    assert out.shape == array.shape
    white = out[..., 0] > 127
    assert 1500 <= white.sum() <= 1700  # four times the area: 40 x 40
    rows, cols = np.nonzero(white)
    assert abs(rows.mean() - 39.5) < 1 and abs(cols.mean() - 49.5) < 1  # still centred


def test_zoom_out_shrinks_into_the_centre_and_mirrors_the_edges():
    array = np.zeros((80, 100, 3), np.uint8)
    array[:, :50] = 255  # left half white
    out = np.asarray(zoom(0.5)(Image.fromarray(array)))
    assert out.shape == array.shape
    # The shrunk image sits in the centre: its left half white, right half black...
    assert out[40, 30:45, 0].min() > 200 and out[40, 55:70, 0].max() < 50
    # ...and the frame is filled by mirroring it, not by a border colour: left of the shrunk
    # image the mirror of its white left half, right of it the mirror of its black right half.
    assert out[40, 0:20, 0].min() > 200 and out[40, 80:, 0].max() < 50


@pytest.mark.parametrize("degrees, expected", [(15, 15), (-15, 345)])
def test_hue_turns_the_colour_wheel(degrees, expected):
    r, g, b = hue(degrees)(Image.new("RGB", (4, 4), (255, 0, 0))).getpixel((0, 0))
    turned = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)[0] * 360
    assert abs(turned - expected) < 1.5  # PIL's hue has 256 steps


def test_every_change_keeps_size_and_mode_and_the_baseline_changes_nothing():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8))
    for name, (description, change) in PERTURBATIONS.items():
        out = change(image)
        assert out.size == image.size and out.mode == "RGB", name
        assert description, name
        changed = np.abs(np.asarray(out, np.int16) - np.asarray(image, np.int16)).mean()
        assert (changed == 0) == (name == robustness.BASELINE), name


def test_figures_are_the_served_models_and_statuses_add_up(trusted_model_dir, image_folder):
    result = evaluate_robustness(trusted_model_dir, image_folder, progress=False)
    rows = {r["name"]: r for r in result["perturbations"]}
    assert list(rows) == list(PERTURBATIONS) and result["n"] == 24
    # The baseline is the served model on the images as they are.
    predictor = Predictor(trusted_model_dir)
    files = sorted(image_folder.glob("*/*.jpg"))
    predictions = predictor.predict_images([load_image(f) for f in files])
    right = [p.label == f.parent.name for p, f in zip(predictions, files)]
    assert rows["as recorded"]["accuracy"] == round(float(np.mean(right)), 4)
    for row in rows.values():
        shares = row["accepted_rate"] + row["unidentified_rate"] + row["not_a_cell_rate"]
        assert shares == pytest.approx(1, abs=2e-4) and 0 <= row["accuracy"] <= 1


def test_only_some_changes_and_classes_the_model_lacks_left_out(trusted_model_dir, image_folder):
    from tests.conftest import make_image

    make_image(image_folder / "basophil" / "b.jpg", (20, 20, 20))
    result = evaluate_robustness(trusted_model_dir, image_folder, names=["blur 2 px"],
                                 progress=False)
    assert [r["name"] for r in result["perturbations"]] == ["as recorded", "blur 2 px"]
    assert result["n"] == 24  # the basophil is not one of the model's classes
    for name in CLASSES:
        (image_folder / name).rename(image_folder.parent / f"gone-{name}")
    with pytest.raises(SystemExit, match="No image .* belongs to a class"):
        evaluate_robustness(trusted_model_dir, image_folder, progress=False)


def test_record_stores_every_change_in_the_card_and_refuses_a_partial_run(
        tmp_path, trusted_model_dir, image_folder, capsys):
    import shutil

    model_dir = tmp_path / "trusted"
    shutil.copytree(trusted_model_dir, model_dir)
    with pytest.raises(SystemExit, match="without --only"):  # nothing recorded to replace in
        robustness.main(["--model-dir", str(model_dir), "--data", str(image_folder), "--record",
                         "--only", "zoom 1.5x"])
    robustness.main(["--model-dir", str(model_dir), "--data", str(image_folder), "--record"])
    card = json.loads((model_dir / "model_card.json").read_text())
    recorded = card["metrics"]["robustness"]

    # --only replaces those rows, the rest as recorded, where the baseline scores the same.
    def stale(figures: dict) -> None:
        figures["perturbations"][3]["accuracy"] = -1.0
    edited = json.loads((model_dir / "model_card.json").read_text())
    stale(edited["metrics"]["robustness"])
    (model_dir / "model_card.json").write_text(json.dumps(edited))
    robustness.main(["--model-dir", str(model_dir), "--data", str(image_folder), "--record",
                     "--only", recorded["perturbations"][3]["name"]])
    again = json.loads((model_dir / "model_card.json").read_text())["metrics"]["robustness"]
    assert again == recorded
    edited["metrics"]["robustness"]["perturbations"][0]["accuracy"] = -1.0  # another path
    (model_dir / "model_card.json").write_text(json.dumps(edited))
    with pytest.raises(SystemExit, match="score otherwise"):
        robustness.main(["--model-dir", str(model_dir), "--data", str(image_folder), "--record",
                         "--only", "zoom 1.5x"])
    card["metrics"]["robustness"] = recorded
    (model_dir / "model_card.json").write_text(json.dumps(card))
    assert "robustness" not in recorded_evaluations(card)  # not a test set of its own
    assert [r["name"] for r in recorded["perturbations"]] == list(PERTURBATIONS)
    assert "as recorded" in capsys.readouterr().out

    table = tables.robustness_table(tmp_path)
    assert len(table.splitlines()) == 2 + len(PERTURBATIONS)
    assert "| `trusted` (n=24): accuracy |" in table.splitlines()[0]
    first = recorded["perturbations"][0]
    assert table.splitlines()[2].startswith(
        f"| as recorded | the images unchanged (baseline) | {first['accuracy']:.4f} | "
        f"{first['accepted_rate']:.1%} (")


@pytest.mark.parametrize("command", ["robustness", "unfamiliar", "magnification"])
def test_an_unusable_model_folder_stops_with_a_message_not_a_traceback(command, tmp_path,
                                                                       image_folder):
    import importlib

    module = importlib.import_module(f"training.{command}")
    args = ["--model-dir", str(tmp_path / "nope")] + (
        ["--data", str(image_folder)] if command != "unfamiliar" else [])
    with pytest.raises(SystemExit, match="(?s)No model card at .*available models"):
        module.main(args)


def crop_model_measuring(root, trusted_model_dir, ratio: float):
    """A copy of the trusted tiny model that crops to the nucleus, with a magnification
    reference by which the 30-pixel red cells of `make_smear` read `ratio` times their size."""
    from hematovision.magnification import red_cell_scale
    from tests.conftest import make_smear
    from tests.web_helpers import make_models_root

    card = json.loads((trusted_model_dir / "model_card.json").read_text())
    reference = {"red_cell_scale": red_cell_scale(make_smear(30)) / ratio,
                 "single_image_range": [0.8, 1.3], "batch_range": [0.8333, 1.25]}
    make_models_root(root, trusted_model_dir, names=("crop",), card={
        "preprocessing": {**card["preprocessing"], "crop": "nucleus"},
        "magnification": reference})
    return root / "crop"


def smear_folder(folder):
    from tests.conftest import make_smear, with_nuclei

    for k, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            with_nuclei(make_smear(30, seed=10 * k + i), [(160, 120, 25)]).save(
                folder / name / f"{i}.png")
    return folder


def test_correcting_batches_reads_a_batch_outside_the_range_at_its_median_ratio(
        tmp_path, trusted_model_dir, monkeypatch):
    """12 images in batches of 5: the two full batches are judged (the last, of 2, is too
    small) and, at 1.6 times the reference, read at their median ratio; within the range,
    none is, and the corrected figures are the plain ones."""
    data = smear_folder(tmp_path / "data")
    scales = []
    read = Predictor.predict_images

    def spy(self, images, scale=1.0):
        scales.append((len(images), scale))
        return read(self, images, scale)

    monkeypatch.setattr(Predictor, "predict_images", spy)
    far = evaluate_robustness(crop_model_measuring(tmp_path / "far", trusted_model_dir, 1.6),
                              data, names=[], progress=False, correct_batches=5)
    [row] = far["perturbations"]
    assert row["corrected"]["batches"] == 3 and row["corrected"]["batches_judged"] == 2
    assert row["corrected"]["batches_corrected"] == 2
    assert row["corrected"]["corrected_median_ratios"] == pytest.approx([1.6, 1.6], abs=0.1)
    corrected = [s for n, s in scales if s != 1.0]
    assert len(corrected) == 2 and [n for n, s in scales if s != 1.0] == [5, 5]
    assert corrected == pytest.approx([1.6, 1.6], abs=0.1)

    scales.clear()
    near = evaluate_robustness(crop_model_measuring(tmp_path / "near", trusted_model_dir, 1.0),
                               data, names=[], progress=False, correct_batches=5)
    [row] = near["perturbations"]
    assert row["corrected"]["batches_corrected"] == 0 and {s for _, s in scales} == {1.0}
    assert row["corrected"]["batches_judged"] == 2
    assert {k: v for k, v in row["corrected"].items() if "batches" not in k
            and k != "corrected_median_ratios"} == {
        k: row[k] for k in ("accuracy", "accepted_rate", "unidentified_rate",
                            "not_a_cell_rate", "accuracy_accepted")}


def test_correcting_batches_needs_a_reference_and_a_nucleus_crop(trusted_model_dir,
                                                                   image_folder):
    with pytest.raises(SystemExit, match="nothing to correct"):
        evaluate_robustness(trusted_model_dir, image_folder, progress=False, correct_batches=5)
