"""runtime.evaluate under two logical CPU replicas; run in the replica worker
(tests/helpers/replica_worker.py) by tests/runtime/test_evaluate.py."""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf

from runtime.distribute import create_strategy
from runtime.evaluate import evaluate


def mirrored_evaluate() -> None:
    """Prints the JSON list [one device, mirrored on a plain dataset, mirrored on a distributed
    dataset] of evaluate()'s results for the same model and 22 images."""
    strategy = create_strategy(cpu_replicas=2).strategy
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4, 4, 3))
        model = keras.Model(inputs, keras.layers.Dense(7)(keras.layers.Flatten()(inputs)))
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (22, 4, 4, 3)).astype("float32")
    y = np.eye(7, dtype="float32")[rng.integers(0, 7, 22)]
    one = evaluate(
        model,
        tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
        strategy=tf.distribute.get_strategy(),
        progress=False,
    )
    plain = evaluate(
        model,
        tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
        strategy=strategy,
        progress=False,
    )
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: (
            tf.data.Dataset.from_tensor_slices((x, y))
            .shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
            .batch(4)
        )
    )
    distributed = evaluate(model, dist, strategy=strategy, progress=False)
    print(json.dumps([one, plain, distributed]))
