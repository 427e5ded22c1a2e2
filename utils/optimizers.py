"""Optimizers for the training runtime: Keras 3 built-ins, weight decay and loss scaling.

Weight decay has two meanings, chosen by the optimizer's name:
- rmsprop, sgd, momentum, adam: an L2 penalty `weight_decay * sum(w**2) / 2` added to the
  loss (`l2_penalty`), which is how the EfficientNet recipes' 5e-6 was tuned (NVIDIA's TF2
  ConvNets and google/automl add it to the loss);
- adamw, lamb: decoupled decay inside the optimizer (Loshchilov & Hutter 2019; You et al.
  2020), which is what makes them AdamW / LAMB.
Either way, 1-D variables (BatchNorm gamma/beta, biases) are not decayed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
from keras import ops

OPTIMIZERS = ("rmsprop", "sgd", "momentum", "adam", "adamw", "lamb")
DECOUPLED_DECAY = ("adamw", "lamb")


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer flags of the command line.

    Attributes:
      name: one of OPTIMIZERS.
      momentum: momentum of rmsprop / momentum (`--momentum`).
      beta_1: first-moment decay of adam / adamw / lamb.
      beta_2: second-moment decay of adam / adamw / lamb.
      nesterov: Nesterov momentum for `momentum`.
      epsilon: `--opt_epsilon` of rmsprop / adam / adamw / lamb.
      rho: RMSProp's discounting factor (`--decay`).
      weight_decay: L2 coefficient or decoupled decay, see the module docstring.
      grad_clip_norm: clip the global gradient norm to this value; 0 or None for no clipping.
    """

    name: str = "rmsprop"
    momentum: float = 0.9
    beta_1: float = 0.9
    beta_2: float = 0.999
    nesterov: bool = False
    epsilon: float = 0.001
    rho: float = 0.9
    weight_decay: float = 5e-6
    grad_clip_norm: float | None = None


def is_decayed(variable) -> bool:
    """Whether weight decay applies: kernels yes, 1-D variables (BN, biases) no."""
    return len(variable.shape) > 1


def l2_penalty(variables: Sequence, weight_decay: float):
    """`weight_decay * sum(w**2) / 2` over the decayed variables (0 when weight_decay is 0).

    Args:
      variables: the model's trainable variables.
      weight_decay: L2 coefficient.

    Returns:
      A float32 scalar tensor.
    """
    decayed = [v for v in variables if is_decayed(v)]
    if not weight_decay or not decayed:
        return ops.convert_to_tensor(0.0, "float32")
    total = ops.sum(ops.stack([ops.sum(ops.square(ops.cast(v, "float32"))) for v in decayed]))
    return 0.5 * weight_decay * total


def uses_l2_penalty(config: OptimizerConfig) -> bool:
    """True when the runtime must add `l2_penalty` to the loss for this optimizer."""
    return config.name not in DECOUPLED_DECAY and bool(config.weight_decay)


def build_optimizer(config: OptimizerConfig, learning_rate, variables: Sequence = (),
                    loss_scaling: bool = False) -> keras.optimizers.Optimizer:
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
        optimizer = keras.optimizers.RMSprop(rho=config.rho, momentum=config.momentum,
                                             epsilon=config.epsilon, **common)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(**common)
    elif name == "momentum":
        optimizer = keras.optimizers.SGD(momentum=config.momentum, nesterov=config.nesterov,
                                         **common)
    elif name == "adam":
        optimizer = keras.optimizers.Adam(beta_1=config.beta_1, beta_2=config.beta_2,
                                          epsilon=config.epsilon, **common)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(beta_1=config.beta_1, beta_2=config.beta_2,
                                           epsilon=config.epsilon,
                                           weight_decay=config.weight_decay, **common)
    elif name == "lamb":
        optimizer = keras.optimizers.Lamb(beta_1=config.beta_1, beta_2=config.beta_2,
                                          epsilon=config.epsilon,
                                          weight_decay=config.weight_decay, **common)
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
