"""Per-class accuracy and the confusion matrix of an evaluation, written to model_dir.

- eval_per_class.csv: class_id, class_name, images, correct, accuracy (top-1 per true class);
- eval_confusion_matrix.csv: one row per true class, one column per predicted class (counts);
- eval_confusion_matrix.png: a heat map of the row-normalized matrix, for up to
  MAX_HEATMAP_CLASSES classes (beyond that the labels are unreadable; the CSV has it all).

Files are written atomically; an earlier evaluation's report is replaced (it describes the same
run's checkpoint; the DLLogger log keeps every evaluation's metrics).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence

import numpy as np

from utils.fileio import atomic_write_text

logger = logging.getLogger(__name__)

PER_CLASS_CSV = "eval_per_class.csv"
CONFUSION_CSV = "eval_confusion_matrix.csv"
CONFUSION_PNG = "eval_confusion_matrix.png"
MAX_HEATMAP_CLASSES = 50


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Top-1 accuracy per true class (NaN for a class without images)."""
    totals = matrix.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / totals, np.nan)


def write_eval_report(
    out_dir: str, matrix: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, object]:
    """Write the per-class CSV, the confusion-matrix CSV and (<= 50 classes) its PNG.

    Args:
      out_dir: model_dir.
      matrix: [C, C] counts, rows true class, columns predicted class.
      class_names: one per class, or None (names are the indices).

    Returns:
      {"per_class_csv", "confusion_csv", "confusion_png" (None when not drawn),
       "mean_class_accuracy" (mean over classes with images), "worst_classes"}.
    """
    num_classes = matrix.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    accuracy = per_class_accuracy(matrix)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class_id", "class_name", "images", "correct", "accuracy"])
    for i in range(num_classes):
        writer.writerow(
            [
                i,
                names[i],
                int(matrix[i].sum()),
                int(matrix[i, i]),
                "" if np.isnan(accuracy[i]) else f"{accuracy[i]:.6f}",
            ]
        )
    per_class_csv = atomic_write_text(os.path.join(out_dir, PER_CLASS_CSV), buffer.getvalue())

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["true \\ predicted", *names])
    for i in range(num_classes):
        writer.writerow([names[i], *(int(v) for v in matrix[i])])
    confusion_csv = atomic_write_text(os.path.join(out_dir, CONFUSION_CSV), buffer.getvalue())

    png = None
    if num_classes <= MAX_HEATMAP_CLASSES:
        png = _write_heatmap(os.path.join(out_dir, CONFUSION_PNG), matrix, names)
    else:
        logger.info(
            "%d classes: no confusion-matrix heat map (at most %d); see %s",
            num_classes,
            MAX_HEATMAP_CLASSES,
            confusion_csv,
        )
    present = ~np.isnan(accuracy)
    order = [i for i in np.argsort(np.where(present, accuracy, np.inf)) if present[i]][:5]
    return {
        "per_class_csv": per_class_csv,
        "confusion_csv": confusion_csv,
        "confusion_png": png,
        "mean_class_accuracy": float(accuracy[present].mean()) if present.any() else np.nan,
        "worst_classes": [(names[i], float(accuracy[i])) for i in order],
    }


def _write_heatmap(path: str, matrix: np.ndarray, names: Sequence[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalized = np.where(totals > 0, matrix / np.maximum(totals, 1), 0.0)
    n = len(names)
    size = max(4.0, 0.3 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), [s[:20] for s in names], rotation=90, fontsize=7)
    ax.set_yticks(range(n), [s[:20] for s in names], fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (fraction of each true class)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(matrix[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if normalized[i, j] > 0.5 else "black",
                    )
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
