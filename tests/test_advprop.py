"""AdvProp: auxiliary BN routing, the PGD attack, the training step, layouts, flags."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import main
from config.loader import load_config
from model import build_model
from model.advprop_bn import add_auxiliary_batch_norms, auxiliary_batch_norms, batch_norm_layers
from model.blocks import batch_norm
from runtime.advprop import AdvPropConfig, adversarial_images, adversarial_loss
from runtime.step import StepConfig, TrainMetrics, make_train_step
from tests.tiny_run import TINY_MPARAMS
from utils.dllogger import read_log
from utils.ema import ExponentialMovingAverage
from utils.optimizers import OptimizerConfig, build_optimizer

CFG = "config/efficientnet_v2/s_cfg.py"


def _model(seed=0, mparams=TINY_MPARAMS):
    keras.utils.set_random_seed(seed)
    return build_model(load_config(CFG, mparams), input_shape=(32, 32, 3))


def _batch(n=8, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(n, 32, 32, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, n)]
    return images, labels


def _main_stats(model):
    return [
        np.array(v)
        for layer in batch_norm_layers(model)
        for v in (layer.moving_mean, layer.moving_variance)
    ]


def _aux_stats(model):
    return [
        np.array(v)
        for layer in batch_norm_layers(model)
        for v in (layer.aux.moving_mean, layer.aux.moving_variance)
    ]


def _changed(before, after):
    return [not np.array_equal(a, b) for a, b in zip(before, after, strict=True)]


def test_adversarial_passes_move_auxiliary_statistics_only():
    model = _model()
    stats = add_auxiliary_batch_norms(model)
    assert len(stats) == len(batch_norm_layers(model)) > 2
    images, labels = _batch()
    main0, aux0 = _main_stats(model), _aux_stats(model)
    adversarial_loss(model, images, labels, 0.0)
    assert not any(_changed(main0, _main_stats(model)))
    assert all(_changed(aux0, _aux_stats(model)))  # every auxiliary mean and variance moved
    aux1 = _aux_stats(model)
    model(images, training=True)  # a clean pass: the main statistics, not the auxiliary ones
    assert all(_changed(main0, _main_stats(model)))
    assert not any(_changed(aux1, _aux_stats(model)))
    # Inference uses the main statistics: routing is off outside the context.
    assert not any(layer.aux.active for layer in batch_norm_layers(model))


def test_auxiliary_branch_is_the_layer_with_auxiliary_statistics():
    model = _model()
    add_auxiliary_batch_norms(model)
    images, labels = _batch()
    adversarial_loss(model, images * 0.5 + 40.0, labels, 0.0)  # aux statistics != main ones
    with auxiliary_batch_norms(model):
        routed = np.array(model(images, training=False))
    # The same network with the auxiliary statistics as its main ones gives the same output.
    twin = _model()
    twin.set_weights(model.get_weights())
    for layer, twin_layer in zip(batch_norm_layers(model), batch_norm_layers(twin), strict=True):
        twin_layer.moving_mean.assign(layer.aux.moving_mean)
        twin_layer.moving_variance.assign(layer.aux.moving_variance)
    np.testing.assert_allclose(routed, np.array(twin(images, training=False)), rtol=1e-4, atol=1e-5)
    assert not np.allclose(routed, np.array(model(images, training=False)))
    with pytest.raises(ValueError, match="no auxiliary BatchNorms"):
        with auxiliary_batch_norms(_model()):
            pass


def test_pgd_attack_stays_in_the_pixel_ball_and_changes_no_statistics():
    model = _model()
    add_auxiliary_batch_norms(model)
    images, labels = _batch()
    images[0, 0, 0] = [0.0, 255.0, 0.5]  # at the range limits: the clip must hold
    main0, aux0 = _main_stats(model), _aux_stats(model)
    config = AdvPropConfig(epsilon=4.0, steps=3, step_size=2.0)
    adv = np.array(adversarial_images(model, images, labels, config, 0.1))
    assert np.abs(adv - images).max() <= 4.0 + 1e-4
    assert adv.min() >= 0.0 and adv.max() <= 255.0
    assert np.abs(adv - images).mean() > 1.0  # it moved (random start + signed steps)
    assert not any(_changed(main0, _main_stats(model)))
    assert not any(_changed(aux0, _aux_stats(model)))


def test_pgd_attack_survives_an_overflowing_loss_scaled_backward_pass():
    """Mixed float16: a loss-scaled input gradient can hold NaN (inf - inf); the attack must
    still return finite images in the epsilon ball, not NaN that poisons the training loss."""
    model = _model()
    add_auxiliary_batch_norms(model)
    images, labels = _batch()
    config = AdvPropConfig(epsilon=4.0, steps=2, step_size=2.0)
    adv = np.array(
        adversarial_images(
            model, images, labels, config, 0.0, scale_loss=lambda loss: loss * float("nan")
        )
    )
    assert np.isfinite(adv).all()
    assert np.abs(adv - images).max() <= 4.0 + 1e-4


def test_layout_checkpoint_and_weight_files_match_a_plain_model(tmp_path):
    plain, adv = _model(), _model()
    add_auxiliary_batch_norms(adv)
    adv(_batch()[0], training=True)
    assert adv.get_config() == plain.get_config()
    assert [(w.path, w.shape) for w in adv.weights] == [(w.path, w.shape) for w in plain.weights]
    for name, model in (("plain", plain), ("adv", adv)):
        tf.train.Checkpoint(model=model).write(str(tmp_path / name / "ckpt"))
    listed = [sorted(tf.train.list_variables(str(tmp_path / n / "ckpt"))) for n in ("plain", "adv")]
    assert listed[0] == listed[1]
    # Weights of an AdvProp model load into a plain one (and back) unchanged.
    adv.save_weights(str(tmp_path / "adv.weights.h5"))
    fresh = _model(seed=5)
    fresh.load_weights(str(tmp_path / "adv.weights.h5"))
    for a, b in zip(adv.weights, fresh.weights, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    plain.save_weights(str(tmp_path / "plain.weights.h5"))
    adv.load_weights(str(tmp_path / "plain.weights.h5"))
    np.testing.assert_array_equal(np.array(adv(_batch()[0])), np.array(plain(_batch()[0])))


def _small_bn_model(seed=0):
    """Conv -> BN -> Dense on raw 0..255 8x8 images: the step test traces in seconds."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = batch_norm(0.9, 1e-3, "bn")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x))


def test_train_step_loss_is_clean_plus_adversarial():
    model, twin = _small_bn_model(), _small_bn_model()
    add_auxiliary_batch_norms(model)
    opt = build_optimizer(OptimizerConfig(name="momentum"), 0.01, model.trainable_variables)
    opt.build(model.trainable_variables)
    metrics = TrainMetrics()
    config = StepConfig(
        label_smoothing=0.0, advprop=AdvPropConfig(epsilon=2.0, steps=1, step_size=2.0)
    )
    step = make_train_step(model, opt, config=config, metrics=metrics)
    images, labels = _batch(8)
    images = images[:, :8, :8]
    main0, aux0 = _main_stats(model), _aux_stats(model)
    clean = float(
        np.mean(
            keras.losses.categorical_crossentropy(
                labels, twin(images, training=True), from_logits=True
            )
        )
    )
    step((images, labels))
    result = metrics.result()
    assert result["count"] == 8 and np.isfinite(result["loss"])
    assert result["loss"] > 1.5 * clean  # the adversarial term is there (about 2x clean)
    assert all(_changed(main0, _main_stats(model))) and all(_changed(aux0, _aux_stats(model)))


@pytest.mark.slow
def test_train_step_adds_the_adversarial_loss_with_accumulation_and_ema():
    def run(advprop):
        model = _model()
        opt = build_optimizer(OptimizerConfig(name="momentum"), 0.01, model.trainable_variables)
        opt.build(model.trainable_variables)
        ema = ExponentialMovingAverage(model, 0.9)
        config = None
        if advprop:
            add_auxiliary_batch_norms(model)
            config = AdvPropConfig(epsilon=2.0, steps=1, step_size=2.0)
        metrics = TrainMetrics()
        step = make_train_step(
            model,
            opt,
            config=StepConfig(grad_accum_steps=2, label_smoothing=0.0, advprop=config),
            metrics=metrics,
            ema=ema,
        )
        images, labels = _batch(8)
        aux0 = _aux_stats(model) if advprop else None
        step((tf.reshape(images, (2, 4, 32, 32, 3)), tf.reshape(labels, (2, 4, 10))))
        return model, metrics.result(), aux0, ema

    plain_model, plain, _, _ = run(False)
    adv_model, adv, aux0, ema = run(True)
    assert plain["count"] == adv["count"] == 8
    # loss = clean + adversarial: about twice the clean loss of the same starting weights.
    assert adv["loss"] > 1.5 * plain["loss"] and np.isfinite(adv["loss"])
    assert all(_changed(aux0, _aux_stats(adv_model)))
    assert len(ema.shadows) == len(ExponentialMovingAverage(plain_model, 0.9).shadows)


def test_mixed_precision_attack_and_frozen_bn():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model()
        add_auxiliary_batch_norms(model)
        images, labels = _batch(4)
        adv = adversarial_images(
            model, images, labels, AdvPropConfig(2.0, 1, 2.0), 0.1, scale_loss=lambda x: x * 1024.0
        )
        assert adv.dtype == tf.float32 and np.abs(np.array(adv) - images).max() <= 2.0 + 1e-4
        loss = np.array(adversarial_loss(model, adv, labels, 0.1))
        assert np.isfinite(loss).all() and loss.shape == (4,)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # A frozen BN normalizes the adversarial branch with its main statistics: same as clean.
    model = _model(mparams=TINY_MPARAMS + ",dropout_rate=0.0,drop_connect_rate=0.0")
    add_auxiliary_batch_norms(model)
    for layer in batch_norm_layers(model):
        layer.trainable = False
    images, labels = _batch(4)
    aux0 = _aux_stats(model)
    with auxiliary_batch_norms(model):
        routed = np.array(model(images, training=True))
    np.testing.assert_allclose(routed, np.array(model(images, training=True)), rtol=1e-4, atol=1e-5)
    assert not any(_changed(aux0, _aux_stats(model)))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--advprop_epsilon", "0"], "--advprop_epsilon must be > 0 (pixels), got 0.0"),
        (["--advprop_step_size", "-1"], "--advprop_step_size must be > 0 (pixels), got -1.0"),
        (["--advprop_steps", "0"], "--advprop_steps must be >= 1, got 0"),
        (
            ["--advprop", "--mparams", "input_normalization='none'"],
            "--advprop needs raw 0..255 model inputs",
        ),
    ],
)
def test_bad_advprop_flags_exit_2(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exc:
        main.main(
            ["--cfg", CFG, "--dataset", "digits", "--model_dir", str(tmp_path / "run"), *argv]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def _digits_run(model_dir, *extra):
    proc = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--cfg",
            "config/efficientnet_v1/b0_cfg.py",
            "--mparams",
            "width_coefficient=0.25,depth_coefficient=0.25",
            "--dataset",
            "digits",
            "--train_img_size",
            "32",
            "--eval_img_size",
            "32",
            "--crop_fraction",
            "1.0",
            "--mode",
            "train_and_eval",
            "--max_epochs",
            "4",
            "--train_batch_size",
            "32",
            "--eval_batch_size",
            "128",
            "--lr_init",
            "0.02",
            "--lr_decay",
            "cosine",
            "--lr_warmup_epochs",
            "1",
            "--augmenter_name",
            "none",
            "--seed",
            "1",
            "--no-use_xla",
            "--model_dir",
            str(model_dir),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_advprop_trains_on_digits_like_standard_training_and_exports_the_same_layout(tmp_path):
    """4 epochs on the digits, standard vs --advprop (about 2 + 4 minutes on 2 cores)."""
    _digits_run(tmp_path / "std")
    _digits_run(
        tmp_path / "adv",
        "--advprop",
        "--advprop_epsilon",
        "2",
        "--advprop_steps",
        "1",
        "--advprop_step_size",
        "2",
    )
    top1 = {}
    for name in ("std", "adv"):
        summary = json.loads((tmp_path / name / "params.json").read_text())
        assert summary["advprop"] is (name == "adv")
        from utils.dllogger import read_log

        records = read_log(str(tmp_path / name / "log.json"))
        top1[name] = next(
            r["data"]["val.top1"]
            for r in records
            if r.get("step") == [] and "global_step" in r["data"]
        )
    print(f"digits val top-1 after 4 epochs: {top1}")
    assert top1["std"] > 0.5  # it learned (10 classes: chance 0.1)
    assert top1["adv"] >= top1["std"] - 0.1, top1
    # The exported weights have the layout of the standard run's.
    import h5py

    def names(path):
        with h5py.File(path) as f:
            found = []
            f.visititems(lambda n, o: found.append((n, o.shape)) if hasattr(o, "shape") else None)
            return sorted(found)

    assert names(tmp_path / "adv" / "model.weights.h5") == names(
        tmp_path / "std" / "model.weights.h5"
    )


@pytest.mark.slow
def test_advprop_with_amp_accumulation_ema_two_replicas_and_stages(tmp_path):
    """Every combination the issue names at once, through main.py in a fresh process (logical
    CPU replicas must exist before TensorFlow starts): AMP, accumulation, EMA, MirroredStrategy
    over 2 replicas and stage-wise training."""
    run = tmp_path / "run"
    argv = [
        "--cfg",
        "config/efficientnet_v2/s_cfg.py",
        "--mparams",
        TINY_MPARAMS,
        "--dataset",
        "digits",
        "--model_dir",
        str(run),
        "--mode",
        "train",
        "--max_epochs",
        "2",
        "--steps_per_epoch",
        "2",
        "--train_batch_size",
        "4",
        "--n_stages",
        "2",
        "--base_img_size",
        "24",
        "--grad_accum_steps",
        "2",
        "--moving_average_decay",
        "0.9",
        "--use_amp",
        "--num_gpus",
        "0",
        "--cpu_replicas",
        "2",
        "--advprop",
        "--advprop_steps",
        "1",
        "--no-use_xla",
        "--log_steps",
        "1",
        "--augmenter_name",
        "none",
        "--seed",
        "1",
    ]
    done = subprocess.run(
        [sys.executable, "main.py", *argv], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_log(str(run / "log.json"))
    losses = [r["data"]["train.loss"] for r in records if "train.loss" in r.get("data", {})]
    assert losses and all(np.isfinite(losses))
    sizes = {r["data"].get("image_size") for r in records if "image_size" in r.get("data", {})}
    assert sizes == {24, 32}
    with open(run / "params.json") as f:
        assert json.load(f)["derived"]["num_replicas"] == 2
