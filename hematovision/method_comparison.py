"""How the app's differential agrees with manual counts over many films: a lab's method
comparison.

    python -m hematovision.method_comparison DIFFERENTIAL_CSV [...] [--json]
    python -m hematovision.method_comparison --predictions FILMS.jsonl --manual MANUAL.csv

From the web app: each file is a batch page's "Differential (CSV)"
(`hematovision-<sample>-<batch>-differential.csv`) downloaded after a manual count of the same
film was given on the page (Against a manual count). From the command line: FILMS.jsonl holds
`python -m hematovision.predict SLIDES/*/ --differential --each-path --json`, one differential
per film, and MANUAL.csv the manual counts, one row per film: a `film` column (the folder's
name, or its path as given) and one per class of the model's differential (its white-cell
classes, its nucleated red cells) or `other` (white cells of classes it does not name); an
empty cell counts none.

For each white-cell class compared on some film: how many films, the mean difference of the
batch's share from the manual one (the bias, in points) with its SD and 95 % limits of
agreement (Bland-Altman), the least-squares line of the batch's share on the manual one with
Pearson's r, and on how many films the difference lay beyond counting error
(`hematovision.comparison`); the same for nucleated red cells, per 100 white cells. Films whose
batch still held unidentified cells are named: their accepted cells lean towards the classes
the model is sure of, so review them before comparing. A file, or a film, without a manual
count, or whose batch or manual count holds no white cell, is reported and left out. A film given
twice (two files, two lines, two rows) is refused: it would narrow the limits of agreement.
Exit status: 0 when some film was compared, 1 when none could be or the report could not be
written, 2 for a usage error (FILMS.jsonl or MANUAL.csv that cannot be read, a film twice)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from hematovision.cells import display_name, is_nucleated_red_cell
from hematovision.comparison import (MAX_MANUAL_CELLS, FilmShares, agreement_over_films,
                                     compare)
from hematovision.differential import ClassShare, Differential, OtherCount
from hematovision.output import Stdout, quoted, require_stdout
from hematovision.spreadsheet import as_written, whole_number

# The differential CSV's columns this reads (hematovision.web.results.DIFFERENTIAL_COLUMNS).
NEEDED = ("class", "white_cell", "count", "white_cells", "awaiting_review", "sample",
          "manual_count", "manual_white_cells", "manual_p_value")
# Far above a batch (the web app holds at most 1,000 images in one), far below a count that
# would make the shares or Fisher's exact test meaningless.
MAX_BATCH_CELLS = 100_000
# A differential CSV's counts by column, with the most cells each may hold.
CSV_COUNTS = {"count": MAX_BATCH_CELLS, "white_cells": MAX_BATCH_CELLS,
              "manual_count": MAX_MANUAL_CELLS, "manual_white_cells": MAX_MANUAL_CELLS}
TWICE = "a film compared twice would make the limits of agreement look tighter than they are"


PER_100 = "per 100 white cells"  # the unit of a class compared beside the differential
OTHER = "other"  # the manual counts' column of white cells of classes the model does not name


@dataclass(frozen=True)
class Film:
    name: str  # the sample ID, else the file's name
    # By class, in the file's order: white cells' shares in percent, then the nucleated red
    # cells compared per 100 white cells (`beside`).
    shares: dict[str, FilmShares]
    awaiting_review: int
    beside: tuple[str, ...] = ()


def read_film(path: Path) -> Film:
    """A film's shares from a differential CSV; ValueError saying why a file cannot be read as
    one with a manual count."""
    header, rows = _read_csv(path)
    if not rows or any(column not in header for column in NEEDED):
        raise ValueError("not a differential CSV of this version (Differential (CSV) on a "
                         "batch page)")
    white = [row for _, row in rows if row["white_cell"] == "yes"]
    if not white or not white[0]["manual_count"]:
        raise ValueError("no manual count: give one on the batch page (Against a manual "
                         "count), then download the differential CSV again")
    shares: dict[str, FilmShares] = {}
    for line, row in rows:
        if not row["manual_count"]:
            continue
        if row["class"] in shares:
            raise ValueError(f"line {line}: class {row['class']!r} again")
        shares[row["class"]] = _csv_shares(row, line)
    awaiting = _text_cells(rows[0][1]["awaiting_review"], MAX_BATCH_CELLS)
    if awaiting is None:
        raise ValueError(f"line {rows[0][0]}: awaiting_review is not a whole number of cells")
    name = as_written(rows[0][1]["sample"]) or path.name
    return Film(name, shares, awaiting,
                tuple(row["class"] for _, row in rows
                      if row["manual_count"] and row["white_cell"] != "yes"))


def _csv_shares(row: dict[str, str], line: int) -> FilmShares:
    """A class's shares in the batch and the manual count from its row of a differential CSV;
    ValueError naming the line and the figure that is not a count of its cells."""
    cells = {}
    for column, top in CSV_COUNTS.items():
        cells[column] = _text_cells(row[column], top)
        if cells[column] is None:
            raise ValueError(f"line {line}: {column} {quoted(row[column])} is not a whole "
                             f"number of cells from 0 to {top:,}")
    for count, total, whose in (("count", "white_cells", "the batch"),
                                ("manual_count", "manual_white_cells", "the manual count")):
        if not cells[total]:
            raise ValueError(f"line {line}: {whose} counted no white cell")
        # Nucleated red cells are counted beside the white cells, and may outnumber them.
        if row["white_cell"] == "yes" and cells[count] > cells[total]:
            raise ValueError(f"line {line}: {count} {cells[count]} is more than its "
                             f"{total} {cells[total]}")
    p_value = _p_value(row["manual_p_value"])
    if p_value is None:
        raise ValueError(f"line {line}: manual_p_value {quoted(row['manual_p_value'])} is not "
                         "a p-value from 0 to 1")
    # A share of the white cells, or for a class beside them, as many per 100 white cells: the
    # same sum either way.
    return FilmShares(100 * cells["count"] / cells["white_cells"],
                      100 * cells["manual_count"] / cells["manual_white_cells"], p_value)


def predicted_films(predictions: Path, manual: Path) -> tuple[list[Film], list[str]]:
    """The films of `predict --differential --json` lines, each with its row of the manual
    counts, and a reason for each film or row left out; ValueError, naming the file and its
    line, saying why either cannot be read or holds a film twice."""
    lines = _read_predictions(predictions)
    by_film = _manual_counts(manual)
    films, left_out = [], []
    paths: dict[str, int] = {}  # a film's path: its line
    matched: dict[str, int] = {}  # a row of the manual counts: the line of its film
    for number, line in lines:
        where = f"{predictions}, line {number}"
        if "differential" not in line:
            left_out.append(f"{where}: not a differential (predict --differential --json)")
            continue
        if "path" not in line:
            left_out.append(f"{where}: a differential without its film's path "
                            "(predict --each-path)")
            continue
        path = line["path"]
        if not isinstance(path, str) or not path:
            raise ValueError(f"{where}: path {quoted(path)} is not a film's path")
        if path in paths:
            raise ValueError(f"{where}: film {path!r} again (line {paths[path]}): {TWICE}")
        paths[path] = number
        try:
            counted = _differential(line["differential"])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        name = next((n for n in (path, Path(path).name) if n in by_film), None)
        if name is None:
            left_out.append(f"{path}: no row in {manual}")
            continue
        if name in matched:
            raise ValueError(f"{where}: film {path!r} has the manual count of {name!r}, as "
                             f"the film of line {matched[name]} has: {TWICE}")
        matched[name] = number
        found = _film(name, counted, by_film[name][1], manual)
        if isinstance(found, Film):
            films.append(found)
        else:
            left_out.append(f"{path}: {found} (line {by_film[name][0]} of {manual})")
    left_out += [f"{name}: a manual count with no film in {predictions}"
                 for name in by_film if name not in matched]
    return films, left_out


def _read_predictions(predictions: Path) -> list[tuple[int, dict]]:
    """The JSON objects of FILMS.jsonl, each with its line number; a blank line is passed
    over, as JSON Lines readers do; ValueError naming the file and the line that is not one."""
    try:
        text = predictions.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{predictions}: cannot read it ({exc})") from None
    found = []
    # Not splitlines(): JSON strings may hold the other characters it splits at.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise ValueError(f"{predictions}, line {number}: not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{predictions}, line {number}: {quoted(value)} is not a JSON "
                             "object (predict --differential --each-path --json)")
        found.append((number, value))
    return found


def _differential(found: object) -> Differential:
    """A differential as `predict --differential --json` gives it, checked: counts of cells
    within range, its white-cell classes adding up to its white cells; ValueError saying
    what is wrong. Shares and cells per 100 white cells are worked out again from the counts,
    as the comparison does."""
    if not isinstance(found, dict) or not isinstance(found.get("shares"), list):
        raise ValueError("its differential has no list of shares")
    if not isinstance(found.get("others", []), list):
        raise ValueError("its differential's others are not a list")
    figures = {key: _json_cells(found.get(key), MAX_BATCH_CELLS)
               for key in ("white_cells", "awaiting_review")}
    for key, value in figures.items():
        if value is None:
            raise ValueError(f"its differential's {key} {quoted(found.get(key))} is not a "
                             f"whole number of cells from 0 to {MAX_BATCH_CELLS:,}")
    white_cells = figures["white_cells"]
    shares = [_class_count(entry) for entry in found["shares"]]
    others = [_class_count(entry) for entry in found.get("others", [])]
    names = [name for name, _ in shares + others]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"its differential counts {', '.join(map(repr, repeated))} twice")
    if sum(count for _, count in shares) != white_cells:
        raise ValueError(f"its differential's shares count {sum(c for _, c in shares)} white "
                         f"cells, its white_cells {white_cells}")

    def per_100(count: int) -> float | None:
        return round(100 * count / white_cells, 1) if white_cells else None

    return Differential(
        shares=[ClassShare(name, count, per_100(count) or 0.0) for name, count in shares],
        white_cells=white_cells,
        others=[OtherCount(name, count, per_100(count)) for name, count in others],
        reviewed=0, awaiting_review=figures["awaiting_review"])


def _class_count(entry: object) -> tuple[str, int]:
    """A class and its count from an entry of a differential's shares or others."""
    if not isinstance(entry, dict) or not isinstance(entry.get("class"), str):
        raise ValueError(f"its differential's {quoted(entry)} names no class")
    count = _json_cells(entry.get("count"), MAX_BATCH_CELLS)
    if count is None:
        raise ValueError(f"its differential's count of {entry['class']!r}, "
                         f"{quoted(entry.get('count'))}, is not a whole number of cells from 0 "
                         f"to {MAX_BATCH_CELLS:,}")
    return entry["class"], count


def _manual_counts(manual: Path) -> dict[str, tuple[int, dict[str, int]]]:
    """The manual counts by film: the line of its row and its counts by column; ValueError,
    naming the file and line, for a film named twice or a count that is not one."""
    try:
        header, rows = _read_csv(manual)
    except ValueError as exc:
        raise ValueError(f"{manual}: {exc}") from None
    if "film" not in header:
        raise ValueError(f"{manual}: a manual count needs a `film` column and one per class")
    by_film: dict[str, tuple[int, dict[str, int]]] = {}
    for line, row in rows:
        film, where = row["film"], f"{manual}, line {line}"
        if not film:
            raise ValueError(f"{where}: counts without a film")
        if film in by_film:
            raise ValueError(f"{where}: film {film!r} again (line {by_film[film][0]}): {TWICE}")
        cells = {}
        for column, text in row.items():
            if column == "film":
                continue
            cells[column] = _text_cells(text, MAX_MANUAL_CELLS) if text.strip() else 0
            if cells[column] is None:
                raise ValueError(f"{where}: film {film!r}: a count is not a whole number from "
                                 f"0 to {MAX_MANUAL_CELLS:,} ({column}: {quoted(text)})")
        if sum(cells.values()) > MAX_MANUAL_CELLS:
            raise ValueError(f"{where}: film {film!r}: its counts add up to "
                             f"{sum(cells.values()):,}, more than the {MAX_MANUAL_CELLS:,} "
                             "cells of a manual count")
        by_film[film] = (line, cells)
    return by_film


def _film(name: str, counted: Differential, cells: dict[str, int], manual: Path
          ) -> Film | str:
    """One film's shares against its row of manual counts (`compare`), or why it cannot be
    compared; ValueError naming a column that is no class of the model."""
    white = [s.name for s in counted.shares]
    beside = [o.name for o in counted.others if is_nucleated_red_cell(o.name)]
    for column in cells:
        if column not in (OTHER, *white, *beside):
            raise ValueError(f"{manual}: column {column!r} is no class of the model's "
                             f"differential ({', '.join(white + beside)}): count such white "
                             f"cells under {OTHER!r}")
    if not counted.white_cells:
        return "its batch counted no white cell"
    found = compare(counted, {c: cells.get(c, 0) for c in white}, cells.get(OTHER, 0),
                    {c: cells.get(c, 0) for c in beside})
    if found is None:
        return "its manual count has no white cell"
    shares = {r.name: FilmShares(100 * r.count / found.white_cells,
                                 100 * r.manual_count / found.manual_white_cells, r.p_value)
              for r in [*found.classes, *found.beside]}
    return Film(name, shares, found.awaiting_review, tuple(r.name for r in found.beside))


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV's header and its rows by column, each with its line number, rows without a
    value passed over (a spreadsheet leaves them at the end); ValueError saying why it cannot
    be read, or where a column or a row's cells do not match the header."""
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte order mark.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read it ({exc})") from None
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise ValueError(f"column {', '.join(map(repr, repeated))} more than once")
    for line, row in rows:
        if len(row) > len(header):
            raise ValueError(f"line {line}: more cells than the header has columns")
    return header, [(line, dict(zip(header, row + [""] * (len(header) - len(row)))))
                    for line, row in rows]


def _text_cells(text: str, top: int) -> int | None:
    """A CSV cell's count of cells: a whole number from 0 to `top`, else None."""
    value = whole_number(text.strip())
    return value if value is not None and value <= top else None


def _json_cells(value: object, top: int) -> int | None:
    """A JSON value as a count of cells: a whole number from 0 to `top`, else None (a string,
    a fraction, true or false, which Python counts as ints)."""
    return value if type(value) is int and 0 <= value <= top else None


def _p_value(text: str) -> float | None:
    """A CSV cell's p-value, from 0 to 1; None for anything else (NaN included)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value <= 1 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hematovision.method_comparison",
        description="Agreement of the app's differentials with manual counts over many films.",
        epilog="example: python -m hematovision.method_comparison "
               "~/Downloads/hematovision-*-differential.csv")
    parser.add_argument("files", nargs="*", type=Path,
                        help="differential CSVs of batches compared with a manual count")
    parser.add_argument("--predictions", type=Path, metavar="FILMS.jsonl",
                        help="instead: the lines of predict --differential --each-path --json")
    parser.add_argument("--manual", type=Path, metavar="MANUAL.csv",
                        help="with --predictions: the manual counts, a row per film")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)
    require_stdout(parser)
    if bool(args.predictions) != bool(args.manual) or bool(args.files) == bool(args.predictions):
        parser.error("give differential CSVs, or --predictions with --manual")

    films = []
    if args.predictions:
        try:
            films, left_out = predicted_films(args.predictions, args.manual)
        except ValueError as exc:
            parser.error(str(exc))
        for reason in left_out:
            print(f"left out: {reason}", file=sys.stderr)
    files: dict[str, list[Path]] = {}  # a film's name: the files that hold it
    for path in args.files:
        try:
            film = read_film(path)
        except ValueError as exc:
            print(f"{path}: left out: {exc}", file=sys.stderr)
            continue
        films.append(film)
        files.setdefault(film.name, []).append(path)
    for name, paths in files.items():
        if len(paths) > 1:
            parser.error(f"film {name!r} is in {', '.join(map(str, paths))}: {TWICE}")
    if not films:
        print("error: no film with a manual count to compare", file=sys.stderr)
        return 1
    with Stdout("the report") as out:
        print_report(films, args.json)
    return 1 if out.lost else 0


def print_report(films: list[Film], as_json: bool) -> None:
    """The agreement over the films: a table for a terminal, or one JSON object."""
    classes = list(dict.fromkeys(c for film in films for c in film.shares))
    beside = {c for film in films for c in film.beside}
    found = agreement_over_films([film.shares for film in films], classes)
    unreviewed = [film.name for film in films if film.awaiting_review]
    if as_json:
        print(json.dumps({"films": [film.name for film in films], "unreviewed": unreviewed,
                          "classes": [{**asdict(row), "unit": PER_100 if row.name in beside
                                       else "percent"} for row in found]}))
        return
    print(f"Method comparison over {len(films)} {'film' if len(films) == 1 else 'films'}: "
          "the batch's share minus the manual count's, in points")
    header = ["class", "films", "mean", "SD", "95 % limits of agreement", "slope",
              "intercept", "r", "beyond counting error"]
    table = [[display_name(row.name) + (f", {PER_100}" if row.name in beside else ""),
              str(row.films), f"{row.mean_difference:+.1f}",
              _number(row.sd_difference, ".1f"),
              "" if row.limits is None else f"{row.limits[0]:+.1f} to {row.limits[1]:+.1f}",
              _number(row.slope, ".2f"), _number(row.intercept, "+.1f"), _number(row.r, ".2f"),
              f"{row.marked} of {row.films}"] for row in found]
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    for line in [header, *table]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))))
    print(textwrap.fill("SD and limits need two films; slope, intercept and r three, with manual "
                        "shares that vary. Where the methods agree, at most about one film in "
                        "twenty is beyond counting error in a class by chance.", 100))
    if unreviewed:
        print(textwrap.fill(f"Not yet reviewed ({len(unreviewed)}): {', '.join(unreviewed)}: "
                            "their batches held unidentified cells, so their shares lean towards "
                            "the classes the model is sure of.", 100))


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else f"{value:{spec}}"


if __name__ == "__main__":
    sys.exit(main())
