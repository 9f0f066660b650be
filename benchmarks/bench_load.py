"""Load run against gunicorn on loopback: single-image POST /api/predict requests.

    python benchmarks/bench_load.py --model-dir saved_model/wbc4

Starts `gunicorn -c gunicorn.conf.py "app:create_app()"` on a free 127.0.0.1 port serving that
model folder, sends a bounded number of requests (default 1,000) from a fixed number of
concurrent keep-alive clients (default 8), prints p50/p95 latency, throughput, errors and the
workers' memory, then stops gunicorn. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import provenance  # noqa: E402
BOUNDARY = "hematovision-bench-boundary"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart_body(image: bytes, name: str = "cell.jpg", copies: int = 1) -> bytes:
    """A form of `copies` file parts, each the image."""
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + image + b"\r\n"
    return part * copies + f"--{BOUNDARY}--\r\n".encode()


def sample_jpeg(size=(320, 240)) -> bytes:
    """A smear-crop-sized JPEG (the wbc4 input), noise so that decoding does real work."""
    array = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", quality=90)
    return out.getvalue()


def start_gunicorn(
    model_dir: Path, port: int, workers: int | None, log_path: Path, upload_dir: Path
) -> subprocess.Popen:
    env = {
        **os.environ,
        "HEMATOVISION_MODELS_ROOT": str(model_dir.resolve().parent),
        "HEMATOVISION_DEFAULT_MODEL": model_dir.name,
        "HEMATOVISION_SECRET_KEY": secrets.token_hex(16),  # writes nothing to instance/
        "HEMATOVISION_UPLOAD_FOLDER": str(upload_dir),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "--bind",
        f"127.0.0.1:{port}",
        "--access-logfile",
        os.devnull,
    ]
    if workers:
        command += ["--workers", str(workers)]
    command.append("app:create_app()")
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(process: subprocess.Popen, port: int, log_path: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"gunicorn exited ({process.returncode}):\n{log_path.read_text()[-3000:]}"
            )
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/api/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"gunicorn not ready after {timeout} s:\n{log_path.read_text()[-3000:]}")


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def memory_mib(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": fields.get("VmRSS", 0.0), "peak_rss_mib": fields.get("VmHWM", 0.0)}


def load(
    port: int, body: bytes, requests: int, concurrency: int
) -> tuple[list[float], list[str], float]:
    """POST `requests` times from `concurrency` keep-alive clients: (latencies, errors, wall s)."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    remaining = [requests]

    def client() -> None:
        # A request of many images may take a while behind others in the model.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                if remaining[0] == 0:
                    break
                remaining[0] -= 1
            start = time.perf_counter()
            try:
                connection.request("POST", "/api/predict", body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                ok = response.status == 200 and all(
                    "label" in r for r in json.loads(data)["results"])
                error = None if ok else f"HTTP {response.status}: {data[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if error:
                    errors.append(error)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - started


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_load.py",
        description="Bounded load run of POST /api/predict against gunicorn on 127.0.0.1.",
        epilog="example: python benchmarks/bench_load.py --model-dir saved_model/wbc4 "
        "--requests 1000 --concurrency 8",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=ROOT / "saved_model" / "wbc4",
        help="the model folder to serve",
    )
    parser.add_argument("--requests", type=int, default=1000, help="total requests (bounded)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first")
    parser.add_argument(
        "--workers", type=int, default=None, help="gunicorn workers (default: gunicorn.conf.py)"
    )
    parser.add_argument(
        "--image",
        type=Path,
        default=None,
        help="image file to send (default: a generated 320x240 JPEG)",
    )
    parser.add_argument("--images-per-request", type=int, default=1,
                        help="files per request, each the image (a batch uploaded at once)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    if not (args.model_dir / "model.tflite").is_file():
        parser.error(f"no model.tflite in {args.model_dir}")

    body = multipart_body(
        args.image.read_bytes() if args.image else sample_jpeg(),
        args.image.name if args.image else "cell.jpg",
        args.images_per_request,
    )
    measured_on = provenance(args.model_dir)  # before gunicorn adds to the load
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hematovision-bench-") as tmp:
        log_path = Path(tmp) / "gunicorn.log"
        process = start_gunicorn(args.model_dir, port, args.workers, log_path, Path(tmp) / "up")
        try:
            wait_ready(process, port, log_path)
            load(port, body, args.warmup, args.concurrency)
            latencies, errors, wall = load(port, body, args.requests, args.concurrency)
            workers = {pid: memory_mib(pid) for pid in worker_pids(process.pid)}
        finally:
            stop(process)

    ms = [1000 * t for t in latencies]
    result = {
        "model_dir": str(args.model_dir),
        **measured_on,
        "requests": len(latencies),
        "images_per_request": args.images_per_request,
        "concurrency": args.concurrency,
        "errors": len(errors),
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 1),
        "latency_ms": {
            "p50": round(percentile(ms, 50), 1),
            "p95": round(percentile(ms, 95), 1),
            "p99": round(percentile(ms, 99), 1),
            "max": round(max(ms), 1),
            "mean": round(statistics.fmean(ms), 1),
        },
        "workers": [{"pid": pid, **m} for pid, m in workers.items()],
        "first_errors": errors[:3],
    }
    if args.json:
        print(json.dumps(result))
    else:
        lat = result["latency_ms"]
        print(f"gunicorn on 127.0.0.1:{port}, model {args.model_dir}, {len(workers)} workers")
        print(
            f"{result['requests']} requests of {args.images_per_request} image(s), "
            f"{args.concurrency} concurrent clients, "
            f"{result['errors']} errors, {result['wall_s']} s"
        )
        print(f"throughput {result['throughput_rps']} requests/s")
        print(f"latency ms: p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}")
        for w in result["workers"]:
            print(f"worker {w['pid']}: RSS {w['rss_mib']} MiB (peak {w['peak_rss_mib']} MiB)")
        for error in result["first_errors"]:
            print(f"error: {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
