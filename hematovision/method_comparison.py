"""How the app's differential agrees with manual counts over many films: a lab's method
comparison, from the differential CSVs of batches compared with a manual count.

    python -m hematovision.method_comparison DIFFERENTIAL_CSV [...] [--json]

Each file is a batch page's "Differential (CSV)" (`hematovision-<sample>-<batch>-differential.csv`)
downloaded after a manual count of the same film was given on the page (Against a manual
count). For each white-cell class compared on some film: how many films, the mean difference of
the batch's share from the manual one (the bias, in points) with its SD and 95 % limits of
agreement (Bland-Altman), the least-squares line of the batch's share on the manual one with
Pearson's r, and on how many films the difference lay beyond counting error
(`hematovision.comparison`); the same for nucleated red cells, per 100 white cells. Films whose batch still held unidentified cells are named: their
accepted cells lean towards the classes the model is sure of, so review them before comparing.
A file without a manual count, or not such a CSV, is reported and left out.
Exit status: 0 when some film was compared, 1 when none could be, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from hematovision.cells import display_name
from hematovision.comparison import FilmShares, agreement_over_films
from hematovision.spreadsheet import as_written

# The differential CSV's columns this reads (hematovision.web.results.DIFFERENTIAL_COLUMNS).
NEEDED = ("class", "white_cell", "count", "white_cells", "awaiting_review", "sample",
          "manual_count", "manual_white_cells", "manual_p_value")


PER_100 = "per 100 white cells"  # the unit of a class compared beside the differential


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hematovision.method_comparison",
        description="Agreement of the app's differentials with manual counts over many films.",
        epilog="example: python -m hematovision.method_comparison "
               "~/Downloads/hematovision-*-differential.csv")
    parser.add_argument("files", nargs="+", type=Path,
                        help="differential CSVs of batches compared with a manual count")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(argv)

    films = []
    for path in args.files:
        try:
            films.append(read_film(path))
        except ValueError as exc:
            print(f"{path}: left out: {exc}", file=sys.stderr)
    if not films:
        print("error: no film with a manual count to compare", file=sys.stderr)
        return 1
    classes = list(dict.fromkeys(c for film in films for c in film.shares))
    beside = {c for film in films for c in film.beside}
    found = agreement_over_films([film.shares for film in films], classes)
    unreviewed = [film.name for film in films if film.awaiting_review]
    if args.json:
        print(json.dumps({"films": [film.name for film in films], "unreviewed": unreviewed,
                          "classes": [{**asdict(row), "unit": PER_100 if row.name in beside
                                       else "percent"} for row in found]}))
        return 0
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
    return 0


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else f"{value:{spec}}"


if __name__ == "__main__":
    sys.exit(main())
