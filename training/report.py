"""Plots of logged training and evaluation data, one PNG each, and `read_history`, which reads
the per-epoch CSV log the training curves are drawn from."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_history(path: Path) -> dict[str, list[float]]:
    """A run's per-epoch log (metrics.csv, written by Keras' CSVLogger) as {column: values}, in
    the form of a Keras History."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}


def plot_curves(history: dict[str, list[float]], path: Path) -> None:
    """Loss and accuracy per epoch, training and validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + metric in history:
                ax.plot(epochs, history[prefix + metric], style,
                        label=("validation " if prefix else "training ") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str = "") -> None:
    """Confusion matrix with counts, rows = true class, normalised colour per row."""
    matrix = np.asarray(matrix)
    size = max(4.5, 0.75 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(before: dict, after: dict, temperature: float, path: Path,
                     title: str = "") -> None:
    """Reliability diagram: accuracy against mean confidence per bin, before and after
    temperature scaling, with each bin's share of images underneath."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for result, style, name in ((before, "o--", "raw"), (after, "s-", f"calibrated (T={temperature:.2f})")):
        points = [(c, a) for c, a in zip(result["confidence"], result["accuracy"]) if c is not None]
        if points:
            ax.plot(*zip(*points), style, label=f"{name}: ECE {result['ece']:.3f}")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    bins = after["bins"]
    centres = (np.arange(bins) + 0.5) / bins
    total = max(sum(after["counts"]), 1)
    hist.bar(centres, np.array(after["counts"]) / total, width=1 / bins, color="tab:blue",
             alpha=0.6)
    hist.set_xlabel("confidence (calibrated bins)")
    hist.set_ylabel("share")
    hist.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_coverage(confidence: np.ndarray, correct: np.ndarray, unfamiliar: np.ndarray,
                  points: list[dict], path: Path, title: str = "") -> None:
    """Accuracy of the accepted images against the share of all images accepted, as the
    confidence threshold falls (flagged unfamiliar images are never accepted); the operating
    points' thresholds, chosen on held-out images, are marked where they land here."""
    fig, ax = plt.subplots(figsize=(5, 4))
    familiar = ~np.asarray(unfamiliar, dtype=bool)
    order = np.argsort(-confidence[familiar], kind="stable")
    hits = np.asarray(correct, dtype=float)[familiar][order]
    if len(hits):
        accepted = np.arange(1, len(hits) + 1)
        ax.plot(accepted / len(confidence), np.cumsum(hits) / accepted, "-", color="tab:blue",
                label="every threshold")
        ax.legend(loc="lower left", fontsize=8)
    else:  # e.g. another lab's cells through wbc4: its unfamiliar-image check flags them all
        ax.text(0.5, 0.5, "every image flagged unfamiliar", ha="center", transform=ax.transAxes)
    # Targets whose thresholds accept the same images share one dot and one label.
    targets: dict[tuple[float, float], list[float]] = {}
    for point in sorted(points, key=lambda p: p["target_accuracy"]):
        if point.get("accuracy_accepted") is not None:
            where = (point["accepted_rate"], point["accuracy_accepted"])
            targets.setdefault(where, []).append(point["target_accuracy"])
    for i, ((x, y), shared) in enumerate(targets.items()):
        ax.plot(x, y, "o", color="tab:red")
        label = ("target " if len(shared) == 1 else "targets ") + ", ".join(
            f"{t:.0%}" for t in shared)
        # Alternately below and above the curve, as neighbouring targets land close together;
        # left of the dot near the right edge.
        right = x > 0.7
        ax.annotate(label, (x, y), textcoords="offset points", fontsize=8,
                    xytext=(-4 if right else 4, -12 if i % 2 == 0 else 6),
                    ha="right" if right else "left")
    ax.set_xlabel("share of images accepted")
    ax.set_ylabel("accuracy on accepted images")
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
