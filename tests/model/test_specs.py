"""BlockSpec string round-trip, parse errors, rounding policy and block expansion."""

import dataclasses
import glob
import os

import pytest

from config.loader import ConfigError, load_config
from model.specs import BlockSpec, expand_blocks, parse_blocks, round_filters, round_repeats
from tests.helpers import ROOT

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "config", "efficientnet_*", "*_cfg.py")))


def test_all_shipped_configs_found():
    assert len(CONFIGS) == 21  # v1 B0-B7, V2-B0..B3 and S/M/L/XL, Lite0..4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_block_strings_round_trip(path):
    for text in load_config(path)["blocks"]:
        spec = BlockSpec.parse(text)
        assert str(spec) == text
        assert BlockSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    "spec",
    [
        BlockSpec(1, 3, 1, 1, 32, 16, 0.25),
        BlockSpec(15, 5, 2, 6, 160, 256, 0.0625, fused=False),
        BlockSpec(2, 3, 1, 1, 24, 24, 0.0, fused=True),
        BlockSpec(4, 7, 2, 4, 48, 64, 0.5, fused=True),
    ],
)
def test_spec_round_trip(spec):
    assert BlockSpec.parse(str(spec)) == spec


def test_parse_fields_and_automl_v1_stride_form():
    spec = BlockSpec.parse("r3_k5_s22_e6_i40_o80_se0.25")
    assert spec == BlockSpec(
        repeats=3, kernel=5, stride=2, expand=6, in_ch=40, out_ch=80, se_ratio=0.25, fused=False
    )
    assert str(spec) == "r3_k5_s2_e6_i40_o80_se0.25"
    assert BlockSpec.parse("r2_k3_s1_e4_i24_o48_c1").fused
    assert not BlockSpec.parse("r2_k3_s1_e4_i24_o48_c0").fused


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BlockSpec.parse("r1_k3_s1_e1_i32_o16").repeats = 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("r1_k3_s1_e1_i32", "missing o"),
        ("r1_k3_s1_e1_i32_o16_x5", "token 'x5'"),
        ("r1_k3_s1_e1_i32_o16_sefoo", "token 'sefoo'"),
        ("r1_r2_k3_s1_e1_i32_o16", "'r' given twice"),
        ("r1_k4_s1_e1_i32_o16", "kernel=4 must be odd"),
        ("r0_k3_s1_e1_i32_o16", "repeats=0 must be a positive int"),
        ("r1_k3_s12_e1_i32_o16", "non-square stride s12"),
        ("r1_k3_s1_e1_i32_o16_se1.5", "se_ratio=1.5"),
        ("r1_k3_s1_e1_i32_o16_c2", "c2 must be c0"),
    ],
)
def test_bad_block_string_is_a_clear_config_error(text, message):
    with pytest.raises(ConfigError, match=message) as err:
        BlockSpec.parse(text)
    assert text in str(err.value) and "\n" not in str(err.value)


def test_parse_blocks_rejects_non_sequences():
    with pytest.raises(ConfigError, match="non-empty list"):
        parse_blocks("r1_k3_s1_e1_i32_o16")
    with pytest.raises(ConfigError, match="non-empty list"):
        parse_blocks(())
    with pytest.raises(ConfigError, match="must be a string"):
        parse_blocks((3,))


# (filters, width, guard) -> expected; values from keras.applications EfficientNet(V2).
@pytest.mark.parametrize(
    "filters, width, guard, expected",
    [
        (32, 1.0, True, 32),
        (32, 1.1, True, 32),  # 35.2 -> 32 (9% down: guard not triggered)
        (16, 1.4, True, 24),  # 22.4 -> 24
        (40, 1.8, True, 72),  # 72.0
        (1280, 2.0, True, 2560),
        (24, 1.2, True, 32),  # 28.8 -> 32 (round half up)
        (320, 1.1, True, 352),
        (4, 2.4, True, 16),  # 9.6 -> 8 is 17% down: the v1 guard adds one divisor
        (4, 2.4, False, 8),  # v2 has no guard
        (3, 1.0, False, 8),  # never below min_depth (= divisor)
    ],
)
def test_round_filters_table(filters, width, guard, expected):
    assert round_filters(filters, width, 8, None, guard) == expected


def test_round_filters_min_depth():
    assert round_filters(8, 0.1, 8, 16, False) == 16


@pytest.mark.parametrize(
    "repeats, depth, expected",
    [(1, 1.0, 1), (2, 1.1, 3), (4, 1.8, 8), (3, 3.1, 10), (1, 0.1, 1), (15, 1.0, 15)],
)
def test_round_repeats_table(repeats, depth, expected):
    assert round_repeats(repeats, depth) == expected


def test_expand_blocks_scales_strides_and_drop_rates():
    specs = parse_blocks(("r1_k3_s1_e1_i32_o16_se0.25", "r2_k3_s2_e6_i16_o24_se0.25"))
    before = list(specs)
    placed = expand_blocks(
        specs,
        width=1.0,
        depth=2.0,
        divisor=8,
        min_depth=None,
        round_down_guard=True,
        drop_connect_rate=0.2,
        fix_head_stem=False,
    )
    assert specs == tuple(before)  # nothing mutated
    assert [p.name for p in placed] == [
        "stage1_block1",
        "stage1_block2",
        "stage2_block1",
        "stage2_block2",
        "stage2_block3",
        "stage2_block4",
    ]
    assert [p.spec.stride for p in placed] == [1, 1, 2, 1, 1, 1]
    assert [p.spec.in_ch for p in placed] == [32, 16, 16, 24, 24, 24]
    assert all(p.spec.repeats == 1 for p in placed)
    # rate * i / n over the 6 scaled blocks.
    assert [p.drop_rate for p in placed] == pytest.approx([0.2 * i / 6 for i in range(6)])
