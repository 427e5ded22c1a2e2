"""Optimizers for the training runtime: Keras 3 built-ins, weight decay and loss scaling.

Weight decay has two meanings, chosen by the optimizer's name:
- rmsprop, sgd, momentum, adam: an L2 penalty `weight_decay * sum(w**2)` added to the loss
  (`l2_penalty`), exactly NVIDIA's TF2 ConvNets: `keras.regularizers.l2(weight_decay)` on
  every conv and dense kernel *and bias* (the SE convolutions' and the classifier's biases),
  none on BatchNorm. NOTE: NVIDIA passes `kernel_regularizer` to `DepthwiseConv2D` too, which
  ignores it (its kernel takes `depthwise_regularizer`), so depthwise kernels are not decayed
  there and are not decayed here (`is_l2_decayed`). google/automl adds
  `1e-5 * tf.nn.l2_loss(w)` = `5e-6 * sum(w**2)`, the same strength, over every variable but
  biases and BN, depthwise kernels included (docs/parity.md).
- adamw, lamb: decoupled decay inside the optimizer (Loshchilov & Hutter 2019; You et al.
  2020), which is what makes them AdamW / LAMB; 1-D variables (BatchNorm gamma/beta, biases)
  are not decayed (`is_decayed`).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from utils.choices import OPTIMIZERS  # noqa: F401 (re-exported)
from utils.optimizer_config import OptimizerConfig

DECOUPLED_DECAY = ("adamw", "lamb")


# Layer names of model/ whose variables the L2 penalty skips: BatchNorm's gamma/beta and the
# depthwise convolution of MBConv blocks (model/blocks.py names it "dwconv").
_BN_VARIABLES = ("gamma", "beta")
_DEPTHWISE_LAYER = "dwconv"


def is_decayed(variable) -> bool:
    """Whether decoupled weight decay (adamw, lamb) applies: kernels yes, 1-D variables no."""
    return len(variable.shape) > 1


def is_l2_decayed(variable) -> bool:
    """Whether the L2 penalty covers `variable`, as in NVIDIA's TF2 ConvNets.

    Conv and dense kernels and biases yes; BatchNorm gamma/beta and depthwise kernels no (see
    the module docstring).
    """
    parts = getattr(variable, "path", variable.name).split("/")
    return parts[-1] not in _BN_VARIABLES and _DEPTHWISE_LAYER not in parts[:-1]


def l2_penalty(variables: Sequence, weight_decay: float):
    """`weight_decay * sum(w**2)` over the L2-decayed variables (0 when weight_decay is 0).

    This is `keras.regularizers.l2(weight_decay)` summed over NVIDIA's regularized variables.

    Args:
      variables: the model's trainable variables.
      weight_decay: L2 coefficient.

    Returns:
      A float32 scalar tensor.
    """
    decayed = [v for v in variables if is_l2_decayed(v)]
    if not weight_decay or not decayed:
        return ops.convert_to_tensor(0.0, "float32")
    total = ops.sum(ops.stack([ops.sum(ops.square(ops.cast(v, "float32"))) for v in decayed]))
    return weight_decay * total


def uses_l2_penalty(config: OptimizerConfig) -> bool:
    """True when the runtime must add `l2_penalty` to the loss for this optimizer."""
    return config.name not in DECOUPLED_DECAY and bool(config.weight_decay)


def build_optimizer(
    config: OptimizerConfig, learning_rate, variables: Sequence = (), loss_scaling: bool = False
) -> keras.optimizers.Optimizer:
    """Create the optimizer, optionally wrapped for dynamic loss scaling (fp16).

    Args:
      config: optimizer flags.
      learning_rate: a float or a LearningRateSchedule.
      variables: the trainable variables; needed to exempt 1-D ones from decoupled decay.
      loss_scaling: wrap in keras.optimizers.LossScaleOptimizer (dynamic scale, for float16).

    Returns:
      A Keras optimizer (not yet built).
    """
    clip = config.grad_clip_norm or None
    common = {"learning_rate": learning_rate, "global_clipnorm": clip}
    name = config.name
    if name == "rmsprop":
        optimizer = keras.optimizers.RMSprop(
            rho=config.rho, momentum=config.momentum, epsilon=config.epsilon, **common
        )
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(**common)
    elif name == "momentum":
        optimizer = keras.optimizers.SGD(
            momentum=config.momentum, nesterov=config.nesterov, **common
        )
    elif name == "adam":
        optimizer = keras.optimizers.Adam(
            beta_1=config.beta_1, beta_2=config.beta_2, epsilon=config.epsilon, **common
        )
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(
            beta_1=config.beta_1,
            beta_2=config.beta_2,
            epsilon=config.epsilon,
            weight_decay=config.weight_decay,
            **common,
        )
    elif name == "lamb":
        optimizer = keras.optimizers.Lamb(
            beta_1=config.beta_1,
            beta_2=config.beta_2,
            epsilon=config.epsilon,
            weight_decay=config.weight_decay,
            **common,
        )
    else:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if name in DECOUPLED_DECAY:
        exempt = [v for v in variables if not is_decayed(v)]
        if exempt:
            optimizer.exclude_from_weight_decay(var_list=exempt)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def inner_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that updates the variables (unwraps a LossScaleOptimizer)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the next update uses, as a Python float."""
    inner = inner_optimizer(optimizer)
    lr = inner.learning_rate
    return float(ops.convert_to_numpy(lr))
