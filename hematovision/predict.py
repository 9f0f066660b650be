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
Progress and, at the end, a line counting the results by status (the accepted ones by class)
go to stderr, unless --quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from hematovision.batch import classify_files, expand_paths
from hematovision.card import ModelLoadError
from hematovision.predictor import Predictor, add_model_options, load_failure, model_dir_of
from hematovision.trust import ACCEPTED, NOT_A_CELL, UNIDENTIFIED, parse_accuracy_target


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
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

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
    try:
        for result in classify_files(predictor, paths, progress=not args.quiet,
                                     each_cell=args.each_cell):
            failures += result.error is not None
            tally.add(result)
            if args.json:
                print(json.dumps(result.to_dict()), flush=False)
            elif result.error:
                print(f"{result.path}\tERROR\t{result.error}")
            else:
                p = result.prediction
                cell = result.cell and f" (cell {result.cell['number']} of {result.cell['of']})"
                print(f"{result.path}{cell or ''}\t{p.label}\t{p.confidence:.3f}\t{p.status}")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (`... --json | head`): stop quietly, as Unix tools do. Python
        # would flush stdout again at exit and fail there, so stdout now goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if failures:
        print(f"{failures} of {len(paths)} files could not be classified", file=sys.stderr)
    if not args.quiet and tally.statuses:
        print(tally.summary(), file=sys.stderr)
    return 1 if failures == len(paths) else 0


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
