"""What the app's pages cost to render on the server, for the batches a lab keeps at hand.

    python benchmarks/bench_pages.py --model-dir saved_model/wbc4

Builds the app on that model folder (through `create_app`, as `app.py` does) with stored
batches of generated results (statuses, probabilities and reviews as the app stores them; no
images are classified, so the timings are of the pages alone), and times, each as the median
of --repeat requests after a warm-up, against a baseline measured in the same run:

- the upload page listing this browser's batches (`hematovision/web/recent.py` reads each one
  from disk: --batches of --results each) against the same page with no list;
- a batch page of --results results against one of a tenth as many;
- that page with a manual count to compare (`hematovision/comparison.py`) against without;
- that page, and a review saved on it (a POST that rewrites the batch's file under its lock),
  with a full history of changes (`hematovision/web/history.py`: MAX_EVENTS events) against
  with none; and the history page itself;
- a review saved on a batch of --results stored images, whose files' times each change
  rewrites (the renewal of its retention time: `uploads.update_batch`), against the same review
  on a batch whose results have no stored image.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.provenance import provenance  # noqa: E402
from hematovision.card import read_card  # noqa: E402
from hematovision.cells import is_white_cell  # noqa: E402
from hematovision.predictor import MODELS_ROOT  # noqa: E402


def generated_results(classes: list[str], count: int, seed: int = 0) -> list[dict]:
    """`count` results as the app stores them: accepted, unidentified and a few not-a-cell
    statuses, calibrated-looking probabilities, every tenth one reviewed."""
    rng = np.random.default_rng(seed)
    results = []
    for i in range(count):
        p = rng.dirichlet(np.full(len(classes), 0.3))
        order = np.argsort(-p)
        status = rng.choice(["accepted", "unidentified", "not_a_cell"], p=[0.6, 0.38, 0.02])
        result = {"file": f"cell-{i:04d}.jpg", "image": secrets.token_hex(16),
                  "label": classes[order[0]], "status": str(status),
                  "confidence": round(float(p[order[0]]), 4),
                  "probabilities": {c: round(float(v), 4) for c, v in zip(classes, p)},
                  "candidates": [{"label": classes[k], "probability": round(float(p[k]), 4)}
                                 for k in order[:2]],
                  "scores": {"unfamiliarity": 1.0, "unfamiliarity_threshold": 2.0,
                             "confidence_threshold": 0.9, "temperature": 1.2},
                  "white_cells": 1, "red_cell_ratio": 1.0}
        if i % 10 == 0:
            result["review"] = {"label": classes[order[1]], "at": time.time()}
        results.append(result)
    return results


def median_ms(client, path: str, repeat: int) -> float:
    client.get(path)  # warm-up: templates compiled, files in the page cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return round(statistics.median(times), 2)


def full_history(count: int) -> list[dict]:
    """`count` events as the app records them: reviews of one cell after another."""
    return [{"at": time.time(), "by": "A. Technologist", "kind": "reviewed",
             "text": f"cell-{i % 1000:04d}.jpg: Neutrophil (was the model's Lymphocyte, "
                     "unidentified)"} for i in range(count)]


def review_ms(client, batch_id: str, classes: list[str], repeat: int) -> float:
    """The median time to save a review of one cell of the batch, each a change (the verdict
    alternates between two classes), so each is recorded in its history."""
    token = re.search(r'name="csrf_token" value="([^"]+)"',
                      client.get("/").get_data(as_text=True)).group(1)
    times = []
    for k in range(repeat + 1):
        start = time.perf_counter()
        response = client.post(f"/batch/{batch_id}/1/review",
                               data={"csrf_token": token, "verdict": classes[k % 2]})
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 303, response.status_code
    return round(statistics.median(times[1:]), 2)  # the first: a warm-up


def with_images(folder: Path, batch_id: str) -> str:
    """Give each result of the stored batch a stored image of its own, as an upload does (a
    small one: only the files' times are touched); the batch's id."""
    from PIL import Image

    from hematovision.web import uploads

    path = folder / f"{batch_id}.json"
    batch = json.loads(path.read_text())
    tile = Image.new("RGB", (8, 8))
    for result in batch["results"]:
        result["image"] = uploads.save_image(folder, tile)
    path.write_text(json.dumps(batch))
    return batch_id


def run(model_dir: Path, results: int = 1000, batches: int = 10, repeat: int = 20) -> dict:
    from hematovision.web import create_app, history, recent, uploads

    model_dir = Path(model_dir)
    classes = read_card(model_dir)["classes"]
    with tempfile.TemporaryDirectory() as folder:
        app = create_app({"SECRET_KEY": secrets.token_hex(16), "TESTING": True,
                          "MODELS_ROOT": str(model_dir.resolve().parent),
                          "DEFAULT_MODEL": model_dir.name,
                          "UPLOAD_FOLDER": str(Path(folder) / "uploads")})
        stored = Path(app.config["UPLOAD_FOLDER"])

        def save(count: int, seed: int, **extra) -> str:
            return uploads.save_batch(stored, {"model": model_dir.name, "classes": classes,
                                               "results": generated_results(classes, count, seed),
                                               **extra})

        listed = [save(results, seed) for seed in range(batches)]
        small = save(max(results // 10, 2), batches)
        by_hand = {"counts": {c: 25 for c in classes if is_white_cell(c)}, "other": 0,
                   "beside": {}, "at": 0.0}
        compared = save(results, 0, manual=by_hand)
        client = app.test_client()
        empty_page = median_ms(client, "/", repeat)
        with client.session_transaction() as session:
            session[recent.SESSION_KEY] = listed
        listing_page = median_ms(client, "/", repeat)
        assert all(i in client.get("/").get_data(as_text=True) for i in listed)  # all listed
        batch_bytes = (stored / f"{listed[0]}.json").stat().st_size
        small_page = median_ms(client, f"/batch/{small}", repeat)
        large_page = median_ms(client, f"/batch/{listed[0]}", repeat)
        compared_page = median_ms(client, f"/batch/{compared}", repeat)
        assert 'id="manual-comparison"' in client.get(f"/batch/{compared}").get_data(as_text=True)
        recorded = save(results, 0, history=full_history(history.MAX_EVENTS))
        history_bytes = (stored / f"{recorded}.json").stat().st_size
        recorded_page = median_ms(client, f"/batch/{recorded}", repeat)
        history_page = median_ms(client, f"/batch/{recorded}/history", repeat)
        plain_review = review_ms(client, listed[1], classes, repeat)
        recorded_review = review_ms(client, recorded, classes, repeat)
        kept = json.loads((stored / f"{recorded}.json").read_text())["history"]
        assert len(kept) == history.MAX_EVENTS  # each review recorded, the oldest dropped
        pictured = with_images(stored, save(results, 0))
        pictured_review = review_ms(client, pictured, classes, repeat)
        renewed = uploads.kept_from(uploads.load_batch(stored, pictured))
        assert all((stored / f"{r['image']}.jpg").stat().st_mtime == renewed
                   for r in uploads.load_batch(stored, pictured)["results"])
    return {
        "model_dir": str(model_dir), **provenance(model_dir), "results": results,
        "batches": batches, "repeat": repeat, "batch_json_bytes": batch_bytes,
        "upload_page_ms": empty_page, "upload_page_listing_ms": listing_page,
        "listing_cost_ratio": round(listing_page / empty_page, 2),
        "batch_page_small_ms": small_page, "small_results": max(results // 10, 2),
        "batch_page_ms": large_page, "batch_page_size_ratio": round(large_page / small_page, 2),
        "batch_page_with_manual_count_ms": compared_page,
        "manual_count_cost_ratio": round(compared_page / large_page, 2),
        "history_events": history.MAX_EVENTS, "batch_json_with_history_bytes": history_bytes,
        "batch_page_with_history_ms": recorded_page,
        "history_cost_ratio": round(recorded_page / large_page, 2),
        "history_page_ms": history_page,
        "review_ms": plain_review, "review_with_history_ms": recorded_review,
        "review_history_cost_ratio": round(recorded_review / plain_review, 2),
        "review_with_images_ms": pictured_review,
        "renewal_cost_ratio": round(pictured_review / plain_review, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=MODELS_ROOT / "wbc4")
    parser.add_argument("--results", type=int, default=1000,
                        help="results per batch (the app holds at most 1,000: MAX_BATCH_IMAGES)")
    parser.add_argument("--batches", type=int, default=10,
                        help="batches listed on the upload page (recent.MAX_REMEMBERED)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    r = run(args.model_dir, args.results, args.batches, args.repeat)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"upload page: {r['upload_page_ms']} ms; listing {r['batches']} batches of "
              f"{r['results']} results ({r['batch_json_bytes'] / 1e6:.2f} MB each): "
              f"{r['upload_page_listing_ms']} ms ({r['listing_cost_ratio']}x)")
        print(f"batch page: {r['small_results']} results {r['batch_page_small_ms']} ms, "
              f"{r['results']} results {r['batch_page_ms']} ms ({r['batch_page_size_ratio']}x); "
              f"with a manual count {r['batch_page_with_manual_count_ms']} ms "
              f"({r['manual_count_cost_ratio']}x)")
        print(f"with a history of {r['history_events']} changes "
              f"({r['batch_json_with_history_bytes'] / 1e6:.2f} MB of JSON): batch page "
              f"{r['batch_page_with_history_ms']} ms ({r['history_cost_ratio']}x), history page "
              f"{r['history_page_ms']} ms; a review saved {r['review_with_history_ms']} ms against "
              f"{r['review_ms']} ms with none ({r['review_history_cost_ratio']}x)")
        print(f"a review renewing a batch of {r['results']} stored images: "
              f"{r['review_with_images_ms']} ms against {r['review_ms']} ms with none stored "
              f"({r['renewal_cost_ratio']}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
