import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hematovision.predict import main
from hematovision.predictor import Predictor
from hematovision.differential import flag_text
from tests.conftest import CELL_COLORS, CLASSES, make_image
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


def test_model_names_are_looked_up_where_the_app_serves_them_from(tiny_model_dir, tmp_path,
                                                                 capsys, monkeypatch):
    """HEMATOVISION_MODELS_ROOT, the app's models folder, names it for --model too: a
    researcher serving their own models folder classifies with the same names."""
    root = make_models_root(tmp_path / "mine", tiny_model_dir, names=("mycells",))
    path = make_image(tmp_path / "a.jpg", (10, 200, 10))
    monkeypatch.setenv("HEMATOVISION_MODELS_ROOT", str(root))
    assert main([str(path), "--json", "--quiet", "--model", "mycells"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in CLASSES
    assert main([str(path), "--model", "wbc4"]) == 2  # not in that folder
    assert "available models: mycells" in capsys.readouterr().err


def test_json_lines_carry_the_fitted_trust_layer(trusted_model_dir, tmp_path, capsys):
    path = make_image(tmp_path / "a.jpg", (200, 60, 60))
    main([str(path), "--json", "--quiet", "--model-dir", str(trusted_model_dir)])
    line = json.loads(capsys.readouterr().out)
    expected = Predictor(trusted_model_dir).predict(path)  # the library's answer, tested there
    card = json.loads((trusted_model_dir / "model_card.json").read_text())["trust"]
    assert line["status"] == expected.status
    band = line["scores"].pop("held_out_band")  # counts of images: exact
    assert band == expected.scores.pop("held_out_band")
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


def test_what_bears_an_image_s_name_but_cannot_be_read_is_named_with_its_reason(
        tiny_model_dir, tmp_path, capsys):
    """A broken link, a link loop and a named pipe in a folder were once left out without a
    word; a pipe given by name waited for a writer for ever. Each is now a line saying why."""
    import os

    film = tmp_path / "film"
    good = make_image(film / "cell.jpg", (200, 60, 60))
    (film / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (film / "loop.jpg").symlink_to(film / "loop.jpg")
    os.mkfifo(film / "pipe.png")
    code = main([str(film), str(film / "pipe.png"), "--json", "--quiet",
                 "--model-dir", str(tiny_model_dir)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and lines[0]["file"] == str(good) and "label" in lines[0]
    assert [(line["file"], line["error"]) for line in lines[1:]] == [
        (str(film / "dangling.jpg"), "Cannot read the file (No such file or directory)."),
        (str(film / "loop.jpg"), "Cannot read the file (Too many levels of symbolic links)."),
        (str(film / "pipe.png"), "Not a regular file (a pipe, socket or device): there is "
                                 "no image to read.")]  # given twice: read once


def test_a_file_name_that_is_not_utf_8_is_printed_escaped_where_the_terminal_is_strict(
        tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    folder = tmp_path / "cells"
    make_image(folder / "a.jpg", (200, 60, 60))
    os.rename(folder / "a.jpg", os.fsencode(folder) + b"/caf\xe9.jpg")  # Latin-1, from Windows
    run = subprocess.run(
        [sys.executable, "-m", "hematovision.predict", str(folder), "--quiet",
         "--model-dir", str(tiny_model_dir)], capture_output=True, timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"})  # strict, as en_US.UTF-8 is
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().startswith(f"{folder}/caf\\udce9.jpg\t")


def test_an_image_given_twice_is_read_and_counted_once(tiny_model_dir, tmp_path, capsys):
    film = tmp_path / "film"
    first = make_image(film / "a.jpg", (200, 60, 60))
    make_image(film / "b.jpg", (60, 60, 200))
    (tmp_path / "link.jpg").symlink_to(first)
    args = ["--quiet", "--json", "--model-dir", str(tiny_model_dir)]
    main([str(film), str(first), str(film), str(tmp_path / "link.jpg"), *args])
    files = [json.loads(line)["file"] for line in capsys.readouterr().out.splitlines()]
    assert files == [str(film / "a.jpg"), str(film / "b.jpg")]
    main([str(film), str(first), *args, "--differential"])
    assert json.loads(capsys.readouterr().out)["differential"]["white_cells"] == 2


def test_a_reader_that_stops_early_ends_the_run_quietly(tiny_model_dir, tmp_path):
    """`predict ... --json | head -1` must not end in a BrokenPipeError traceback."""
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


def cropping_model_and_field(tiny_model_dir: Path, tmp_path: Path, **card_entries
                             ) -> tuple[Path, Path]:
    """The tiny model as one that crops to the nucleus ("cropping"; `card_entries` added to its
    card), and a smear field holding two white cells."""
    from tests.conftest import make_smear, with_nuclei

    card = json.loads((tiny_model_dir / "model_card.json").read_text())
    root = make_models_root(tmp_path / "models", tiny_model_dir, names=("cropping",), card={
        "preprocessing": {**card["preprocessing"], "crop": "nucleus"}, **card_entries})
    field = tmp_path / "field.png"
    with_nuclei(make_smear(30, seed=1), [(80, 120, 22), (240, 110, 22)]).save(field)
    return root / "cropping", field


def test_each_cell_reads_a_field_cell_by_cell_for_a_model_that_crops_to_the_nucleus(
        tiny_model_dir, tmp_path, capsys):
    cropping, field = cropping_model_and_field(tiny_model_dir, tmp_path)
    single = make_image(tmp_path / "single.jpg", (200, 60, 60))
    model = ["--model-dir", str(cropping), "--quiet"]

    main([str(field), str(single), "--json", "--each-cell", *model])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(Path(line["file"]).name, line.get("cell", {}).get("number")) for line in lines] == [
        ("field.png", 1), ("field.png", 2), ("single.jpg", None)]
    assert list(lines[0])[:3] == ["file", "cell", "label"]
    assert [line["white_cells"] for line in lines] == [2, 2, 0]  # the red disc holds no nucleus
    # No trust layer: every answer is accepted, except about an image with no white cell.
    assert [line["status"] for line in lines] == ["accepted", "accepted", "unidentified"]
    main([str(field), str(single), "--json", "--each-cell", "--model-dir", str(cropping)])
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


def differential_run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().out


def test_the_differential_counts_the_accepted_cells_the_lines_name(tiny_model_dir, tmp_path,
                                                                    capsys):
    from hematovision.differential import differential, differential_json

    folder = tmp_path / "film"
    for i, color in enumerate([*CELL_COLORS, *CELL_COLORS[:2]]):
        make_image(folder / f"cell{i}.jpg", color)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    model = [str(folder), "--quiet", "--model-dir", str(tiny_model_dir)]
    main([*model, "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    code, out = differential_run([*model, "--differential", "--json"], capsys)
    report = json.loads(out)  # one object, not one line per image
    assert code == 0 and out.count("\n") == 1
    assert (report["model"], report["files"], report["unreadable"]) == ("tiny", 7, 1)
    assert report["statuses"] == {"accepted": 6, "unidentified": 0, "not_a_cell": 0}
    # The library's count of the lines' results, as the batch page and the API count them.
    assert report["differential"] == differential_json(differential(lines, CLASSES))
    counts = {s["class"]: s["count"] for s in report["differential"]["shares"]}
    assert counts == {c: sum(line.get("label") == c for line in lines) for c in CLASSES}

    code, out = differential_run([*model, "--differential"], capsys)
    assert out.splitlines()[0] == ("Differential of 6 white cells counted by tiny from 7 files "
                                   "(the cells the model accepted)")
    rows = {row.split()[0]: row.split() for row in out.splitlines()[2:6]}
    for share in differential(lines, CLASSES).shares:
        row = rows[share.name.capitalize()]
        assert row[1:5] == [str(share.count), f"{share.percent:.1f}",
                            f"{share.low:.1f}-{share.high:.1f}",
                            f"{share.reference[0]:g}-{share.reference[1]:g}"]
        assert row[5:] == ([flag_text(share.flag)] if share.flag else [])
    assert "Not counted: 1 unreadable." in out
    assert "Only 6 white cells counted: a manual differential counts 100" in out
    assert "Flags: high / low, outside the reference interval beyond counting error" in out
    assert "the cell-type catalog's (a lab sets its own with" in out


def test_the_differential_counts_each_cell_of_a_field_and_holds_flags_for_review(
        tiny_model_dir, tmp_path, capsys):
    cropping, field = cropping_model_and_field(tiny_model_dir, tmp_path)
    single = make_image(tmp_path / "single.jpg", (200, 60, 60))  # no nucleus: unidentified
    model = [str(field), str(single), "--quiet", "--model-dir", str(cropping)]

    code, out = differential_run([*model, "--differential", "--json"], capsys)
    report = json.loads(out)
    assert report["statuses"] == {"accepted": 2, "unidentified": 1, "not_a_cell": 0}
    assert report["differential"]["white_cells"] == 2  # both cells of the field
    assert report["differential"]["awaiting_review"] == 1
    assert all(s["outside"] is None for s in report["differential"]["shares"])
    code, out = differential_run([*model, "--differential"], capsys)
    assert "Not counted: 1 unidentified (needs review)." in out
    assert ("No figure is flagged while 1 unidentified cell awaits review" in
            " ".join(out.split()))
    assert "Flags: high / low" not in out

    code, out = differential_run([str(single), *model[2:], "--differential"], capsys)
    assert code == 0 and out.splitlines()[:3] == [
        "Differential of 0 white cells counted by cropping from 1 file (the cells the model "
        "accepted)", "", "Not counted: 1 unidentified (needs review)."]
    assert "No white cell was counted, so there is no differential." in out


def test_while_cells_await_review_the_differential_says_how_far_they_were_measured_to_lean(
        tiny_model_dir, tmp_path, capsys):
    from tests.test_web_review import differential_figures

    served = Predictor(tiny_model_dir).trust.confidence_threshold
    for threshold, said in ((served, True), (served + 0.001, False)):  # measured elsewhere
        cropping, field = cropping_model_and_field(
            tiny_model_dir, tmp_path / str(said),
            metrics={"differential": differential_figures(11.0, threshold)})
        single = make_image(tmp_path / "single.jpg", (200, 60, 60))  # no nucleus: unidentified
        code, out = differential_run([str(field), str(single), "--quiet", "--differential",
                                      "--model-dir", str(cropping)], capsys)
        out = " ".join(out.split())
        assert "No figure is flagged while 1 unidentified cell awaits review" in out
        assert ("the cells the model is sure of lean towards some classes: on batches of 100 "
                "cells drawn from cropping's test images as a normal adult differential, the "
                "accepted cells alone read neutrophil 21.5 points low and lymphocyte 20.0 points "
                "high on average (each share 11.0 points off), and 0.2 points once the "
                "unidentified cells were reviewed. Review them") in out if said else (
            "lean towards some classes. Review them in the web app") in out


def test_given_the_total_count_the_differential_is_also_per_litre(tiny_model_dir, tmp_path,
                                                                   capsys):
    from hematovision.differential import differential

    folder = tmp_path / "film"
    for i, color in enumerate(CELL_COLORS):
        make_image(folder / f"cell{i}.jpg", color)
    model = [str(folder), "--quiet", "--model-dir", str(tiny_model_dir), "--differential"]
    main([str(folder), "--quiet", "--json", "--model-dir", str(tiny_model_dir)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = differential(lines, CLASSES, white_cells_per_litre=6.5)

    code, out = differential_run([*model, "--json", "--wbc", "6,5"], capsys)  # decimal comma
    counted = json.loads(out)["differential"]
    assert counted["white_cells_per_litre"] == 6.5
    assert [s["absolute"]["value"] for s in counted["shares"]] == [
        s.absolute.value for s in expected.shares]
    # No class of nucleated red cells in this model: nothing to correct the count for.
    code, out = differential_run([*model, "--json", "--wbc", "6.5", "--wbc-includes-nrbc"],
                                 capsys)
    assert json.loads(out)["differential"]["white_cells_per_litre"] == 6.5
    assert "uncorrected_white_cells_per_litre" not in json.loads(out)["differential"]

    code, out = differential_run([*model, "--wbc", "6.5"], capsys)
    table = out.split("Per litre, of 6.50 x 10^9 white cells per litre:\n")[1].splitlines()
    assert table[0].split() == ["class", "x", "10^9/L", "95", "%", "range", "reference", "flag"]
    assert [row.split()[1] for row in table[1:5]] == [f"{s.absolute.value:.2f}"
                                                      for s in expected.shares]


def test_a_lab_s_intervals_come_from_the_app_s_settings(tiny_model_dir, tmp_path, capsys,
                                                        monkeypatch):
    path = make_image(tmp_path / "a.jpg", (200, 60, 60))
    model = [str(path), "--quiet", "--model-dir", str(tiny_model_dir), "--differential"]
    monkeypatch.setenv("HEMATOVISION_REFERENCE_INTERVALS", '{"neutrophil": [10, 20]}')
    code, out = differential_run([*model, "--json"], capsys)
    shares = {s["class"]: s for s in json.loads(out)["differential"]["shares"]}
    assert shares["neutrophil"]["reference"] == [10, 20]
    assert shares["monocyte"]["reference"] == [2, 8]  # the catalog's, not named by the lab
    code, out = differential_run(model, capsys)
    assert "this lab's where set" in out

    monkeypatch.setenv("HEMATOVISION_REFERENCE_INTERVALS", '{"neutrophil": [80, 40]}')
    with pytest.raises(SystemExit) as stop:
        main(model)
    assert stop.value.code == 2
    assert ("the environment variable HEMATOVISION_REFERENCE_INTERVALS: 'neutrophil': [80, 40] "
            "is not an interval" in capsys.readouterr().err)
    # Nested past the JSON parser's depth: read as typed, and refused as not a mapping.
    monkeypatch.setenv("HEMATOVISION_REFERENCE_INTERVALS", "[" * 5000)
    with pytest.raises(SystemExit) as stop:
        main(model)
    assert stop.value.code == 2
    assert ("HEMATOVISION_REFERENCE_INTERVALS: it must map class names to [low, high] in "
            "percent, such as" in capsys.readouterr().err)


def test_each_path_is_a_film_of_its_own_with_its_differential(tiny_model_dir, tmp_path,
                                                               capsys):
    slides = tmp_path / "slides"
    for slide, colors in (("s1", CELL_COLORS), ("s2", CELL_COLORS[:2])):
        for i, color in enumerate(colors):
            make_image(slides / slide / f"cell{i}.jpg", color)
    (slides / "empty").mkdir()
    model = ["--quiet", "--model-dir", str(tiny_model_dir), "--differential"]
    alone = {}
    for slide in ("s1", "s2"):
        main([str(slides / slide), *model, "--json"])
        alone[slide] = json.loads(capsys.readouterr().out)
    paths = [str(slides / name) for name in ("s1", "empty", "s2")]
    assert main([*paths, *model, "--json", "--each-path"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["path"] for line in lines] == [paths[0], paths[2]]
    assert list(lines[0])[0] == "path"
    for line, slide in zip(lines, ("s1", "s2")):  # each as if counted alone
        assert {k: v for k, v in line.items() if k != "path"} == alone[slide]
    assert f"{paths[1]}: no image files found" in captured.err
    main([*paths, *model, "--each-path"])
    out = capsys.readouterr().out
    assert out.startswith(f"{paths[0]}\nDifferential of 4 white cells counted by tiny from 4 "
                          "files")
    assert f"{paths[2]}\nDifferential of 2 white cells counted by tiny from 2 files" in out
    pooled = json.loads(differential_run([*paths, *model, "--json"], capsys)[1])
    assert pooled["files"] == 6 and pooled["differential"]["white_cells"] == 6


def test_a_differential_names_each_file_it_could_not_read_and_a_film_it_could_not_count(
        tiny_model_dir, tmp_path, capsys):
    slides = tmp_path / "slides"
    make_image(slides / "s1" / "cell.jpg", CELL_COLORS[0])
    (slides / "s1" / "text.jpg").write_text("not an image")
    (slides / "s2").mkdir()
    (slides / "s2" / "empty.png").write_bytes(b"")
    paths = [str(slides / "s1"), str(slides / "s2")]
    code = main([*paths, "--quiet", "--model-dir", str(tiny_model_dir), "--differential",
                 "--json", "--each-path"])
    captured = capsys.readouterr()
    assert code == 0 and [json.loads(line)["path"] for line in captured.out.splitlines()] == [
        paths[0]]
    assert (f"{slides / 's1' / 'text.jpg'}: The file is not an image in a format we can read."
            in captured.err)
    assert f"{slides / 's2' / 'empty.png'}: The file is empty." in captured.err
    assert (f"{paths[1]}: no differential, as none of 1 file could be read"
            in captured.err)


@pytest.mark.parametrize("args, message", [
    (["--wbc", "6.5"], "--each-path, --wbc and --wbc-includes-nrbc are for --differential"),
    (["--each-path"], "--each-path, --wbc and --wbc-includes-nrbc are for --differential"),
    (["--differential", "--each-path", "--wbc", "6"], "--wbc is one film's count"),
    (["--differential", "--wbc-includes-nrbc"], "--wbc-includes-nrbc needs --wbc"),
    (["--differential", "--wbc", "6500"], "The white-cell count must be a number of 10^9"),
    (["--differential", "--wbc", "many"], "'many' is not"),
    (["--differential", "--wbc", " "], "--wbc needs the count, such as 6.5"),
])
def test_a_white_cell_count_without_a_differential_or_not_a_count_exits_2(
        tiny_model_dir, tmp_path, capsys, args, message):
    path = make_image(tmp_path / "a.jpg", (200, 60, 60))
    with pytest.raises(SystemExit) as stop:  # refused before any model is loaded
        main([str(path), "--model-dir", str(tiny_model_dir), *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_results_that_cannot_be_written_end_the_run_with_one_line(tiny_model_dir, tmp_path):
    """Output to a full disk ends with a message and status 1, not an OSError traceback."""
    make_image(tmp_path / "a.png", CELL_COLORS[0], size=(8, 8), fmt="PNG")
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "hematovision.predict", str(tmp_path / "a.png"), "--json",
             "--quiet", "--model-dir", str(tiny_model_dir)],
            stdout=full, stderr=subprocess.PIPE, timeout=120)
    assert result.returncode == 1
    assert result.stderr.decode().endswith(
        "error: cannot write the results (No space left on device)\n")


def test_a_run_without_standard_output_stops_before_classifying(tiny_model_dir, tmp_path):
    """Started with stdout closed (`>&-`), Python prints nowhere: the run must say so and
    exit 2 rather than classify for nobody and then fail with a traceback."""
    make_image(tmp_path / "a.png", CELL_COLORS[0], size=(8, 8), fmt="PNG")
    result = subprocess.run(
        [sys.executable, "-m", "hematovision.predict", str(tmp_path / "a.png"), "--model-dir",
         str(tiny_model_dir)],
        preexec_fn=lambda: os.close(1), stderr=subprocess.PIPE, timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in err
    assert err.endswith("error: standard output is closed: nothing to write the results to\n")


def test_progress_is_one_line_at_the_end_where_stderr_is_no_terminal(tiny_model_dir, tmp_path,
                                                                     capsys):
    """Rewritten in place with carriage returns, progress in a log file is one long line."""
    for i in range(3):
        make_image(tmp_path / f"{i}.png", CELL_COLORS[i], size=(8, 8), fmt="PNG")
    main([str(tmp_path), "--model-dir", str(tiny_model_dir)])
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line for line in err.splitlines() if " images (" in line] == [
        line for line in err.splitlines() if line.startswith("3/3 images (")]
    assert sum(line.startswith("3/3 images (") for line in err.splitlines()) == 1


def test_the_differential_holds_its_flags_while_a_not_a_cell_image_may_hide_a_white_cell(
        tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Four lymphocytes and an image called not a blood-cell image where the white-cell finder
    found one: the batch page, report, CSV and API hold every flag; the command had flagged
    'Lymphocyte 100.0 % high?' and said no such image in its JSON."""
    from PIL import Image

    from hematovision import predict
    from hematovision.batch import FileResult
    from hematovision.predictor import Prediction
    from hematovision.trust import ACCEPTED, NOT_A_CELL
    from hematovision.web.results import served_differential

    film = tmp_path / "film"
    film.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8), (200, 60, 60)).save(film / f"{i}.jpg")
    probabilities = {c: 0.97 if c == "lymphocyte" else 0.01 for c in CLASSES}

    def results(paths):
        return [FileResult(Path(p), Prediction("lymphocyte", 0.97, probabilities,
                                               NOT_A_CELL if i == len(paths) - 1 else ACCEPTED))
                for i, p in enumerate(paths)]

    monkeypatch.setattr(predict, "classify_files", lambda model, paths, **_: iter(results(paths)))
    main([str(film), "--differential", "--json", "--quiet", "--model-dir", str(tiny_model_dir)])
    found = json.loads(capsys.readouterr().out)["differential"]
    web = served_differential([r.to_dict() for r in results(sorted(film.iterdir()))], CLASSES,
                              {"REFERENCE_INTERVALS": None, "ABSOLUTE_REFERENCE_INTERVALS": None})
    assert found["not_a_cell_unreviewed"] == web.images_unseen == 1
    assert {s["outside"] for s in found["shares"]} == {None}
    main([str(film), "--differential", "--quiet", "--model-dir", str(tiny_model_dir)])
    said = " ".join(capsys.readouterr().out.split())
    assert ("No figure is flagged while 1 image or cell called not a blood-cell image may hold "
            "a white cell missing from every share") in said
    assert "high?" not in said
