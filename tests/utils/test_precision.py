import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers.train_fixtures import batch, build_trainer
from utils.precision import configure_precision, needs_loss_scaling, precision_policy


@pytest.fixture
def restore_precision():
    policy = keras.mixed_precision.global_policy().name
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    yield
    keras.mixed_precision.set_global_policy(policy)
    tf.config.experimental.enable_tensor_float_32_execution(tf32)


def test_policy_names_and_loss_scaling():
    assert precision_policy(False, "bfloat16") == "float32"
    assert precision_policy(True, "float16") == "mixed_float16"
    assert precision_policy(True, "bfloat16") == "mixed_bfloat16"
    assert needs_loss_scaling("mixed_float16")
    assert not needs_loss_scaling("mixed_bfloat16") and not needs_loss_scaling("float32")
    with pytest.raises(ValueError, match="unknown amp_dtype 'int8'; valid: float16, bfloat16"):
        precision_policy(True, "int8")


def test_configure_sets_policy_and_tf32(restore_precision):
    assert configure_precision(True, "float16", use_tf32=False) == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert not tf.config.experimental.tensor_float_32_execution_enabled()
    configure_precision(False, use_tf32=True)
    assert tf.config.experimental.tensor_float_32_execution_enabled()


def test_bfloat16_step_trains_with_float32_variables(restore_precision):
    configure_precision(True, "bfloat16")
    model, opt, metrics, step, _ = build_trainer()
    assert model.get_layer("conv").compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    before = [v.numpy().copy() for v in model.trainable_variables]
    step(batch(8))
    assert np.isfinite(metrics.result()["loss"])
    assert all(
        not np.array_equal(a, v.numpy())
        for a, v in zip(before, model.trainable_variables, strict=True)
    )
