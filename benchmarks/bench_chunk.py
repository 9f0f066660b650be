"""How many views one interpreter call runs (`VIEWS_PER_CALL`): throughput against memory.

    python benchmarks/bench_chunk.py --model-dir saved_model/wbc4 [--json]

A server classifies a large upload in interpreter calls of up to VIEWS_PER_CALL images x
test-time views, and LiteRT sizes its memory to the largest call. Each candidate runs in a
process of its own (peak memory only grows within one), on the same fixed inputs, with one
interpreter thread as a gunicorn worker has: images per second, the process's peak resident
memory, and how much of it the calls added above what loading the model (and the inputs) took.
Ratios are against the value served now, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.provenance import provenance  # noqa: E402
from hematovision.card import served_views  # noqa: E402
from hematovision.predictor import MODELS_ROOT, VIEWS_PER_CALL, Predictor  # noqa: E402

CANDIDATES = (4, 8, 16, 32, 64, 128)


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB; 0 where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(model_dir: Path, views_per_call: int, images: int, repeats: int,
            threads: int) -> dict:
    """One candidate, in this process: images per second (median of `repeats` passes over
    `images` fixed inputs) and the peak memory the calls added to the loaded model's."""
    predictor = Predictor(model_dir, num_threads=threads)
    predictor.images_per_call = max(1, views_per_call // served_views(predictor.card))
    size = predictor.input_size
    batch = np.random.default_rng(0).uniform(-1, 1, (images, size, size, 3)).astype(np.float32)
    loaded = peak_rss_mib()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict_arrays(batch)
        rates.append(images / (time.perf_counter() - start))
    return {"views_per_call": views_per_call, "images_per_call": predictor.images_per_call,
            "images_per_second": round(float(np.median(rates)), 2),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "peak_added_mib": round(peak_rss_mib() - loaded, 1)}


def run(model_dir: Path, images: int, repeats: int, threads: int,
        candidates: tuple[int, ...] = CANDIDATES) -> dict:
    measured_on = provenance(model_dir)
    rows = []
    for views in candidates:
        command = [sys.executable, __file__, "--model-dir", str(model_dir), "--one", str(views),
                   "--images", str(images), "--repeats", str(repeats), "--threads", str(threads)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = next((r for r in rows if r["views_per_call"] == VIEWS_PER_CALL), rows[-1])
    for row in rows:
        row["speed_vs_served"] = round(row["images_per_second"] / base["images_per_second"], 3)
        row["memory_vs_served"] = round(row["peak_rss_mib"] / base["peak_rss_mib"], 3)
    return {"model_dir": str(model_dir), "served_views_per_call": base["views_per_call"],
            "images": images, "repeats": repeats, "threads": threads, "candidates": rows,
            **measured_on}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="example: python benchmarks/bench_chunk.py --model-dir saved_model/pbc8 --json "
               "> benchmarks/results/chunk-pbc8.json")
    parser.add_argument("--model-dir", type=Path, default=MODELS_ROOT / "wbc4")
    parser.add_argument("--images", type=int, default=256, help="inputs per pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes; the median is reported")
    parser.add_argument("--threads", type=int, default=1,
                        help="interpreter threads (gunicorn.conf.py gives each worker one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a candidate's own process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.model_dir, args.one, args.images, args.repeats,
                                 args.threads)))
        return
    result = run(args.model_dir, args.images, args.repeats, args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model_dir']}: {args.images} images, {args.threads} interpreter thread(s), "
          f"served VIEWS_PER_CALL {result['served_views_per_call']}")
    print("views/call  images/call  images/s  peak MiB  added MiB  speed vs served  "
          "memory vs served")
    for row in result["candidates"]:
        print(f"{row['views_per_call']:>10}  {row['images_per_call']:>11}  "
              f"{row['images_per_second']:>8.2f}  {row['peak_rss_mib']:>8.0f}  "
              f"{row['peak_added_mib']:>9.0f}  {row['speed_vs_served']:>14.3f}x  "
              f"{row['memory_vs_served']:>15.3f}x")


if __name__ == "__main__":
    main()
