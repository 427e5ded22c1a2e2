"""Numeric precision and compiler settings: mixed precision policy, TF32, XLA default.

Mixed precision follows Micikevicius et al. 2018: float16 compute needs dynamic loss scaling
(the runtime wraps the optimizer in keras.optimizers.LossScaleOptimizer), bfloat16 has
float32's exponent range and needs none. Variables stay float32 under both policies.
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from utils.choices import AMP_DTYPES  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)


def precision_policy(use_amp: bool, amp_dtype: str = "float16") -> str:
    """The Keras dtype policy name for the flags.

    Args:
      use_amp: `--use_amp`.
      amp_dtype: `--amp_dtype`, float16 or bfloat16.

    Returns:
      "float32", "mixed_float16" or "mixed_bfloat16".
    """
    if not use_amp:
        return "float32"
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"unknown amp_dtype {amp_dtype!r}; valid: {', '.join(AMP_DTYPES)}")
    return f"mixed_{amp_dtype}"


def needs_loss_scaling(policy: str) -> bool:
    """Only float16 compute underflows small gradients and needs dynamic loss scaling."""
    return policy == "mixed_float16"


def configure_precision(use_amp: bool, amp_dtype: str = "float16", use_tf32: bool = True) -> str:
    """Set the global Keras dtype policy and TF32 matmul/conv math; call before building.

    Args:
      use_amp: `--use_amp`.
      amp_dtype: `--amp_dtype`.
      use_tf32: allow TensorFloat-32 on Ampere+ GPUs for float32 math (`--use_tf32`).

    Returns:
      The policy name now in effect.
    """
    policy = precision_policy(use_amp, amp_dtype)
    keras.mixed_precision.set_global_policy(policy)
    tf.config.experimental.enable_tensor_float_32_execution(bool(use_tf32))
    logger.info("precision policy %s, TF32 %s", policy, "on" if use_tf32 else "off")
    return policy


def has_gpu() -> bool:
    """Whether TensorFlow sees at least one GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


def default_use_xla() -> bool:
    """XLA on for GPU, off for CPU.

    Measured on TF 2.21: jit_compile makes CPU training 8-10x slower, and XLA cannot compile
    CPU collectives (MultiWorkerMirroredStrategy on CPU).
    """
    return has_gpu()
