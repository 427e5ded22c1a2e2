"""MBConv / fused-MBConv / SE layers: shapes, sublayer names, get_config round-trip, no state
created in call."""

import keras
import numpy as np
import pytest

from config.defaults import MODEL_DEFAULTS
from model.blocks import FusedMBConvBlock, MBConvBlock, SqueezeExcite

# What model.efficientnet.make_block passes from the model config (the blocks have no defaults).
CONFIG = {k: MODEL_DEFAULTS[k] for k in ("activation", "bn_momentum", "bn_epsilon")}

CASES = [  # (class, kwargs, expected sublayer names)
    (
        MBConvBlock,
        dict(in_ch=16, out_ch=16, kernel=3, stride=1, expand=1, se_ratio=0.25),
        ["dwconv", "bn", "activation", "se", "project_conv", "project_bn"],
    ),
    (
        MBConvBlock,
        dict(in_ch=16, out_ch=24, kernel=5, stride=2, expand=6, se_ratio=0.25),
        [
            "expand_conv",
            "expand_bn",
            "expand_activation",
            "dwconv",
            "bn",
            "activation",
            "se",
            "project_conv",
            "project_bn",
        ],
    ),
    (
        FusedMBConvBlock,
        dict(in_ch=16, out_ch=16, kernel=3, stride=1, expand=1, se_ratio=0.0),
        ["project_conv", "project_bn", "project_activation"],
    ),
    (
        FusedMBConvBlock,
        dict(in_ch=16, out_ch=32, kernel=3, stride=2, expand=4, se_ratio=0.0),
        ["expand_conv", "expand_bn", "expand_activation", "project_conv", "project_bn"],
    ),
    (
        FusedMBConvBlock,
        dict(in_ch=16, out_ch=16, kernel=3, stride=1, expand=4, se_ratio=0.25),
        ["expand_conv", "expand_bn", "expand_activation", "se", "project_conv", "project_bn"],
    ),
]


@pytest.mark.parametrize("cls, kwargs, names", CASES)
def test_block_shapes_names_and_config_round_trip(cls, kwargs, names):
    block = cls(**kwargs, **CONFIG, drop_rate=0.1, name="stage3_block2")
    x = np.random.default_rng(0).normal(size=(2, 9, 9, kwargs["in_ch"])).astype("float32")
    y = block(x, training=True)
    size = 9 if kwargs["stride"] == 1 else 5  # 'same' padding: ceil(9 / 2)
    assert tuple(y.shape) == (2, size, size, kwargs["out_ch"])
    assert tuple(block.compute_output_shape((None, 9, 9, kwargs["in_ch"]))) == (
        None,
        size,
        size,
        kwargs["out_ch"],
    )
    assert [layer.name for layer in block.branch] == names
    assert all(w.path.startswith("stage3_block2/") for w in block.weights)
    # A residual gets stochastic depth; a downsampling block has no residual.
    assert (block.drop is not None) == (
        kwargs["stride"] == 1 and kwargs["in_ch"] == kwargs["out_ch"]
    )

    clone = cls.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    clone(x)
    assert [w.shape for w in clone.weights] == [w.shape for w in block.weights]
    clone.set_weights(block.get_weights())
    np.testing.assert_allclose(clone(x, training=False), block(x, training=False), atol=1e-5)


def test_nothing_is_created_in_call():
    block = MBConvBlock(8, 8, 3, 1, 4, 0.25, **CONFIG, name="b")
    x = np.ones((1, 4, 4, 8), "float32")
    block(x)
    weights, sublayers = len(block.weights), len(block._flatten_layers())
    for _ in range(2):
        block(x, training=True)
    assert (len(block.weights), len(block._flatten_layers())) == (weights, sublayers)


def test_squeeze_excite_gates_channels_in_0_1():
    se = SqueezeExcite(filters=6, se_filters=2, activation=CONFIG["activation"], name="se")
    x = np.abs(np.random.default_rng(1).normal(size=(2, 5, 5, 6))).astype("float32") + 0.1
    y = keras.ops.convert_to_numpy(se(x))
    gate = y / x  # one sigmoid gate per (sample, channel), the same over space
    assert np.all((gate > 0) & (gate < 1))
    np.testing.assert_allclose(gate, gate[:, :1, :1, :].repeat(5, 1).repeat(5, 2), rtol=1e-5)
    assert [w.path for w in se.weights] == [
        "se/reduce/kernel",
        "se/reduce/bias",
        "se/expand/kernel",
        "se/expand/bias",
    ]


def test_stochastic_depth_drops_whole_samples_in_training_only():
    block = MBConvBlock(8, 8, 3, 1, 1, 0.0, **CONFIG, drop_rate=0.5, name="b")
    x = np.random.default_rng(2).normal(size=(64, 4, 4, 8)).astype("float32")
    block(x)
    branch = keras.ops.convert_to_numpy(block(x, training=True)) - x
    dropped = np.all(branch == 0, axis=(1, 2, 3))
    assert 10 < dropped.sum() < 54  # about half the samples lose the whole branch
    np.testing.assert_allclose(block(x, training=False), block(x, training=False))
