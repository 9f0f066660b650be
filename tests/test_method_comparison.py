"""python -m hematovision.method_comparison: the agreement of the batch differentials with
manual counts over many films, from the batch pages' differential CSVs."""

import json
import os

import pytest

from hematovision.comparison import FilmShares, agreement_over_films, compare, fisher_exact
from hematovision.differential import differential, differential_json
from hematovision.method_comparison import main
from hematovision.web.results import differential_csv
from tests.test_differential import WBC4, film, result

# (the batch's cells, the manual count) of three films.
FILMS = [
    ({"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 4},
     {"neutrophil": 58, "lymphocyte": 33, "monocyte": 5, "eosinophil": 4}),
    ({"neutrophil": 45, "lymphocyte": 45, "monocyte": 8, "eosinophil": 2},
     {"neutrophil": 50, "lymphocyte": 40, "monocyte": 7, "eosinophil": 3}),
    ({"neutrophil": 70, "lymphocyte": 20, "monocyte": 5, "eosinophil": 5},
     {"neutrophil": 64, "lymphocyte": 25, "monocyte": 6, "eosinophil": 5}),
]


def write_film(path, cells: dict, by_hand: dict | None, sample_id: str = "",
               unidentified: int = 0):
    """A differential CSV as the batch page downloads it."""
    counted = differential(film(cells, WBC4) + [result("monocyte", "unidentified", WBC4)]
                           * unidentified, WBC4)
    path.write_text(differential_csv(counted, sample_id,
                                     by_hand and compare(counted, by_hand)))
    return path


def test_the_films_agreement_is_computed_from_their_csvs(tmp_path, capsys):
    paths = [write_film(tmp_path / f"film{i}.csv", cells, by_hand, f"H-{i}")
             for i, (cells, by_hand) in enumerate(FILMS)]
    assert main([*map(str, paths), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["films"] == ["H-0", "H-1", "H-2"] and report["unreviewed"] == []
    expected = agreement_over_films([
        {c: FilmShares(cells[c], by_hand[c],  # 100 cells each: counts are percents
                       next(r.p_value for r in compare(differential(film(cells, WBC4), WBC4),
                                                       by_hand).classes if r.name == c))
         for c in WBC4} for cells, by_hand in FILMS], WBC4)
    assert [row["name"] for row in report["classes"]] == WBC4
    for row, want in zip(report["classes"], expected):
        assert row["mean_difference"] == pytest.approx(want.mean_difference)
        assert row["sd_difference"] == pytest.approx(want.sd_difference)
        assert row["slope"] == pytest.approx(want.slope) and row["marked"] == want.marked
    neutrophils = report["classes"][-1]
    assert neutrophils["films"] == 3 and neutrophils["mean_difference"] == pytest.approx(1.0)

    assert main(list(map(str, paths))) == 0
    out = capsys.readouterr().out
    assert out.startswith("Method comparison over 3 films")
    assert [line.split()[:3] for line in out.splitlines()[2:6]] == [
        [row["name"].capitalize(), "3", f"{row['mean_difference']:+.1f}"]
        for row in report["classes"]]


def test_files_without_a_manual_count_are_left_out_with_the_reason(tmp_path, capsys):
    compared = write_film(tmp_path / "a.csv", *FILMS[0], sample_id="-7", unidentified=2)
    plain = write_film(tmp_path / "b.csv", FILMS[1][0], None)
    other = tmp_path / "c.csv"
    other.write_text("file,label\nx.jpg,neutrophil\n")
    binary = tmp_path / "d.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert main([str(compared), str(plain), str(other), str(binary),
                 str(tmp_path / "missing.csv"), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["films"] == ["-7"]  # the sample ID as given, not as quoted in the CSV
    assert report["unreviewed"] == ["-7"]
    assert f"{plain}: left out: no manual count: give one on the batch page" in captured.err
    assert f"{other}: left out: not a differential CSV" in captured.err
    assert f"{binary}: left out: cannot read it" in captured.err
    assert "missing.csv: left out: cannot read it" in captured.err
    assert main([str(compared)]) == 0
    assert "Not yet reviewed (1): -7: their batches held unidentified cells" in (
        " ".join(capsys.readouterr().out.split()))
    assert main([str(plain)]) == 1
    assert "error: no film with a manual count to compare" in capsys.readouterr().err


def test_nucleated_red_cells_are_summarised_per_100_white_cells(tmp_path, capsys):
    classes = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
               "neutrophil", "platelet"]
    paths = []
    for i, (batch_nrbc, manual_nrbc) in enumerate([(4, 2), (0, 1), (10, 6)]):
        counted = differential(film({"neutrophil": 60, "lymphocyte": 40,
                                     "erythroblast": batch_nrbc}, classes), classes)
        path = tmp_path / f"{i}.csv"
        path.write_text(differential_csv(counted, f"P-{i}", compare(
            counted, {"neutrophil": 60, "lymphocyte": 40},
            manual_beside={"erythroblast": manual_nrbc})))
        paths.append(str(path))
    main([*paths, "--json"])
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["classes"]}
    assert rows["erythroblast"]["unit"] == "per 100 white cells"
    assert rows["neutrophil"]["unit"] == "percent" and "platelet" not in rows
    assert rows["erythroblast"]["mean_difference"] == pytest.approx((2 - 1 + 4) / 3)
    main(paths)
    [line] = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith("Erythroblast")]
    assert " ".join(line.split()).startswith(
        "Erythroblast (nucleated red cell), per 100 white cells 3 +1.7")


def test_films_counted_from_the_command_line_are_compared_with_a_table_of_manual_counts(
        tiny_model_dir, tmp_path, capsys):
    from hematovision.predict import main as predict
    from tests.conftest import CELL_COLORS, make_image

    slides = tmp_path / "slides"
    for slide, colors in (("S1", CELL_COLORS), ("S2", CELL_COLORS * 2), ("S3", CELL_COLORS)):
        for i, color in enumerate(colors):
            make_image(slides / slide / f"cell{i}.jpg", color)
    predict([*(str(slides / s) for s in ("S1", "S2", "S3")), "--quiet", "--differential",
             "--each-path", "--json", "--model-dir", str(tiny_model_dir)])
    predictions = tmp_path / "films.jsonl"
    predictions.write_text(capsys.readouterr().out)
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    manual = tmp_path / "manual.csv"
    manual.write_text("film,eosinophil,lymphocyte,monocyte,neutrophil,other\n"
                      "S1,1,1,1,1,\nS2,2,2,2,1,1\nS9,1,1,1,1,0\n")  # S3 was not counted by hand

    assert main(["--predictions", str(predictions), "--manual", str(manual), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["films"] == ["S1", "S2"]
    assert f"left out: {slides / 'S3'}: no row in {manual}" in captured.err
    assert f"left out: S9: a manual count with no film in {predictions}" in captured.err
    # The same figures as the batch page's comparison of each film's differential.
    expected = []
    for line, by_hand, other in ((lines[0], [1, 1, 1, 1], 0), (lines[1], [2, 2, 2, 1], 1)):
        counted = line["differential"]
        total = sum(by_hand) + other
        expected.append({s["class"]: FilmShares(
            100 * s["count"] / counted["white_cells"], 100 * n / total,
            fisher_exact(s["count"], counted["white_cells"], n, total))
            for s, n in zip(counted["shares"], by_hand)})
    for row, want in zip(report["classes"], agreement_over_films(expected, WBC4)):
        assert row["mean_difference"] == pytest.approx(want.mean_difference)
        assert row["sd_difference"] == pytest.approx(want.sd_difference)
        assert row["marked"] == want.marked and row["unit"] == "percent"


def test_a_table_of_manual_counts_names_only_the_model_s_classes(tmp_path, capsys):
    predictions = tmp_path / "films.jsonl"
    counted = differential(film(FILMS[0][0], WBC4), WBC4)
    predictions.write_text(json.dumps({"path": "S1", "differential": differential_json(counted)})
                           + "\n")
    manual = tmp_path / "manual.csv"
    manual.write_text("film,neutrophil,basophil\nS1,50,1\n")
    with pytest.raises(SystemExit) as stop:
        main(["--predictions", str(predictions), "--manual", str(manual)])
    assert stop.value.code == 2
    assert "column 'basophil' is no class of the model's differential" in capsys.readouterr().err
    manual.write_text("film,neutrophil\nS1,many\n")
    with pytest.raises(SystemExit):
        main(["--predictions", str(predictions), "--manual", str(manual)])
    assert "film 'S1': a count is not a whole number" in capsys.readouterr().err
    for args in (["--predictions", str(predictions)], [],
                 [str(manual), "--predictions", str(predictions), "--manual", str(manual)]):
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 2
        assert "give differential CSVs, or --predictions with --manual" in (
            capsys.readouterr().err)


def test_a_reader_that_stops_early_ends_the_run_quietly(tmp_path):
    """`method_comparison ... | head -1` must not end in a BrokenPipeError traceback."""
    import subprocess
    import sys

    path = write_film(tmp_path / "a.csv", *FILMS[0], sample_id="H-1")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written: every write fails
    with os.fdopen(write, "wb") as closed:
        result = subprocess.run([sys.executable, "-m", "hematovision.method_comparison",
                                 str(path)], stdout=closed, stderr=subprocess.PIPE,
                                timeout=120)
    assert result.returncode == 1 and b"Traceback" not in result.stderr
