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
count is reported and left out.
Exit status: 0 when some film was compared, 1 when none could be, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from hematovision.cells import display_name, is_nucleated_red_cell
from hematovision.comparison import FilmShares, agreement_over_films, compare
from hematovision.differential import ClassShare, Differential, OtherCount
from hematovision.spreadsheet import as_written

# The differential CSV's columns this reads (hematovision.web.results.DIFFERENTIAL_COLUMNS).
NEEDED = ("class", "white_cell", "count", "white_cells", "awaiting_review", "sample",
          "manual_count", "manual_white_cells", "manual_p_value")


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
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read it ({exc})") from None
    if not rows or any(column not in rows[0] for column in NEEDED):
        raise ValueError("not a differential CSV of this version (Differential (CSV) on a "
                         "batch page)")
    white = [row for row in rows if row["white_cell"] == "yes"]
    if not white or not white[0]["manual_count"]:
        raise ValueError("no manual count: give one on the batch page (Against a manual "
                         "count), then download the differential CSV again")
    # A share of the white cells, or for a class beside them, as many per 100 white cells: the
    # same sum either way.
    compared = [row for row in rows if row["manual_count"]]
    try:
        shares = {row["class"]: FilmShares(
            100 * int(row["count"]) / int(row["white_cells"]),
            100 * int(row["manual_count"]) / int(row["manual_white_cells"]),
            float(row["manual_p_value"])) for row in compared}
        awaiting = int(rows[0]["awaiting_review"])
    except (ValueError, ZeroDivisionError):
        raise ValueError("its counts are not whole numbers of cells") from None
    name = as_written(rows[0]["sample"]) or path.name
    return Film(name, shares, awaiting,
                tuple(row["class"] for row in compared if row["white_cell"] != "yes"))


def predicted_films(predictions: Path, manual: Path) -> tuple[list[Film], list[str]]:
    """The films of `predict --differential --json` lines, each with its row of the manual
    counts, and a reason for each film or row left out; ValueError saying why either file
    cannot be read."""
    try:
        lines = [json.loads(line) for line in predictions.read_text().splitlines() if line]
        with open(manual, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read it ({exc})") from None
    if not rows or "film" not in rows[0]:
        raise ValueError(f"{manual}: a manual count needs a `film` column and one per class")
    by_film = {row["film"]: row for row in rows}
    films, left_out, matched = [], [], set()
    for number, line in enumerate(lines, 1):
        path = line.get("path", "")
        name = next((n for n in (path, Path(path).name) if n in by_film), None)
        if "differential" not in line:
            left_out.append(f"line {number} of {predictions}: not a differential "
                            "(predict --differential --json)")
        elif name is None:
            left_out.append(f"{path or 'line ' + str(number)}: no row in {manual}")
        else:
            matched.add(name)
            films.append(_film(name, line["differential"], by_film[name], manual))
    left_out += [f"{name}: a manual count with no film in {predictions}"
                 for name in by_film if name not in matched]
    return [film for film in films if film is not None], left_out


def _film(name: str, found: dict, row: dict, manual: Path) -> Film | None:
    """One film's shares against its row of manual counts (`compare`, on the differential
    as the JSON gives it); ValueError naming a column that is no class of the model, or a
    count that is not one."""
    counted = Differential(
        shares=[ClassShare(s["class"], s["count"], s["percent"]) for s in found["shares"]],
        white_cells=found["white_cells"],
        others=[OtherCount(o["class"], o["count"], o["per_100_white"])
                for o in found.get("others", [])],
        reviewed=0, awaiting_review=found["awaiting_review"])
    white = [s.name for s in counted.shares]
    beside = [o.name for o in counted.others if is_nucleated_red_cell(o.name)]
    for column in row:
        if column not in ("film", OTHER, *white, *beside):
            raise ValueError(f"{manual}: column {column!r} is no class of the model's "
                             f"differential ({', '.join(white + beside)}): count such white "
                             f"cells under {OTHER!r}")
    try:
        cells = {c: int(row.get(c) or 0) for c in (*white, *beside, OTHER)}
    except ValueError:
        raise ValueError(f"{manual}: film {name!r}: a count is not a whole number") from None
    if any(n < 0 for n in cells.values()):
        raise ValueError(f"{manual}: film {name!r}: a count is below 0")
    found = compare(counted, {c: cells[c] for c in white}, cells[OTHER],
                    {c: cells[c] for c in beside})
    if found is None:
        return None
    shares = {r.name: FilmShares(100 * r.count / found.white_cells,
                                 100 * r.manual_count / found.manual_white_cells, r.p_value)
              for r in [*found.classes, *found.beside]}
    return Film(name, shares, found.awaiting_review, tuple(r.name for r in found.beside))


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
    for path in args.files:
        try:
            films.append(read_film(path))
        except ValueError as exc:
            print(f"{path}: left out: {exc}", file=sys.stderr)
    if not films:
        print("error: no film with a manual count to compare", file=sys.stderr)
        return 1
    try:
        print_report(films, args.json)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (`... | head`): stop quietly, as Unix tools do; Python would
        # flush stdout again at exit and fail there, so stdout now goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


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
