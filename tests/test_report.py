"""The run log reader and the plots of training/report.py: what each PNG is drawn from."""

import numpy as np
from PIL import Image

from training import report


def test_read_history_gives_each_logged_column_per_epoch(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,accuracy,loss,val_loss\n0,0.5,1.2,1.1\n1,0.75,0.8,0.9\n")
    assert report.read_history(log) == {"epoch": [0.0, 1.0], "accuracy": [0.5, 0.75],
                                        "loss": [1.2, 0.8], "val_loss": [1.1, 0.9]}
    (tmp_path / "empty.csv").write_text("epoch,loss\n")  # a run stopped in its first epoch
    assert report.read_history(tmp_path / "empty.csv") == {}


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_each_plot_writes_one_png_of_its_size(tmp_path):
    history = {"loss": [1.0, 0.6], "val_loss": [1.1, 0.9], "accuracy": [0.5, 0.8]}
    report.plot_curves(history, tmp_path / "curves.png")
    assert png_size(tmp_path / "curves.png") == (1000, 400)  # two panels, 10x4 in at 100 dpi

    report.plot_confusion(np.array([[5, 1], [0, 4]]), ["a", "b"], tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").stat().st_size > 1000

    confidence = np.array([0.9, 0.8, 0.6, 0.4])
    correct = np.array([True, True, False, True])
    points = [{"target_accuracy": 0.9, "accepted_rate": 0.5, "accuracy_accepted": 1.0},
              {"target_accuracy": 0.99, "accepted_rate": 0.5, "accuracy_accepted": 1.0}]
    report.plot_coverage(confidence, correct, np.array([False, False, False, True]), points,
                         tmp_path / "coverage.png")
    assert png_size(tmp_path / "coverage.png") == (500, 400)
    # Every image flagged unfamiliar (another lab's cells): a plot that says so, no warning.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.plot_coverage(confidence, correct, np.ones(4, dtype=bool),
                             [dict(p, accepted_rate=0.0, accuracy_accepted=None) for p in points],
                             tmp_path / "none.png")
    assert png_size(tmp_path / "none.png") == (500, 400)
