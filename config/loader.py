"""Load a model-config module (`--cfg`) and apply strict `--mparams k=v,...` overrides.

A config module is a Python file that defines a module-level dict named `config`. Overrides
may only name keys that the module already defines: an unknown key is an error with a
close-match suggestion, so a typo never silently trains the wrong model. Values are checked
here too (`validate_values`: the type of an override must match the module's value, and known
keys have ranges), so a bad value fails at start-up with exit status 2 instead of later in the
model builder, after files were written.

Security: `--cfg` *executes* the named Python file, like any Python config (big_vision, NVIDIA
DeepLearningExamples); only pass config files you trust.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import os
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message is one line."""


def parse_mparams(text: str | None) -> dict[str, Any]:
    """Parse `k=v,k=v` into a dict; values are Python literals when they parse as one.

    Commas inside brackets or quotes do not split, so `blocks=('a','b')` is one item.

    Args:
      text: the `--mparams` string, or None / "" for no overrides.

    Returns:
      An ordered dict of key -> value (int, float, bool, None, tuple, list or str).
    """
    if not text:
        return {}
    items, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    out: dict[str, Any] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--mparams item {item!r} is not of the form key=value")
        out[key] = _literal(raw.strip())
    return out


def _literal(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def apply_overrides(
    base: Mapping[str, Any], overrides: Mapping[str, Any], what: str = "--mparams"
) -> dict[str, Any]:
    """Return a new dict: `base` updated with `overrides`; unknown keys raise ConfigError."""
    unknown = [k for k in overrides if k not in base]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(base), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown {what} key {key!r}{hint}; valid keys: {', '.join(sorted(base))}"
        )
    return {**base, **overrides}


def load_module_config(path: str) -> dict[str, Any]:
    """Execute the config module at `path` and return a copy of its `config` dict."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    name = "_cfg_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"config file is not a Python module: {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # a broken user file: report it in one line
        raise ConfigError(
            f"config file {path} failed to load: {type(err).__name__}: {err}"
        ) from err
    config = getattr(module, "config", None)
    if not isinstance(config, Mapping):
        raise ConfigError(f"config file {path} defines no `config` dict")
    return dict(config)


# NOTE: mirrors model.efficientnet.INPUT_NORMALIZATIONS (importing the model loads Keras, and
# a typo must fail at once); tests/test_config_loader.py checks that the copies agree.
INPUT_NORMALIZATION_NAMES = ("imagenet", "scale128", "none")

_POSITIVE_NUMBERS = ("width_coefficient", "depth_coefficient", "bn_epsilon")
_UNIT_INTERVAL = ("dropout_rate", "drop_connect_rate", "bn_momentum")  # [0, 1)
_POSITIVE_INTS = (
    "depth_divisor",
    "stem_filters",
    "head_filters",
    "num_classes",
    "train_img_size",
    "eval_img_size",
)
_OPTIONAL_POSITIVE_INTS = ("min_depth",)
_BOOLS = ("include_top", "round_down_guard")
_STRINGS = ("name", "activation")


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an int"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple | list):
        return "a list"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_type(key: str, value: Any, like: Any, what: str) -> None:
    """An override must have the type of the module's value (an int is fine for a float)."""
    if like is None or value is None and key in _OPTIONAL_POSITIVE_INTS:
        return
    if isinstance(like, bool):
        ok = isinstance(value, bool)
    elif isinstance(like, int):
        ok = _is_int(value)
    elif isinstance(like, float):
        ok = _is_number(value)
    elif isinstance(like, str):
        ok = isinstance(value, str)
    elif isinstance(like, tuple | list):
        ok = isinstance(value, tuple | list)
    else:
        ok = True
    if not ok:
        raise ConfigError(
            f"{what} {key}={value!r} must be {_type_name(like)} like the config's {like!r}"
        )


def validate_values(
    config: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    what: str = "--mparams",
) -> None:
    """Check the values of a model config without importing the model (pure Python).

    Args:
      config: the config after overrides.
      overrides: the `--mparams` values; each must have the type of `base[key]`.
      base: the module's config before overrides.
      what: how the overrides are named in messages.

    Raises:
      ConfigError: the first bad value, in one line naming the key.
    """
    overrides, base = overrides or {}, base or {}
    for key, value in overrides.items():
        _check_type(key, value, base.get(key), what)
    for key in _POSITIVE_NUMBERS:
        if key in config and not (_is_number(config[key]) and config[key] > 0):
            raise ConfigError(f"{key} must be a positive number, got {config[key]!r}")
    for key in _UNIT_INTERVAL:
        if key in config and not (_is_number(config[key]) and 0 <= config[key] < 1):
            raise ConfigError(f"{key} must be in [0, 1), got {config[key]!r}")
    for key in _POSITIVE_INTS:
        if key in config and not (_is_int(config[key]) and config[key] >= 1):
            raise ConfigError(f"{key} must be a positive int, got {config[key]!r}")
    for key in _OPTIONAL_POSITIVE_INTS:
        if (
            key in config
            and config[key] is not None
            and not (_is_int(config[key]) and config[key] >= 1)
        ):
            raise ConfigError(f"{key} must be None or a positive int, got {config[key]!r}")
    for key in _BOOLS:
        if key in config and not isinstance(config[key], bool):
            raise ConfigError(f"{key} must be true or false, got {config[key]!r}")
    for key in _STRINGS:
        if key in config and not (isinstance(config[key], str) and config[key]):
            raise ConfigError(f"{key} must be a non-empty string, got {config[key]!r}")
    if (
        "input_normalization" in config
        and config["input_normalization"] not in INPUT_NORMALIZATION_NAMES
    ):
        raise ConfigError(
            f"unknown input_normalization {config['input_normalization']!r}; "
            f"choose from {', '.join(INPUT_NORMALIZATION_NAMES)}"
        )
    if "blocks" in config:
        blocks = config["blocks"]
        if not (
            isinstance(blocks, tuple | list) and blocks and all(isinstance(b, str) for b in blocks)
        ):
            raise ConfigError(f"blocks must be a non-empty list of block strings, got {blocks!r}")
        if "blocks" in overrides:
            # Parsing a block string needs model.specs (which imports Keras): only for overrides.
            from model.specs import parse_blocks

            parse_blocks(blocks)
    if "activation" in overrides:
        import keras

        try:
            keras.activations.get(config["activation"])
        except ValueError:
            raise ConfigError(
                f"unknown activation {config['activation']!r} (e.g. 'swish', 'silu', 'relu')"
            ) from None


def load_config(path: str, mparams: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load `path`'s config and apply `mparams` (a `k=v,...` string or a mapping) strictly.

    Raises:
      ConfigError: missing/broken file, unknown key or bad value (see `validate_values`).
    """
    overrides = parse_mparams(mparams) if isinstance(mparams, str | None) else dict(mparams)
    base = load_module_config(path)
    config = apply_overrides(base, overrides)
    validate_values(config, overrides, base)
    return config
