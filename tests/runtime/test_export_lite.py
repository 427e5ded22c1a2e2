"""EfficientNet-Lite exports to LiteRT like the rest (--mode export's self-check passes).

A tiny Lite (two stages at 32 px; stem and head stay at 32 / 1280 channels) through the same
export path as tests/runtime/test_export.py, with the eval transform in the graph: ReLU6, the
mean/std input normalization, the fixed stem/head and Lite's TF1 bicubic resize (as matrix
products: LiteRT has no bicubic op) convert and agree with Keras within the export's tolerance.
"""

import importlib.util
import json

import pytest

import main
from tests.helpers import tiny_run
from tests.helpers.tiny_run import save_random_checkpoint

LITE_MPARAMS = (
    "width_coefficient=0.25,train_img_size=32,eval_img_size=32,num_classes=10,"
    "blocks=('r1_k3_s1_e1_i32_o16','r1_k3_s2_e6_i16_o24')"
)


def lite_args(model_dir, mode, *extra):
    args = tiny_run.tiny_args(model_dir, mode, *extra, mparams=LITE_MPARAMS)
    args[args.index("--cfg") + 1] = "config/efficientnet_lite/lite0_cfg.py"
    return args


def test_lite_exports_to_litert_and_passes_the_self_check(tmp_path):
    if importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("needs ai-edge-litert (pip install -r requirements-export.txt)")
    model = save_random_checkpoint(tiny_run.flags.parse(lite_args(tmp_path, "export")))
    assert {layer.name for layer in model.layers} >= {"input_normalization", "stem_conv"}
    argv = lite_args(tmp_path, "export", "--export_format", "tflite", "--export_preprocessing")
    assert main.main(argv) == 0
    with open(tmp_path / "export" / "export.json") as f:
        (artifact,) = json.load(f)["artifacts"]
    assert artifact["format"] == "tflite" and artifact["passed"] and artifact["preprocessing"]
