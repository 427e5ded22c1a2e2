"""Checks of runtime.distribute that need a TensorFlow of their own; they print their results
(the last stdout line is JSON where there is one) and tests/runtime/test_distribute.py asserts.

Two logical CPU replicas (in the replica worker, tests/helpers/replica_worker.py):
`create_strategy_on_cpu`, `fp16_all_reduce`. A cluster in the environment (a fresh process,
`python -m tests.helpers.programs.distribute_checks NAME` with TF_CONFIG set):
`create_strategy_from_environment`, `create_strategy_with_startup_timeout`.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import keras
import numpy as np
import tensorflow as tf

from runtime import distribute as d
from runtime.cluster import ClusterError
from tests.helpers.train_fixtures import batch, build_trainer


def _halves(strategy, *arrays):
    """Each array split in two halves, one per replica."""
    return [
        strategy.experimental_distribute_values_from_function(
            lambda ctx, a=a: a[4 * ctx.replica_id_in_sync_group :][:4]
        )
        for a in arrays
    ]


def create_strategy_on_cpu() -> None:
    """The default and a two-replica strategy, float16 gradient compression, bad arguments."""
    default = d.create_strategy()
    mirrored = d.create_strategy(cpu_replicas=2, fp16_compression=True)
    grads = [tf.ones([2]), None, tf.ones([1], tf.int32)]
    out = {
        "default": [
            type(default.strategy).__name__,
            default.num_replicas,
            default.is_chief,
            default.num_workers,
            default.global_batch_size(16, 2),
        ],
        "mirrored": [
            type(mirrored.strategy).__name__,
            mirrored.num_replicas,
            mirrored.is_chief,
            mirrored.global_batch_size(16, 2),
        ],
        "compressed": [
            None if g is None else g.dtype.name for g in d.compress_gradients(grads, mirrored)
        ],
        "uncompressed": [g.dtype.name for g in d.compress_gradients(grads[:1], default)],
        # The option lives on the Distribution, not on the strategy it wraps.
        "option_off": [
            g.dtype.name
            for g in d.compress_gradients(
                grads[:1], dataclasses.replace(mirrored, fp16_compression=False)
            )
        ],
        "write_dir": d.checkpoint_write_dir("/m/ckpt", mirrored),
    }
    # runtime.step's step with float16 all-reduce vs one device: equal to fp16 precision.
    images, labels = batch(8)
    single, compressed = build_trainer(), build_trainer(mirrored)
    single[3]((images, labels))
    compressed[3](tuple(_halves(mirrored.strategy, images, labels)))
    out["fp16_max_diff"] = max(
        float(np.max(np.abs(a.numpy() - b.numpy())))
        for a, b in zip(single[0].weights, compressed[0].weights, strict=True)
    )
    out["fp16_moved"] = max(
        float(np.max(np.abs(a.numpy() - b.numpy())))
        for a, b in zip(single[0].weights, build_trainer()[0].weights, strict=True)
    )
    for bad in (
        {"all_reduce": "tree"},
        {"num_gpus": 1},
        {"num_gpus": -1},
        {"cpu_replicas": 0},
        {"cpu_replicas": 3},
    ):
        try:
            d.create_strategy(**bad)
        except ClusterError as err:
            out[str(bad)] = str(err)
    print(json.dumps(out))


def fp16_all_reduce() -> None:
    """The scaled float16 all-reduce on large, small, non-finite and zero gradients, and one AMP
    training step on two replicas against one device."""
    mirrored = d.create_strategy(cpu_replicas=2, fp16_compression=True)

    @tf.function
    def reduce(values):
        return mirrored.strategy.run(
            lambda g: d.all_reduce_gradients([g], mirrored)[0], args=(values,)
        )

    def summed(r0, r1):
        values = mirrored.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant([r0, r1][ctx.replica_id_in_sync_group], tf.float32)
        )
        return mirrored.strategy.experimental_local_results(reduce(values))[0].numpy().tolist()

    out = {
        "amp": summed([40000.0, -30000.0, 1.5], [40000.0, 20000.0, 2.5]),
        "small": summed([1e-9, 3e-10], [2e-9, -1e-10]),
        "nonfinite": summed([float("inf"), 1.0], [1.0, 1.0]),
        "zeros": summed([0.0, 0.0], [0.0, 0.0]),
    }
    # One AMP training step (dynamic loss scale 32768): 2 replicas with the float16
    # all-reduce take the same step as one device.
    keras.mixed_precision.set_global_policy("mixed_float16")
    images, labels = batch(8)
    single = build_trainer(loss_scaling=True)
    compressed = build_trainer(mirrored, loss_scaling=True)
    start = [w.numpy() for w in single[0].weights]
    single[3]((images, labels))
    compressed[3](tuple(_halves(mirrored.strategy, images, labels)))
    out["amp_moved"] = max(
        float(np.max(np.abs(a - b.numpy())))
        for a, b in zip(start, compressed[0].weights, strict=True)
    )
    out["amp_diff"] = max(
        float(np.max(np.abs(a.numpy() - b.numpy())))
        / max(float(np.max(np.abs(a.numpy() - s))), 1e-12)
        for a, b, s in zip(single[0].weights, compressed[0].weights, start, strict=True)
    )
    print(json.dumps(out))


def create_strategy_from_environment() -> None:
    """Prints `ERR <message>` when the environment's cluster is refused."""
    try:
        d.create_strategy()
    except ClusterError as err:
        print("ERR", err)


def create_strategy_with_startup_timeout() -> None:
    """Prints STRATEGY CREATED once every worker of TF_CONFIG joined within 3 s."""
    d.create_strategy(num_gpus=0, startup_timeout_s=3)
    print("STRATEGY CREATED")


# The checks that run in a fresh process, by name.
FRESH_PROCESS = {
    "create_strategy_from_environment": create_strategy_from_environment,
    "create_strategy_with_startup_timeout": create_strategy_with_startup_timeout,
}

if __name__ == "__main__":
    FRESH_PROCESS[sys.argv[1]]()
