"""Load a model-config module (`--cfg`) and apply strict `--mparams k=v,...` overrides.

A config module is a Python file that defines a module-level dict named `config`. Overrides
may only name keys that the module already defines: an unknown key is an error with a
close-match suggestion, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
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


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any], what: str = "--mparams") -> dict[str, Any]:
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
        raise ConfigError(f"config file {path} failed to load: {type(err).__name__}: {err}") from err
    config = getattr(module, "config", None)
    if not isinstance(config, Mapping):
        raise ConfigError(f"config file {path} defines no `config` dict")
    return dict(config)


def load_config(path: str, mparams: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load `path`'s config and apply `mparams` (a `k=v,...` string or a mapping) strictly."""
    overrides = parse_mparams(mparams) if isinstance(mparams, str | None) else dict(mparams)
    return apply_overrides(load_module_config(path), overrides)
