"""How often the batch page's reference-interval flags are right, on films drawn from a model's
test images.

    python -m training.flags --model wbc4 --data ../shared/data/kaggle_blood_cells/test --record
    python -m training.flags --model pbc8 --data ../shared/data/pbc \
        --split-file saved_model/pbc8/splits.json --record

The served model reads every test image once (the app's path). Films of --cells white cells are
then drawn, --draws times per scenario (seeded): a normal adult differential
(`differential.NORMAL_DIFFERENTIAL`), and one abnormal film per raised or lowered class
(SCENARIOS: the class at that share, the others scaled to the rest; for a model that names
nucleated red cells, a normal film with them beside it, 5 per 100 white cells). Unlike
`training.differential`'s batches, each film's class counts are drawn at random (multinomial),
as a count of 100 cells samples a film, and each cell is a test image of its class drawn with
replacement. Each film is counted four ways: every cell named right (the counting alone),
the accepted cells only (the batch page before review), the unidentified cells reviewed (a
technologist taken to be right), and every image by its top class (no trust layer); each
count's shares are flagged against the reference intervals as the batch page flags them
(`hematovision.reference.flag`), and so are the nucleated red cells counted beside them
(`flag_beside`: an adult has none, so one counted is a flag), and only flags beyond counting
error are scored:

- `detected`: the films in which the scenario's class is flagged on its side (abnormal films);
- `false_flag`: the films with a flag on a class whose true share is inside its interval, or
  on the wrong side of it (a class outside its interval in truth may be flagged or not).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from hematovision.card import FLAGS, record_metrics
from hematovision.cells import is_white_cell
from hematovision.differential import NORMAL_FILM as NORMAL
from hematovision.predictor import model_dir_of
from hematovision.reference import ABOVE, BELOW, flag, flag_beside, intervals
from hematovision.trust import UNIDENTIFIED
from training.differential import (CELLS, DRAWS, EVERY_CELL_RIGHT, NORMAL_DIFFERENTIAL,
                                   counted, parse_drawing_options, served_answers)
from training.evaluate import data_label

# Abnormal films: (class, its share of the white cells); each outside the catalog's interval
# by a margin a lab would act on, so a count of 100 cells can tell most of them.
SCENARIOS = {
    "neutrophilia": ("neutrophil", 0.85),
    "neutropenia": ("neutrophil", 0.20),
    "lymphocytosis": ("lymphocyte", 0.60),
    "monocytosis": ("monocyte", 0.15),
    "eosinophilia": ("eosinophil", 0.12),
    "basophilia": ("basophil", 0.05),
    "immature granulocytes": ("ig", 0.05),
    # A class counted beside the differential: per white cell (5 per 100), as a lab finds
    # nucleated red cells in haemolysis or marrow infiltration; the white cells stay normal.
    "nucleated red cells": ("erythroblast", 0.05),
}
WAYS = (EVERY_CELL_RIGHT, "accepted only", "unidentified reviewed", "no trust layer")


def scenario_compositions(classes: list[str], truth: np.ndarray
                          ) -> dict[str, tuple[str | None, dict[str, float], dict[str, float]]]:
    """Each scenario the model can be scored on: (its class or None, the white-cell shares,
    the classes counted beside the differential per white cell). The normal film is
    NORMAL_DIFFERENTIAL over the model's white classes with test images, with nothing beside
    it; a scenario's class must be one of those, or a class beside them with test images."""
    present = [c for c in classes if (truth == classes.index(c)).any()]
    white = [c for c in present if is_white_cell(c)]
    normal = {c: NORMAL_DIFFERENTIAL.get(c, 0.0) for c in white}
    if not sum(normal.values()):
        raise SystemExit("None of the model's white-cell classes with test images is in a "
                         "normal adult differential: there is no film to draw")
    normal = {c: s / sum(normal.values()) for c, s in normal.items()}
    found = {NORMAL: (None, normal, {})}
    for name, (target, share) in SCENARIOS.items():
        if target in white:
            rest = 1 - normal[target]
            found[name] = (target, {c: share if c == target else (1 - share) * s / rest
                                    for c, s in normal.items()}, {})
        elif target in present:
            found[name] = (target, normal, {target: share})
    return found


def true_side(share: float, interval: tuple[float, float] | None) -> str | None:
    """ABOVE or BELOW where a true share (0..1) lies outside `interval` (percent), else None."""
    if interval is None or interval[0] <= 100 * share <= interval[1]:
        return None
    return ABOVE if 100 * share > interval[1] else BELOW


def draw_film(rng: np.random.Generator, pools: list[np.ndarray], shares: list[float],
              cells: int) -> np.ndarray:
    """One film: class counts of `cells` cells drawn multinomially with `shares`, as a count
    samples a film, each cell an image of its class's pool (positions in the test images)
    drawn with replacement."""
    per_class = rng.multinomial(cells, shares)
    return np.concatenate([rng.choice(pool, n, replace=True)
                           for pool, n in zip(pools, per_class) if n])


def score_films(answers, composition: dict[str, float], target: str | None,
                reference: dict[str, tuple[float, float]], cells: int = CELLS,
                draws: int = DRAWS, seed: int = 0,
                beside: dict[str, float] | None = None) -> dict:
    """`draws` films of `cells` white cells drawn with `composition` (and of each class in
    `beside`, a Poisson count at that rate per white cell), each counted every way of WAYS and
    flagged, the shares and the model's classes counted beside the differential that have a
    reference interval (nucleated red cells: none in an adult, `reference.flag_beside`): the
    share of films with the target's flag (`detected`, None without a target), with a false
    flag (`false_flag`), and per class how often it was flagged on each side; and the cells
    per film the model set aside for review."""
    classes = answers.predictor.classes
    beside = beside or {}
    names = list(composition)
    index = [classes.index(c) for c in names]
    others = [c for c in classes if not is_white_cell(c) and c in reference]
    expected = {c: true_side(composition[c], reference.get(c)) for c in names} | {
        c: true_side(beside.get(c, 0.0), reference[c]) for c in others}
    pools = [np.flatnonzero(answers.truth == k) for k in index]
    shares = [composition[c] for c in names]
    beside_pools = {c: np.flatnonzero(answers.truth == classes.index(c)) for c in beside}
    rng = np.random.default_rng(seed)
    detected = {way: 0 for way in WAYS}
    false = {way: 0 for way in WAYS}
    sides = {way: {c: {ABOVE: 0, BELOW: 0} for c in [*names, *others]} for way in WAYS}
    to_review = 0
    for _ in range(draws):
        film = np.concatenate([draw_film(rng, pools, shares, cells)] + [
            rng.choice(beside_pools[c], rng.poisson(rate * cells), replace=True)
            for c, rate in beside.items()])
        to_review += int((answers.statuses[film] == UNIDENTIFIED).sum())
        for way in WAYS:
            every = counted(answers.labels[film], answers.statuses[film], answers.truth[film],
                            way)
            kept = every[np.isin(every, index)]
            flags = {c: flag(int((kept == k).sum()), len(kept), reference.get(c))
                     for c, k in zip(names, index)} | {
                c: flag_beside(int((every == classes.index(c)).sum()), len(kept), reference[c])
                for c in others}
            firm = {c: f.direction for c, f in flags.items()
                    if f is not None and f.beyond_counting_error}
            for c, side in firm.items():
                sides[way][c][side] += 1
            detected[way] += target is not None and firm.get(target) == expected[target]
            false[way] += any(expected[c] != side for c, side in firm.items())
    return {
        "composition": {c: round(composition[c], 4) for c in names},
        **({"beside": {c: round(rate, 4) for c, rate in beside.items()}} if beside else {}),
        "target": target,
        "unidentified_per_film": round(to_review / draws, 1),
        "ways": {way: {"detected": round(detected[way] / draws, 4) if target else None,
                       "false_flag": round(false[way] / draws, 4),
                       "flagged": {c: {side: round(n / draws, 4) for side, n in s.items()}
                                   for c, s in sides[way].items()}}
                 for way in WAYS},
    }


def evaluate_flags(model_dir: Path, data_dir: Path, split_file: Path | None = None,
                   split_name: str = "test", cells: int = CELLS, draws: int = DRAWS) -> dict:
    """The served model's answers on the test images, then `score_films` per scenario, against
    the catalog's reference intervals (those the app serves unless a lab sets its own)."""
    answers = served_answers(model_dir, data_dir, split_file, split_name)
    reference = intervals()
    scenarios = scenario_compositions(answers.predictor.classes, answers.truth)
    return {"data": data_label(data_dir, split_file, split_name), "n": len(answers.truth),
            "cells": cells, "draws": draws,
            "confidence_threshold": answers.predictor.trust.confidence_threshold,
            "intervals": {c: list(reference[c]) for c in answers.predictor.classes
                          if c in reference},
            "scenarios": {name: score_films(answers, composition, target, reference, cells,
                                            draws, beside=beside)
                          for name, (target, composition, beside) in scenarios.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.flags",
        description="How often the differential's reference-interval flags are right, on "
                    "normal and abnormal films drawn from a model's test images.",
        epilog="example: python -m training.flags --model wbc4 "
               "--data ../shared/data/kaggle_blood_cells/test --record",
    )
    args = parse_drawing_options(parser, argv, "film", "films per scenario (seeded)", FLAGS)
    model_dir = model_dir_of(args)
    result = evaluate_flags(model_dir, args.data, args.split_file, args.split_name,
                            args.cells, args.draws)
    if args.record:
        record_metrics(model_dir, FLAGS, result)
    print(f"{result['data']}, n={result['n']}; {args.draws} films of {args.cells} white cells "
          "per scenario; flags beyond counting error")
    for name, s in result["scenarios"].items():
        shares = ", ".join([f"{c} {v:.0%}" for c, v in s["composition"].items()] + [
            f"{c} {100 * v:g} per 100" for c, v in s.get("beside", {}).items()])
        print(f"{name} ({shares}): {s['unidentified_per_film']} cells per film to review")
        for way, w in s["ways"].items():
            found = "" if w["detected"] is None else f"detected {w['detected']:.1%}; "
            print(f"  {way:<24} {found}false flag {w['false_flag']:.1%}")


if __name__ == "__main__":
    sys.exit(main())
