"""Helpers for the web tests: an app on a copy of the tiny model, and generated upload files.

The bad-file corpus lives here so the API and the page tests run the very same inputs.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import zlib
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from hematovision.web import create_app


def make_models_root(
    root: Path,
    tiny_model_dir: Path,
    names=("tiny",),
    card: dict | None = None,
    files: dict[str, bytes] | None = None,
) -> Path:
    """A MODELS_ROOT holding copies of the tiny model under `names`, with card updates/files."""
    for name in names:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tiny_model_dir / "model.tflite", folder / "model.tflite")
        if (tiny_model_dir / "trust.npz").is_file():
            shutil.copy2(tiny_model_dir / "trust.npz", folder / "trust.npz")
        data = json.loads((tiny_model_dir / "model_card.json").read_text())
        data.update({"name": name, **(card or {})})
        (folder / "model_card.json").write_text(json.dumps(data))
        for file_name, content in (files or {}).items():
            (folder / file_name).write_bytes(content)
    return root


def spread_operating_points(folder: Path) -> list[dict]:
    """Give a copy of the trusted tiny model held-out predictions on which two accuracy targets
    choose different thresholds (on its own, every target gives the same one), and the card's
    operating points to match; returns them, the lower target first."""
    from hematovision.trust import HELD_OUT_CONFIDENCE, HELD_OUT_CORRECT, TRUST_FILE
    from training.calibrate import operating_points

    confidence = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5])
    correct = np.array([True] * 7 + [False, True, False])
    with np.load(folder / TRUST_FILE) as arrays:
        saved = {k: arrays[k] for k in arrays.files}
    np.savez(folder / TRUST_FILE, **{**saved, HELD_OUT_CONFIDENCE: confidence,
                                     HELD_OUT_CORRECT: correct})
    card = json.loads((folder / "model_card.json").read_text())
    points = operating_points(confidence, correct, [0.85, card["trust"]["target_accuracy"]])
    assert points[0]["confidence_threshold"] < points[1]["confidence_threshold"]
    card["trust"].update(operating_points=points,
                         confidence_threshold=points[1]["confidence_threshold"])
    (folder / "model_card.json").write_text(json.dumps(card))
    return points


def make_app(tmp_path: Path, models_root: Path, **config):
    return create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test",
            "MODELS_ROOT": str(models_root),
            "DEFAULT_MODEL": "tiny",
            "UPLOAD_FOLDER": str(tmp_path / "uploads"),
            **config,
        }
    )


def upload(client, model: str, *files: tuple[str, bytes]) -> str:
    """Post `files` (name, bytes) through the upload form for `model`; the result's address."""
    response = client.post("/upload", data={
        "csrf_token": csrf_token(client), "model": model,
        "file": [(io.BytesIO(data), name) for name, data in files]})
    assert response.status_code == 303, response.get_data(as_text=True)
    return response.headers["Location"]


def save_sample(client, batch_id: str, sample_id: str = "", wbc: str = "", **more):
    """Post the batch page's sample form; the response."""
    return client.post(f"/batch/{batch_id}/sample", data={
        "csrf_token": csrf_token(client), "sample_id": sample_id, "wbc": wbc, **more})


def page(client, location: str) -> str:
    response = client.get(location)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def text(html: str) -> str:
    """Visible text with tags removed, entities decoded and whitespace collapsed, for phrase
    assertions."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def prose(html: str) -> str:
    """`text`, without the space a tag inside a sentence leaves before its punctuation (a
    name in <bdi>, then a comma)."""
    return re.sub(r" ([,.:;)])", r"\1", text(html))


def csv_of(table: str) -> io.StringIO:
    """A downloaded CSV for `csv.reader`, its byte order mark (for Excel) taken off."""
    return io.StringIO(table.removeprefix("\ufeff"))


def csrf_token(client) -> str:
    """The form token of the client's session, as the upload page embeds it."""
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def image_bytes(color=(200, 60, 60), size=(64, 48), fmt="JPEG", mode="RGB", **save) -> bytes:
    """A small noisy disc image (the cartoon cell of conftest) in any mode and format."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 3) ** 2
    array = np.full((h, w, 3), 235, dtype=np.uint8)
    array[disc] = color
    noise = np.random.default_rng(sum(color)).integers(-8, 8, array.shape)
    image = Image.fromarray(np.clip(array + noise, 0, 255).astype(np.uint8))
    if mode != "RGB":
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height`: a decompression bomb in 70 bytes."""
    data = bytearray(image_bytes(size=(8, 8), fmt="PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def sixteen_bit_grey() -> bytes:
    ramp = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    out = io.BytesIO()
    Image.fromarray(ramp).save(out, "PNG")  # uint16 arrays become mode I;16
    return out.getvalue()


def animated_gif() -> bytes:
    """Two frames: red then blue; the model must see the red one."""
    frames = [
        Image.open(io.BytesIO(image_bytes(c, fmt="PNG"))).convert("P")
        for c in [(200, 60, 60), (60, 60, 200)]
    ]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 64x48 JPEG whose EXIF orientation (6) says: show it rotated, 48 wide and 64 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes(fmt="JPEG", exif=exif.tobytes())


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


# A size no other test image has: the patched decoder below fails on this one only.
CRASHING_SIZE = (13, 7)


def crash_decoder_on(monkeypatch, exc: Exception) -> None:
    """Make Pillow's decoding of CRASHING_SIZE images raise `exc`, as its decoders can on
    hostile files with exceptions that are not OSError."""
    load = ImageFile.ImageFile.load

    def failing_load(self):
        if self.size == CRASHING_SIZE:
            raise exc
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)


# Files that must be refused with a clear message (never a 500): id, client name, content,
# a fragment of the expected message.
BAD_FILES = [
    pytest.param(
        "notes.png",
        b"these are notes, not pixels\n" * 4,
        "not an image in a format we can read",
        id="text-named-png",
    ),
    pytest.param("empty.jpg", b"", "The file is empty", id="empty"),
    pytest.param(
        "cut.jpg",
        truncated(image_bytes(size=(256, 192), fmt="JPEG")),
        "damaged or truncated",
        id="truncated-jpeg",
    ),
    pytest.param(
        "cut.png",
        truncated(image_bytes(size=(256, 192), fmt="PNG")),
        "damaged or truncated",
        id="truncated-png",
    ),
    pytest.param(
        "bomb.png",
        png_with_size(10_000, 8_000),
        "too large (10000x8000 pixels)",
        id="huge-dimensions",
    ),
    pytest.param(
        "megabomb.png", png_with_size(60_000, 60_000), "too large", id="decompression-bomb"
    ),
    pytest.param(
        "fake.jpg",
        b"\xff\xd8\xff\xe0" + bytes(200),
        "not an image in a format",
        id="jpeg-magic-then-zeros",
    ),
    pytest.param(
        "cell.svg.png",
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "not an image in a format we can read",
        id="svg-with-script",
    ),
    pytest.param("header.gif", b"GIF89a", "not an image in a format", id="gif-header-only"),
]

# Formats and modes whose damaged copies `damaged_images` makes: every decoder a lab's files are
# likely to reach, and some they are not (a decoder bug does not care how likely its format is).
DAMAGE_SOURCES = [("JPEG", "RGB", {}), ("JPEG", "L", {"progressive": True}), ("PNG", "RGBA", {}),
                  ("PNG", "P", {}), ("GIF", "P", {}), ("BMP", "RGB", {}), ("TIFF", "RGB", {}),
                  ("TIFF", "CMYK", {"compression": "tiff_lzw"}), ("TIFF", "F", {}),
                  ("WEBP", "RGB", {}), ("ICO", "RGBA", {}), ("PPM", "RGB", {}), ("TGA", "RGB", {}),
                  ("PCX", "RGB", {}), ("SGI", "RGB", {}), ("JPEG2000", "RGB", {})]


def damaged_images(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`count` seeded damaged copies of a noise image in the DAMAGE_SOURCES formats: bytes
    overwritten, cut short, inserted or zeroed, anywhere or in the header. Each is
    (a name saying its format and damage, the bytes); the same seed gives the same files."""
    rng = np.random.default_rng(seed)
    noise = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    sources = []
    for fmt, mode, save in DAMAGE_SOURCES:
        buffer = io.BytesIO()
        try:
            noise.convert(mode).save(buffer, fmt, **save)
        except (OSError, KeyError):  # a codec this Pillow build lacks
            continue
        sources.append((f"{fmt.lower()}-{mode.lower()}", buffer.getvalue()))
    files = []
    for i in range(count):
        name, data = sources[i % len(sources)]
        data = bytearray(data)
        damage = ("overwrite", "cut", "insert", "zero", "header")[int(rng.integers(5))]
        at = int(rng.integers(len(data)))
        if damage == "overwrite":
            for j in rng.integers(len(data), size=int(rng.integers(1, 20))):
                data[j] = int(rng.integers(256))
        elif damage == "cut":
            data = data[:max(1, at)]
        elif damage == "insert":
            data[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif damage == "zero":
            end = min(len(data), at + int(rng.integers(1, 200)))
            data[at:end] = bytes(end - at)
        else:
            for j in rng.integers(min(64, len(data)), size=int(rng.integers(1, 6))):
                data[j] = int(rng.integers(256))
        files.append((f"{i}-{name}-{damage}", bytes(data)))
    return files


# Unusual but valid images that must be classified.
ODD_IMAGES = [
    pytest.param("cmyk.jpg", lambda: image_bytes(fmt="JPEG", mode="CMYK"), id="cmyk-jpeg"),
    pytest.param("alpha.png", lambda: image_bytes(fmt="PNG", mode="RGBA"), id="rgba-png"),
    pytest.param("grey16.png", sixteen_bit_grey, id="16-bit-grey-png"),
    pytest.param("grey.png", lambda: image_bytes(fmt="PNG", mode="L"), id="grey-png"),
    pytest.param("palette.png", lambda: image_bytes(fmt="PNG", mode="P"), id="palette-png"),
    pytest.param("anim.gif", animated_gif, id="animated-gif"),
    pytest.param("rotated.jpg", exif_rotated_jpeg, id="exif-rotated-jpeg"),
    pytest.param("cell.tif", lambda: image_bytes(fmt="TIFF"), id="tiff"),
    pytest.param("cell.bmp", lambda: image_bytes(fmt="BMP"), id="bmp"),
    pytest.param("cell.webp", lambda: image_bytes(fmt="WEBP"), id="webp"),
    pytest.param("cell.png.jpg", lambda: image_bytes(fmt="PNG"), id="png-named-jpg"),
]

# Client file names and what is shown back: no path, no control characters, bounded length.
HOSTILE_NAMES = [
    pytest.param("../../etc/passwd.png", "passwd.png", id="dot-dot-slash"),
    pytest.param("/abs/path/cell.jpg", "cell.jpg", id="absolute"),
    pytest.param("a\x00b.png", "ab.png", id="nul"),
    pytest.param("血液 細胞 ✓.png", "血液 細胞 ✓.png", id="unicode"),
    pytest.param("x" * 300 + ".png", "x" * 115 + "….png", id="very-long"),
    pytest.param("..", "..", id="dot-dot-only"),
    pytest.param("=HYPERLINK(1).png", "=HYPERLINK(1).png", id="formula"),
]


def stored_json(client, batch_id: str) -> dict:
    """A batch as stored on disk by the client's app."""
    folder = Path(client.application.config["UPLOAD_FOLDER"])
    return json.loads((folder / f"{batch_id}.json").read_text())


def aged(folder: Path, batch_id: str, seconds: float) -> None:
    """Make the batch stored in `folder` `seconds` older, as if that time had passed: its
    upload, its last renewal and its files' times, by which the purge goes."""
    from hematovision.web import uploads

    path = folder / f"{batch_id}.json"
    batch = json.loads(path.read_text())
    batch["created"] -= seconds
    if "kept_from" in batch:
        batch["kept_from"] -= seconds
    path.write_text(json.dumps(batch))
    stamp = uploads.kept_from(batch)
    for item in batch["results"]:
        if item.get("image"):
            os.utime(folder / f"{item['image']}.jpg", (stamp, stamp))
    os.utime(path, (stamp, stamp))


def deleted_before_every_update(monkeypatch, client, batch_id: str) -> Path:
    """Make the batch be deleted (as by another tab) just before the next change to any stored
    batch; the path of its file."""
    from hematovision.web import uploads

    folder = Path(client.application.config["UPLOAD_FOLDER"])
    real = uploads.update_batch

    def deleted_first(*args, **kwargs):
        uploads.delete_batch(folder, batch_id)
        return real(*args, **kwargs)

    monkeypatch.setattr(uploads, "update_batch", deleted_first)
    return folder / f"{batch_id}.json"


def batch_as_said(client, model: str, answers: list[tuple[str, str, float]]) -> str:
    """A batch of as many generated images as `answers`, each result then rewritten to what the
    model is said to have answered (label, status, confidence), so that a test knows what every
    list and count holds whatever the tiny model made of the images (no held-out band: the
    tiny model's would be of other confidences, and mark cells below target); the batch's
    id."""
    from tests.conftest import CELL_COLORS
    from hematovision.web import uploads

    files = [(f"{i}.png", image_bytes(CELL_COLORS[i % 4], size=(64 + i, 48), fmt="PNG"))
             for i in range(len(answers))]
    batch_id = upload(client, model, *files).rsplit("/", 1)[1]

    def as_said(batch: dict) -> None:
        for result, (label, status, confidence) in zip(batch["results"], answers):
            result.update(label=label, status=status, confidence=confidence)
            result.get("scores", {}).pop("held_out_band", None)

    uploads.update_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id, as_said)
    return batch_id


def review_cells(client, batch_id: str, **verdicts: str) -> None:
    """Save verdicts through the review page's list of every cell (`n3="neutrophil"`: the
    verdict for result 3)."""
    response = client.post(f"/batch/{batch_id}/review?show=all", data={
        "csrf_token": csrf_token(client),
        **{f"verdict-{k.removeprefix('n')}": v for k, v in verdicts.items()}})
    assert response.status_code == 303, response.get_data(as_text=True)


def shown_count(client, batch_id: str) -> str:
    """The fingerprint of the count the batch page shows, as its sign-off form sends it."""
    return re.search(r'name="count" value="(\w+)"', page(client, f"/batch/{batch_id}")).group(1)


def shown_signoff(client, batch_id: str) -> str:
    """The sign-off the batch page shows, as its sign-off form sends it ("": none). A page
    whose sign-off stands has no form but to withdraw it; signing again is a form refused
    for it and shown back, which carries it: its time, as stored."""
    form = re.search(r'name="signed" value="([^"]*)"',
                     client.get(f"/batch/{batch_id}").get_data(as_text=True))
    if form:
        return form.group(1)
    from hematovision.web import signoff, uploads

    stored = uploads.load_batch(Path(client.application.config["UPLOAD_FOLDER"]), batch_id)
    return signoff.shown_as(stored) if stored else ""


SAMPLE_ID = "S-0001"


def give_the_sample_an_id(client, batch_id: str) -> None:
    """SAMPLE_ID for a batch whose sample has none, its white-cell count kept."""
    described = stored_json(client, batch_id).get("sample") or {}
    if described.get("id"):
        return
    count = described.get("white_cells_per_litre")
    nucleated = {"wbc_includes_nrbc": "on"} if described.get("includes_nucleated_red_cells") else {}
    assert save_sample(client, batch_id, SAMPLE_ID, "" if count is None else f"{count:g}",
                       **nucleated).status_code == 303


def sign_off(client, batch_id: str, name: str = "J. Smith", count: str | None = None,
             signed: str | None = None, **more):
    """Post the batch page's sign-off form as the page shows it now (or with `count` and
    `signed`, the count and the sign-off a page showed earlier); the response. A batch whose
    sample has no ID yet is given one first (SAMPLE_ID), as the page asks, where the count is
    the page's now: a test of a count shown earlier gives its sample an ID itself."""
    if count is None:
        give_the_sample_an_id(client, batch_id)
    return client.post(f"/batch/{batch_id}/signoff", data={
        "csrf_token": csrf_token(client), "signed_by": name,
        "count": shown_count(client, batch_id) if count is None else count,
        "signed": shown_signoff(client, batch_id) if signed is None else signed, **more})
