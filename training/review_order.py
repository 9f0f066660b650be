"""Where a model's wrongly accepted cells lie when a technologist checks the accepted cells
least sure first, on films drawn from its test images: what the order of the review page's
"every cell" list rests on.

    python -m training.review_order --model wbc4 \
        --data ../shared/data/kaggle_blood_cells/test --record
    python -m training.review_order --model pbc8 --data ../shared/data/pbc \
        --split-file saved_model/pbc8/splits.json --record

The served model reads every test image once (the app's path). Films of --cells white cells
are then drawn, --draws times (seeded), from a normal adult differential as `training.flags`
draws them (class counts multinomial, each cell a test image of its class). In each film the
accepted cells are ordered by calibrated confidence, least sure first; for each share of them
checked (FRACTIONS, rounded up), the wrongly accepted cells found, against the same number of
cells checked in upload order (a random order: on average that share of them) and against the
same share of each class's cells checked least sure first (grouped by the class the model gave,
at least one cell of each: the order a review by class would give). Where the model keeps its
held-out predictions, also the accepted cells a batch marks "below target" (those whose
band of held-out images does not show the accuracy target: `Trust.band`'s below_target): how
many a film has, and the share of the wrong ones among them.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from hematovision.card import REVIEW_ORDER, record_metrics
from hematovision.predictor import model_dir_of
from hematovision.trust import ACCEPTED
from training.differential import CELLS, DRAWS, parse_drawing_options, served_answers
from training.evaluate import data_label
from training.flags import NORMAL, draw_film, scenario_compositions

FRACTIONS = (0.1, 0.2, 0.3, 0.5)


def checked_first(groups: np.ndarray, confidence: np.ndarray, fraction: float) -> np.ndarray:
    """Which cells a reviewer sees who checks the least sure `fraction` of each group (rounded
    up, so at least one cell of every group): a mask over the cells. Ties keep upload order."""
    seen = np.zeros(len(groups), dtype=bool)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        order = members[np.argsort(confidence[members], kind="stable")]
        seen[order[:math.ceil(fraction * len(members))]] = True
    return seen


def score_order(answers, composition: dict[str, float], fractions=FRACTIONS,
                cells: int = CELLS, draws: int = DRAWS, seed: int = 0,
                near: np.ndarray | None = None) -> dict:
    """`draws` films of `cells` white cells drawn with `composition`; per film its accepted
    cells and the wrong ones among them, and for each fraction the cells checked and the wrong
    ones found least sure first, in upload order (expected), and by class least sure first.
    Shares found are pooled over the films (found / wrong). `near`, per image: whether an
    accepted answer is marked below target; then the marked cells a film and the wrong
    ones among them too ("near_threshold")."""
    classes = answers.predictor.classes
    names = list(composition)
    pools = [np.flatnonzero(answers.truth == classes.index(c)) for c in names]
    shares = [composition[c] for c in names]
    rng = np.random.default_rng(seed)
    accepted = wrong = marked = marked_wrong = 0
    zeros = dict.fromkeys(fractions, 0.0)
    checked, least_sure, upload_order, class_checked, by_class = (
        dict(zeros) for _ in range(5))
    for _ in range(draws):
        film = draw_film(rng, pools, shares, cells)
        film = film[answers.statuses[film] == ACCEPTED]
        if not len(film):
            continue
        labels, confidence = answers.labels[film], answers.confidence[film]
        mistaken = labels != answers.truth[film]
        accepted += len(film)
        wrong += int(mistaken.sum())
        if near is not None:
            marked += int(near[film].sum())
            marked_wrong += int(mistaken[near[film]].sum())
        order = np.argsort(confidence, kind="stable")
        for f in fractions:
            count = math.ceil(f * len(film))
            checked[f] += count
            least_sure[f] += int(mistaken[order[:count]].sum())
            upload_order[f] += mistaken.sum() * count / len(film)
            seen = checked_first(labels, confidence, f)
            class_checked[f] += int(seen.sum())
            by_class[f] += int(mistaken[seen].sum())
    return {
        "composition": {c: round(composition[c], 4) for c in names},
        "accepted_per_film": round(accepted / draws, 1),
        "wrong_per_film": round(wrong / draws, 2),
        "fractions": [{"fraction": f,
                       "checked_per_film": round(checked[f] / draws, 1),
                       "found_least_sure": _share(least_sure[f], wrong),
                       "found_upload_order": _share(upload_order[f], wrong),
                       "by_class": {"checked_per_film": round(class_checked[f] / draws, 1),
                                    "found": _share(by_class[f], wrong)}}
                      for f in fractions],
        **({"near_threshold": {"checked_per_film": round(marked / draws, 1),
                               "found": _share(marked_wrong, wrong)}}
           if near is not None else {}),
    }


def _share(found: float, wrong: int) -> float | None:
    return round(found / wrong, 4) if wrong else None


def evaluate_review_order(model_dir: Path, data_dir: Path, split_file: Path | None = None,
                          split_name: str = "test", cells: int = CELLS,
                          draws: int = DRAWS) -> dict:
    """The served model's answers on the test images, then `score_order` on normal films."""
    answers = served_answers(model_dir, data_dir, split_file, split_name)
    _, normal, _ = scenario_compositions(answers.predictor.classes, answers.truth)[NORMAL]
    trust = answers.predictor.trust
    near = None if trust.held_out is None else np.array(
        [trust.band(c)["below_target"] for c in answers.confidence])
    return {"data": data_label(data_dir, split_file, split_name), "n": len(answers.truth),
            "cells": cells, "draws": draws,
            "confidence_threshold": trust.confidence_threshold,
            **score_order(answers, normal, FRACTIONS, cells, draws, near=near)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.review_order",
        description="How many of a model's wrongly accepted cells a technologist finds by "
                    "checking the accepted cells least sure first, on normal films drawn from "
                    "its test images.",
        epilog="example: python -m training.review_order --model wbc4 "
               "--data ../shared/data/kaggle_blood_cells/test --record",
    )
    args = parse_drawing_options(parser, argv, "film", "films drawn (seeded)", REVIEW_ORDER)
    model_dir = model_dir_of(args)
    result = evaluate_review_order(model_dir, args.data, args.split_file, args.split_name,
                                   args.cells, args.draws)
    if args.record:
        record_metrics(model_dir, REVIEW_ORDER, result)
    print(f"{result['data']}, n={result['n']}; {args.draws} normal films of {args.cells} white "
          f"cells: {result['accepted_per_film']} accepted, {result['wrong_per_film']} of them "
          "wrong, per film")
    for row in result["fractions"]:
        print(f"  least sure {row['fraction']:.0%} ({row['checked_per_film']} cells): found "
              f"{_pct(row['found_least_sure'])} of the wrong ones; in upload order "
              f"{_pct(row['found_upload_order'])}; each class's least sure "
              f"{row['fraction']:.0%} ({row['by_class']['checked_per_film']} cells) "
              f"{_pct(row['by_class']['found'])}")
    if marked := result.get("near_threshold"):
        print(f"  below target ({marked['checked_per_film']} cells): found "
              f"{_pct(marked['found'])} of the wrong ones")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    sys.exit(main())
