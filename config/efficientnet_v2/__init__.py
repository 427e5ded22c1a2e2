"""EfficientNetV2 family (Tan & Le, arXiv:2104.00298): block tables and family defaults.

Block tables, scaling, dropout and progressive-training image sizes follow google/automl
efficientnetv2/effnetv2_configs.py (`efficientnetv2_params`: train_size is the largest size of
progressive training, eval_size the evaluation size). S/M/L/XL are separate tables at width =
depth = 1; B0..B3 scale one base table "for fair comparison to EfficientNetV1, using the same
scaling and preprocessing as V1" (automl README): the v1 data recipe and ImageNet mean/std input,
as keras.applications EfficientNetV2B0..B3 do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from config.defaults import MODEL_DEFAULTS
from config.efficientnet_v1 import V1_DATA_RECIPE

# automl `v2_base_block`, scaled by width/depth into B0..B3.
V2_BASE_BLOCKS = (
    "r1_k3_s1_e1_i32_o16_c1",
    "r2_k3_s2_e4_i16_o32_c1",
    "r2_k3_s2_e4_i32_o48_c1",
    "r3_k3_s2_e4_i48_o96_se0.25",
    "r5_k3_s1_e6_i96_o112_se0.25",
    "r8_k3_s2_e6_i112_o192_se0.25",
)
V2_S_BLOCKS = (
    "r2_k3_s1_e1_i24_o24_c1",
    "r4_k3_s2_e4_i24_o48_c1",
    "r4_k3_s2_e4_i48_o64_c1",
    "r6_k3_s2_e4_i64_o128_se0.25",
    "r9_k3_s1_e6_i128_o160_se0.25",
    "r15_k3_s2_e6_i160_o256_se0.25",
)
V2_M_BLOCKS = (
    "r3_k3_s1_e1_i24_o24_c1",
    "r5_k3_s2_e4_i24_o48_c1",
    "r5_k3_s2_e4_i48_o80_c1",
    "r7_k3_s2_e4_i80_o160_se0.25",
    "r14_k3_s1_e6_i160_o176_se0.25",
    "r18_k3_s2_e6_i176_o304_se0.25",
    "r5_k3_s1_e6_i304_o512_se0.25",
)
V2_L_BLOCKS = (
    "r4_k3_s1_e1_i32_o32_c1",
    "r7_k3_s2_e4_i32_o64_c1",
    "r7_k3_s2_e4_i64_o96_c1",
    "r10_k3_s2_e4_i96_o192_se0.25",
    "r19_k3_s1_e6_i192_o224_se0.25",
    "r25_k3_s2_e6_i224_o384_se0.25",
    "r7_k3_s1_e6_i384_o640_se0.25",
)
# automl: "only for 21k pretraining".
V2_XL_BLOCKS = (
    "r4_k3_s1_e1_i32_o32_c1",
    "r8_k3_s2_e4_i32_o64_c1",
    "r8_k3_s2_e4_i64_o96_c1",
    "r16_k3_s2_e4_i96_o192_se0.25",
    "r24_k3_s1_e6_i192_o256_se0.25",
    "r32_k3_s2_e6_i256_o512_se0.25",
    "r8_k3_s1_e6_i512_o640_se0.25",
)

# The data recipe of automl efficientnetv2/preprocessing.py: random crop of area [0.05, 1] with
# min_object_covered 0; evaluation resizes the whole image to the square (no crop) at sizes
# >= 320 and center-crops size / (size + 32) below; bilinear throughout.
# NOTE: NVIDIA's v2 pipeline keeps min_object_covered 0.1 and always center-crops
# (docs/parity.md).
V2_DATA_RECIPE = {
    "crop_area_min": 0.05,
    "crop_min_object_covered": 0.0,
    "eval_squash_min_size": 320,
    "resize_method": "bilinear",
}


def v2_config(
    name: str,
    blocks: Sequence[str],
    stem_filters: int,
    train_size: int,
    eval_size: int,
    dropout: float,
    *,
    width: float = 1.0,
    depth: float = 1.0,
    input_normalization: str = "scale128",
    data_recipe: Mapping[str, Any] = V2_DATA_RECIPE,
) -> dict[str, Any]:
    """A v2 variant's config: shared defaults + v2 family settings + this variant's table.

    Args:
      name: model name, e.g. "efficientnetv2-s".
      blocks: the variant's block table (S/M/L/XL are separate tables, width = depth = 1).
      stem_filters: stem channels (the first stage's input channels, before width scaling).
      train_size: final (largest) image size of progressive training.
      eval_size: evaluation image size.
      dropout: dropout rate before the classifier.
      width: width coefficient (B0..B3 scale the base table).
      depth: depth coefficient.
      input_normalization: in-graph input normalization; "scale128" = (x - 128) / 128 as
        keras.applications EfficientNetV2S/M/L and automl effnetv2 (config/defaults.py).
      data_recipe: crop / eval transform / resize values (V2_DATA_RECIPE or V1_DATA_RECIPE).

    Returns:
      A new config dict.
    """
    return {
        **MODEL_DEFAULTS,
        "name": name,
        "blocks": tuple(blocks),
        "width_coefficient": width,
        "depth_coefficient": depth,
        "dropout_rate": dropout,
        # NOTE: automl effnetv2 uses BN momentum 0.9 (v1: 0.99).
        "bn_momentum": 0.9,
        "min_depth": 8,
        # automl effnetv2 utils.round_filters has no 10% round-down guard.
        "round_down_guard": False,
        "stem_filters": stem_filters,
        "input_normalization": input_normalization,
        "train_img_size": train_size,
        "eval_img_size": eval_size,
        **data_recipe,
    }


def v2_base_config(
    name: str, width: float, depth: float, train_size: int, eval_size: int, dropout: float
) -> dict[str, Any]:
    """A V2-B0..B3 config: the base table scaled by width/depth, with v1 preprocessing.

    automl trains these with `augname="effnetv1_autoaug"`, i.e. its v1 input pipeline
    (preprocess_legacy.py: ImageNet mean/std, bicubic, center crop); keras.applications
    EfficientNetV2B0..B3 normalize with the ImageNet mean/std too.

    Args:
      name: model name, e.g. "efficientnetv2-b0".
      width: width coefficient.
      depth: depth coefficient.
      train_size: final (largest) image size of progressive training.
      eval_size: evaluation image size.
      dropout: dropout rate before the classifier.

    Returns:
      A new config dict.
    """
    return v2_config(
        name,
        V2_BASE_BLOCKS,
        stem_filters=32,
        train_size=train_size,
        eval_size=eval_size,
        dropout=dropout,
        width=width,
        depth=depth,
        input_normalization="imagenet",
        data_recipe=V1_DATA_RECIPE,
    )
