"""python -m hematovision.method_comparison: the agreement of the batch differentials with
manual counts over many films, from the batch pages' differential CSVs."""

import json

import pytest

from hematovision.comparison import FilmShares, agreement_over_films, compare
from hematovision.differential import differential
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
