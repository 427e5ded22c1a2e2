import keras
import numpy as np
import pytest

from utils.optimizers import (
    OptimizerConfig,
    build_optimizer,
    is_l2_decayed,
    l2_penalty,
    uses_l2_penalty,
)


def dense_model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))


@pytest.mark.parametrize(
    "name, cls",
    [
        ("rmsprop", keras.optimizers.RMSprop),
        ("sgd", keras.optimizers.SGD),
        ("momentum", keras.optimizers.SGD),
        ("adam", keras.optimizers.Adam),
        ("adamw", keras.optimizers.AdamW),
        ("lamb", keras.optimizers.Lamb),
    ],
)
def test_each_name_builds_its_keras_optimizer(name, cls):
    opt = build_optimizer(OptimizerConfig(name=name, grad_clip_norm=2.0), 0.1)
    assert type(opt) is cls
    assert opt.global_clipnorm == 2.0


def test_flags_reach_the_optimizer():
    rms = build_optimizer(OptimizerConfig(name="rmsprop", rho=0.8, momentum=0.7, epsilon=0.01), 0.1)
    assert (rms.rho, rms.momentum, rms.epsilon) == (0.8, 0.7, 0.01)
    mom = build_optimizer(OptimizerConfig(name="momentum", momentum=0.5, nesterov=True), 0.1)
    assert (mom.momentum, mom.nesterov) == (0.5, True)
    assert build_optimizer(OptimizerConfig(name="sgd"), 0.1).momentum == 0.0
    assert build_optimizer(OptimizerConfig(grad_clip_norm=0.0), 0.1).global_clipnorm is None


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'; valid: rmsprop"):
        build_optimizer(OptimizerConfig(name="adagrad"), 0.1)


def test_loss_scaling_wraps_in_loss_scale_optimizer():
    opt = build_optimizer(OptimizerConfig(name="sgd"), 0.1, loss_scaling=True)
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert isinstance(opt.inner_optimizer, keras.optimizers.SGD)


def test_l2_penalty_is_keras_l2_on_kernels_and_biases():
    """NVIDIA's `keras.regularizers.l2(wd)` = wd * sum(w**2) on the kernel and the bias; the
    old `0.5 * wd * sum(w**2)` over kernels only gave 1.2 here instead of 2002.4."""
    model = dense_model()
    kernel, bias = model.trainable_variables
    kernel.assign(np.full((3, 2), 2.0, "float32"))
    bias.assign(np.full((2,), 100.0, "float32"))
    assert is_l2_decayed(kernel) and is_l2_decayed(bias)
    assert float(l2_penalty(model.trainable_variables, 0.1)) == pytest.approx(
        0.1 * (24.0 + 20000.0)
    )
    assert float(l2_penalty(model.trainable_variables, 0.0)) == 0.0
    assert uses_l2_penalty(OptimizerConfig(name="rmsprop"))
    assert not uses_l2_penalty(OptimizerConfig(name="adamw"))


def test_l2_penalty_of_a_tiny_efficientnet_covers_exactly_nvidias_variables():
    from config.loader import load_config
    from model import build_model
    from tests.helpers.tiny_run import TINY_MPARAMS

    model = build_model(
        load_config("config/efficientnet_v1/b0_cfg.py", TINY_MPARAMS), num_classes=3
    )
    variables = model.trainable_variables
    bn = [v for v in variables if v.path.endswith(("/gamma", "/beta"))]
    # A depthwise kernel is [k, k, channels, 1]: DepthwiseConv2D ignores NVIDIA's
    # kernel_regularizer, so it is not decayed.
    depthwise = [v for v in variables if len(v.shape) == 4 and v.shape[-1] == 1 and v.shape[0] > 1]
    expected = [v for v in variables if all(v is not w for w in bn + depthwise)]
    assert depthwise and bn
    assert {v.path for v in variables if is_l2_decayed(v)} == {v.path for v in expected}
    assert any(v.path.endswith("se/reduce/bias") for v in expected)
    assert "logits/bias" in {v.path for v in expected}
    l2 = keras.regularizers.L2(1e-3)
    want = sum(float(l2(v)) for v in expected)
    assert float(l2_penalty(variables, 1e-3)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_decoupled_decay_leaves_biases_alone(name):
    model = dense_model()
    kernel, bias = model.trainable_variables
    kernel.assign(np.ones((3, 2), "float32"))
    bias.assign(np.ones((2,), "float32"))
    opt = build_optimizer(
        OptimizerConfig(name=name, weight_decay=0.5), 0.1, model.trainable_variables
    )
    opt.apply([np.zeros((3, 2), "float32"), np.zeros((2,), "float32")], model.trainable_variables)
    assert np.all(kernel.numpy() < 1.0)
    np.testing.assert_array_equal(bias.numpy(), np.ones(2))
