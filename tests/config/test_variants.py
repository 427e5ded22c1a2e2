"""The shipped EfficientNet v1/v2 config modules: contract keys, shared defaults, sizes."""

import os

import pytest

from config.defaults import MODEL_DEFAULTS
from config.loader import ConfigError, load_config
from tests.helpers import ROOT

V1 = {f"b{i}": size for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))}
# automl effnetv2_configs: (train_size = progressive-training max, eval_size, dropout).
V2 = {"s": (300, 384, 0.2), "m": (384, 480, 0.3), "l": (384, 480, 0.4), "xl": (384, 512, 0.4)}
CONTRACT_KEYS = {
    "name",
    "blocks",
    "width_coefficient",
    "depth_coefficient",
    "dropout_rate",
    "drop_connect_rate",
    "activation",
    "bn_momentum",
    "bn_epsilon",
    "depth_divisor",
    "min_depth",
    "stem_filters",
    "head_filters",
    "num_classes",
    "include_top",
    "input_normalization",
    "train_img_size",
    "eval_img_size",
}


def v1_path(variant):
    return os.path.join(ROOT, "config", "efficientnet_v1", f"{variant}_cfg.py")


def v2_path(variant):
    return os.path.join(ROOT, "config", "efficientnet_v2", f"{variant}_cfg.py")


@pytest.mark.parametrize("variant", sorted(V1))
def test_v1_configs(variant):
    cfg = load_config(v1_path(variant))
    assert CONTRACT_KEYS <= set(cfg)
    assert cfg["name"] == f"efficientnet-{variant}"
    assert cfg["train_img_size"] == cfg["eval_img_size"] == V1[variant]
    assert cfg["round_down_guard"] is True and cfg["bn_momentum"] == 0.99
    assert cfg["input_normalization"] == "imagenet"


@pytest.mark.parametrize("variant", sorted(V2))
def test_v2_configs(variant):
    cfg = load_config(v2_path(variant))
    assert CONTRACT_KEYS <= set(cfg)
    assert cfg["name"] == f"efficientnetv2-{variant}"
    assert (cfg["train_img_size"], cfg["eval_img_size"], cfg["dropout_rate"]) == V2[variant]
    assert cfg["round_down_guard"] is False and cfg["bn_momentum"] == 0.9
    assert cfg["input_normalization"] == "scale128"
    assert any(b.endswith("_c1") for b in cfg["blocks"])


def test_defaults_come_from_one_module():
    """Keys a variant does not override hold the shared default object itself."""
    for path in (v1_path("b0"), v2_path("s")):
        cfg = load_config(path)
        for key in (
            "activation",
            "bn_epsilon",
            "depth_divisor",
            "num_classes",
            "include_top",
            "head_filters",
            "drop_connect_rate",
        ):
            assert cfg[key] == MODEL_DEFAULTS[key]


def test_tiny_override_and_unknown_key():
    cfg = load_config(
        v2_path("s"),
        "width_coefficient=0.1,depth_coefficient=0.1,"
        "train_img_size=32,eval_img_size=32,num_classes=10",
    )
    assert (cfg["width_coefficient"], cfg["num_classes"], cfg["eval_img_size"]) == (0.1, 10, 32)
    with pytest.raises(ConfigError, match="did you mean 'dropout_rate'"):
        load_config(v1_path("b0"), "dropout_rat=0.1")
