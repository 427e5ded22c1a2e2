"""scikit-learn's bundled 8x8 digits as uint8 RGB arrays split 80/20, without TensorFlow.

`--dataset digits` (dataloader.sources.DigitsSource) reads these arrays; scripts/export_digits.py
writes the validation split as PNG files for the quick start's predict step without loading
TensorFlow.
"""

from __future__ import annotations

import numpy as np

DIGITS_TRAIN_FRACTION, DIGITS_SPLIT_SEED = 0.8, 0


def digits_splits() -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """({"train" | "validation": (uint8 images [N, 8, 8, 3], int32 labels [N])}, class names).

    Gray levels 0..16 are scaled to 0..255 and repeated to RGB; a fixed permutation (seed 0)
    splits the 1797 images 80/20.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int32)
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(images))
    n_train = int(DIGITS_TRAIN_FRACTION * len(images))
    splits = {
        "train": (images[order[:n_train]], labels[order[:n_train]]),
        "validation": (images[order[n_train:]], labels[order[n_train:]]),
    }
    return splits, tuple(str(n) for n in digits.target_names)
