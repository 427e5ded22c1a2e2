"""model/schema.py: the one validator of model-config values, TF-free, owned by model/ (which
imports nothing from config/, runtime/ or dataloader/)."""

from __future__ import annotations

import ast
import os
import subprocess

import pytest

from config.loader import load_config
from model.schema import MODEL_KEYS, RULES, validate_model_config
from tests.helpers import ROOT
from tests.helpers.processes import program
from utils.errors import ConfigError


def imported_modules(path: str, package: str) -> set[str]:
    """Every module a file imports, at module level or inside a function (relative resolved)."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = (
                package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            )
            names.add(".".join([*base, *([node.module] if node.module else [])]))
    return names


def test_model_imports_nothing_from_config_runtime_or_dataloader():
    imports = {}
    for name in os.listdir(os.path.join(ROOT, "model")):
        if name.endswith(".py"):
            imports[name] = imported_modules(os.path.join(ROOT, "model", name), "model")
    assert "utils.errors" in imports["specs.py"]  # the walk sees the imports
    for name, modules in imports.items():
        upstream = {m for m in modules if m.split(".")[0] in ("config", "runtime", "dataloader")}
        assert not upstream, f"model/{name} imports {sorted(upstream)}"


def test_the_schema_and_the_loader_import_without_keras():
    command = program("imports_without_tensorflow", "model", "model.schema", "config.loader")
    assert subprocess.run(command, cwd=ROOT).returncode == 0


# One bad value per rule, and the words of its message.
BAD_VALUES = {
    "name": ("", "name must be a non-empty string"),
    "blocks": ((), "'blocks' must be a non-empty list of block strings"),
    "width_coefficient": (True, "width_coefficient must be a positive number"),
    "depth_coefficient": (float("nan"), "depth_coefficient must be a positive number"),
    "dropout_rate": (-0.5, r"dropout_rate must be in \[0, 1\)"),
    "drop_connect_rate": (1, r"drop_connect_rate must be in \[0, 1\)"),
    "activation": (None, "unknown activation None"),
    "bn_momentum": ("0.9", r"bn_momentum must be in \[0, 1\)"),
    "bn_epsilon": (-1e-3, "bn_epsilon must be a positive number"),
    "depth_divisor": (8.0, "depth_divisor must be a positive int"),
    "min_depth": (-1, "min_depth must be None or a positive int"),
    "round_down_guard": (0, "round_down_guard must be true or false"),
    "stem_filters": (0, "stem_filters must be a positive int"),
    "head_filters": (False, "head_filters must be a positive int"),
    "num_classes": (10.5, "num_classes must be a positive int"),
    "include_top": ("true", "include_top must be true or false"),
    "input_normalization": ("zscore", "unknown input_normalization 'zscore'; choose from"),
    "input_mean": ((127.0, 127.0), r"input_mean must be None or 3 numbers"),
    "input_std": ((128.0, 0.0, 128.0), r"input_std must be None or 3 positive numbers"),
    "fix_head_stem": ("yes", "fix_head_stem must be true or false"),
    "train_img_size": (0, "train_img_size must be a positive int"),
    "eval_img_size": (-224, "eval_img_size must be a positive int"),
}


def test_every_rule_has_a_bad_value_case():
    assert set(BAD_VALUES) == set(RULES)


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_a_bad_value_is_one_line_naming_the_key(key):
    value, message = BAD_VALUES[key]
    good = load_config("config/efficientnet_v2/s_cfg.py")
    validate_model_config(good, complete=True)
    with pytest.raises(ConfigError, match=message) as info:
        validate_model_config({**good, key: value})
    assert "\n" not in str(info.value)


def test_only_a_complete_check_asks_for_every_model_key():
    good = load_config("config/efficientnet_v1/b0_cfg.py")
    validate_model_config({"width_coefficient": 1.0, "train_img_size": 32, "lr": "ignored"})
    validate_model_config({k: good[k] for k in MODEL_KEYS}, complete=True)  # sizes optional
    with pytest.raises(ConfigError, match="model config lacks key.*num_classes"):
        validate_model_config({k: good[k] for k in MODEL_KEYS if k != "num_classes"}, True)
