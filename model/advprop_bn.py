"""Auxiliary BatchNorm statistics for AdvProp (Xie et al., "Adversarial Examples Improve Image
Recognition", CVPR 2020, arXiv:1911.09665).

AdvProp normalizes clean and adversarial images with separate BatchNorms, because the two come
from different distributions. `add_auxiliary_batch_norms(model)` gives every
`FusedBatchNormalization` of a built model an auxiliary set of moving statistics;
`with auxiliary_batch_norms(model):` routes the calls traced inside it (clean passes outside)
to them: batch statistics in training, the auxiliary moving ones otherwise. The auxiliary
variables are deliberately untracked, so saved models, checkpoints, EMA, export and weight
import see exactly the layout of a model without AdvProp.

NOTE: the paper's auxiliary BNs also have their own scale and offset; here the scale/offset
(gamma/beta) are shared with the main BN and only the statistics are separate (own trainable
affine parameters would have to join the optimizer and the training checkpoint). docs/parity.md
names the difference. keras.ops only: runs under every Keras backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
from keras import ops

from model.blocks import FusedBatchNormalization


class AuxiliaryStatistics:
    """Moving mean/variance of one BN layer's adversarial branch (not tracked by Keras/TF)."""

    def __init__(self, layer: FusedBatchNormalization):
        shape = tuple(layer.moving_mean.shape)
        self.active = False
        self.update_statistics = True
        # float32 under mixed precision too, as the main statistics (autocast=False).
        self.moving_mean = keras.Variable(
            ops.zeros(shape),
            trainable=False,
            dtype="float32",
            autocast=False,
            name=f"{layer.name}_aux_moving_mean",
        )
        self.moving_variance = keras.Variable(
            ops.ones(shape),
            trainable=False,
            dtype="float32",
            autocast=False,
            name=f"{layer.name}_aux_moving_variance",
        )

    def call(self, layer: FusedBatchNormalization, inputs, training: bool):
        """`layer`'s normalization with the auxiliary statistics (and its gamma/beta).

        Training: batch statistics (the auxiliary moving ones updated unless
        `update_statistics` is off); a frozen layer (trainable=False, e.g. --freeze_bn) uses
        its main moving statistics, as a frozen BN does; inference: the auxiliary moving ones.
        """
        x = ops.cast(inputs, "float32")
        if training and not layer.trainable:
            mean, variance = layer.moving_mean, layer.moving_variance
        elif training:
            axes = list(range(len(x.shape) - 1))
            mean, variance = ops.moments(x, axes=axes)
            m = layer.momentum
            if self.update_statistics:
                self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
                self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        y = ops.batch_normalization(
            x, mean, variance, axis=-1, offset=layer.beta, scale=layer.gamma, epsilon=layer.epsilon
        )
        return ops.cast(y, layer.compute_dtype)


def batch_norm_layers(model: keras.Model) -> list[FusedBatchNormalization]:
    """Every FusedBatchNormalization of `model` (inside blocks too), in model order."""
    found: list[FusedBatchNormalization] = []

    def walk(layer, seen):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, FusedBatchNormalization):
            found.append(layer)
        children = layer.layers if isinstance(layer, keras.Model) else []
        for value in [*children, *vars(layer).values()]:
            for child in value if isinstance(value, list | tuple) else [value]:
                if isinstance(child, keras.layers.Layer):
                    walk(child, seen)

    walk(model, set())
    return found


def add_auxiliary_batch_norms(model: keras.Model) -> list[AuxiliaryStatistics]:
    """Give every BN layer of `model` auxiliary statistics (call under the strategy's scope).

    Returns:
      The auxiliary statistics, one per BN layer (for tests and inspection).
    """
    stats = []
    for layer in batch_norm_layers(model):
        if layer.aux is None:
            layer.aux = AuxiliaryStatistics(layer)
        stats.append(layer.aux)
    return stats


@contextlib.contextmanager
def auxiliary_batch_norms(model: keras.Model, update_statistics: bool = True) -> Iterator[None]:
    """Route the model's BN layers to their auxiliary statistics inside the block.

    Args:
      model: a model given auxiliary statistics by `add_auxiliary_batch_norms`.
      update_statistics: training calls update the auxiliary moving statistics (False: the
        attack's passes, which use batch statistics and change nothing).

    Raises:
      ValueError: the model has no auxiliary statistics (`add_auxiliary_batch_norms` first).
    """
    stats = [layer.aux for layer in batch_norm_layers(model)]
    if not stats or any(s is None for s in stats):
        raise ValueError("the model has no auxiliary BatchNorms: call add_auxiliary_batch_norms")
    for s in stats:
        s.active, s.update_statistics = True, update_statistics
    try:
        yield
    finally:
        for s in stats:
            s.active, s.update_statistics = False, True
