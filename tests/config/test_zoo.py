"""The V2-B0..B3 and Lite0..4 config modules: automl's scaling, sizes, dropout and input."""

import pytest

from config.efficientnet_v1 import V1_DATA_RECIPE
from config.efficientnet_v2 import V2_BASE_BLOCKS
from config.loader import load_config
from tests.helpers.model_zoo import cfg_path

# automl effnetv2_configs.efficientnetv2_params: (width, depth, train_size, eval_size, dropout).
V2_BASE = {
    "b0": (1.0, 1.0, 192, 224, 0.2),
    "b1": (1.0, 1.1, 192, 240, 0.2),
    "b2": (1.1, 1.2, 208, 260, 0.3),
    "b3": (1.2, 1.4, 240, 300, 0.3),
}


@pytest.mark.parametrize("variant", sorted(V2_BASE))
def test_v2_base_configs(variant):
    cfg = load_config(cfg_path(f"v2-{variant}"))
    width, depth, train_size, eval_size, dropout = V2_BASE[variant]
    assert cfg["name"] == f"efficientnetv2-{variant}"
    assert tuple(cfg["blocks"]) == V2_BASE_BLOCKS
    assert (cfg["width_coefficient"], cfg["depth_coefficient"]) == (width, depth)
    assert (cfg["train_img_size"], cfg["eval_img_size"], cfg["dropout_rate"]) == (
        train_size,
        eval_size,
        dropout,
    )
    # v2 model family, v1 input: automl's "effnetv1_autoaug" pipeline, keras.applications' mean/std.
    assert (cfg["bn_momentum"], cfg["round_down_guard"], cfg["min_depth"]) == (0.9, False, 8)
    assert cfg["input_normalization"] == "imagenet"
    assert {k: cfg[k] for k in V1_DATA_RECIPE} == V1_DATA_RECIPE
