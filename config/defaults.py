"""Defaults that live in one place, importable without TensorFlow.

MODEL_DEFAULTS are the model defaults shared by every EfficientNet config module; the family
modules (`config/efficientnet_v1/__init__.py`, `config/efficientnet_v2/__init__.py`) add what
differs per family and each `*_cfg.py` names only what differs per variant. The keys the model
reads and the values each may take are the model's (model/schema.py, MODEL_KEYS).
STEP_DEFAULTS are the training-step defaults that the command line and the runtime share.
"""

from __future__ import annotations

from types import MappingProxyType

MODEL_DEFAULTS = MappingProxyType(
    {
        "activation": "swish",
        # NOTE: TF/Keras BN momentum (moving-average decay); PyTorch momentum = 1 - this.
        "bn_momentum": 0.99,
        "bn_epsilon": 1e-3,
        "depth_divisor": 8,
        "min_depth": None,  # None = depth_divisor
        "drop_connect_rate": 0.2,
        "stem_filters": 32,
        "head_filters": 1280,
        "num_classes": 1000,
        "include_top": True,
        # The model takes raw 0..255 RGB and normalizes in-graph ("imagenet" = mean/std of v1,
        # "scale128" = (x - 128) / 128 of v2, "mean_std" = (x - input_mean) / input_std with
        # the two given per channel in 0..255 units, "none" = input already normalized).
        "input_normalization": "imagenet",
        "input_mean": None,
        "input_std": None,
        # Scale stem/head channels and every stage's repeats (Lite keeps them fixed).
        "fix_head_stem": False,
    }
)

# Training-step defaults: the flags of the same names (runtime/flags.py) and the fields of
# runtime.step.StepConfig both take them from here (tests/runtime/test_flag_defaults.py checks).
STEP_DEFAULTS = MappingProxyType({"grad_accum_steps": 1, "label_smoothing": 0.1})
