"""Assemble EfficientNet v1 (arXiv:1905.11946), v2 (arXiv:2104.00298) and Lite from a config.

One builder for every family: the config's block table (`model.specs.BlockSpec` strings) says
which stages are fused-MBConv (v2) and which are MBConv (with or without squeeze-excitation);
width/depth coefficients and the `round_down_guard` and `fix_head_stem` (Lite) flags encode the
family's scaling rule. Layer names are stable:

    input_normalization, stem_conv, stem_bn, stem_activation,
    stage{s}_block{b} (s, b 1-based), head_conv, head_bn, head_activation,
    avg_pool, head_dropout, logits

Only keras.layers / keras.ops are used, so the model builds and trains under any Keras 3
backend (TF for the application, JAX in a CI test).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import keras
from keras import layers

from model.blocks import DENSE_KERNEL_INITIALIZER, FusedMBConvBlock, MBConvBlock, batch_norm, conv2d
from model.schema import (
    INPUT_NORMALIZATIONS,
    MEAN_STD,
    check_activation,
    mean_std_scale_offset,
    validate_model_config,
)
from model.specs import PlacedBlock, expand_blocks, parse_blocks, round_filters
from utils.errors import ConfigError

logger = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="efficientnet")
class InputNormalization(layers.Layer):
    """Map raw 0..255 RGB to the network's input range in-graph (no weights).

    Args:
      mode: a key of INPUT_NORMALIZATIONS (model/schema.py) other than "none", or "mean_std".
      mean: "mean_std": per-channel mean in 0..255 pixel units.
      std: "mean_std": per-channel standard deviation in 0..255 pixel units.
    """

    def __init__(
        self,
        mode: str = "imagenet",
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        **kwargs,
    ):
        # float32 even under a mixed-precision policy: 0..255 inputs lose digits in float16.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mode = mode
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        if mode == MEAN_STD:
            if self.mean is None or self.std is None:
                raise ConfigError("input normalization 'mean_std' needs a mean and a std")
            self.scale, self.offset = mean_std_scale_offset(self.mean, self.std)
        elif INPUT_NORMALIZATIONS.get(mode) is None:
            raise ConfigError(f"input normalization {mode!r} has no in-graph layer")
        else:
            self.scale, self.offset = INPUT_NORMALIZATIONS[mode]

    def call(self, inputs):
        scale = keras.ops.convert_to_tensor(self.scale, dtype=inputs.dtype)
        offset = keras.ops.convert_to_tensor(self.offset, dtype=inputs.dtype)
        return inputs * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {**super().get_config(), "mode": self.mode}
        if self.mode == MEAN_STD:
            config.update(mean=self.mean, std=self.std)
        return config


def placed_blocks(config: Mapping[str, Any]) -> list[PlacedBlock]:
    """The config's block table scaled and expanded into network order (see expand_blocks)."""
    return expand_blocks(
        parse_blocks(config["blocks"]),
        config["width_coefficient"],
        config["depth_coefficient"],
        config["depth_divisor"],
        config["min_depth"],
        config["round_down_guard"],
        config["drop_connect_rate"],
        fix_head_stem=config["fix_head_stem"],
    )


def scaled_filters(config: Mapping[str, Any], filters: int) -> int:
    """`round_filters` with the config's width coefficient and rounding policy."""
    return round_filters(
        filters,
        config["width_coefficient"],
        config["depth_divisor"],
        config["min_depth"],
        config["round_down_guard"],
    )


def make_block(placed: PlacedBlock, config: Mapping[str, Any]) -> MBConvBlock | FusedMBConvBlock:
    """Instantiate the Keras layer for one placed block (named `stage{s}_block{b}`)."""
    spec = placed.spec
    cls = FusedMBConvBlock if spec.fused else MBConvBlock
    return cls(
        in_ch=spec.in_ch,
        out_ch=spec.out_ch,
        kernel=spec.kernel,
        stride=spec.stride,
        expand=spec.expand,
        se_ratio=spec.se_ratio,
        activation=config["activation"],
        bn_momentum=config["bn_momentum"],
        bn_epsilon=config["bn_epsilon"],
        drop_rate=placed.drop_rate,
        name=placed.name,
    )


def build_model(
    config: Mapping[str, Any],
    num_classes: int | None = None,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
) -> keras.Model:
    """Build an EfficientNet from a config dict (see config/efficientnet_v1/, efficientnet_v2/).

    Args:
      config: a model config (keys in MODEL_KEYS; other keys are ignored). Not modified.
      num_classes: overrides config["num_classes"] (datasets know their class count).
      input_shape: (H, W, 3); the default (None, None, 3) accepts any image size, so
        progressive resizing changes the size without rebuilding.

    Returns:
      A functional keras.Model: NHWC float images (raw 0..255 unless
      input_normalization="none") -> float32 logits [B, num_classes] (no softmax; float32 even
      under a mixed-precision policy). With include_top=False the output is the float32 head
      feature map [B, h, w, head_channels].

    Raises:
      ConfigError: on a missing key, unknown activation/normalization or bad block table.
    """
    if num_classes is not None:
        config = {**config, "num_classes": num_classes}
    validate_model_config(config, complete=True)
    check_activation(config["activation"])
    blocks = placed_blocks(config)
    activation = config["activation"]

    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    if config["input_normalization"] != "none":
        x = InputNormalization(
            config["input_normalization"],
            mean=config["input_mean"],
            std=config["input_std"],
            name="input_normalization",
        )(x)

    # EfficientNet-Lite (fix_head_stem) keeps the stem and head channels unscaled.
    fixed = config["fix_head_stem"]
    stem_ch = config["stem_filters"] if fixed else scaled_filters(config, config["stem_filters"])
    x = conv2d(stem_ch, 3, strides=2, name="stem_conv")(x)
    x = batch_norm(config["bn_momentum"], config["bn_epsilon"], "stem_bn")(x)
    x = layers.Activation(activation, name="stem_activation")(x)

    channels = stem_ch
    for placed in blocks:
        if placed.spec.in_ch != channels:
            raise ConfigError(
                f"block table inconsistent at {placed.name}: expects {placed.spec.in_ch} input "
                f"channels after scaling, previous layer gives {channels}"
            )
        x = make_block(placed, config)(x)
        channels = placed.spec.out_ch

    head_ch = config["head_filters"] if fixed else scaled_filters(config, config["head_filters"])
    x = conv2d(head_ch, 1, name="head_conv")(x)
    x = batch_norm(config["bn_momentum"], config["bn_epsilon"], "head_bn")(x)
    x = layers.Activation(activation, name="head_activation")(x)

    if config["include_top"]:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if config["dropout_rate"] > 0:
            x = layers.Dropout(config["dropout_rate"], name="head_dropout")(x)
        # float32 logits even under mixed_float16: softmax/cross-entropy need the range.
        outputs = layers.Dense(
            config["num_classes"],
            kernel_initializer=DENSE_KERNEL_INITIALIZER,
            dtype="float32",
            name="logits",
        )(x)
    else:
        outputs = layers.Activation("linear", dtype="float32", name="features")(x)

    model = keras.Model(inputs, outputs, name=config["name"])
    logger.debug(
        "built %s: %d blocks, %d params", config["name"], len(blocks), model.count_params()
    )
    return model
