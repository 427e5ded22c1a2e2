"""Import keras.applications EfficientNet(V2) weights: same outputs on raw 0..255 input."""

import functools

import keras
import numpy as np
import pytest

from config.loader import ConfigError, load_config
from model import build_model
from model.weights import load_keras_applications_weights
from tests.helpers.model_zoo import cfg_path

SIZE = 64
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
NO_DROPOUT = "dropout_rate=0.0,drop_connect_rate=0.0"


@functools.cache
def reference(name):
    """A keras.applications model with random weights, preprocessing as its ImageNet release.

    Built once per name and shared (a full-size build takes seconds): the tests only read it.
    A training-mode forward pass moves its BatchNorm statistics, but each test copies the
    reference as it is at that moment into a fresh model of ours before comparing.

    keras.applications v1 built with weights=None has an un-adapted Normalization layer
    (identity after x/255); give it the ImageNet mean/std so it preprocesses like the
    published model (V2-B0..B3 build theirs with the mean/std as constants). Dropout is
    switched off so training-mode outputs are deterministic.
    """
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) and layer.weights:
            layer.set_weights(
                [np.array(IMAGENET_MEAN), np.square(IMAGENET_STD), layer.get_weights()[2]]
            )
            layer.finalize_state()
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return model


def assert_same_outputs(ref, ours):
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    # Training mode (batch statistics) keeps activations O(1) through a randomly initialized
    # net; inference mode checks the moving statistics were imported too.
    for training in (True, False):
        a = keras.ops.convert_to_numpy(ref(x, training=training))
        b = keras.ops.convert_to_numpy(ours(x, training=training))
        scale = max(1.0, float(np.abs(a).max()))
        np.testing.assert_allclose(b, a, atol=1e-4 * scale)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(ours(x, training=True)))
    np.testing.assert_allclose(
        probs, keras.ops.convert_to_numpy(keras.ops.softmax(ref(x, training=True))), atol=1e-4
    )


@pytest.mark.parametrize(
    "variant, name",
    [
        ("b0", "EfficientNetB0"),
        # ~9 s; the V2 mapping is also checked in the default suite by the V2-B0 file import.
        pytest.param("s", "EfficientNetV2S", marks=pytest.mark.slow),
    ],
)
def test_import_from_keras_model(variant, name):
    ref = reference(name)
    ours = build_model(load_config(cfg_path(variant), NO_DROPOUT))
    summary = load_keras_applications_weights(ours, ref)
    assert summary["skipped"] == [] and summary["weights"] == len(ours.weights)
    assert_same_outputs(ref, ours)


def test_import_from_weights_file(tmp_path):
    ref = reference("EfficientNetB0")
    path = tmp_path / "b0.weights.h5"
    ref.save_weights(str(path))
    ours = build_model(load_config(cfg_path("b0"), NO_DROPOUT))
    assert load_keras_applications_weights(ours, str(path))["skipped"] == []
    assert_same_outputs(ref, ours)


@pytest.mark.parametrize(
    "variant, name",
    [
        ("v2-b0", "EfficientNetV2B0"),
        pytest.param("v2-b1", "EfficientNetV2B1", marks=pytest.mark.slow),
        pytest.param("v2-b2", "EfficientNetV2B2", marks=pytest.mark.slow),
        pytest.param("v2-b3", "EfficientNetV2B3", marks=pytest.mark.slow),
    ],
)
def test_v2_base_variants_import_from_weights_file(tmp_path, variant, name):
    """V2-B0..B3: same parameter count as keras.applications, its weights file imports 1:1."""
    ref = reference(name)
    path = tmp_path / f"{variant}.weights.h5"
    ref.save_weights(str(path))
    ours = build_model(load_config(cfg_path(variant), NO_DROPOUT))
    assert ours.count_params() == ref.count_params()
    summary = load_keras_applications_weights(ours, str(path))
    assert summary["skipped"] == [] and summary["weights"] == len(ours.weights)
    assert_same_outputs(ref, ours)


def test_other_class_count_keeps_fresh_classifier(tmp_path, caplog):
    ref = reference("EfficientNetB0")
    path = tmp_path / "b0.weights.h5"
    ref.save_weights(str(path))
    ours = build_model(load_config(cfg_path("b0")), num_classes=10)
    fresh = ours.get_layer("logits").get_weights()
    summary = load_keras_applications_weights(ours, str(path))
    assert summary["skipped"] == ["logits"] and "class count differs" in caplog.text
    np.testing.assert_array_equal(ours.get_layer("logits").get_weights()[0], fresh[0])
    np.testing.assert_array_equal(
        ours.get_layer("head_conv").get_weights()[0], ref.get_layer("top_conv").get_weights()[0]
    )


def test_errors():
    tiny = build_model(load_config(cfg_path("b0"), "width_coefficient=0.5"))
    with pytest.raises(ConfigError, match="weights file not found: /nonexistent.h5"):
        load_keras_applications_weights(tiny, "/nonexistent.h5")
    with pytest.raises(ConfigError, match="shape mismatch importing 'stem_conv'"):
        load_keras_applications_weights(tiny, reference("EfficientNetB0"))
    xl = build_model(load_config(cfg_path("b0"), "name='efficientnetv2-xl',width_coefficient=0.1"))
    with pytest.raises(
        ConfigError, match="no keras.applications counterpart for 'efficientnetv2-xl'"
    ):
        load_keras_applications_weights(xl, __file__)


def test_legacy_h5_without_top(tmp_path):
    """The layout of the published keras-applications files (`efficientnetb0_notop.h5`)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    ref = keras.applications.EfficientNetB0(weights=None, include_top=False)
    path = tmp_path / "efficientnetb0_notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    ours = build_model(load_config(cfg_path("b0")))
    assert load_keras_applications_weights(ours, str(path))["skipped"] == ["logits"]
    for src, dst in (
        ("block7a_project_conv", "stage7_block1"),
        ("block2b_se_reduce", "stage2_block2"),
    ):
        sub = (
            ours.get_layer(dst).project_conv if "project" in src else ours.get_layer(dst).se.reduce
        )
        for a, b in zip(ref.get_layer(src).get_weights(), sub.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
