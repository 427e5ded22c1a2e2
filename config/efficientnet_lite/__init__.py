"""EfficientNet-Lite family: EfficientNet v1 made for mobile and edge accelerators.

From google's `efficientnet/lite/efficientnet_lite_builder.py` (tensorflow/tpu, automl; timm
`_gen_efficientnet_lite` agrees): the v1 B0 block table without squeeze-excitation ("not well
supported on many lite devices"), ReLU6 instead of swish ("for easier quantization"), stem and
head fixed while scaling (`fix_head_stem`: 32 stem and 1280 head channels, the first and last
stage's repeats not scaled), input (x - 127) / 128 ("inception-style MEAN and STDDEV for better
post-quantization"). Scaling, resolution and dropout per variant are `efficientnet_lite_params`;
BN momentum 0.99 / epsilon 1e-3, drop-connect 0.2 (survival_prob 0.8) and v1's channel rounding
(with its 10% round-down guard) are shared with v1, and so is the data recipe (Google's v1
pipeline with its own mean/std).
"""

from __future__ import annotations

from typing import Any

from config.defaults import MODEL_DEFAULTS
from config.efficientnet_v1 import V1_BLOCKS, V1_DATA_RECIPE

# The v1 B0 table without squeeze-excitation (automl lite: use_se=False).
LITE_BLOCKS = tuple(b.replace("_se0.25", "") for b in V1_BLOCKS)
# automl lite MEAN_RGB / STDDEV_RGB, in 0..255 pixel units.
LITE_INPUT_MEAN = (127.0, 127.0, 127.0)
LITE_INPUT_STD = (128.0, 128.0, 128.0)


def lite_config(
    name: str, width: float, depth: float, resolution: int, dropout: float
) -> dict[str, Any]:
    """A Lite variant's config: shared defaults + Lite family settings + this variant's scaling.

    Args:
      name: model name, e.g. "efficientnet-lite0".
      width: width coefficient (stem and head channels stay fixed).
      depth: depth coefficient (the first and last stage's repeats stay fixed).
      resolution: train and eval image size.
      dropout: dropout rate before the classifier.

    Returns:
      A new config dict.
    """
    return {
        **MODEL_DEFAULTS,
        "name": name,
        "blocks": LITE_BLOCKS,
        "width_coefficient": width,
        "depth_coefficient": depth,
        "dropout_rate": dropout,
        "activation": "relu6",
        "round_down_guard": True,
        "fix_head_stem": True,
        "input_normalization": "mean_std",
        "input_mean": LITE_INPUT_MEAN,
        "input_std": LITE_INPUT_STD,
        "train_img_size": resolution,
        "eval_img_size": resolution,
        **V1_DATA_RECIPE,
    }
