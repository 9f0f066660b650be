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


# A table of manual counts for films S1 to S3, and the lines of FILMS.jsonl that count them.
MANUAL_HEADER = "film,eosinophil,lymphocyte,monocyte,neutrophil,other\n"
MANUAL_S1_S2 = MANUAL_HEADER + "S1,4,33,5,58,\nS2,3,40,7,50,\n"


def film_line(path: str, cells: dict) -> str:
    """A line of `predict --differential --each-path --json` for a film of these cells."""
    return json.dumps({"path": path,
                       "differential": differential_json(differential(film(cells, WBC4), WBC4))})


def outcome(args: list[str], capsys) -> tuple[int, str]:
    """main's exit status and stderr, whether it returned or stopped with a usage error."""
    try:
        code = main(args)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


# S2's line (eosinophils 2 of 100 white cells) as predict writes it, and changed.
S2 = film_line("S2", FILMS[1][0])


@pytest.mark.parametrize("line, says", [
    ("[1, 2]", "[1, 2] is not a JSON object"),
    ("5", "5 is not a JSON object"),
    ('"x"', "'x' is not a JSON object"),
    ("null", "None is not a JSON object"),
    ("{not json", "not JSON"),
    ("[" * 2000, "not JSON"),  # nested too deep for the parser
    ('{"path": "S2", "differential": null}', "its differential has no list of shares"),
    ('{"path": "S2", "differential": {"white_cells": 3}}', "has no list of shares"),
    (S2.replace('"count": 2, ', "", 1), "count of 'eosinophil', None, is not a whole number"),
    (S2.replace('"count": 2,', '"count": "2",', 1), "'eosinophil', '2', is not a whole number"),
    (S2.replace('"count": 2,', '"count": 1.5,', 1), "'eosinophil', 1.5, is not a whole number"),
    (S2.replace('"count": 2,', '"count": true,', 1), "'eosinophil', True, is not a whole"),
    (S2.replace('"count": 2,', '"count": -2,', 1), "'eosinophil', -2, is not a whole number"),
    (S2.replace('"count": 2,', f'"count": {10**30},', 1), "is not a whole number of cells "
                                                          "from 0 to 100,000"),
    (S2.replace('"count": 2,', '"count": 3,', 1), "its differential's shares count 101 white "
                                                 "cells, its white_cells 100"),
    (S2.replace('"white_cells": 100', '"white_cells": "x"'), "white_cells 'x' is not a whole"),
    (S2.replace('"white_cells": 100', '"white_cells": 1e400'), "white_cells inf is not a whole"),
    (S2.replace('"path": "S2"', '"path": 5'), "path 5 is not a film's path"),
    (S2.replace('"path": "S2"', '"path": null'), "path None is not a film's path"),
    (S2.replace('"path": "S2"', '"path": ["S2"]'), "path ['S2'] is not a film's path"),
    (S2.replace('"path": "S2"', '"path": ""'), "path '' is not a film's path"),
])
def test_a_malformed_line_of_the_films_is_refused_naming_the_file_and_line(
        tmp_path, capsys, line, says):
    predictions = tmp_path / "films.jsonl"
    predictions.write_text(film_line("S1", FILMS[0][0]) + "\n  \n" + line + "\n")
    manual = tmp_path / "manual.csv"
    manual.write_text(MANUAL_S1_S2)
    code, err = outcome(["--predictions", str(predictions), "--manual", str(manual)], capsys)
    assert code == 2
    [message] = [line for line in err.splitlines() if "error:" in line]
    assert message.startswith(f"python -m hematovision.method_comparison: error: "
                              f"{predictions}, line 3: ")
    assert says in message and "Traceback" not in err


def test_blank_lines_and_figures_worked_out_from_the_counts_are_not_needed(tmp_path, capsys):
    """A blank line is passed over, as JSON Lines readers do; a share's percent and a class's
    per_100_white are worked out again from the counts, so a line without them compares."""
    pbc = ["erythroblast", "lymphocyte", "neutrophil"]
    line = {"path": "S1", "differential": differential_json(differential(
        film({"neutrophil": 60, "lymphocyte": 40, "erythroblast": 4}, pbc), pbc))}
    for share in line["differential"]["shares"]:
        del share["percent"]
    del line["differential"]["others"][0]["per_100_white"]
    predictions = tmp_path / "films.jsonl"
    predictions.write_text("\n" + json.dumps(line) + "\n \t\n")
    manual = tmp_path / "manual.csv"
    manual.write_text("film,lymphocyte,neutrophil,erythroblast\nS1,40,60,2\n")
    assert main(["--predictions", str(predictions), "--manual", str(manual), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["classes"]}
    assert rows["erythroblast"]["mean_difference"] == pytest.approx(4 - 2)
    assert rows["neutrophil"]["mean_difference"] == pytest.approx(0)


@pytest.mark.parametrize("row, says", [
    ("S1,1" + "0" * 400 + ",33,5,58,", "a count is not a whole number from 0 to 10,000 "
                                       "(eosinophil: '1000000000"),
    ("S1,-3,33,5,58,", "a count is not a whole number from 0 to 10,000 (eosinophil: '-3')"),
    ("S1,4,33,5,58,1.5", "a count is not a whole number from 0 to 10,000 (other: '1.5')"),
    ("S1,4,5000,5,5000,", "its counts add up to 10,009, more than the 10,000 cells"),
])
def test_a_manual_count_out_of_range_is_refused(tmp_path, capsys, row, says):
    predictions = tmp_path / "films.jsonl"
    predictions.write_text(film_line("S1", FILMS[0][0]) + "\n")
    manual = tmp_path / "manual.csv"
    manual.write_text(MANUAL_HEADER + row + "\n")
    code, err = outcome(["--predictions", str(predictions), "--manual", str(manual)], capsys)
    assert code == 2
    assert f"error: {manual}, line 2: film 'S1': {says}" in err and "Traceback" not in err


@pytest.mark.parametrize("column, value, says", [
    ("count", "1" + "0" * 400, "count '1000000000"),
    ("count", "-1", "count '-1' is not a whole number of cells from 0 to 100,000"),
    ("count", "101", "count 101 is more than its white_cells 100"),
    ("white_cells", "0", "the batch counted no white cell"),
    ("manual_count", "101", "manual_count 101 is more than its manual_white_cells 100"),
    ("manual_white_cells", "-5", "manual_white_cells '-5' is not a whole number of cells "
                                 "from 0 to 10,000"),
    ("manual_p_value", "nan", "manual_p_value 'nan' is not a p-value from 0 to 1"),
    ("manual_p_value", "1.5", "manual_p_value '1.5' is not a p-value from 0 to 1"),
])
def test_a_differential_csv_with_a_figure_out_of_range_is_left_out(
        tmp_path, capsys, column, value, says):
    path = write_film(tmp_path / "a.csv", *FILMS[0], sample_id="H-1")
    lines = path.read_text().splitlines()
    header, eosinophils = lines[0].split(","), lines[1].split(",")
    eosinophils[header.index(column)] = value
    path.write_text("\n".join([lines[0], ",".join(eosinophils), *lines[2:]]) + "\n")
    code, err = outcome([str(path)], capsys)
    assert code == 1
    assert f"{path}: left out: line 2: {says}" in err and "Traceback" not in err


def test_a_film_given_twice_is_refused(tmp_path, capsys):
    """Each copy would count as a film of its own, narrowing the limits of agreement."""
    first = write_film(tmp_path / "a.csv", *FILMS[0], sample_id="H-1")
    again = write_film(tmp_path / "b.csv", *FILMS[1], sample_id="H-1")
    for paths in ([first, first], [first, again]):
        code, err = outcome(list(map(str, paths)), capsys)
        assert code == 2
        assert (f"error: film 'H-1' is in {paths[0]}, {paths[1]}: a film compared twice would "
                "make the limits of agreement look tighter") in err

    predictions, manual = tmp_path / "films.jsonl", tmp_path / "manual.csv"
    for lines, rows, says in (
            (["S1", "S1"], MANUAL_S1_S2, f"{predictions}, line 2: film 'S1' again (line 1)"),
            (["a/S1", "b/S1"], MANUAL_S1_S2,
             f"{predictions}, line 2: film 'b/S1' has the manual count of 'S1', as the film "
             "of line 1 has"),
            (["S1"], MANUAL_S1_S2 + "S1,1,1,1,1,\n",
             f"{manual}, line 4: film 'S1' again (line 2)"),
            (["S1"], "film,neutrophil,neutrophil\nS1,50,50\n",
             f"{manual}: column 'neutrophil' more than once")):
        predictions.write_text("".join(film_line(p, FILMS[0][0]) + "\n" for p in lines))
        manual.write_text(rows)
        code, err = outcome(["--predictions", str(predictions), "--manual", str(manual)],
                            capsys)
        assert code == 2 and f"error: {says}" in err


def test_a_film_without_white_cells_on_either_side_is_left_out_with_the_reason(
        tmp_path, capsys):
    predictions = tmp_path / "films.jsonl"
    no_cell = json.dumps({"path": "S2", "differential": differential_json(
        differential([], WBC4))})
    predictions.write_text("\n".join([film_line("S1", FILMS[0][0]), no_cell,
                                      film_line("S3", FILMS[2][0])]) + "\n")
    manual = tmp_path / "manual.csv"
    manual.write_text(MANUAL_S1_S2 + "S3,,0,,0,\n")
    code, err = outcome(["--predictions", str(predictions), "--manual", str(manual), "--json"],
                        capsys)
    assert code == 0
    assert f"left out: S2: its batch counted no white cell (line 3 of {manual})" in err
    assert f"left out: S3: its manual count has no white cell (line 4 of {manual})" in err


def test_csvs_a_spreadsheet_saved_with_a_byte_order_mark_are_read(tmp_path, capsys):
    path = write_film(tmp_path / "a.csv", *FILMS[0], sample_id="H-1")
    path.write_text(path.read_text(), encoding="utf-8-sig")
    assert main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["films"] == ["H-1"]
    predictions, manual = tmp_path / "films.jsonl", tmp_path / "manual.csv"
    predictions.write_text(film_line("S1", FILMS[0][0]) + "\n", encoding="utf-8-sig")
    manual.write_text(MANUAL_S1_S2, encoding="utf-8-sig")
    assert main(["--predictions", str(predictions), "--manual", str(manual), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["films"] == ["S1"]


@pytest.mark.parametrize("broken", ["predictions", "manual"])
@pytest.mark.parametrize("content", [None, b"\xff\xfe\x00garbage"])
def test_a_file_that_cannot_be_read_is_named(tmp_path, capsys, broken, content):
    files = {"predictions": tmp_path / "films.jsonl", "manual": tmp_path / "manual.csv"}
    files["predictions"].write_text(film_line("S1", FILMS[0][0]) + "\n")
    files["manual"].write_text(MANUAL_S1_S2)
    files[broken].unlink()
    if content is not None:
        files[broken].write_bytes(content)
    code, err = outcome(["--predictions", str(files["predictions"]),
                         "--manual", str(files["manual"])], capsys)
    assert code == 2 and f"error: {files[broken]}: cannot read it (" in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_report_that_cannot_be_written_ends_the_run_with_one_line(tmp_path):
    """Output to a full disk ends with a message and status 1, not an OSError traceback."""
    import subprocess
    import sys

    path = write_film(tmp_path / "a.csv", *FILMS[0], sample_id="H-1")
    with open("/dev/full", "wb") as full:
        result = subprocess.run([sys.executable, "-m", "hematovision.method_comparison",
                                 str(path)], stdout=full, stderr=subprocess.PIPE, timeout=120)
    assert result.returncode == 1
    assert result.stderr == b"error: cannot write the report (No space left on device)\n"


def test_other_white_cells_of_a_reviewed_batch_are_compared_over_films(tmp_path, capsys):
    """A batch whose reviewer counted blasts as another white cell: its CSV's row of them is
    read like any class, against the manual count's other white cells."""
    from hematovision.cells import OTHER_WHITE_CELL

    paths = []
    for i, blasts in enumerate((2, 0, 1)):
        cells = film({"neutrophil": 60 - blasts, "lymphocyte": 30, "monocyte": 6,
                      "eosinophil": 4}, WBC4)
        cells += [{**c, "review": {"label": OTHER_WHITE_CELL, "at": 0.0}}
                  for c in film({"neutrophil": blasts}, WBC4)]
        counted = differential(cells, WBC4)
        found = compare(counted, {"neutrophil": 58, "lymphocyte": 31, "monocyte": 6,
                                  "eosinophil": 4}, manual_other=1)
        path = tmp_path / f"film{i}.csv"
        path.write_text(differential_csv(counted, f"H-{i}", found))
        paths.append(path)
    assert main([*map(str, paths), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["classes"]}
    # Every film, the one whose reviewer found none of the manual count's blast included: a
    # comparison over only the films that found some would lean towards agreement.
    assert rows[OTHER_WHITE_CELL]["films"] == 3
    assert rows[OTHER_WHITE_CELL]["mean_difference"] == pytest.approx((1 - 1 + 0) / 3)
