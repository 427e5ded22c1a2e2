"""runtime.step's training step under two logical CPU replicas equals the step on one device;
run in the replica worker (tests/helpers/replica_worker.py) by tests/runtime/test_step.py."""

from __future__ import annotations

import numpy as np

from runtime.distribute import create_strategy
from tests.helpers.train_fixtures import batch, build_trainer


def mirrored_step_equals_one_device() -> None:
    """Per-replica batch 4 (with and without accumulation, with loss scaling, with the float16
    all-reduce) against batch 8 on one device: weights, EMA, metrics. Prints MIRRORED_OK."""
    dist = create_strategy(num_gpus=0, cpu_replicas=2)
    strategy = dist.strategy
    assert strategy.num_replicas_in_sync == 2
    images, labels = batch(8)
    for accum, scaling in ((1, False), (2, False), (1, True)):
        single = build_trainer(clip=0.05, loss_scaling=scaling, ema_decay=0.9)
        single[3]((images, labels))
        mirrored = build_trainer(dist, accum=accum, clip=0.05, loss_scaling=scaling, ema_decay=0.9)

        def shard(ctx, data, accum=accum):
            part = data[4 * ctx.replica_id_in_sync_group : 4 * ctx.replica_id_in_sync_group + 4]
            return part.reshape((accum, 4 // accum) + part.shape[1:]) if accum > 1 else part

        x = strategy.experimental_distribute_values_from_function(lambda c: shard(c, images))
        y = strategy.experimental_distribute_values_from_function(lambda c: shard(c, labels))
        mirrored[3]((x, y))
        pairs = list(
            zip(single[0].trainable_variables, mirrored[0].trainable_variables, strict=True)
        )
        pairs += list(zip(single[4].shadows, mirrored[4].shadows, strict=True))
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
    x = compressed.experimental_distribute_values_from_function(
        lambda c: images[4 * c.replica_id_in_sync_group :][:4]
    )
    y = compressed.experimental_distribute_values_from_function(
        lambda c: labels[4 * c.replica_id_in_sync_group :][:4]
    )
    mirrored[3]((x, y))
    for a, b in zip(single[0].trainable_variables, mirrored[0].trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)
    print("MIRRORED_OK")
