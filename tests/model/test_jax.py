"""The model uses keras.layers / keras.ops only: it builds, runs and trains under JAX.

Runs in a subprocess because the Keras backend is fixed at import time.
"""

import json
import os
import subprocess
import sys

from model_zoo import ROOT

SCRIPT = r"""
import json, sys
import keras, numpy as np
assert keras.backend.backend() == "jax", keras.backend.backend()
from config.loader import load_config
from model import build_model

# One fused-MBConv and one MBConv+SE stage: both block kinds, a small graph to compile.
cfg = load_config(sys.argv[1], "blocks=('r1_k3_s1_e1_i24_o24_c1','r2_k3_s2_e4_i24_o32_se0.25'),"
                  "head_filters=64,num_classes=5")
model = build_model(cfg)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
y = keras.utils.to_categorical(rng.integers(0, 5, 4), 5)
# predict_on_batch: one jitted inference graph (an eager call compiles every op on its own).
logits = keras.ops.convert_to_numpy(model.predict_on_batch(x))
before = [w.copy() for w in model.get_weights()]
model.compile(optimizer=keras.optimizers.SGD(0.1),
              loss=keras.losses.CategoricalCrossentropy(from_logits=True))
loss = float(model.train_on_batch(x, y))
changed = sum(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
print(json.dumps({"shape": list(logits.shape), "finite": bool(np.isfinite(logits).all()),
                  "loss": loss, "changed": changed, "total": len(before),
                  "dtype": str(logits.dtype)}))
"""


def test_forward_and_backward_step_under_jax():
    # XLA's LLVM optimization level 0: each of the ~50 small programs (variable initializers, the
    # train and predict steps) compiles in a fraction of the time; the computed values are the
    # same operations, so the checks below are unchanged.
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": ROOT,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0",
    }
    cfg = os.path.join(ROOT, "config", "efficientnet_v2", "s_cfg.py")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, cfg],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [4, 5] and result["finite"] and result["dtype"] == "float32"
    assert result["loss"] > 0 and result["loss"] == result["loss"]  # finite, not NaN
    # Every trainable weight and the BN moving statistics moved in one step.
    assert result["changed"] == result["total"]
