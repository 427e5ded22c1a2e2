"""Analytic parameter and FLOP counts of a built model, from its layer graph (no graph run).

The model is walked in layer order with static shapes: every Conv2D, DepthwiseConv2D and Dense
contributes `output_pixels * kernel.size` multiply-accumulates (MACs), which is
H_out * W_out * k * k * C_in * C_out (/ groups). Blocks are walked through their `branch` list
and squeeze-excitation through its two 1x1 convs on the pooled tensor. BatchNorm, activations,
pooling, residual adds and the SE gating multiply are not counted: this is the convention of the
EfficientNet papers, whose "FLOPs" (B0: 0.39B, V2-S: 8.8B) are multiply-adds, i.e. MACs.
FLOPs in the strict sense (one multiply + one add) are 2 x MACs.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import layers

from model.blocks import SqueezeExcite


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    """Size and cost of one model at one input resolution.

    Attributes:
      params: all parameters (trainable + BN moving statistics), as keras count_params().
      trainable_params: trainable parameters only.
      macs: multiply-accumulates of one image's forward pass (= the papers' "FLOPs").
      image_size: the square input size the MACs refer to.
    """

    params: int
    trainable_params: int
    macs: int
    image_size: int

    @property
    def flops(self) -> int:
        """Floating-point operations, counting a multiply-add as 2."""
        return 2 * self.macs


def _walk(layer: layers.Layer, shape: tuple) -> tuple[int, tuple]:
    """Return (MACs, output shape) of `layer` applied to an input of `shape`."""
    if isinstance(layer, SqueezeExcite):
        pooled = (shape[0], 1, 1, shape[-1])
        macs_reduce, reduced = _walk(layer.reduce, pooled)
        macs_expand, _ = _walk(layer.expand, reduced)
        return macs_reduce + macs_expand, shape
    if hasattr(layer, "branch"):  # MBConvBlock / FusedMBConvBlock
        total, inner = 0, shape
        for sub in layer.branch:
            macs, inner = _walk(sub, inner)
            total += macs
        return total, layer.compute_output_shape(shape)
    out = tuple(layer.compute_output_shape(shape))
    if isinstance(layer, layers.Conv2D | layers.DepthwiseConv2D | layers.Dense):
        # Per output pixel, every kernel weight is used once (depthwise kernel: k*k*C*1).
        return math.prod(out[1:-1]) * math.prod(layer.kernel.shape), out
    return 0, out


def profile_model(model: keras.Model, image_size: int) -> ModelProfile:
    """Count parameters and MACs of a model built by `model.build_model`.

    Args:
      model: a built functional model whose layers form a chain (stem, blocks, head).
      image_size: square input resolution for the MAC count.

    Returns:
      A ModelProfile.
    """
    shape: tuple = (1, image_size, image_size, model.inputs[0].shape[-1])
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        macs, shape = _walk(layer, shape)
        total += macs
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return ModelProfile(
        params=model.count_params(),
        trainable_params=int(trainable),
        macs=int(total),
        image_size=image_size,
    )
