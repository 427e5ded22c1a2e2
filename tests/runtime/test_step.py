"""runtime/step.py: the training step equals plain SGD on the mean loss plus L2, gradient
accumulation equals the large batch, loss scaling, XLA, and two replicas equal one device."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import replica_worker
from tests.helpers.programs import step_checks
from tests.helpers.train_fixtures import batch, build_trainer, tiny_model


def test_step_is_sgd_on_the_mean_loss_plus_l2():
    """One SGD step equals w - lr * grad(mean smoothed CE + l2 |w|^2), computed by hand (the
    penalty is NVIDIA's keras l2(wd) on kernels and biases)."""
    images, labels = batch(8)
    model, opt, metrics, step, _ = build_trainer(optimizer="sgd", lr=0.1, l2=1e-2)
    reference = tiny_model()
    with tf.GradientTape() as tape:
        logits = reference(images, training=True)
        loss = tf.reduce_mean(
            keras.losses.categorical_crossentropy(
                labels, logits, from_logits=True, label_smoothing=0.1
            )
        )
        loss += 1e-2 * sum(tf.reduce_sum(v**2) for v in reference.trainable_variables)
    grads = tape.gradient(loss, reference.trainable_variables)
    step((images, labels))
    for var, ref, g in zip(
        model.trainable_variables, reference.trainable_variables, grads, strict=True
    ):
        np.testing.assert_allclose(var.numpy(), ref.numpy() - 0.1 * g.numpy(), rtol=1e-5, atol=1e-6)
    assert int(opt.iterations.numpy()) == 1
    assert metrics.result()["count"] == 8


@pytest.mark.parametrize("clip", [None, 0.05])
def test_accumulation_equals_large_batch(clip):
    """2 micro-batches of 4 == one batch of 8: weights, loss, accuracy, update count."""
    images, labels = batch(16)
    big = build_trainer(accum=1, clip=clip)
    small = build_trainer(accum=2, clip=clip)
    for i in range(2):  # two updates, so momentum and the LR step count are compared too
        x, y = images[8 * i : 8 * i + 8], labels[8 * i : 8 * i + 8]
        big[3]((x, y))
        small[3]((x.reshape(2, 4, 4, 4, 3), y.reshape(2, 4, -1)))
    for a, b in zip(big[0].trainable_variables, small[0].trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert int(big[1].iterations.numpy()) == int(small[1].iterations.numpy()) == 2
    assert big[2].result() == pytest.approx(small[2].result(), rel=1e-5)


def test_fp16_loss_scaling_step_updates_weights_and_keeps_scale():
    images, labels = batch(8)
    model, opt, metrics, step, _ = build_trainer(loss_scaling=True)
    before = [v.numpy().copy() for v in model.trainable_variables]
    step((images, labels))
    assert float(opt.dynamic_scale.numpy()) == 32768.0
    assert int(opt.iterations.numpy()) == 1
    assert any(
        not np.allclose(a, v.numpy())
        for a, v in zip(before, model.trainable_variables, strict=True)
    )
    assert np.isfinite(metrics.result()["loss"])


def test_mirrored_strategy_equals_no_strategy():
    """Two logical CPU replicas (per-replica batch 4; with and without accumulation; with loss
    scaling; float16 all-reduce) give the same weights, EMA and metrics as one replica with
    batch 8. In the replica worker:
    logical devices must be set up before TensorFlow initializes."""
    proc = replica_worker.run(step_checks.mirrored_step_equals_one_device)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MIRRORED_OK" in proc.stdout


@pytest.mark.parametrize("accum, scaling", [(1, False), (2, True)])
def test_xla_step_matches_plain_step(accum, scaling):
    """jit_compile=True (the GPU default) computes the same update as the plain step."""
    from runtime.step import StepConfig, TrainMetrics, make_train_step
    from utils.optimizers import OptimizerConfig, build_optimizer

    x, y = batch(8)
    if accum > 1:
        x, y = x.reshape(accum, 8 // accum, 4, 4, 3), y.reshape(accum, 8 // accum, -1)
    weights = []
    for jit in (False, True):
        model = tiny_model()
        opt = build_optimizer(
            OptimizerConfig(name="momentum", grad_clip_norm=0.05),
            0.1,
            model.trainable_variables,
            loss_scaling=scaling,
        )
        opt.build(model.trainable_variables)
        step = make_train_step(
            model,
            opt,
            config=StepConfig(
                grad_accum_steps=accum, label_smoothing=0.0, jit_compile=jit, l2_weight_decay=1e-3
            ),
            metrics=TrainMetrics(),
        )
        step((x, y))
        step((x, y))
        weights.append([v.numpy() for v in model.trainable_variables])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
