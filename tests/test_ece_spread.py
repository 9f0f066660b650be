import json

import numpy as np
import pytest

from training import ece_spread as spread_lib
from training.calibrate import lowest_ece_temperature
from training.ece_spread import ece_spread


def calibrated_pool(groups: int = 200, per_group: int = 10, seed: int = 0):
    """Labels drawn from softmax(logits): calibrated by construction (temperature ~1)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (groups * per_group, 4))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    return logits, labels, [f"s{i // per_group}" for i in range(len(labels))]


def test_small_draws_of_a_calibrated_pool_show_more_ece_than_the_pool():
    logits, labels, groups = calibrated_pool()
    result = ece_spread(logits, labels, groups, smears=20, rounds=200, goal=0.02)
    assert result["temperature"] == pytest.approx(1.0, abs=0.15)
    assert result["pool_groups"] == 200 and result["smears_per_draw"] == 20
    low, high = result["ece_draws"]["range"]
    # 200 images per draw: bins hold few images, so ECE is inflated and spread out.
    assert result["ece_pool"] < low < result["ece_draws"]["median"] < high
    assert 0.0 <= result["share_of_draws_at_or_below_goal"] < 0.5
    assert ece_spread(logits, labels, groups, smears=20, rounds=200) == result  # seeded


def test_the_pool_records_the_lowest_ece_any_temperature_reaches():
    """The floor of temperature scaling on the pool: at or below the fitted temperature's ECE,
    and what a temperature fitted by lowest ECE gives."""
    logits, labels, groups = calibrated_pool()
    logits = logits * 3.0  # overconfident: the NLL temperature is about 3
    by_nll = ece_spread(logits, labels, groups, smears=20, rounds=20)
    floor = by_nll["lowest_ece_pool"]
    assert floor["ece"] <= by_nll["ece_pool"] and by_nll["temperature_fit"] == "nll"
    by_ece = ece_spread(logits, labels, groups, smears=20, rounds=20, temperature_fit="ece")
    assert (by_ece["temperature"], by_ece["ece_pool"]) == (floor["temperature"], floor["ece"])


def test_drawing_every_group_gives_the_pool_figure():
    logits, labels, groups = calibrated_pool(groups=30)
    result = ece_spread(logits, labels, groups, smears=30, rounds=5)
    assert result["ece_draws"]["range"] == [result["ece_pool"]] * 2


def test_a_draw_larger_than_the_pool_is_refused():
    logits, labels, groups = calibrated_pool(groups=5)
    with pytest.raises(SystemExit, match="cannot draw 6 of 5"):
        ece_spread(logits, labels, groups, smears=6)


def test_cli_writes_the_spread_into_the_model_folder(tmp_path, monkeypatch, capsys):
    logits, labels, groups = calibrated_pool(groups=40)
    files = np.array([f"c/{i}.jpg" for i in range(len(labels))])
    folds = np.arange(len(labels)) % 2
    np.savez(tmp_path / "crossfit.npz", files=files, labels=labels, folds=folds,
             logits=logits.astype(np.float32))
    (tmp_path / "crossfit.json").write_text(json.dumps({"test_time_augmentation": 4}))
    (tmp_path / "model_card.json").write_text(json.dumps(
        {"metrics": {"test": {"intervals": {"units": 12}}},
         "test_time_augmentation": {"views": ["as is", "flipped left-right"]}}))
    with pytest.raises(SystemExit, match="no out-of-fold logits of 2 test-time view"):
        spread_lib.main([str(tmp_path), "--rounds", "50"])  # logits of another way of serving
    (tmp_path / "crossfit.json").write_text(json.dumps({"test_time_augmentation": 2}))
    monkeypatch.setattr(spread_lib, "pool_groups", lambda folder, f: groups)
    spread_lib.main([str(tmp_path), "--rounds", "50"])
    written = json.loads((tmp_path / "ece_spread.json").read_text())
    assert written["smears_per_draw"] == 12  # the card's test evaluation, by default
    assert "on draws of 12 smears" in capsys.readouterr().out
    # Each way of fitting the temperature, fitted on one fold and judged on the other.
    held_out = written["temperature_fits_held_out"]
    assert held_out["folds"] == [0, 1] and set(held_out) == {"folds", "nll", "ece", "bcts"}
    other = logits[folds == 1].astype(np.float32).astype(np.float64)
    assert held_out["ece"]["temperature"][0] == pytest.approx(
        lowest_ece_temperature(other, labels[folds == 1]), abs=1e-4)
