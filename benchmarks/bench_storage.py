"""What a model folder's bytes are, against the ~30 MB budget of a committed model, and what
the two ways of storing them in fewer bytes would cost.

    python benchmarks/bench_storage.py --model-dir saved_model/wbc4

Reported:
- the folder's bytes file by file, and its total against the budget;
- the trust layer's whitening matrices stored whole (float32, d x d) and as the packed lower
  triangle of their Cholesky form (what `trust.save_trust_arrays` writes): the same distances
  in d (d + 1) / 2 numbers, so this one is free;
- float16 weights, which would halve both model files: the Keras model's probabilities on
  validation images (one view, the file's own split), float32 against its weights rounded to
  float16 (all of them, and the kernels alone), measured in the same run. A storage change
  that moves a served probability by more than rounding does is a new model, not a smaller
  file.

A folder without a fitted trust layer (an export with `--no-trust`, e.g. a trial ensemble)
gets its trust file's size from the card's feature layout instead of from disk, saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.provenance import provenance  # noqa: E402
from hematovision.card import read_card  # noqa: E402
from hematovision.predictor import KERAS_FILE, MODELS_ROOT  # noqa: E402
from hematovision.trust import TRUST_FILE  # noqa: E402

BUDGET_BYTES = 30 * 10**6  # issue 2: "keep it under ~30 MB"
FLOAT32 = 4


def folder_bytes(model_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(Path(model_dir).iterdir()) if p.is_file()}


def whitening_bytes(card: dict) -> dict[str, int]:
    """float32 bytes of the trust layer's whitening matrices, whole and packed, from the card's
    layout of the unfamiliarity features (one matrix per layer, or per ensemble member)."""
    dims = [int(layer["dim"]) for layer in card.get("unfamiliarity_features") or []]
    return {"whole": sum(d * d for d in dims) * FLOAT32,
            "packed": sum(d * (d + 1) // 2 for d in dims) * FLOAT32,
            "layers": len(dims), "widest": max(dims, default=0)}


def validation_inputs(model_dir: Path, card: dict, count: int) -> np.ndarray:
    """`count` validation images of the folder's split, evenly spaced, preprocessed as served."""
    from hematovision.preprocess import preprocess

    files = json.loads((Path(model_dir) / "splits.json").read_text())["val"]
    chosen = files[:: max(1, len(files) // count)][:count]
    root = Path(card["training"]["config"]["data"])
    size = int(card["input_size"][0])
    crop = card.get("preprocessing", {}).get("crop", "none")
    return np.stack([preprocess(root / f, size, crop) for f in chosen])


def float16_effect(model_dir: Path, x: np.ndarray) -> dict:
    """Probability change of the Keras model when its weights are rounded to float16."""
    import keras

    model = keras.models.load_model(Path(model_dir) / KERAS_FILE, compile=False)
    weights = model.get_weights()
    reference = model.predict(x, batch_size=32, verbose=0)
    parameters = sum(w.size for w in weights if w.dtype == np.float32)
    effects = {}
    for name, rounded in (("all weights", lambda w: True), ("kernels only", lambda w: w.ndim >= 2)):
        model.set_weights([w.astype(np.float16).astype(np.float32)
                           if w.dtype == np.float32 and rounded(w) else w for w in weights])
        p = model.predict(x, batch_size=32, verbose=0)
        change = np.abs(p - reference)
        effects[name] = {"max_abs_probability_change": round(float(change.max()), 4),
                         "mean_abs_probability_change": round(float(change.mean()), 5),
                         "top_class_changes": int(np.sum(p.argmax(1) != reference.argmax(1)))}
    return {"images": len(x), "parameters": int(parameters),
            "bytes_saved_per_model_file": int(parameters) * 2, **effects}


def run(model_dir: Path, images: int) -> dict:
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    files = folder_bytes(model_dir)
    whitening = whitening_bytes(card)
    fitted = TRUST_FILE in files
    if not fitted:  # class means, head and held-out predictions are small beside the matrices
        files[TRUST_FILE + " (projected, packed whitening)"] = whitening["packed"]
    total = sum(files.values())
    result = {
        "model_dir": str(model_dir),
        "files": files,
        "total_bytes": total,
        "budget_bytes": BUDGET_BYTES,
        "within_budget": total <= BUDGET_BYTES,
        "whitening": whitening,
        "trust_file_measured": fitted,
        **provenance(model_dir),
    }
    if images:
        result["float16_weights"] = float16_effect(
            model_dir, validation_inputs(model_dir, card, images))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_storage.py",
        description="A model folder's bytes against the ~30 MB budget, and what packed "
                    "whitening and float16 weights would save and cost.",
        epilog="example: python benchmarks/bench_storage.py --model-dir saved_model/wbc4",
    )
    parser.add_argument("--model-dir", type=Path, default=MODELS_ROOT / "wbc4")
    parser.add_argument("--images", type=int, default=256,
                        help="validation images for the float16 check (0 skips it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    r = run(args.model_dir, args.images)
    if args.json:
        print(json.dumps(r))
        return 0
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    print(f"model {r['model_dir']}")
    for name, size in sorted(r["files"].items(), key=lambda kv: -kv[1]):
        if size >= 100_000:
            print(f"  {name:<45} {mb(size):>9}")
    print(f"  total {mb(r['total_bytes'])} against a budget of {mb(r['budget_bytes'])}: "
          + ("within" if r["within_budget"] else "OVER"))
    w = r["whitening"]
    print(f"whitening ({w['layers']} matrices, widest {w['widest']}): whole {mb(w['whole'])}, "
          f"packed lower triangle {mb(w['packed'])} (ratio {w['packed'] / max(w['whole'], 1):.3f})")
    if "float16_weights" in r:
        f = r["float16_weights"]
        print(f"float16 weights: {mb(f['bytes_saved_per_model_file'])} less per model file; on "
              f"{f['images']} validation images against float32:")
        for name in ("all weights", "kernels only"):
            e = f[name]
            print(f"  {name:<13} max |dp| {e['max_abs_probability_change']}, mean "
                  f"{e['mean_abs_probability_change']}, top class changed on "
                  f"{e['top_class_changes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
