import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from runtime.checkpoint import TrainingCheckpoint, restore_for_inference
from runtime.errors import RunError
from utils.ema import ExponentialMovingAverage
from utils.optimizers import OptimizerConfig, build_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def training_state(seed=0, ema_decay=0.9):
    model = bn_model(seed)
    opt = build_optimizer(
        OptimizerConfig(name="rmsprop"), 0.01, model.trainable_variables, loss_scaling=True
    )
    opt.build(model.trainable_variables)
    ema = ExponentialMovingAverage(model, ema_decay) if ema_decay else None
    return model, opt, ema


def one_step(model, opt, ema):
    x = np.random.default_rng(0).normal(size=(4, 4, 4, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = opt.scale_loss(tf.reduce_mean(model(x, training=True) ** 2))
    opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    if ema is not None:
        ema.update(opt.iterations)


def test_roundtrip_restores_weights_optimizer_loss_scale_ema_and_epoch(tmp_path):
    model, opt, ema = training_state(0)
    for _ in range(3):
        one_step(model, opt, ema)
    opt.dynamic_scale.assign(1024.0)
    path = TrainingCheckpoint(str(tmp_path), model, opt, ema).save(epoch=2)
    assert path.endswith("ckpt-2")

    model2, opt2, ema2 = training_state(1)
    ckpt2 = TrainingCheckpoint(str(tmp_path), model2, opt2, ema2)
    assert ckpt2.restore_latest() == 2
    assert int(opt2.iterations.numpy()) == 3
    assert float(opt2.dynamic_scale.numpy()) == 1024.0
    for a, b in zip(model.weights, model2.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(opt.variables, opt2.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(ema.shadows, ema2.shadows, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_no_checkpoint_restores_nothing(tmp_path):
    model, opt, ema = training_state()
    assert TrainingCheckpoint(str(tmp_path), model, opt, ema).restore_latest() is None


def test_resume_into_a_different_model_is_a_clear_error(tmp_path):
    model, opt, ema = training_state()
    TrainingCheckpoint(str(tmp_path), model, opt, ema).save(epoch=1)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt2 = build_optimizer(OptimizerConfig(name="sgd"), 0.1)
    opt2.build(other.trainable_variables)
    with pytest.raises(
        RunError, match="does not match this model/optimizer.*--no-resume_checkpoint"
    ):
        TrainingCheckpoint(str(tmp_path), other, opt2).restore_latest()


def test_restore_for_inference_prefers_ema(tmp_path):
    model, opt, ema = training_state(0, ema_decay=0.5)
    one_step(model, opt, ema)
    for shadow in ema.shadows:
        shadow.assign(shadow + 1.0)
    TrainingCheckpoint(str(tmp_path), model, opt, ema).save(epoch=1)

    with_ema = bn_model(3)
    info = restore_for_inference(with_ema, str(tmp_path))
    assert info == {"path": os.path.join(str(tmp_path), "checkpoints", "ckpt-1"), "weights": "ema"}
    for shadow, var in zip(ema.shadows, with_ema.weights, strict=True):
        np.testing.assert_array_equal(shadow.numpy(), var.numpy())  # BN stats included

    raw = bn_model(3)
    assert restore_for_inference(raw, str(tmp_path), prefer_ema=False)["weights"] == "raw"
    for a, b in zip(model.weights, raw.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # An explicit prefix and a .weights.h5 file work too.
    explicit = bn_model(4)
    assert restore_for_inference(explicit, "unused", checkpoint=info["path"])["weights"] == "ema"
    h5 = str(tmp_path / "final.weights.h5")
    model.save_weights(h5)
    assert restore_for_inference(bn_model(5), "unused", checkpoint=h5) == {
        "path": h5,
        "weights": "raw",
    }


def test_restore_for_inference_errors(tmp_path):
    with pytest.raises(RunError, match=r"no checkpoint found in .* \(train first"):
        restore_for_inference(bn_model(), str(tmp_path))
    with pytest.raises(RunError, match=r"checkpoint not found: .*nope \(expected .*nope.index\)"):
        restore_for_inference(bn_model(), str(tmp_path), checkpoint=str(tmp_path / "nope"))
    with pytest.raises(RunError, match="weights file not found"):
        restore_for_inference(bn_model(), str(tmp_path), checkpoint=str(tmp_path / "x.weights.h5"))


def test_kill_9_while_saving_leaves_a_loadable_latest_checkpoint(tmp_path):
    """A writer saving checkpoints in a loop is SIGKILLed at several moments; each time the
    latest checkpoint restores and its epoch matches its file name."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        from tests.test_checkpoint import one_step, training_state
        from runtime.checkpoint import TrainingCheckpoint
        model, opt, ema = training_state()
        ckpt = TrainingCheckpoint({str(tmp_path)!r}, model, opt, ema, max_to_keep=2)
        epoch = (ckpt.restore_latest() or 0)
        while True:
            one_step(model, opt, ema)
            epoch += 1
            ckpt.save(epoch)
            print(epoch, flush=True)
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for delay in (0.1, 0.6):
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        proc.stdout.readline()  # at least one checkpoint written by this writer
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        model, opt, ema = training_state(7)
        ckpt = TrainingCheckpoint(str(tmp_path), model, opt, ema)
        epoch = ckpt.restore_latest()
        assert epoch is not None and ckpt.latest.endswith(f"ckpt-{epoch}")
        assert int(opt.iterations.numpy()) == epoch


def test_the_seed_fixes_the_global_generator_saved_in_checkpoints(tmp_path):
    from runtime import components
    from runtime.checkpoint import random_state
    from tests.tiny_run import tiny_params

    # Two processes with --seed 7 save the same generator (it was non-deterministic, so the
    # 2-worker vs 1-process comparison in test_distribute_multiworker failed on rng/).
    components.setup_run(tiny_params(tmp_path, "train", "--seed", "7"))
    checkpoint = random_state(keras.Sequential([keras.layers.Dropout(0.5)]))
    np.testing.assert_array_equal(
        checkpoint.generator.state.numpy(), tf.random.Generator.from_seed(7).state.numpy()
    )


def test_resume_check_skips_an_unreadable_class_names_file(tmp_path):
    from runtime.checkpoint import check_resume_fits
    from runtime.class_names import CLASS_NAMES_FILE, load_class_names

    (tmp_path / CLASS_NAMES_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError):  # eval / predict / export: a broken file is an error
        load_class_names(str(tmp_path))
    params = {
        "model": {},
        "model_dir": str(tmp_path),
        "optimizer": "rmsprop",
        "moving_average_decay": 0.0,
    }
    # A resume has nothing to compare this run's classes with: it goes on.
    assert check_resume_fits(params, {"optimizer": "rmsprop"}, 7, ("a",) * 7) is None
