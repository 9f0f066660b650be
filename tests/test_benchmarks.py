"""The benchmark scripts run and report every figure the README table reads (no timing
targets here: those are the benchmarks' business)."""

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_inference_measures_the_trust_layer_against_its_baselines(trusted_model_dir):
    r = load("bench_inference").run(trusted_model_dir, repeats=3, batch_size=2, batch_repeats=1,
                                    threads=1)
    for key in ("serving_ms_per_image", "prediction_ms_per_image",
                "prediction_with_heat_map_ms_per_image", "prediction_ms_per_image_threaded_blas",
                "prediction_ms_per_image_one_view",
                "keras_predict_ms_per_image", "serving_batch_images_per_s"):
        assert r[key] > 0, key
    assert r["test_time_augmentation"] == 4  # the tiny model serves the four flips
    assert r["heat_map_cost_ratio"] == round(
        r["prediction_with_heat_map_ms_per_image"] / r["prediction_ms_per_image"], 2)


def test_bench_inference_times_the_magnification_check_beside_the_prediction(
        trusted_model_dir, tmp_path):
    """Only for a model with a magnification reference and a film to time it on."""
    import json
    import shutil

    from tests.conftest import make_smear

    model = tmp_path / "measuring"
    shutil.copytree(trusted_model_dir, model)
    card = json.loads((model / "model_card.json").read_text())
    card["magnification"] = {"red_cell_scale": 0.1, "single_image_range": [0.8, 1.3],
                             "batch_range": [0.8333, 1.25]}
    (model / "model_card.json").write_text(json.dumps(card))
    make_smear(30).save(tmp_path / "film.png")
    bench = load("bench_inference")
    r = bench.run(model, repeats=2, batch_size=1, batch_repeats=1, threads=1,
                  film=tmp_path / "film.png")
    assert r["film"] == "film.png" and r["magnification_check_ms"] > 0
    assert r["magnification_check_cost_ratio"] == round(
        r["magnification_check_ms"] / r["film_prediction_ms"], 2)
    plain = bench.run(trusted_model_dir, repeats=1, batch_size=1, batch_repeats=1, threads=1,
                      film=tmp_path / "film.png")
    assert "magnification_check_ms" not in plain  # no reference in its card
    assert "white_cells_ms" not in r and "white_cells_ms" not in plain  # neither crops


def test_bench_inference_times_finding_the_white_cells_for_a_model_that_crops(
        trusted_model_dir, tmp_path):
    import json
    import shutil

    from tests.conftest import make_smear, with_nuclei

    model = tmp_path / "cropping"
    shutil.copytree(trusted_model_dir, model)
    card = json.loads((model / "model_card.json").read_text())
    card["preprocessing"]["crop"] = "nucleus"
    (model / "model_card.json").write_text(json.dumps(card))
    with_nuclei(make_smear(30), [(80, 120, 22), (240, 110, 22)]).save(tmp_path / "film.png")
    r = load("bench_inference").run(model, repeats=2, batch_size=1, batch_repeats=1, threads=1,
                                    film=tmp_path / "film.png")
    assert r["white_cells_ms"] > 0 and "magnification_check_ms" not in r
    assert r["white_cells_cost_ratio"] == round(r["white_cells_ms"] / r["film_prediction_ms"], 2)


def test_bench_inference_times_a_candidate_against_a_baseline_model(trusted_model_dir,
                                                                    tiny_model_dir, capsys):
    bench = load("bench_inference")
    r = bench.against(trusted_model_dir, tiny_model_dir, repeats=3, threads=1)
    assert r["baseline_dir"] == str(tiny_model_dir)
    assert r["against_baseline_ms_per_image"] > 0 and r["baseline_ms_per_image"] > 0
    assert r["cost_vs_baseline"] == round(
        r["against_baseline_ms_per_image"] / r["baseline_ms_per_image"], 2)
    assert bench.main(["--model-dir", str(trusted_model_dir), "--baseline-dir",
                       str(tiny_model_dir), "--repeats", "2", "--batch-size", "1",
                       "--batch-repeats", "1", "--threads", "1"]) == 0
    assert f"against {tiny_model_dir}, calls alternating" in capsys.readouterr().out


def test_benchmark_results_say_what_they_were_measured_on(trusted_model_dir):
    import json
    import subprocess

    r = load("bench_inference").run(trusted_model_dir, repeats=1, batch_size=1, batch_repeats=1,
                                    threads=1)
    card = json.loads((trusted_model_dir / "model_card.json").read_text())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCHMARKS.parent,
                          capture_output=True, text=True).stdout.strip()
    assert r["commit"].removesuffix("+dirty") == head
    assert r["model_exported"] == card["exported"]
    assert r["load_average_1min_before"] >= 0 and r["cpus"] >= 1


def test_bench_storage_counts_the_folder_and_what_packing_and_float16_would_change(
        trusted_model_dir, capsys):
    bench = load("bench_storage")
    r = bench.run(trusted_model_dir, images=6)
    files = {p.name: p.stat().st_size for p in trusted_model_dir.iterdir() if p.is_file()}
    assert r["files"] == files and r["total_bytes"] == sum(files.values())
    assert r["within_budget"] and r["trust_file_measured"]
    # One layer ("pool", 4 wide): 16 float32 numbers whole, 10 as a packed lower triangle.
    assert r["whitening"] == {"whole": 64, "packed": 40, "layers": 1, "widest": 4}
    f16 = r["float16_weights"]
    # The tiny model: a 3x3x3x4 convolution with biases (112) and a 4x4 dense head (20).
    assert f16["images"] == 6 and f16["parameters"] == 132
    assert f16["bytes_saved_per_model_file"] == 264
    for name in ("all weights", "kernels only"):
        assert 0 <= f16[name]["max_abs_probability_change"] < 0.05
        assert 0 <= f16[name]["top_class_changes"] <= 6
    assert bench.main(["--model-dir", str(trusted_model_dir), "--images", "0"]) == 0
    out = capsys.readouterr().out
    assert "against a budget of 30.0 MB: within" in out and "float16" not in out


def test_bench_storage_projects_the_trust_file_of_a_folder_without_one(tiny_model_dir):
    r = load("bench_storage").run(tiny_model_dir, images=0)
    assert not r["trust_file_measured"] and "float16_weights" not in r
    assert r["files"]["trust.npz (projected, packed whitening)"] == 40


def test_bench_pages_times_the_upload_and_batch_pages_against_their_baselines(tiny_model_dir):
    r = load("bench_pages").run(tiny_model_dir, results=20, batches=3, repeat=2)
    for key in ("upload_page_ms", "upload_page_listing_ms", "batch_page_small_ms",
                "batch_page_ms", "batch_page_with_manual_count_ms"):
        assert r[key] > 0, key
    assert (r["results"], r["small_results"], r["batches"]) == (20, 2, 3)
    assert r["listing_cost_ratio"] == round(r["upload_page_listing_ms"] / r["upload_page_ms"], 2)
    assert r["manual_count_cost_ratio"] == round(
        r["batch_page_with_manual_count_ms"] / r["batch_page_ms"], 2)
    assert r["batch_json_bytes"] > 20 * 300  # a stored result holds its probabilities and more
    assert r["history_events"] == 5000 and r["batch_json_with_history_bytes"] > 5000 * 100
    assert r["history_cost_ratio"] == round(r["batch_page_with_history_ms"] / r["batch_page_ms"],
                                            2)
    assert r["review_history_cost_ratio"] == round(r["review_with_history_ms"] / r["review_ms"], 2)
    assert r["history_page_ms"] > 0
    assert r["review_with_images_ms"] > 0
    assert r["renewal_cost_ratio"] == round(r["review_with_images_ms"] / r["review_ms"], 2)


def test_bench_chunk_measures_each_call_size_in_a_process_of_its_own_against_the_served(
        trusted_model_dir):
    from hematovision.card import served_views
    from hematovision.predictor import VIEWS_PER_CALL

    r = load("bench_chunk").run(trusted_model_dir, images=4, repeats=1, threads=1,
                                candidates=(2, VIEWS_PER_CALL))
    views = served_views(json.loads((trusted_model_dir / "model_card.json").read_text()))
    small, served = r["candidates"]
    assert (small["views_per_call"], served["views_per_call"]) == (2, VIEWS_PER_CALL)
    assert small["images_per_call"] == max(1, 2 // views)
    assert served["images_per_call"] == VIEWS_PER_CALL // views
    assert served["speed_vs_served"] == 1.0 and small["images_per_second"] > 0
    assert all(row["peak_rss_mib"] >= row["peak_added_mib"] >= 0 for row in r["candidates"])
    assert r["served_views_per_call"] == VIEWS_PER_CALL and r["commit"]
