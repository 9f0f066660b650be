import json
import struct
from pathlib import Path

import pytest

from hematovision.predict import main
from hematovision.predictor import Predictor
from tests.conftest import CLASSES, make_image
from tests.web_helpers import (CRASHING_SIZE, crash_decoder_on, make_models_root,
                               spread_operating_points)


def test_json_lines_for_a_folder_with_an_unreadable_file(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    make_image(folder / "a.jpg", (200, 60, 60))
    make_image(folder / "sub" / "b.png", (60, 60, 200), fmt="PNG")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")

    code = main([str(folder), "--json", "--model-dir", str(tiny_model_dir)])

    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [line["file"] for line in lines] == [
        str(folder / "a.jpg"), str(folder / "broken.jpg"), str(folder / "sub" / "b.png")]
    good = lines[0]
    assert set(good) == {"file", "label", "status", "confidence", "probabilities", "candidates",
                         "scores"}
    assert list(good["probabilities"]) == CLASSES
    assert good["status"] == "accepted"  # the tiny model has no trust layer: nothing is flagged
    assert [c["label"] for c in good["candidates"]][0] == good["label"]
    assert len(good["candidates"]) == 2
    assert good["label"] in CLASSES and 0 < good["confidence"] <= 1
    assert set(lines[1]) == {"file", "error"}
    assert "damaged or truncated" in lines[1]["error"]
    assert "3/3 images" in err  # progress on stderr
    assert "1 of 3 files could not be classified" in err
    labels = [lines[0]["label"], lines[2]["label"]]  # most common first, ties in file order
    accepted = (f"{labels[0]} 2" if labels[0] == labels[1] else
                ", ".join(f"{label} 1" for label in labels))
    assert err.rstrip().endswith("2 results: 2 accepted, 0 unidentified (needs review), 0 not a "
                                 f"cell; accepted as {accepted}")


def test_missing_file_is_an_error_line_and_the_run_continues(tiny_model_dir, tmp_path, capsys):
    good = make_image(tmp_path / "a.jpg", (10, 200, 10))
    main([str(tmp_path / "missing.jpg"), str(good), "--json", "--quiet",
          "--model-dir", str(tiny_model_dir)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "Cannot read the file" in lines[0]["error"]
    assert lines[1]["label"] in CLASSES


def test_plain_output_is_tab_separated(tiny_model_dir, tmp_path, capsys):
    path = make_image(tmp_path / "a.jpg", (10, 200, 10))
    main([str(path), "--quiet", "--model-dir", str(tiny_model_dir)])
    file, label, confidence, status = capsys.readouterr().out.strip().split("\t")
    assert file == str(path) and label in CLASSES and 0 < float(confidence) <= 1
    assert status == "accepted"  # the tiny model has no trust layer: nothing is flagged


def test_every_file_of_a_run_longer_than_a_batch_gets_its_own_result(tiny_model_dir, tmp_path,
                                                                     capsys):
    """Files are decoded a batch ahead of the model (batch.decoded_chunks): each line must
    still be its own file's answer, across batch boundaries."""
    from hematovision.batch import BATCH_SIZE

    paths = [make_image(tmp_path / "cells" / f"{i:02d}.jpg", (40 + 5 * i, 200 - 4 * i, 90))
             for i in range(BATCH_SIZE + 8)]
    main([str(tmp_path / "cells"), "--json", "--quiet", "--model-dir", str(tiny_model_dir)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(p) for p in paths]
    predictor = Predictor(tiny_model_dir)
    for path, line in zip(paths, lines):
        assert line["probabilities"] == pytest.approx(predictor.predict(path).probabilities,
                                                      abs=1e-6), path.name
    distinct = {tuple(round(p, 4) for p in line["probabilities"].values()) for line in lines}
    assert len(distinct) == len(paths)  # so a line given another file's answer would show


def test_the_model_cards_crop_is_applied_by_the_cli_and_evaluation(tiny_model_dir, tmp_path,
                                                                    capsys):
    """The default model crops on the nucleus; the command line and the evaluation path
    (batch.forward_files, also used to fit the trust layer) must crop as the web path does."""
    from hematovision.batch import forward_files
    from hematovision.preprocess import load_image, to_input
    from hematovision.trust import softmax

    root = make_models_root(tmp_path / "m", tiny_model_dir,
                            card={"preprocessing": {"crop": "nucleus"}})
    path = make_image(tmp_path / "field.jpg", (90, 40, 160), size=(320, 240))  # a violet nucleus
    predictor = Predictor(root / "tiny")
    assert predictor.crop == "nucleus"
    cropped = predictor.predict(path).probabilities
    uncropped = predictor.predict_images_arrays([to_input(load_image(path), 224)])[0]
    assert cropped != pytest.approx(uncropped.probabilities, abs=1e-6)

    main([str(path), "--json", "--quiet", "--model-dir", str(root / "tiny")])
    assert json.loads(capsys.readouterr().out)["probabilities"] == pytest.approx(cropped, abs=1e-6)
    outputs, readable = forward_files(predictor, [path])
    assert readable == [True]
    assert softmax(outputs.logits)[0].tolist() == pytest.approx(list(cropped.values()), abs=1e-6)


def test_exit_status_says_whether_anything_was_classified(tiny_model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 nope")
    good = make_image(tmp_path / "a.jpg", (10, 200, 10))
    model = ["--quiet", "--model-dir", str(tiny_model_dir)]
    assert main([str(broken), str(good), *model]) == 0  # some classified
    assert main([str(broken), *model]) == 1  # nothing could be classified
    assert "1 of 1 files could not be classified" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), *model]) == 2
    assert "error: no image files found" in capsys.readouterr().err


def test_unknown_model_exits_2_and_lists_models(tmp_path, capsys):
    path = make_image(tmp_path / "a.jpg", (10, 200, 10))
    assert main([str(path), "--model", "no-such-model"]) == 2
    assert "available models" in capsys.readouterr().err


def test_json_lines_carry_the_fitted_trust_layer(trusted_model_dir, tmp_path, capsys):
    path = make_image(tmp_path / "a.jpg", (200, 60, 60))
    main([str(path), "--json", "--quiet", "--model-dir", str(trusted_model_dir)])
    line = json.loads(capsys.readouterr().out)
    expected = Predictor(trusted_model_dir).predict(path)  # the library's answer, tested there
    card = json.loads((trusted_model_dir / "model_card.json").read_text())["trust"]
    assert line["status"] == expected.status
    assert line["scores"] == pytest.approx(expected.scores, rel=1e-6)
    # Scores are shown to 3 decimals.
    assert line["scores"]["unfamiliarity_threshold"] == pytest.approx(card["ood"]["threshold"],
                                                                      abs=5e-4)
    assert line["scores"]["confidence_threshold"] == pytest.approx(card["confidence_threshold"],
                                                                   abs=5e-4)
    assert line["scores"]["unfamiliarity"] > 0


def test_accuracy_target_sets_the_threshold_from_the_cards_operating_points(
        trusted_model_dir, tmp_path, capsys):
    path = make_image(tmp_path / "a.jpg", (200, 60, 60))
    folder = make_models_root(tmp_path / "m", trusted_model_dir, names=("trusted",)) / "trusted"
    points = spread_operating_points(folder)  # two targets, two thresholds
    for point in points:
        main([str(path), "--json", "--quiet", "--model-dir", str(folder),
              "--accuracy-target", str(point["target_accuracy"])])
        line = json.loads(capsys.readouterr().out)
        assert line["scores"]["confidence_threshold"] == point["confidence_threshold"]


def test_an_accuracy_target_above_1_exits_2_with_the_reason(trusted_model_dir, tmp_path, capsys):
    path = make_image(tmp_path / "a.jpg", (200, 60, 60))
    with pytest.raises(SystemExit) as stop:  # refused before any model is loaded
        main([str(path), "--model-dir", str(trusted_model_dir), "--accuracy-target", "99"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--accuracy-target: An accuracy target is a share" in err
    assert "greater than 0 and at most 1 (e.g. 0.95), not 99.0" in err


@pytest.mark.parametrize("exc,reason", [
    (struct.error("unpack requires a buffer of 4 bytes"), "unpack requires a buffer of 4 bytes"),
    (IndexError("list index out of range"), "list index out of range"),
    (ZeroDivisionError(), "ZeroDivisionError"),  # no text: the type names the failure
    (SyntaxError("not a TIFF file"), "not a TIFF file"),
])
def test_a_decoder_crash_is_an_error_line_and_the_run_continues(tiny_model_dir, tmp_path, capsys,
                                                               monkeypatch, exc, reason):
    bad = make_image(tmp_path / "a.png", (200, 60, 60), size=CRASHING_SIZE, fmt="PNG")
    good = make_image(tmp_path / "b.jpg", (60, 60, 200))
    crash_decoder_on(monkeypatch, exc)

    code = main([str(bad), str(good), "--json", "--quiet", "--model-dir", str(tiny_model_dir)])

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert lines[0] == {"file": str(bad), "error": f"The image is damaged or truncated ({reason})."}
    assert lines[1]["file"] == str(good) and lines[1]["label"] in CLASSES


def test_hidden_files_in_a_folder_are_passed_over(tiny_model_dir, tmp_path, capsys):
    """macOS leaves "._name" metadata files beside copied images, and __MACOSX/ in archives."""
    good = make_image(tmp_path / "cells" / "a.jpg", (10, 200, 10))
    (tmp_path / "cells" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")
    make_image(tmp_path / "cells" / "__MACOSX" / "a.jpg", (10, 200, 10))
    main([str(tmp_path / "cells"), "--json", "--quiet", "--model-dir", str(tiny_model_dir)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(good)]


def test_linked_folders_are_searched_once_without_looping(tmp_path):
    """A class folder that gathers others by symlink: Python 3.11's rglob skipped them, so
    their images were silently never classified or trained on."""
    from hematovision.batch import image_files

    inside = make_image(tmp_path / "elsewhere" / "b.jpg", (10, 200, 10))
    own = make_image(tmp_path / "cells" / "a.jpg", (10, 200, 10))
    (tmp_path / "cells" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "back").symlink_to(tmp_path / "cells", target_is_directory=True)
    found = image_files(tmp_path / "cells")
    assert found == [own, tmp_path / "cells" / "linked" / "b.jpg"]
    assert found[1].resolve() == inside.resolve()


def test_a_reader_that_stops_early_ends_the_run_quietly(tiny_model_dir, tmp_path):
    """`predict ... --json | head -1` must not end in a BrokenPipeError traceback."""
    import subprocess
    import sys

    for i in range(400):
        make_image(tmp_path / "many" / f"{i:03d}.png", (i % 256, 60, 200), size=(8, 8), fmt="PNG")
    process = subprocess.Popen(
        [sys.executable, "-m", "hematovision.predict", str(tmp_path / "many"), "--json",
         "--quiet", "--model-dir", str(tiny_model_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = json.loads(process.stdout.readline())
    process.stdout.close()  # as `head -1` does: the next writes fail with EPIPE
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1
    assert first["file"].endswith("000.png") and "Traceback" not in err


def test_json_lines_carry_the_red_cell_ratio_where_the_card_has_a_reference(
        tiny_model_dir, tmp_path, capsys):
    from hematovision.magnification import red_cell_scale
    from tests.conftest import make_smear

    reference = {"red_cell_scale": red_cell_scale(make_smear(30)),
                 "single_image_range": [0.8, 1.3], "batch_range": [0.8333, 1.25]}
    root = make_models_root(tmp_path / "models", tiny_model_dir, names=("measuring",),
                            card={"magnification": reference})
    make_smear(45).save(tmp_path / "large.png")
    make_smear(45).point(lambda _: 230).save(tmp_path / "blank.png")  # nothing to measure
    for model_dir, expected in ((root / "measuring", True), (tiny_model_dir, False)):
        main([str(tmp_path / "large.png"), str(tmp_path / "blank.png"), "--json",
              "--model-dir", str(model_dir)])
        large, blank = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert ("red_cell_ratio" in large) == expected
        if expected:
            assert large["red_cell_ratio"] == pytest.approx(1.5, abs=0.1)
            assert blank["red_cell_ratio"] is None


def test_each_cell_reads_a_field_cell_by_cell_for_a_model_that_crops_to_the_nucleus(
        tiny_model_dir, tmp_path, capsys):
    from tests.conftest import make_smear, with_nuclei

    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    root = make_models_root(tmp_path / "models", tiny_model_dir, names=("cropping",),
                            card={"preprocessing": {**card["preprocessing"], "crop": "nucleus"}})
    field = tmp_path / "field.png"
    with_nuclei(make_smear(30, seed=1), [(80, 120, 22), (240, 110, 22)]).save(field)
    single = make_image(tmp_path / "single.jpg", (200, 60, 60))
    model = ["--model-dir", str(root / "cropping"), "--quiet"]

    main([str(field), str(single), "--json", "--each-cell", *model])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(Path(line["file"]).name, line.get("cell", {}).get("number")) for line in lines] == [
        ("field.png", 1), ("field.png", 2), ("single.jpg", None)]
    assert list(lines[0])[:3] == ["file", "cell", "label"]
    assert [line["white_cells"] for line in lines] == [2, 2, 0]  # the red disc holds no nucleus
    # No trust layer: every answer is accepted, except about an image with no white cell.
    assert [line["status"] for line in lines] == ["accepted", "accepted", "unidentified"]
    main([str(field), str(single), "--json", "--each-cell", "--model-dir", str(root / "cropping")])
    err = capsys.readouterr().err.rstrip()
    assert "3 results: 2 accepted, 1 unidentified (needs review), 0 not a cell" in err
    assert err.endswith("; no white cell found in 1")
    assert lines[0]["cell"]["of"] == 2 and lines[0]["cell"]["centre"][0] < 0.5

    main([str(field), "--each-cell", *model])
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == [f"{field} (cell 1 of 2)",
                                                     f"{field} (cell 2 of 2)"]

    main([str(field), "--json", *model])  # without --each-cell: one line per file
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "cell" not in line and line["white_cells"] == 2
