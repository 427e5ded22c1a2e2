import os
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from runtime.stages import stage_for_epoch, stage_schedule
from tests import replica_worker
from tests.train_fixtures import batch, build_trainer, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- stages ---------------------------------------------------------------------------------


def test_stage_schedule_interpolates_from_base_to_final():
    stages = stage_schedule(
        10,
        4,
        image_size=(128, 300),
        raug_magnitude=(5.0, 15.0),
        mixup_alpha=(0.0, 0.3),
        cutmix_alpha=(0.1, 0.4),
    )
    assert [(s.first_epoch, s.end_epoch) for s in stages] == [(0, 2), (2, 4), (4, 6), (6, 10)]
    assert [s.image_size for s in stages] == [128, 185, 243, 300]
    assert [s.raug_magnitude for s in stages] == pytest.approx(
        [5.0, 8.3333, 11.6667, 15.0], abs=1e-4
    )
    assert [s.mixup_alpha for s in stages] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [s.cutmix_alpha for s in stages] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert [stage_for_epoch(stages, e).index for e in range(11)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        3,
        3,
        3,
    ]


def test_single_stage_uses_final_values():
    (stage,) = stage_schedule(
        3,
        1,
        image_size=(128, 224),
        raug_magnitude=(5, 10),
        mixup_alpha=(0, 0.2),
        cutmix_alpha=(0, 0),
    )
    assert (stage.first_epoch, stage.end_epoch, stage.image_size, stage.mixup_alpha) == (
        0,
        3,
        224,
        0.2,
    )


@pytest.mark.parametrize("n_stages", [0, 4])
def test_stage_count_must_fit_epochs(n_stages):
    with pytest.raises(ValueError, match="n_stages must be in 1..max_epochs=3"):
        stage_schedule(
            3,
            n_stages,
            image_size=(1, 2),
            raug_magnitude=(0, 0),
            mixup_alpha=(0, 0),
            cutmix_alpha=(0, 0),
        )


# --- the training step ----------------------------------------------------------------------


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
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        from runtime.distribute import create_strategy
        from tests.train_fixtures import batch, build_trainer
        dist = create_strategy(num_gpus=0, cpu_replicas=2)
        strategy = dist.strategy
        assert strategy.num_replicas_in_sync == 2
        images, labels = batch(8)
        for accum, scaling in ((1, False), (2, False), (1, True)):
            single = build_trainer(clip=0.05, loss_scaling=scaling, ema_decay=0.9)
            single[3]((images, labels))
            mirrored = build_trainer(dist, accum=accum, clip=0.05, loss_scaling=scaling,
                                     ema_decay=0.9)
            def shard(ctx, data):
                part = data[4 * ctx.replica_id_in_sync_group: 4 * ctx.replica_id_in_sync_group + 4]
                return part.reshape((accum, 4 // accum) + part.shape[1:]) if accum > 1 else part
            x = strategy.experimental_distribute_values_from_function(lambda c: shard(c, images))
            y = strategy.experimental_distribute_values_from_function(lambda c: shard(c, labels))
            mirrored[3]((x, y))
            pairs = list(zip(single[0].trainable_variables, mirrored[0].trainable_variables))
            pairs += list(zip(single[4].shadows, mirrored[4].shadows))
            for a, b in pairs:
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
            assert int(mirrored[1].iterations.numpy()) == 1
            assert abs(single[2].result()["loss"] - mirrored[2].result()["loss"]) < 1e-5
        # float16 all-reduce: the same update up to float16 rounding of the gradients.
        compressed_dist = create_strategy(num_gpus=0, cpu_replicas=2, fp16_compression=True)
        compressed = compressed_dist.strategy
        single = build_trainer(clip=0.05)
        single[3]((images, labels))
        mirrored = build_trainer(compressed_dist, clip=0.05)
        x = compressed.experimental_distribute_values_from_function(lambda c: images[4 * c.replica_id_in_sync_group:][:4])
        y = compressed.experimental_distribute_values_from_function(lambda c: labels[4 * c.replica_id_in_sync_group:][:4])
        mirrored[3]((x, y))
        for a, b in zip(single[0].trainable_variables, mirrored[0].trainable_variables):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)
        print("MIRRORED_OK")
    """)
    proc = replica_worker.run(script)
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


def test_stage_line_names_only_the_settings_in_effect():
    from runtime.stages import Stage, describe_stage

    stage = Stage(
        index=0,
        first_epoch=0,
        end_epoch=300,
        image_size=224,
        raug_magnitude=10.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
    )
    assert describe_stage(stage, 1, "none", False) == "stage 1/1: epochs 1-300, image size 224"
    assert describe_stage(stage, 1, "none", False, with_epochs=False) == "stage 1/1: image size 224"
    mixed = Stage(
        index=1,
        first_epoch=3,
        end_epoch=6,
        image_size=128,
        raug_magnitude=5.0,
        mixup_alpha=0.2,
        cutmix_alpha=0.0,
    )
    assert describe_stage(mixed, 2, "randaugment", True) == (
        "stage 2/2: epochs 4-6, image size 128, RandAugment magnitude 5.00, mixup 0.200 (in the step)"
    )
    assert "autoaugment" in describe_stage(stage, 1, "autoaugment", False)


def test_params_json_gets_the_derived_values_once_the_strategy_exists(tmp_path):
    import json

    from runtime import train
    from tests.tiny_run import tiny_params

    params = tiny_params(
        tmp_path,
        "train",
        "--max_epochs",
        "4",
        "--train_batch_size",
        "16",
        "--lr_warmup_epochs",
        "1",
        "--n_stages",
        "2",
        "--base_img_size",
        "24",
    )
    run = train.build_run(params)
    run.log.close()
    with open(tmp_path / "params.json") as f:
        derived = json.load(f)["derived"]
    assert derived["num_replicas"] == 1 and derived["num_workers"] == 1
    assert derived["global_batch_size"] == 16
    assert derived["steps_per_epoch"] == run.steps_per_epoch > 1
    assert derived["total_steps"] == 4 * run.steps_per_epoch
    assert derived["peak_lr"] == pytest.approx(params["lr_init"] * 16 / 128)
    assert [s["epochs"] for s in derived["stages"]] == [[1, 2], [3, 4]]
    assert [s["image_size"] for s in derived["stages"]] == [24, 32]
