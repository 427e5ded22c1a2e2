"""The model uses keras.layers / keras.ops only: it builds, runs and trains under JAX.

Runs in a subprocess because the Keras backend is fixed at import time.
"""

import json
import math
import os
import subprocess

from tests.helpers import ROOT
from tests.helpers.processes import program


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
        program("jax_train_step", cfg),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [4, 5] and result["finite"] and result["dtype"] == "float32"
    assert result["loss"] > 0 and math.isfinite(result["loss"])
    # Every trainable weight and the BN moving statistics moved in one step.
    assert result["changed"] == result["total"]
