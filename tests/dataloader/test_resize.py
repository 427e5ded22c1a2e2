"""resize_method "bicubic_tf1": TF1 resize_bicubic, the resize of Google's v1/Lite pipelines.

Checked against an independent numpy statement of TF1's kernel: the sample position of output
pixel o is o * in / out (no half-pixel centers), Keys' cubic with a = -0.75, border indices
clamped, the fractional offset looked up in TF's 1024-entry coefficient table.
"""

import matplotlib.cbook
import numpy as np
import pytest
import tensorflow as tf

from dataloader.config import RESIZE_METHODS, DataConfig
from dataloader.preprocessing import preprocess_for_eval, resize

TABLE = 1024


def keys_cubic(t, a=-0.75):
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def tf1_weights(n_in, n_out):
    """[n_out, n_in] interpolation matrix of TF1 resize_bicubic along one axis."""
    x = np.arange(n_out) * np.float32(n_in / n_out)
    base = np.floor(x).astype(int)
    frac = np.rint((x - base) * TABLE) / TABLE
    m = np.zeros((n_out, n_in))
    for k in range(-1, 3):
        np.add.at(m, (np.arange(n_out), np.clip(base + k, 0, n_in - 1)), keys_cubic(frac - k))
    return m


def tf1_bicubic(image, size):
    h, w = image.shape[:2]
    out = np.einsum(
        "oh,hwc,pw->opc",
        tf1_weights(h, size),
        image.astype(np.float64),
        tf1_weights(w, size),
        optimize=True,
    )
    return np.clip(out, 0, 255)


@pytest.mark.parametrize("shape, size", [((37, 53, 3), 24), ((10, 13, 3), 31)])
def test_bicubic_tf1_is_tf1_resize_bicubic(shape, size):
    image = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    got = resize(tf.constant(image), size, "bicubic_tf1").numpy()
    assert got.dtype == np.float32 and got.shape == (size, size, 3)
    np.testing.assert_allclose(got, tf1_bicubic(image, size), atol=1e-3)
    batch = tf.constant(np.stack([image, image[::-1]]))
    batched = resize(batch, size, "bicubic_tf1").numpy()
    np.testing.assert_allclose(batched[0], got, atol=1e-4)
    np.testing.assert_allclose(batched[1], tf1_bicubic(image[::-1], size), atol=1e-3)
    # the exported graphs' form (matrix products) is the same transform
    portable = resize(batch, size, "bicubic_tf1", portable=True).numpy()
    np.testing.assert_allclose(portable, batched, atol=1e-3)


def test_eval_crop_of_a_photo_differs_from_tf2_bicubic():
    """The center crop + resize of v1's eval on a real photo; TF2's bicubic is a different
    transform (half-pixel centers, a = -0.5), not a rounding difference."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    encoded = tf.io.read_file(path)
    side = int(224 / 256 * 512)  # the photo is 600 x 512
    window = [(600 - side + 1) // 2, (512 - side + 1) // 2, side, side]
    crop = tf.io.decode_and_crop_jpeg(encoded, window).numpy()
    want = tf1_bicubic(crop, 224)
    got = preprocess_for_eval(encoded, 224, resize_method="bicubic_tf1").numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)
    tf2 = preprocess_for_eval(encoded, 224, resize_method="bicubic").numpy()
    assert np.abs(tf2 - got).mean() > 1.0


def test_bicubic_tf1_is_a_data_config_choice():
    assert "bicubic_tf1" in RESIZE_METHODS
    DataConfig(dataset="synthetic", image_size=32, batch_size=2, resize_method="bicubic_tf1")


@pytest.mark.parametrize("shape, size", [((37, 53, 3), 24), ((10, 13, 3), 31), ((5, 64, 3), 16)])
def test_portable_bicubic_is_tf2_resize(shape, size):
    """Exported graphs resize TF2's bicubic as matrix products too (LiteRT has no bicubic op):
    half-pixel centers, a = -0.5, samples outside the image weighted 0 and the rest renormalized,
    as TF's kernel does when downscaling and upscaling."""
    images = np.random.default_rng(1).integers(0, 256, (2, *shape)).astype(np.float32)
    portable = resize(tf.constant(images), size, "bicubic", portable=True).numpy()
    reference = tf.clip_by_value(tf.image.resize(images, [size, size], "bicubic"), 0, 255)
    np.testing.assert_allclose(portable, reference.numpy(), atol=1e-3)
