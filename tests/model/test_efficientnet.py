"""build_model: forward over every variant, contract (logits, dtype, sizes), names, errors."""

import keras
import numpy as np
import pytest

from config.loader import ConfigError, load_config
from model import build_model
from model.efficientnet import InputNormalization
from tests.helpers.model_zoo import cfg_path

TINY = "width_coefficient=0.1,depth_coefficient=0.1,num_classes=10"
ALL = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "s", "m", "l", "xl"]


def images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def tiny(variant="b0", **overrides):
    cfg = load_config(cfg_path(variant), TINY)
    return {**cfg, **overrides}


@pytest.mark.parametrize("variant", ["b0", "s"])
def test_full_size_forward_at_low_resolution(variant):
    model = build_model(load_config(cfg_path(variant)))
    logits = keras.ops.convert_to_numpy(model(images(), training=False))
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("variant", ALL)
def test_every_variant_tiny_forward_and_train_mode_is_finite(variant):
    """Each variant's own block table, activation, BN and normalization at width/depth 0.1."""
    model = build_model(tiny(variant))
    for training in (False, True):
        out = keras.ops.convert_to_numpy(model(images(), training=training))
        assert out.shape == (2, 10) and np.all(np.isfinite(out))


def test_any_image_size_without_rebuilding():
    model = build_model(tiny())
    assert model.input_shape == (None, None, None, 3)
    for size in (32, 48, 65):
        assert model(images(size=size)).shape == (2, 10)


def test_num_classes_argument_overrides_config_and_config_untouched():
    cfg = tiny()
    model = build_model(cfg, num_classes=7)
    assert model.output_shape == (None, 7) and cfg["num_classes"] == 10


def test_include_top_false_gives_float32_feature_map():
    model = build_model(tiny(include_top=False))
    out = model(images(size=64))
    assert tuple(out.shape) == (2, 2, 2, 128) and out.dtype == "float32"  # 1280 * 0.1


def test_stable_layer_names_and_drop_connect_schedule():
    model = build_model(load_config(cfg_path("b0")))
    names = [layer.name for layer in model.layers]
    assert names[:5] == ["images", "input_normalization", "stem_conv", "stem_bn", "stem_activation"]
    assert names[-6:] == [
        "head_conv",
        "head_bn",
        "head_activation",
        "avg_pool",
        "head_dropout",
        "logits",
    ]
    blocks = [layer for layer in model.layers if layer.name.startswith("stage")]
    assert len(blocks) == 16 and blocks[4].name == "stage3_block2"
    assert [b.drop_rate for b in blocks] == pytest.approx([0.2 * i / 16 for i in range(16)])
    assert model.get_layer("stage3_block2").get_config()["kernel"] == 5


def test_mixed_precision_still_gives_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(tiny())
        assert model.get_layer("stem_conv").compute_dtype == "float16"
        assert model.get_layer("input_normalization").compute_dtype == "float32"
        out = model(images())
        assert out.dtype == "float32" and np.all(np.isfinite(keras.ops.convert_to_numpy(out)))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_input_normalization_matches_family_preprocessing():
    x = images(n=1, size=4)
    v1 = keras.ops.convert_to_numpy(InputNormalization("imagenet")(x))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(v1, (x / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    v2 = keras.ops.convert_to_numpy(InputNormalization("scale128")(x))
    np.testing.assert_allclose(v2, x / 128.0 - 1.0, rtol=1e-6, atol=1e-6)
    none = build_model(tiny(input_normalization="none"))
    assert "input_normalization" not in [layer.name for layer in none.layers]


def test_model_config_round_trip():
    model = build_model(tiny("s"))
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = images()
    np.testing.assert_allclose(clone(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"activation": "swishh"}, "unknown activation 'swishh'"),
        ({"activation": 3}, "unknown activation 3"),
        ({"blocks": ("r1_k3_s1_e1_i32_o16_zz1",)}, "bad block string 'r1_k3_s1_e1_i32_o16_zz1'"),
        (
            {"blocks": ("r1_k3_s1_e1_i32_o16", "r1_k3_s2_e6_i24_o24")},
            "block table inconsistent at stage2_block1",
        ),
        ({"input_normalization": "caffe"}, "unknown input_normalization 'caffe'"),
        ({"width_coefficient": 0}, "width_coefficient must be a positive number"),
        ({"dropout_rate": 1.0}, r"dropout_rate must be in \[0, 1\)"),
        ({"num_classes": 0}, "num_classes must be a positive int"),
        ({"bn_momentum": 1.5}, r"bn_momentum must be in \[0, 1\)"),
        ({"bn_epsilon": 0}, "bn_epsilon must be a positive number"),
        ({"include_top": "yes"}, "include_top must be true or false"),
    ],
)
def test_bad_model_config_is_a_one_line_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_model({**load_config(cfg_path("b0")), **overrides})
    assert "\n" not in str(err.value)


def test_missing_key_is_reported():
    cfg = load_config(cfg_path("b0"))
    del cfg["bn_epsilon"]
    with pytest.raises(ConfigError, match="lacks key.*bn_epsilon"):
        build_model(cfg)
