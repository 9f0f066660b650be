"""How far ECE moves with the draw of source smears: the floor under a small test set's figure.

    python -m training.ece_spread saved_model/wbc4 [--smears N] [--rounds 1000] [--goal 0.02]

Expected calibration error measured on a test set of few smears (Kaggle `test`: ~70) reflects
which smears were drawn as much as the calibration. This takes the folder's out-of-fold logits
(`training.crossfit`: every train + validation smear, each scored by a fold model that did not
train on it, though its epoch was chosen on that fold),
calibrates them with the one temperature fitted on all of them (in sample, by the criterion the
served calibration was fitted with: lowest NLL or lowest ECE), then draws `smears` source smears
without replacement, `rounds` times, and computes the ECE of each draw's images. If that temperature, right for the whole population,
still shows an ECE above the goal on most draws of a test set's size, such a test set cannot
show the goal met, whatever the calibration. The draws are not stratified by class: a new test
set's class mix is itself a draw. It also records the lowest whole-pool ECE that any single
temperature reaches (a grid search, in sample): the floor of temperature scaling on this
population, which an NLL-fitted temperature need not reach.

It also compares the ways of fitting the temperature (training.calibrate.TEMPERATURE_FITS), and
the temperature with a per-class bias (training.calibrate.BIAS_CORRECTED, compared only), on
the crossfit folds, each fitted on the other folds and scored on its own.

Writes ece_spread.json into the folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hematovision.card import read_card, served_views
from hematovision.trust import softmax
from training import data as data_lib
from training.calibrate import (ECE_BINS, TEMPERATURE_GRID_TEXT, compare_temperature_fits,
                                fit_temperature_by, lowest_ece_temperature, reliability)
from training.config import TrainConfig
from training import crossfit

JSON_FILE = "ece_spread.json"
GOAL = 0.02  # the trust issue's bar for ECE after calibration on each model's test set
LEVEL = 0.95


def ece_spread(logits: np.ndarray, labels: np.ndarray, groups: list[str], smears: int,
               rounds: int = 1000, seed: int = 0, goal: float = GOAL,
               temperature_fit: str = "nll") -> dict:
    """ECE of `rounds` draws of `smears` whole groups, calibrated in sample on all of them
    (the temperature fitted as `temperature_fit`, training.calibrate.TEMPERATURE_FITS)."""
    temperature = fit_temperature_by(temperature_fit, logits, labels)
    probabilities = softmax(logits, temperature)
    members = data_lib.group_members(groups)
    if not 0 < smears <= len(members):
        raise SystemExit(f"cannot draw {smears} of {len(members)} source groups")
    rng = np.random.default_rng(seed)
    values = np.array([
        reliability(probabilities[index], labels[index])["ece"]
        for index in (np.concatenate([members[k] for k in rng.choice(len(members), smears,
                                                                       replace=False)])
                      for _ in range(rounds))
    ])
    tail = (1 - LEVEL) / 2
    low, median, high = np.quantile(values, [tail, 0.5, 1 - tail])
    floor_temperature = (temperature if temperature_fit == "ece"
                         else lowest_ece_temperature(logits, labels))
    floor_ece = reliability(softmax(logits, floor_temperature), labels)["ece"]
    return {
        "bins": ECE_BINS, "pool_images": len(labels), "pool_groups": len(members),
        "temperature": round(temperature, 4), "temperature_fit": temperature_fit,
        "ece_pool": round(reliability(probabilities, labels)["ece"], 4),
        "lowest_ece_pool": {"temperature": round(floor_temperature, 4),
                            "ece": round(floor_ece, 4), "grid": TEMPERATURE_GRID_TEXT},
        "smears_per_draw": smears, "rounds": rounds, "seed": seed, "level": LEVEL,
        "ece_draws": {"median": round(float(median), 4),
                      "range": [round(float(low), 4), round(float(high), 4)]},
        "goal": goal, "share_of_draws_at_or_below_goal": round(float(np.mean(values <= goal)), 4),
    }


def pool_groups(folder: Path, files: np.ndarray) -> list[str]:
    """The source group of each out-of-fold file, as training and crossfit grouped them."""
    config = TrainConfig.load(folder / "config.json")
    dataset = data_lib.grouped_image_folder(Path(config.data), config.max_per_class,
                                            config.source_map, config.field_notes)
    group_of = dict(zip(dataset.files, dataset.groups))
    groups = [group_of.get(str(f)) for f in files]
    if any(g is None for g in groups):
        raise SystemExit("an out-of-fold file has no source group; rerun training.crossfit")
    return groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.ece_spread",
        description="ECE of test-sized draws of source smears from the out-of-fold logits.",
        epilog="example: python -m training.ece_spread saved_model/wbc4",
    )
    parser.add_argument("folder", type=Path, help="model folder with crossfit.npz (training.crossfit)")
    parser.add_argument("--smears", type=int, default=0,
                        help="smears per draw (default: the source smears of the card's recorded "
                             "'test' evaluation)")
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--goal", type=float, default=GOAL, help="ECE goal to count draws against")
    args = parser.parse_args(argv)
    folder = args.folder
    card = read_card(folder)
    views = served_views(card)
    pool = crossfit.load(folder, views)  # the logits of the way the model is served
    if pool is None:
        raise SystemExit(f"{folder} has no out-of-fold logits of {views} test-time view(s), as "
                         f"it is served: run python -m training.crossfit {folder} --tta-views "
                         f"{views}")
    smears = args.smears or card.get("metrics", {}).get("test", {}).get(
        "intervals", {}).get("units", 0)
    if not smears:
        raise SystemExit("no recorded test evaluation with source smears: give --smears")
    logits = pool["logits"].astype(np.float64)
    result = ece_spread(logits, pool["labels"],
                        pool_groups(folder, pool["files"]), smears, args.rounds, args.seed,
                        args.goal, card.get("trust", {}).get("temperature_fit", "nll"))
    # How each temperature criterion does on folds it was not fitted on (the choice's basis);
    # a pool of one fold has none to hold out.
    if len(np.unique(pool["image_folds"])) > 1:
        result["temperature_fits_held_out"] = compare_temperature_fits(
            logits, pool["labels"], pool["image_folds"])
    (folder / JSON_FILE).write_text(json.dumps(result, indent=2) + "\n")
    d = result["ece_draws"]
    print(f"{result['pool_images']} out-of-fold images of {result['pool_groups']} smears, "
          f"T {result['temperature']}: ECE {result['ece_pool']} on all of them (lowest of any "
          f"T: {result['lowest_ece_pool']['ece']} at T {result['lowest_ece_pool']['temperature']}"
          f"); on draws of "
          f"{smears} smears median {d['median']} (95 %: {d['range'][0]}-{d['range'][1]}), "
          f"{result['share_of_draws_at_or_below_goal']:.1%} at or below {args.goal}")


if __name__ == "__main__":
    main()
