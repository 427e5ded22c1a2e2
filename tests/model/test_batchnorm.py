"""FusedBatchNormalization: TF's fused kernel under the TensorFlow backend, with the exact
outputs, gradients and moving statistics of keras.layers.BatchNormalization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.blocks import FusedBatchNormalization, batch_norm

SHAPE = (4, 7, 5, 6)


def _pair(momentum=0.9, epsilon=1e-3):
    reference = keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon)
    fused = FusedBatchNormalization(momentum=momentum, epsilon=epsilon)
    reference.build(SHAPE)
    fused.build(SHAPE)
    rng = np.random.default_rng(1)
    reference.set_weights(
        [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in reference.get_weights()]
    )
    fused.set_weights(reference.get_weights())
    return reference, fused


def _train_step(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * tf.range(SHAPE[-1], dtype=y.dtype))
    return y, tape.gradient(loss, [x, *layer.trainable_variables])


def test_training_matches_keras_batchnorm():
    reference, fused = _pair()
    x = tf.constant(np.random.default_rng(0).normal(2, 3, SHAPE).astype("float32"))
    (y_ref, g_ref), (y_fused, g_fused) = _train_step(reference, x), _train_step(fused, x)
    np.testing.assert_allclose(y_fused, y_ref, atol=1e-5)
    for a, b in zip(g_fused, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Moving statistics get the biased batch variance, as Keras 3 does.
    for a, b in zip(fused.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused(x, training=False), reference(x, training=False), atol=1e-5)


def test_graph_runs_the_fused_kernel():
    _, fused = _pair()
    for training in (True, False):
        graph = (
            tf.function(lambda x, t=training: fused(x, training=t))
            .get_concrete_function(tf.TensorSpec(SHAPE, tf.float32))
            .graph
        )
        ops = {op.type for op in graph.get_operations()}
        assert "FusedBatchNormV3" in ops
        assert "SquaredDifference" not in ops


def test_frozen_layer_uses_moving_statistics():
    reference, fused = _pair()
    fused.trainable = False
    x = tf.constant(np.random.default_rng(0).normal(2, 3, SHAPE).astype("float32"))
    before = [w.copy() for w in fused.get_weights()]
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=False), atol=1e-5)
    for a, b in zip(fused.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mixed_precision_keeps_float32_statistics(dtype):
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(f"mixed_{dtype}")
    try:
        fused, reference = FusedBatchNormalization(), keras.layers.BatchNormalization()
        fused.build(SHAPE)
        reference.build(SHAPE)
        x = tf.cast(np.random.default_rng(0).normal(2, 3, SHAPE), dtype)
        y = fused(x, training=True)
        y_ref = reference(x, training=True)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert y.dtype == dtype
    assert all(w.dtype == "float32" for w in fused.weights)
    np.testing.assert_allclose(tf.cast(y, tf.float32), tf.cast(y_ref, tf.float32), atol=0.05)
    np.testing.assert_allclose(
        fused.moving_variance.numpy(), reference.moving_variance.numpy(), rtol=1e-2
    )


def test_fallback_and_names():
    layer = batch_norm(0.99, 1e-3, "stem_bn")
    assert isinstance(layer, FusedBatchNormalization) and layer.name == "stem_bn"
    layer.build(SHAPE)
    assert [w.name for w in layer.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    # Not 4-D: Keras' own path.
    flat = FusedBatchNormalization()
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    reference = keras.layers.BatchNormalization()
    np.testing.assert_allclose(flat(x, training=True), reference(x, training=True), atol=1e-5)
    clone = FusedBatchNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
