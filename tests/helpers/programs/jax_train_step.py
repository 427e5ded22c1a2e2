"""Build a two-block model from a config file, run inference and one SGD step under the JAX
backend and print the JSON summary tests/model/test_jax.py checks (run with KERAS_BACKEND=jax:
the backend is fixed when Keras is first imported).

    python -m tests.helpers.programs.jax_train_step CFG_PATH
"""

import json
import sys

import keras
import numpy as np

from config.loader import load_config
from model import build_model


def main(cfg_path: str) -> None:
    assert keras.backend.backend() == "jax", keras.backend.backend()
    # One fused-MBConv and one MBConv+SE stage: both block kinds, a small graph to compile.
    cfg = load_config(
        cfg_path,
        "blocks=('r1_k3_s1_e1_i24_o24_c1','r2_k3_s2_e4_i24_o32_se0.25'),"
        "head_filters=64,num_classes=5",
    )
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 5, 4), 5)
    # predict_on_batch: one jitted inference graph (an eager call compiles every op on its own).
    logits = keras.ops.convert_to_numpy(model.predict_on_batch(x))
    before = [w.copy() for w in model.get_weights()]
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    loss = float(model.train_on_batch(x, y))
    changed = sum(
        not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True)
    )
    summary = {
        "shape": list(logits.shape),
        "finite": bool(np.isfinite(logits).all()),
        "loss": loss,
        "changed": changed,
        "total": len(before),
        "dtype": str(logits.dtype),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1])
