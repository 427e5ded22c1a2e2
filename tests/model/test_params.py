"""Golden parameter counts of every variant against the published references.

Reference: keras.applications EfficientNetB0-B7 / EfficientNetV2B0-B3 / EfficientNetV2S/M/L
built with weights=None
(`model.count_params()`, BN moving statistics included). Our v1 models have exactly 7 fewer:
keras.applications' v1 graph holds an (un-adapted) Normalization layer whose mean (3),
variance (3) and count (1) are weights, while ours normalizes with in-graph constants; every
network weight matches. V2 matches exactly (automl pins the same S/M/L numbers; V2-B0..B3 build
their Normalization from constants, so nothing to subtract).
V2-XL has no keras.applications model: automl reports 208.12M, which is its *trainable* count;
ours is 208,119,808 trainable (+ 777,024 BN moving statistics).
"""

import pytest

from tests.helpers.model_zoo import profiled, variant_params

KERAS_APPLICATIONS = {
    "b0": 5_330_571,
    "b1": 7_856_239,
    "b2": 9_177_569,
    "b3": 12_320_535,
    "b4": 19_466_823,
    "b5": 30_562_527,
    "b6": 43_265_143,
    "b7": 66_658_687,
    "s": 21_612_360,
    "m": 54_431_388,
    "l": 119_027_848,
    "v2-b0": 7_200_312,
    "v2-b1": 8_212_124,
    "v2-b2": 10_178_374,
    "v2-b3": 14_467_622,
}
V1_NORMALIZATION_STATS = 7


@pytest.mark.parametrize("variant", variant_params(KERAS_APPLICATIONS))
def test_param_count_matches_keras_applications(variant):
    expected = KERAS_APPLICATIONS[variant]
    if variant.startswith("b"):
        expected -= V1_NORMALIZATION_STATS
    assert profiled(variant)["params"] == expected


@pytest.mark.slow
def test_v2_xl_trainable_params_match_automl():
    row = profiled("xl")
    assert round(row["trainable_m"], 2) == 208.12
    assert row["params"] == 208_896_832
