"""EfficientNet v1 family (Tan & Le, arXiv:1905.11946): base block table and scaling rule.

Values follow google/automl efficientnet_builder.py and keras.applications EfficientNetB0-B7.
"""

from __future__ import annotations

from typing import Any

from config.defaults import MODEL_DEFAULTS

# EfficientNet-B0 (paper table 1), automl block-string form.
V1_BLOCKS = (
    "r1_k3_s1_e1_i32_o16_se0.25",
    "r2_k3_s2_e6_i16_o24_se0.25",
    "r2_k5_s2_e6_i24_o40_se0.25",
    "r3_k3_s2_e6_i40_o80_se0.25",
    "r3_k5_s1_e6_i80_o112_se0.25",
    "r4_k5_s2_e6_i112_o192_se0.25",
    "r1_k3_s1_e6_i192_o320_se0.25",
)

# The data recipe of Google's v1 pipeline (tensorflow/tpu efficientnet/preprocessing.py, automl
# efficientnetv2/preprocess_legacy.py; behind the published B0-B7 and Lite accuracies and the
# keras.applications weights): random crop of area [0.08, 1] covering >= 10% of the image, eval
# center crop size / (size + 32), TF1 `resize_bicubic` (no half-pixel centers) for both.
# NOTE: NVIDIA's TF2 pipeline uses area 0.05 and bilinear for v1 too (docs/parity.md).
V1_DATA_RECIPE = {
    "crop_area_min": 0.08,
    "crop_min_object_covered": 0.1,
    "eval_squash_min_size": None,  # never squash: always the center crop
    "resize_method": "bicubic_tf1",
}


def v1_config(
    name: str, width: float, depth: float, resolution: int, dropout: float
) -> dict[str, Any]:
    """A v1 variant's config: shared defaults + v1 block table + this variant's scaling.

    Args:
      name: model name, e.g. "efficientnet-b0".
      width: width coefficient.
      depth: depth coefficient.
      resolution: train and eval image size (v1 trains and evaluates at one size).
      dropout: dropout rate before the classifier.

    Returns:
      A new config dict.
    """
    return {
        **MODEL_DEFAULTS,
        "name": name,
        "blocks": V1_BLOCKS,
        "width_coefficient": width,
        "depth_coefficient": depth,
        "dropout_rate": dropout,
        # v1 keeps the "round down by at most 10%" guard of automl v1 round_filters.
        "round_down_guard": True,
        "train_img_size": resolution,
        "eval_img_size": resolution,
        **V1_DATA_RECIPE,
    }
