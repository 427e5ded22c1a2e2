"""One training process for tests/test_distribute_multiworker.py (not a test module).

    python -m tests.multiworker_driver OUT.npz STEPS [SLEEP_S]

Builds the strategy from the environment (TF_CONFIG or nothing), trains the tiny BN-free model
of tests/train_fixtures with runtime.step's step on `batch(8)` split over the replicas, prints
`step N` after each step and saves the final weights. A distribution failure is reported like
main.py does: one line on stderr, exit status 1.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from runtime import distribute


def main(out: str, steps: int, sleep_s: float) -> int:
    dist = distribute.create_strategy(num_gpus=0)
    strategy = dist.strategy
    from tests.train_fixtures import batch, build_trainer

    model, _, _, step, _ = build_trainer(dist)
    images, labels = batch(8)
    per_replica = len(images) // strategy.num_replicas_in_sync

    def shard(data):
        def part(ctx):
            start = per_replica * ctx.replica_id_in_sync_group
            return data[start : start + per_replica]

        return strategy.experimental_distribute_values_from_function(part)

    inputs = (
        (shard(images), shard(labels)) if strategy.num_replicas_in_sync > 1 else (images, labels)
    )
    try:
        for i in range(steps):
            step(inputs)
            print(f"step {i + 1}", flush=True)
            time.sleep(sleep_s)
    except Exception as err:
        message = distribute.describe_worker_failure(err)
        if message is None:
            raise
        sys.stderr.write(f"driver: error: {message}\n")
        return 1
    np.savez(out, *[w.numpy() for w in model.weights])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0))
