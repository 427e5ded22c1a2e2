"""Eval output: per-class accuracy and the confusion matrix (CSV, PNG heat map)."""

import csv
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from runtime.eval_report import (
    CONFUSION_CSV,
    CONFUSION_PNG,
    PER_CLASS_CSV,
    per_class_accuracy,
    write_eval_report,
)
from runtime.evaluate import evaluate


def logits_model(num_classes):
    """A model whose logits are its input, so each test row picks its own prediction."""
    inputs = keras.Input((num_classes,))
    return keras.Model(inputs, keras.layers.Identity()(inputs))


def test_confusion_matrix_counts_as_top1_does():
    logits = np.array(
        [[5, 1, 0], [0, 3, 1], [0, 4, 1], [1, 1, 1], [0, 0, math.nan], [0, 1, 2]], np.float32
    )
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 2, 2, 2]]
    ds = tf.data.Dataset.from_tensor_slices((logits, labels)).batch(4)
    got = evaluate(logits_model(3), ds, progress=False, confusion=True)
    matrix = got["confusion_matrix"]
    # Row 3 ties three ways and row 4 has a NaN true-class logit: neither counts as correct,
    # so both land off the diagonal (on the best other class), exactly as top-1 counts them.
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 1, 0], [2, 1, 1]])
    assert np.trace(matrix) / matrix.sum() == pytest.approx(got["top1"])
    assert "confusion_matrix" not in evaluate(logits_model(3), ds, progress=False)


def test_report_files(tmp_path):
    matrix = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    report = write_eval_report(str(tmp_path), matrix, ["cat", "dog", "fox"])
    with open(tmp_path / PER_CLASS_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["class_name"], r["images"], r["correct"], r["accuracy"]) for r in rows] == [
        ("cat", "4", "3", "0.750000"),
        ("dog", "0", "0", ""),
        ("fox", "4", "2", "0.500000"),
    ]
    with open(tmp_path / CONFUSION_CSV, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["true \\ predicted", "cat", "dog", "fox"]
    assert table[3] == ["fox", "2", "0", "2"]
    assert (tmp_path / CONFUSION_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["mean_class_accuracy"] == pytest.approx(0.625)
    assert report["worst_classes"] == [("fox", 0.5), ("cat", 0.75)]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_many_classes_get_csv_but_no_heat_map(tmp_path):
    matrix = np.eye(60, dtype=np.int64) * 2
    report = write_eval_report(str(tmp_path), matrix)
    assert report["confusion_png"] is None and not (tmp_path / CONFUSION_PNG).exists()
    assert np.all(per_class_accuracy(matrix) == 1.0)
    with open(tmp_path / PER_CLASS_CSV) as f:
        assert next(csv.DictReader(f))["class_name"] == "0"
