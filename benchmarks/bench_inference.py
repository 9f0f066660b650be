"""Model latency and throughput: the serving path (LiteRT Predictor) vs Keras model.predict.

    python benchmarks/bench_inference.py --model-dir saved_model/wbc4

Both run the same model folder on the same fixed 224x224 inputs in one process, one after the
other, so the ratio compares like with like on this machine (Keras runs the served function,
test-time augmentation included). Reported per path: median latency
of a single-image call, and median throughput of batch-32 calls. Keras is also timed as a direct
call (`model(x)`), which skips predict()'s per-call setup, to show where the difference comes from.

On a Kaggle film, the magnification check, (for a model that crops to the nucleus) finding
each white cell of the field and (with an exposure reference) correcting the exposure of the
film made 0.75 times as bright are timed beside that image's prediction, which they are added
to.

The heat map (`Predictor.explain`: the same forward pass plus reading the 7x7 feature maps and the
class activation map) is timed against the plain prediction it is an add-on to, also through
the trust layer, so the ratio is the cost a user pays for asking for a map; test-time
augmentation against the same model converted for one view.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from hematovision.card import CARD_FILE, served_views  # noqa: E402
from hematovision.fields import white_cells  # noqa: E402
from hematovision.predictor import KERAS_FILE, MODELS_ROOT, SERVING_FILE, Predictor  # noqa: E402
from hematovision.preprocess import load_image, to_input  # noqa: E402
from benchmarks.provenance import provenance  # noqa: E402


def time_calls(fn, repeats: int, warmup: int) -> list[float]:
    """Seconds per call of `fn()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def sample_jpeg(size=(320, 240), seed: int = 0) -> bytes:
    """A smear-crop-sized JPEG of noise, to time decoding and preprocessing too."""
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", quality=90)
    return out.getvalue()


# A blood film to time the magnification check on: its cost depends on what the image holds
# (a noise image is given up on at once), so it is timed on a real one where there is one.
FILM = (Path(__file__).resolve().parents[2] / "shared" / "data" / "kaggle_blood_cells" / "test"
        / "neutrophil")


def default_film() -> Path | None:
    films = sorted(FILM.glob("*.jpeg")) if FILM.is_dir() else []
    return films[0] if films else None


def run(model_dir: Path, repeats: int, batch_size: int, batch_repeats: int, threads: int,
        film: Path | None = None) -> dict:
    import keras

    from training.export import convert_to_tflite, serving_model

    measured_on = provenance(model_dir)  # before this process adds to the load
    predictor = Predictor(model_dir, num_threads=threads)
    views = served_views(predictor.card)
    trained = keras.models.load_model(model_dir / KERAS_FILE, compile=False)
    # Keras runs the very function that is served (with the same test-time augmentation).
    model = serving_model(trained, views)
    size = predictor.input_size
    rng = np.random.default_rng(0)
    batch = rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32)
    one = batch[:1]
    jpeg = sample_jpeg()
    warmup = max(3, repeats // 10)

    serving_one = time_calls(lambda: predictor.predict_arrays(one), repeats, warmup)
    plain = time_calls(lambda: predictor.predict_images_arrays([one[0]]), repeats, warmup)
    # Baseline for the Predictor's one-BLAS-thread rule: numpy's default threading.
    with threadpool_limits(limits=os.cpu_count(), user_api="blas"):
        plain_threaded_blas = time_calls(
            lambda: predictor.predict_images_arrays([one[0]]), repeats, warmup)
    explain = time_calls(lambda: predictor.explain(one[0]), repeats, warmup)
    # Baseline for test-time augmentation: the same model served on one view.
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy2(model_dir / CARD_FILE, folder)
        with contextlib.redirect_stdout(sys.stderr):  # the converter prints; --json must not
            convert_to_tflite(trained, Path(folder) / SERVING_FILE, views=1)
        one_view = Predictor(Path(folder), num_threads=threads)
        one_view_times = time_calls(lambda: one_view.predict_images_arrays([one[0]]), repeats,
                                    warmup)
    serving_e2e = time_calls(lambda: predictor.predict_images([load_image(jpeg)]), repeats, warmup)
    serving_batch = time_calls(lambda: predictor.predict_arrays(batch), batch_repeats, 2)
    keras_one = time_calls(lambda: model.predict(one, verbose=0), repeats, warmup)
    keras_call = time_calls(lambda: model(one, training=False), repeats, warmup)
    keras_batch = time_calls(lambda: model.predict(batch, verbose=0), batch_repeats, 2)
    decode = time_calls(lambda: to_input(load_image(jpeg), size, predictor.crop), repeats, warmup)
    # The magnification check beside the prediction it is added to, on the same decoded film.
    # Finding each white cell of a field, for a model that crops to the nucleus: the same way.
    checked = {}
    if film is not None and (predictor.magnification or predictor.crop_fraction is not None
                             or predictor.exposure):
        image = load_image(film)
        predict = time_calls(lambda: predictor.predict_images([image]), repeats, warmup)
        checked = {"film": film.name, "film_prediction_ms": 1000 * statistics.median(predict)}
        if predictor.magnification is not None:
            check = time_calls(lambda: predictor.magnification.ratio(image), repeats, warmup)
            checked["magnification_check_ms"] = 1000 * statistics.median(check)
        if predictor.crop_fraction is not None:
            finding = time_calls(lambda: white_cells(image), repeats, warmup)
            checked["white_cells_ms"] = 1000 * statistics.median(finding)
        if predictor.exposure is not None:
            # The dearer case: a film under-exposed enough to be measured and then scaled.
            darker = Image.eval(image, lambda v: v * 3 // 4)
            correcting = time_calls(lambda: predictor.exposure.correct(darker), repeats, warmup)
            checked["exposure_correction_ms"] = 1000 * statistics.median(correcting)

    ms = lambda times: round(1000 * statistics.median(times), 3)  # noqa: E731
    per_s = lambda times: round(batch_size / statistics.median(times), 1)  # noqa: E731
    result = {
        "model_dir": str(model_dir),
        **measured_on,
        "litert_threads": threads,
        "repeats": repeats,
        "batch_size": batch_size,
        "serving_ms_per_image": ms(serving_one),
        "serving_end_to_end_ms_320x240_jpeg": ms(serving_e2e),
        "decode_and_preprocess_ms_320x240_jpeg": ms(decode),
        "keras_predict_ms_per_image": ms(keras_one),
        "keras_direct_call_ms_per_image": ms(keras_call),
        "serving_batch_images_per_s": per_s(serving_batch),
        "prediction_ms_per_image": ms(plain),
        "prediction_with_heat_map_ms_per_image": ms(explain),
        "prediction_ms_per_image_threaded_blas": ms(plain_threaded_blas),
        "test_time_augmentation": views,  # orientations averaged per image
        "prediction_ms_per_image_one_view": ms(one_view_times),
        "keras_predict_batch_images_per_s": per_s(keras_batch),
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in checked.items()},
    }
    if "magnification_check_ms" in checked:
        result["magnification_check_cost_ratio"] = round(
            result["magnification_check_ms"] / result["film_prediction_ms"], 2)
    if "exposure_correction_ms" in checked:
        result["exposure_correction_cost_ratio"] = round(
            result["exposure_correction_ms"] / result["film_prediction_ms"], 2)
    if "white_cells_ms" in checked:
        result["white_cells_cost_ratio"] = round(
            result["white_cells_ms"] / result["film_prediction_ms"], 2)
    result["speedup_single_image"] = round(
        result["keras_predict_ms_per_image"] / result["serving_ms_per_image"], 1
    )
    result["heat_map_cost_ratio"] = round(
        result["prediction_with_heat_map_ms_per_image"] / result["prediction_ms_per_image"], 2
    )
    result["one_blas_thread_speedup"] = round(
        result["prediction_ms_per_image_threaded_blas"] / result["prediction_ms_per_image"], 2
    )
    result["tta_cost_ratio"] = round(
        result["prediction_ms_per_image"] / result["prediction_ms_per_image_one_view"], 2
    )
    result["speedup_batch"] = round(
        result["serving_batch_images_per_s"] / result["keras_predict_batch_images_per_s"], 2
    )
    return result


def against(model_dir: Path, baseline_dir: Path, repeats: int, threads: int) -> dict:
    """A whole prediction (with its status) per image, batch 1, of a model against another
    (a candidate against the served model): their calls alternate, so the load of the
    machine weighs on both alike, and the ratio is the cost of choosing the candidate."""
    models = {"model": Predictor(model_dir, num_threads=threads),
              "baseline": Predictor(baseline_dir, num_threads=threads)}
    image = np.random.default_rng(0).uniform(-1, 1, (models["model"].input_size,) * 2 + (3,))
    image = image.astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats // 10 + 3):  # untimed warm-up
        for predictor in models.values():
            predictor.predict_images_arrays([image])
    for _ in range(repeats):
        for name, predictor in models.items():
            times[name] += time_calls(lambda: predictor.predict_images_arrays([image]), 1, 0)
    ms = {name: round(1000 * statistics.median(t), 3) for name, t in times.items()}
    return {"baseline_dir": str(baseline_dir),
            "against_baseline_ms_per_image": ms["model"],
            "baseline_ms_per_image": ms["baseline"],
            "cost_vs_baseline": round(ms["model"] / ms["baseline"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_inference.py",
        description="Median latency per image and batch throughput, LiteRT serving vs Keras.",
        epilog="example: python benchmarks/bench_inference.py --model-dir saved_model/wbc4",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=MODELS_ROOT / "wbc4",
        help="a model folder with model.tflite and model.keras",
    )
    parser.add_argument("--repeats", type=int, default=200, help="timed single-image calls")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-repeats", type=int, default=10, help="timed batch calls")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="LiteRT interpreter threads (the app's default is 2; 1 per gunicorn worker)",
    )
    parser.add_argument("--baseline-dir", type=Path, default=None,
                        help="also time a whole prediction of this model folder, alternating "
                             "with the measured one's (e.g. the served model, against a "
                             "candidate), and report their ratio")
    parser.add_argument("--film", type=Path, default=default_film(),
                        help="a blood-film image to time the magnification check on (default: "
                             "the first Kaggle test neutrophil, where ../shared/data has it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)

    r = run(args.model_dir, args.repeats, args.batch_size, args.batch_repeats, args.threads,
            args.film)
    if args.baseline_dir is not None:
        r |= against(args.model_dir, args.baseline_dir, args.repeats, args.threads)
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"model {r['model_dir']} (LiteRT threads {r['litert_threads']}, "
        f"{r['repeats']} single-image calls, batch {r['batch_size']})"
    )
    print(f"{'':34}{'serving (LiteRT)':>18}{'Keras predict':>16}")
    print(
        f"{'median ms per image (batch 1)':34}{r['serving_ms_per_image']:>18.3f}"
        f"{r['keras_predict_ms_per_image']:>16.3f}"
    )
    print(
        f"{'images/s (batch ' + str(r['batch_size']) + ')':34}"
        f"{r['serving_batch_images_per_s']:>18.1f}{r['keras_predict_batch_images_per_s']:>16.1f}"
    )
    print(
        f"speed-up, single image: {r['speedup_single_image']}x   "
        f"batch throughput: {r['speedup_batch']}x"
    )
    print(
        f"for reference: Keras direct call {r['keras_direct_call_ms_per_image']:.3f} ms/image; "
        f"serving end to end for a 320x240 JPEG {r['serving_end_to_end_ms_320x240_jpeg']:.3f} ms "
        f"(decode + preprocess {r['decode_and_preprocess_ms_320x240_jpeg']:.3f} ms)"
    )
    print(
        f"prediction with status {r['prediction_ms_per_image']:.3f} ms/image; with heat map "
        f"{r['prediction_with_heat_map_ms_per_image']:.3f} ms ({r['heat_map_cost_ratio']}x); "
        f"with numpy's BLAS threaded {r['prediction_ms_per_image_threaded_blas']:.3f} ms; "
        f"one view instead of the flips {r['prediction_ms_per_image_one_view']:.3f} ms"
    )
    if "magnification_check_ms" in r:
        print(f"magnification check on {r['film']}: {r['magnification_check_ms']:.3f} ms beside "
              f"its prediction's {r['film_prediction_ms']:.3f} ms "
              f"({r['magnification_check_cost_ratio']}x)")
    if "exposure_correction_ms" in r:
        print(f"exposure correction of {r['film']} made 0.75 times as bright: "
              f"{r['exposure_correction_ms']:.3f} ms ({r['exposure_correction_cost_ratio']}x its "
              "prediction)")
    if "baseline_dir" in r:
        print(f"against {r['baseline_dir']}, calls alternating: "
              f"{r['against_baseline_ms_per_image']:.3f} ms against "
              f"{r['baseline_ms_per_image']:.3f} ms per prediction ({r['cost_vs_baseline']}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
