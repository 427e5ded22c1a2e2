"""Decode, crop and resize: eval center crop, train random-resized crop, JPEG and PNG."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from dataloader import preprocessing
from dataloader.config import default_crop_fraction
from tests.helpers import data_fixtures as fx


def framed_image(height=60, width=80, border=10) -> np.ndarray:
    """Class-1 colored center inside a class-0 colored frame `border` pixels wide."""
    image = fx.image_array(0, (height, width))
    image[border:-border, border:-border] = fx.class_color(1)
    return image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_eval_center_crop_drops_the_frame(fmt):
    data = fx.encode(framed_image(), fmt)
    # Shorter side 60, crop fraction 0.5 -> central 30x30: no frame pixel survives.
    out = preprocessing.preprocess_for_eval(tf.constant(data), 24, crop_fraction=0.5).numpy()
    assert out.shape == (24, 24, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), fx.class_color(1), atol=3)
    # The whole image keeps the frame.
    full = preprocessing.preprocess_for_eval(tf.constant(data), 24, crop_fraction=1.0).numpy()
    assert np.abs(full[0, 0] - fx.class_color(0)).max() < 20


def test_default_crop_fraction_is_size_over_size_plus_32():
    assert default_crop_fraction(224) == pytest.approx(0.875)
    data = tf.constant(fx.jpeg(3, (64, 64)))
    a = preprocessing.preprocess_for_eval(data, 32)
    b = preprocessing.preprocess_for_eval(data, 32, crop_fraction=32 / 64)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_eval_accepts_decoded_images_and_bicubic_stays_in_range():
    noisy = np.random.RandomState(0).randint(0, 256, (50, 70, 3)).astype(np.uint8)
    out = preprocessing.preprocess_for_eval(tf.constant(noisy), 33, resize_method="bicubic")
    assert out.shape == (33, 33, 3)
    assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_train_crop_is_random_in_range_and_seeded(fmt):
    data = tf.constant(fx.encode(framed_image(), fmt))
    outs = [
        preprocessing.preprocess_for_train(data, 16, tf.constant([i, 7]), area_min=0.05).numpy()
        for i in range(12)
    ]
    for out in outs:
        assert out.shape == (16, 16, 3) and out.min() >= 0 and out.max() <= 255
    # Different seeds give different crops; the same seed gives the same crop.
    assert len({out.tobytes() for out in outs}) > 6
    again = preprocessing.preprocess_for_train(data, 16, tf.constant([0, 7]), area_min=0.05)
    np.testing.assert_array_equal(outs[0], again.numpy())


def test_train_crop_windows_respect_area_and_aspect_ranges():
    # Sample the windows directly (one per seed) from a 300x400 image.
    for i in range(40):
        y, x, h, w = (
            int(v)
            for v in preprocessing.random_window(
                tf.constant(300), tf.constant(400), tf.constant([i, 1]), 0.08, (0.75, 4 / 3), 0.875
            )
        )
        assert 0 <= y and y + h <= 300 and 0 <= x and x + w <= 400
        is_fallback = (h, w) == (262, 262)
        area = h * w / (300 * 400)
        assert is_fallback or (0.08 - 0.01 <= area <= 1.0 and 0.7 <= w / h <= 1.4)


def test_train_flip_happens_for_some_seeds():
    left_right = fx.image_array(0, (32, 32))
    left_right[:, 16:] = fx.class_color(2)
    data = tf.constant(fx.encode(left_right, "PNG"))
    flipped = 0
    for i in range(16):
        out = preprocessing.preprocess_for_train(
            data, 32, tf.constant([i, 3]), area_min=1.0, aspect_range=(1.0, 1.0)
        ).numpy()
        flipped += out[16, 0, 0] > 100  # class 2 color on the left: flipped
    assert 2 <= flipped <= 14


def test_is_image_magic_bytes():
    assert bool(preprocessing.is_image(tf.constant(fx.jpeg(0))))
    assert bool(preprocessing.is_image(tf.constant(fx.png(0))))
    assert not bool(preprocessing.is_image(tf.constant(b"hello world")))
    assert not bool(preprocessing.is_image(tf.constant(b"")))
