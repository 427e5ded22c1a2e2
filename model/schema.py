"""The model config's schema: the keys the builder reads and the values each key may take.

The one validator of model-config values. config/loader.py runs it when a `--cfg` module and
its `--mparams` overrides are loaded (bad input, exit status 2, before anything is written);
`model.build_model` runs it on every config it builds (`complete=True`: every key present).
The recipe values themselves (shared defaults, per-family and per-variant settings) are the
configs' (config/defaults.py, config/efficientnet_v1/, config/efficientnet_v2/).

Pure Python: importing this module loads neither Keras nor TensorFlow, so a typo fails at once.
Only `check_activation` loads Keras, to ask it whether it knows an activation name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from model.specs import parse_blocks
from utils.errors import ConfigError

# (scale, offset) per channel such that normalized = raw_0_255 * scale + offset.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMALIZATIONS = MappingProxyType(
    {
        # keras.applications EfficientNetB0-B7 (Rescaling(1/255) + Normalization with the
        # ImageNet mean/std) and automl v1: (x / 255 - mean) / std.
        "imagenet": (
            tuple(1.0 / (255.0 * s) for s in _IMAGENET_STD),
            tuple(-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD, strict=True)),
        ),
        # keras.applications EfficientNetV2S/M/L: Rescaling(scale=1/128, offset=-1), i.e.
        # (x - 128) / 128, as automl effnetv2 preprocessing for the S/M/L/XL models.
        "scale128": ((1.0 / 128.0,) * 3, (-1.0,) * 3),
        # Input is already normalized by the data pipeline.
        "none": None,
    }
)
# (x - input_mean) / input_std with the config's per-channel values in 0..255 pixel units, e.g.
# EfficientNet-Lite's (x - 127) / 128 (automl lite MEAN_RGB / STDDEV_RGB).
MEAN_STD = "mean_std"
INPUT_NORMALIZATION_MODES = (*INPUT_NORMALIZATIONS, MEAN_STD)


def mean_std_scale_offset(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(scale, offset) per channel such that raw * scale + offset = (raw - mean) / std."""
    return (
        tuple(1.0 / float(s) for s in std),
        tuple(-float(m) / float(s) for m, s in zip(mean, std, strict=True)),
    )


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_rgb(value: Any, positive: bool = False) -> bool:
    """Three finite numbers (R, G, B), all > 0 when `positive`."""
    return (
        isinstance(value, tuple | list)
        and len(value) == 3
        and all(is_number(v) and (v > 0 or not positive) for v in value)
    )


def _is_block_table(value: Any) -> bool:
    parse_blocks(value)  # raises a ConfigError naming the bad block string itself
    return True


@dataclasses.dataclass(frozen=True)
class Rule:
    """The values one config key may take.

    Attributes:
      accepts: True for a valid value.
      must_be: what a valid value is, for the message ("a positive int").
      none_ok: None is valid too (and `must_be` says so).
      message: the one-line message for a bad value; `{key}`, `{value!r}` and `{must_be}` are
        filled in.
    """

    accepts: Callable[[Any], bool]
    must_be: str
    none_ok: bool = False
    message: str = "{key} must be {must_be}, got {value!r}"

    def check(self, key: str, value: Any) -> None:
        """Raise ConfigError (one line naming `key`) unless `value` is valid."""
        if value is None and self.none_ok:
            return
        if not self.accepts(value):
            raise ConfigError(self.message.format(key=key, value=value, must_be=self.must_be))


_UNKNOWN_ACTIVATION = "unknown activation {value!r} (e.g. 'swish', 'silu', 'relu')"
_POSITIVE_NUMBER = Rule(lambda v: is_number(v) and v > 0, "a positive number")
_UNIT_INTERVAL = Rule(lambda v: is_number(v) and 0 <= v < 1, "in [0, 1)")
_POSITIVE_INT = Rule(lambda v: is_int(v) and v >= 1, "a positive int")
_BOOL = Rule(lambda v: isinstance(v, bool), "true or false")

# The keys model.build_model reads (everything else in a config is ignored by the builder),
# each with the values it may take.
_MODEL_RULES = {
    "name": Rule(lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "blocks": Rule(_is_block_table, "a non-empty list of block strings"),
    "width_coefficient": _POSITIVE_NUMBER,
    "depth_coefficient": _POSITIVE_NUMBER,
    "dropout_rate": _UNIT_INTERVAL,
    "drop_connect_rate": _UNIT_INTERVAL,
    # A name Keras knows; `check_activation` asks Keras, this rule only checks the type.
    "activation": Rule(
        lambda v: isinstance(v, str) and bool(v),
        "an activation name",
        message=_UNKNOWN_ACTIVATION,
    ),
    "bn_momentum": _UNIT_INTERVAL,
    "bn_epsilon": _POSITIVE_NUMBER,
    "depth_divisor": _POSITIVE_INT,
    "min_depth": Rule(_POSITIVE_INT.accepts, "None or a positive int", none_ok=True),
    "round_down_guard": _BOOL,
    "stem_filters": _POSITIVE_INT,
    "head_filters": _POSITIVE_INT,
    "num_classes": _POSITIVE_INT,
    "include_top": _BOOL,
    "input_normalization": Rule(
        lambda v: isinstance(v, str) and v in INPUT_NORMALIZATION_MODES,
        ", ".join(INPUT_NORMALIZATION_MODES),
        message="unknown input_normalization {value!r}; choose from {must_be}",
    ),
    # input_normalization="mean_std" only: per-channel values in 0..255 pixel units.
    "input_mean": Rule(_is_rgb, "None or 3 numbers (R, G, B in 0..255 pixel units)", none_ok=True),
    "input_std": Rule(
        lambda v: _is_rgb(v, positive=True),
        "None or 3 positive numbers (R, G, B in 0..255 pixel units)",
        none_ok=True,
    ),
    # EfficientNet-Lite (automl `fix_head_stem`): stem and head channels and the first and last
    # stage's repeats are not scaled.
    "fix_head_stem": _BOOL,
}
MODEL_KEYS = tuple(_MODEL_RULES)

# The image sizes a variant was designed for (compound scaling's resolution). The builder does
# not read them (its input size is free); the runtime takes them as the default
# --train_img_size / --eval_img_size.
_RESOLUTION_RULES = {"train_img_size": _POSITIVE_INT, "eval_img_size": _POSITIVE_INT}

RULES: Mapping[str, Rule] = MappingProxyType({**_MODEL_RULES, **_RESOLUTION_RULES})


def validate_model_config(config: Mapping[str, Any], complete: bool = False) -> None:
    """Check the values of a model config (pure Python: `check_activation` asks Keras).

    Args:
      config: a model config; keys without a rule (training and data settings) are ignored.
      complete: every key of MODEL_KEYS must be present (the builder reads them all); when
        False, only the keys present are checked (a config module, a partial config).

    Raises:
      ConfigError: the first missing key or bad value, in one line naming the key.
    """
    if complete:
        missing = [k for k in MODEL_KEYS if k not in config]
        if missing:
            raise ConfigError(f"model config lacks key(s): {', '.join(missing)}")
    for key, rule in RULES.items():
        if key in config:
            rule.check(key, config[key])
    _check_mean_std(config)


def _check_mean_std(config: Mapping[str, Any]) -> None:
    """input_mean / input_std go with input_normalization="mean_std", and only with it."""
    mode = config.get("input_normalization")
    given = [k for k in ("input_mean", "input_std") if config.get(k) is not None]
    if mode == MEAN_STD and len(given) < 2:
        raise ConfigError(
            "input_normalization='mean_std' needs input_mean and input_std (3 numbers each, "
            "R, G, B in 0..255 pixel units)"
        )
    if mode is not None and mode != MEAN_STD and given:
        raise ConfigError(
            "input_mean and input_std apply to input_normalization='mean_std' only; "
            f"this config has input_normalization={mode!r} (set input_mean=None,input_std=None)"
        )


def check_activation(name: str) -> None:
    """Raise ConfigError unless Keras knows the activation `name` (imports Keras)."""
    import keras

    try:
        keras.activations.get(name)
    except ValueError:
        raise ConfigError(_UNKNOWN_ACTIVATION.format(value=name)) from None
