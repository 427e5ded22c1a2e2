"""The application's modes: `run(mode, params)` dispatches to one function per mode.

Each mode function takes the resolved configuration (a plain dict: every general flag by name,
plus "model" and "cfg") and returns a dict of results. The table names functions by
"module:function" and imports only the one that runs, so `main.py` can parse and validate flags
(and fail fast on bad input) without importing TensorFlow.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

MODES: dict[str, str] = {
    "train": "runtime.train:run_train",
    "train_and_eval": "runtime.train:run_train_and_eval",
    "eval": "runtime.evaluate:run_eval",
    "predict": "runtime.predict:run_predict",
    "training_benchmark": "runtime.benchmark:run_training_benchmark",
    "inference_benchmark": "runtime.benchmark:run_inference_benchmark",
    "export": "runtime.export:run_export",
}


def mode_function(mode: str):
    """The function that runs `mode` (imports its module).

    Raises:
      ValueError: unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    module_name, function_name = MODES[mode].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def run(mode: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Run one mode.

    Args:
      mode: a key of MODES.
      params: the resolved configuration.

    Returns:
      The mode's result dict.
    """
    return mode_function(mode)(params)
