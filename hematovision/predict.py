"""Classify images from the command line.

    python -m hematovision.predict PATH [PATH ...] [--json] [--model NAME] [--accuracy-target P]
        [--each-cell]

PATH is an image or a folder (searched recursively). With --json, one JSON object per image and
line: {"file", "label", "status", "confidence", "probabilities", "candidates", "scores"} or
{"file", "error"}. `label` is the top class; `status` says whether to trust it: "accepted",
"unidentified" (needs review; see the two candidates) or "not_a_cell" (unlike the training
images). Probabilities and confidence are calibrated (see the model card's "trust" section).
--accuracy-target abstains so that accepted cells are right that often (the card's own target,
e.g. 0.99, by default; a lower one accepts more cells and sends fewer to review).
For a model that crops to the nucleus, each line also says how many white cells its image held
("white_cells"; 0: the answer is about whatever lies at the crop's centre, so its status is
"unidentified" whatever the confidence).
--each-cell reads a smear field holding several white cells cell by cell, as the web app does,
for a model that crops to the nucleus: one line per cell, each with "cell" (its number, how many
the field holds, and where it is) after "file".
--differential prints, instead of one line per image, the differential count of the images'
cells as the web app's batch page counts it (`hematovision.differential`; every white cell of a
field counted, as with --each-cell): each class's count, share and 95 % counting range, read
against its adult reference interval, the classes counted beside it per 100 white cells, and
how many cells were left out and why; with --json, one JSON object (the API's "differential").
With --each-path, each PATH is a film of its own (slides/*/: a folder per slide), each with its
differential (text under its path; JSON, one line each, "path" first).
--wbc gives the film's total white-cell count (x 10^9/L) for absolute counts, and
--wbc-includes-nrbc says that count included the nucleated red cells (corrected for those
counted). A lab's own intervals come from the app's settings, as environment variables:
HEMATOVISION_REFERENCE_INTERVALS (percent) and HEMATOVISION_ABSOLUTE_REFERENCE_INTERVALS.
Progress and, at the end, a line counting the results by status (the accepted ones by class)
go to stderr, unless --quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections import Counter
from pathlib import Path

from hematovision.batch import classify_files, expand_paths
from hematovision.card import ModelLoadError
from hematovision.cells import display_name
from hematovision.differential import (DIFFERENTIAL_CELLS, Differential, ReviewBias,
                                       differential, differential_json, flag_text, review_bias,
                                       set_aside_unseen)
from hematovision.output import Stdout, require_stdout
from hematovision.predictor import Predictor, add_model_options, load_failure, model_dir_of
from hematovision.reference import SETTINGS, catalog_intervals, intervals, white_cell_count
from hematovision.trust import ACCEPTED, NOT_A_CELL, STATUSES, UNIDENTIFIED, parse_accuracy_target

# The environment variables of the app's settings of a lab's own reference intervals, read here
# too so that the command line flags what the batch page flags.
INTERVAL_VARIABLES = {absolute: f"HEMATOVISION_{key}" for absolute, key in SETTINGS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hematovision.predict",
        description="Classify white blood cells in image files or folders.",
        epilog="example: python -m hematovision.predict ../shared/data/kaggle_blood_cells/test "
               "--json > predictions.jsonl",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    add_model_options(parser)
    parser.add_argument("--accuracy-target", type=parse_accuracy_target, default=None, metavar="P",
                        help="abstain so that accepted cells are right this often, e.g. 0.95 "
                             "(default: the model card's target; its 'operating_points' list "
                             "what each target accepts)")
    parser.add_argument("--each-cell", action="store_true",
                        help="a field holding several white cells gives one result per cell, as "
                             "in the web app (models that crop to the nucleus); default: one "
                             "result per file")
    parser.add_argument("--differential", action="store_true",
                        help="print the differential count of the cells (as the web app's "
                             "batch page counts it, every white cell of a field included) "
                             "instead of one line per image; with --json, one JSON object")
    parser.add_argument("--each-path", action="store_true",
                        help="with --differential: one differential per PATH, each a film "
                             "(e.g. slides/*/ for one folder per slide); default: one of all")
    parser.add_argument("--wbc", type=_white_cell_count, metavar="COUNT",
                        help="with --differential: the film's total white-cell count, "
                             "x 10^9/L (e.g. 7.2), to give each share as cells per litre")
    parser.add_argument("--wbc-includes-nrbc", action="store_true",
                        help="with --wbc: that count included the nucleated red cells; it is "
                             "corrected for those counted (models with such a class)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    require_stdout(parser)
    # A file name that is not valid UTF-8 (from a Windows archive) is printed escaped rather
    # than stopping the run where the terminal's encoding is strict.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    if (args.wbc is not None or args.wbc_includes_nrbc or args.each_path
            ) and not args.differential:
        parser.error("--each-path, --wbc and --wbc-includes-nrbc are for --differential")
    if args.wbc_includes_nrbc and args.wbc is None:
        parser.error("--wbc-includes-nrbc needs --wbc, the count it corrects")
    if args.wbc is not None and args.each_path:
        parser.error("--wbc is one film's count: run each film with its own, without "
                     "--each-path")
    try:
        lab_intervals = intervals_from_environment()
    except ValueError as exc:
        parser.error(str(exc))

    model_dir = model_dir_of(args)
    try:
        predictor = Predictor(model_dir, accuracy_target=args.accuracy_target)
    except ModelLoadError as exc:
        print(f"error: {load_failure(exc)}", file=sys.stderr)
        return 2
    paths = expand_paths(args.paths)
    if not paths:
        print("error: no image files found", file=sys.stderr)
        return 2
    failures = 0
    tally = Tally()
    with Stdout("the results") as out:
        if args.differential:
            # One film per PATH with --each-path, else every image one film.
            films = ([(str(p), expand_paths([p])) for p in args.paths] if args.each_path
                     else [(None, paths)])
            for folder, film in films:
                failures += print_differential(predictor, model_dir.name, film, folder, args,
                                               lab_intervals, tally)
        else:
            for result in classify_files(predictor, paths, progress=not args.quiet,
                                         each_cell=args.each_cell):
                failures += result.error is not None
                tally.add(result)
                print_result(result, args.json)
    if out.lost:
        return 1
    if failures:
        print(f"{failures} of {len(paths)} files could not be classified", file=sys.stderr)
    if not args.quiet and tally.statuses:
        print(tally.summary(), file=sys.stderr)
    return 1 if failures == len(paths) else 0


def print_result(result, as_json: bool) -> None:
    """One classified input's line: a JSON object, or file, label, confidence and status."""
    if as_json:
        print(json.dumps(result.to_dict()), flush=False)
    elif result.error:
        print(f"{result.path}\tERROR\t{result.error}")
    else:
        p = result.prediction
        cell = result.cell and f" (cell {result.cell['number']} of {result.cell['of']})"
        print(f"{result.path}{cell or ''}\t{p.label}\t{p.confidence:.3f}\t{p.status}")


def print_differential(predictor: Predictor, model: str, film: list[Path], folder: str | None,
                       args: argparse.Namespace, lab_intervals: dict, tally: "Tally") -> int:
    """Classify one film's images (every white cell of a field) and print its differential
    (`differential_text`, or with --json one object, `"path"` first with --each-path), as the
    batch page counts it; adds the results to `tally`; returns how many files could not be
    read, each named on stderr with its reason. A film of no readable image prints no
    differential, and says so on stderr."""
    counted, mine, failures = [], Tally(), 0
    for result in classify_files(predictor, film, progress=not args.quiet, each_cell=True):
        if result.error is not None:
            failures += 1
            print(f"{result.path}: {result.error}", file=sys.stderr)
        mine.add(result)
        tally.add(result)
        counted.append(result.to_dict())
    if not film:
        print(f"{folder}: no image files found", file=sys.stderr)
    elif failures == len(film):
        print(f"{folder or 'these files'}: no differential, as none of {len(film)} "
              f"{'file' if len(film) == 1 else 'files'} could be read", file=sys.stderr)
    if failures == len(film):
        return failures
    found = differential(counted, predictor.classes, lab_intervals[False], args.wbc,
                         lab_intervals[True], args.wbc_includes_nrbc,
                         sum(map(set_aside_unseen, counted)))
    if args.json:
        print(json.dumps({**({"path": folder} if folder is not None else {}), "model": model,
                          "files": len(film), "unreadable": failures,
                          "statuses": mine.by_status(),
                          "differential": differential_json(found)}), flush=False)
    else:
        own = any(lab_intervals[absolute] != catalog_intervals(absolute)
                  for absolute in lab_intervals)  # as the batch page tells a lab's own
        text = differential_text(found, model, mine, len(film), failures, own,
                                 review_bias(predictor.card, predictor.trust.confidence_threshold))
        print(f"{folder}\n{text}\n" if folder is not None else text)
    return failures


def differential_text(found: Differential, model: str, tally: "Tally", files: int,
                      unreadable: int, lab_intervals: bool = False,
                      bias: ReviewBias | None = None) -> str:
    """The differential as tables for a terminal, as the batch page lays it out: each
    white-cell class's count, share, 95 % counting range, reference interval and flag; the
    classes counted beside it (nucleated red cells per 100 white cells); given the total
    count, each share per litre; then what was left out, and why no share is flagged where
    none is."""
    n = found.white_cells
    lines = [f"Differential of {n} white {'cell' if n == 1 else 'cells'} counted by {model} "
             f"from {files} {'file' if files == 1 else 'files'} (the cells the model accepted)"]
    if n:  # no shares without a cell to count (the page shows no table either)
        lines += _table(["class", "count", "%", "95 % range", "reference", "flag"],
                        [[display_name(s.name), s.count, f"{s.percent:.1f}",
                          _span((s.low, s.high), ".1f"), _span(s.reference, "g"),
                          flag_text(s.flag)] for s in found.shares])
    if found.others:
        lines += ["", "Counted beside the differential, nucleated red cells per 100 white cells "
                  "(platelets a count alone):", *_table(
            ["class", "count", "per 100", "95 % range", "reference", "flag"],
            [[display_name(o.name), o.count,
              *(["", ""] if o.per_100_white is None else
                [f"{o.per_100_white:.1f}", _span((o.low, o.high), ".1f")]),
              _span(o.reference, "g"), flag_text(o.flag)] for o in found.others])]
    notes = []
    total = found.white_cells_per_litre
    if total is not None and n:
        corrected = found.uncorrected_white_cells_per_litre
        lines += ["", f"Per litre, of {total:.2f} x 10^9 white cells per litre:", *_table(
            ["class", "x 10^9/L", "95 % range", "reference", "flag"],
            [[display_name(s.name), f"{s.absolute.value:.2f}",
              _span((s.absolute.low, s.absolute.high), ".2f"),
              _span(s.absolute.reference, "g"), flag_text(s.absolute.flag)]
             for s in found.shares])]
        if corrected:
            notes.append(f"The count given, {corrected:g}, included the nucleated red cells: "
                         f"times the white cells' share of the nucleated cells counted ({n} of "
                         f"{n + found.nucleated_red_cells}), {total:.2f}.")
    left_out = [f"{count} {text}" for count, text in (
        (tally.statuses[UNIDENTIFIED], "unidentified (needs review)"),
        (tally.statuses[NOT_A_CELL], "not a cell"), (unreadable, "unreadable")) if count]
    if left_out:
        notes.append("Not counted: " + ", ".join(left_out) + ".")
    if not n:
        notes.append("No white cell was counted, so there is no differential.")
    elif n < DIFFERENTIAL_CELLS:
        notes.append(f"Only {n} white {'cell' if n == 1 else 'cells'} counted: a manual "
                     f"differential counts {DIFFERENTIAL_CELLS}, so these shares are rough.")
    if found.awaiting_review:
        measured = "" if bias is None else (
            f": on batches of {bias.cells} cells drawn from {model}'s test images as a "
            f"{bias.composition} differential, the accepted cells alone read "
            + " and ".join(f"{display_name(c).lower()} {abs(points):.1f} points "
                           f"{'high' if points > 0 else 'low'}" for c, points in bias.biases)
            + f" on average (each share {bias.accepted_error:.1f} points off), and "
            f"{bias.reviewed_error:.1f} points once the unidentified cells were reviewed")
        notes.append(f"No figure is flagged while {found.awaiting_review} unidentified "
                     f"{'cell awaits' if found.awaiting_review == 1 else 'cells await'} "
                     f"review: the cells the model is sure of lean towards some classes"
                     f"{measured}. Review them in the web app (upload these images) to count "
                     f"them.")
    if found.images_unseen:
        one = found.images_unseen == 1
        notes.append(f"No figure is flagged while {found.images_unseen} "
                     f"{'image or cell' if one else 'images or cells'} called not a blood-cell "
                     f"image may hold a white cell missing from every share (the white-cell "
                     f"finder found one there, or the image was read outside the exposures the "
                     f"model knows): look at {'it' if one else 'them'} in the web app (upload "
                     f"these images).")
    if n and not found.flags_held:
        notes.append("Flags: high / low, outside the reference interval beyond counting "
                     "error; high? / low?, outside it within counting error. The 95 % range "
                     "covers the counting, not the model's mistakes.")
    if n:
        variables = " and ".join(INTERVAL_VARIABLES.values())
        notes.append("Reference: adult intervals, " + (
            f"this lab's where set ({variables}), else the cell-type catalog's."
            if lab_intervals else
            f"the cell-type catalog's (a lab sets its own with {variables})."))
    return "\n".join([*lines, "", *(textwrap.fill(note, 100) for note in notes)])


def _table(header: list[str], rows: list[list]) -> list[str]:
    """Text rows in columns: the first and last (class, flag) aligned left, the figures
    right."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    last = len(header) - 1
    return ["  ".join(c.ljust(w) if i in (0, last) else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in cells]


def _span(bounds: tuple[float, float] | None, spec: str) -> str:
    """low-high, each in `spec`; empty for none."""
    return "" if bounds is None else f"{bounds[0]:{spec}}-{bounds[1]:{spec}}"


def _white_cell_count(text: str) -> float:
    try:
        if not text.strip():  # `white_cell_count` reads an empty form field as no count
            raise ValueError("--wbc needs the count, such as 6.5 (x 10^9/L)")
        return white_cell_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def intervals_from_environment() -> dict[bool, dict[str, tuple[float, float]]]:
    """The reference intervals the app would flag against, by whether absolute: the catalog's,
    with a lab's own from the app's settings in the environment (INTERVAL_VARIABLES, parsed as
    JSON where they parse, as Flask's `from_prefixed_env` reads them); ValueError naming the
    variable of a bad one."""
    found = {}
    for absolute, name in INTERVAL_VARIABLES.items():
        value = os.environ.get(name)
        try:
            value = None if value is None else json.loads(value)
        except (json.JSONDecodeError, RecursionError):  # as Flask's from_prefixed_env does
            pass  # as typed: `intervals` says why it is not a mapping
        try:
            found[absolute] = intervals(value, absolute)
        except ValueError as exc:
            raise ValueError(f"the environment variable {name}: {exc}") from None
    return found


class Tally:
    """What a run gave, for its closing line on stderr: results by status, the accepted ones
    by class (a first look at the differential, before review), and the images in which no
    white cell was found (models that crop to the nucleus)."""

    def __init__(self):
        self.statuses: Counter = Counter()
        self.accepted: Counter = Counter()
        self.no_white_cell = 0

    def add(self, result) -> None:
        if result.prediction is None:
            return
        self.statuses[result.prediction.status] += 1
        if result.prediction.status == ACCEPTED:
            self.accepted[result.prediction.label] += 1
        self.no_white_cell += result.checks.get("white_cells") == 0

    def by_status(self) -> dict[str, int]:
        """Results by status, every status listed."""
        return {status: self.statuses[status] for status in STATUSES}

    def summary(self) -> str:
        n = sum(self.statuses.values())
        text = (f"{n} {'result' if n == 1 else 'results'}: {self.statuses[ACCEPTED]} accepted, "
                f"{self.statuses[UNIDENTIFIED]} unidentified (needs review), "
                f"{self.statuses[NOT_A_CELL]} not a cell")
        if self.accepted:
            text += "; accepted as " + ", ".join(
                f"{label} {count}" for label, count in self.accepted.most_common())
        if self.no_white_cell:
            text += f"; no white cell found in {self.no_white_cell}"
        return text


if __name__ == "__main__":
    sys.exit(main())
