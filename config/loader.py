"""Load a model-config module (`--cfg`) and apply strict `--mparams k=v,...` overrides.

A config module is a Python file that defines a module-level dict named `config`. Overrides
may only name keys that the module already defines: an unknown key is an error with a
close-match suggestion, so a typo never silently trains the wrong model. Values are checked
here too (`validate_values`: the type of an override must match the module's value, and the
model's schema, model/schema.py, checks the value of every key it knows), so a bad value fails
at start-up with exit status 2 instead of later in the model builder, after files were written.

Security: `--cfg` *executes* the named Python file, like any Python config (big_vision, NVIDIA
DeepLearningExamples); only pass config files you trust.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from model.schema import RULES, check_activation, is_int, is_number, validate_model_config
from utils.errors import ConfigError


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
    return {**base, **{k: _none_word(k, v, base[k]) for k, v in overrides.items()}}


def _none_word(key: str, value: Any, like: Any) -> Any:
    """`key=none` parses as None; for a string key that takes the word "none"
    (`input_normalization=none`), the word is what the user meant."""
    rule = RULES.get(key)
    if value is None and isinstance(like, str) and rule is not None and not rule.none_ok:
        if rule.accepts("none"):
            return "none"
    return value


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


def _check_type(key: str, value: Any, like: Any, what: str) -> None:
    """An override must have the type of the module's value (an int is fine for a float)."""
    if like is None or value is None and key in RULES and RULES[key].none_ok:
        return
    if isinstance(like, bool):
        ok = isinstance(value, bool)
    elif isinstance(like, int):
        ok = is_int(value)
    elif isinstance(like, float):
        ok = is_number(value)
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
    """Check the types of the overrides and the values of the config (without Keras).

    The values are checked by the model's schema (model/schema.py, the one validator); Keras
    is asked about an activation name only when an override sets one.

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
        _check_type(key, _none_word(key, value, base.get(key)), base.get(key), what)
    validate_model_config(config)
    if "activation" in overrides:
        check_activation(config["activation"])


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
