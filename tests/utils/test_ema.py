import keras
import numpy as np
import pytest

from utils.ema import ExponentialMovingAverage, averaged_variables, warmup_decay


def bn_model():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.5, name="bn")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def test_warmup_decay_formula():
    assert float(warmup_decay(0.9999, 0)) == pytest.approx(0.1)
    assert float(warmup_decay(0.9999, 90)) == pytest.approx(91 / 100)
    assert float(warmup_decay(0.9, 10**6)) == pytest.approx(0.9)


def test_tracks_bn_moving_statistics_but_not_integer_state():
    model = bn_model()
    names = [v.path for v in averaged_variables(model)]
    assert "bn/moving_mean" in names and "bn/moving_variance" in names
    assert "conv/kernel" in names and "head/bias" in names
    assert all(keras.backend.is_float_dtype(v.dtype) for v in averaged_variables(model))


def test_update_averages_weights_and_bn_stats_with_warmup_decay():
    model = bn_model()
    ema = ExponentialMovingAverage(model, decay=0.99)
    before = {v.path: v.numpy().copy() for v in averaged_variables(model)}
    # A training-mode forward pass moves the BN statistics; change a kernel by hand too.
    model(np.random.default_rng(0).normal(5.0, 2.0, (8, 4, 4, 2)).astype("float32"), training=True)
    kernel = model.get_layer("head").kernel
    kernel.assign(kernel.numpy() + 1.0)
    after = {v.path: v.numpy().copy() for v in averaged_variables(model)}
    assert not np.allclose(before["bn/moving_mean"], after["bn/moving_mean"])

    ema.update(step=5)
    d = 6 / 15  # min(0.99, (1 + 5) / (10 + 5))
    for shadow, var in zip(ema.shadows, averaged_variables(model), strict=True):
        expected = d * before[var.path] + (1 - d) * after[var.path]
        np.testing.assert_allclose(shadow.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_averaged_weights_swaps_in_and_restores():
    model = bn_model()
    ema = ExponentialMovingAverage(model, decay=0.5)
    raw = [v.numpy().copy() for v in averaged_variables(model)]
    for shadow in ema.shadows:
        shadow.assign(shadow.numpy() + 3.0)
    with ema.averaged_weights():
        for var, r in zip(averaged_variables(model), raw, strict=True):
            np.testing.assert_allclose(var.numpy(), r + 3.0, rtol=1e-6)
    for var, r in zip(averaged_variables(model), raw, strict=True):
        np.testing.assert_array_equal(var.numpy(), r)
    ema.copy_to_model()
    np.testing.assert_allclose(model.get_layer("bn").moving_variance.numpy(), raw[5] + 3.0)
