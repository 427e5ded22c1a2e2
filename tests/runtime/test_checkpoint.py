"""runtime/checkpoint.py: training checkpoints round-trip the whole training state, restore for
inference, survive SIGKILL and a full disk; final weights are written atomically."""

import errno
import os
import resource
import signal
import subprocess
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from runtime.checkpoint import (
    Position,
    TrainingCheckpoint,
    checkpoint_dir,
    random_state,
    restore_for_inference,
)
from runtime.errors import RunError
from tests.helpers import ROOT
from tests.helpers.checkpoint_state import bn_model, one_step, training_state
from tests.helpers.processes import program
from utils import fileio
from utils.fileio import WriteError
from utils.optimizers import OptimizerConfig, build_optimizer


def test_roundtrip_restores_weights_optimizer_loss_scale_ema_and_epoch(tmp_path):
    model, opt, ema = training_state(0)
    for _ in range(3):
        one_step(model, opt, ema)
    opt.dynamic_scale.assign(1024.0)
    path = TrainingCheckpoint(str(tmp_path), model, opt, ema).save(epoch=2)
    assert path.endswith("ckpt-3")  # numbered by the global step

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


def test_numbers_follow_the_global_step_and_never_repeat(tmp_path):
    """Epoch, step and stop checkpoints share one sequence: N = optimizer updates, or one more
    than the last when no update happened since (float16 skips); the same position twice is
    written once. A later run in the folder restores the position and continues the numbers."""
    model, opt, ema = training_state(0)
    ckpt = TrainingCheckpoint(str(tmp_path), model, opt, ema, max_to_keep=10)
    for _ in range(2):
        one_step(model, opt, ema)
    assert ckpt.save(0, 2).endswith("ckpt-2")
    assert ckpt.save(0, 2).endswith("ckpt-2")  # nothing trained since: not written again
    assert ckpt.save(1, 0).endswith("ckpt-3")  # no update since (a skipped step)
    one_step(model, opt, ema)
    assert ckpt.save(1, 1).endswith("ckpt-4") and ckpt.last_saved.endswith("ckpt-4")
    assert sorted(n for n in os.listdir(tmp_path / "checkpoints") if n.endswith(".index")) == [
        "ckpt-2.index",
        "ckpt-3.index",
        "ckpt-4.index",
    ]
    model2, opt2, ema2 = training_state(1)
    again = TrainingCheckpoint(str(tmp_path), model2, opt2, ema2)
    assert again.restore_latest() == 1 and again.position == Position(1, 1)
    assert again.save(1, 1).endswith("ckpt-4")  # the restored position: nothing to write
    assert again.save(1, 2).endswith("ckpt-5")


def test_a_checkpoint_without_a_position_in_the_epoch_resumes_at_the_epoch_start(tmp_path):
    """Checkpoints written before step-level saves have `epoch` but no `progress`: they stay
    resumable (every object but the new one must still be found)."""
    model, opt, ema = training_state(0)
    one_step(model, opt, ema)
    old_layout = tf.train.Checkpoint(
        model=model,
        optimizer=opt,
        epoch=tf.Variable(4, dtype=tf.int64),
        rng=random_state(model),
        ema=ema,
    )
    tf.train.CheckpointManager(old_layout, checkpoint_dir(str(tmp_path)), 3).save(4)
    model2, opt2, ema2 = training_state(1)
    ckpt = TrainingCheckpoint(str(tmp_path), model2, opt2, ema2)
    assert ckpt.restore_latest() == 4 and ckpt.position == Position(4, 0)
    for a, b in zip(model.weights, model2.weights, strict=True):
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
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for delay in (0.1, 0.6):
        proc = subprocess.Popen(
            program("checkpoint_writer", tmp_path),
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
    from tests.helpers.tiny_run import tiny_params

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


# ---------------------------------------------------------------------------------------------
# Disk full / killed writes of checkpoints and exports


class _FileSizeLimit:
    """RLIMIT_FSIZE for this process: writes past `limit` bytes fail with EFBIG, as on a full
    disk (SIGXFSZ ignored so the write returns the error instead of killing the process)."""

    def __init__(self, limit: int):
        self.limit = limit

    def __enter__(self):
        self.old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.old_limit[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.old_limit)
        signal.signal(signal.SIGXFSZ, self.old_handler)


def test_checkpoint_write_failure_is_one_line_and_leaves_no_temp(tmp_path):
    """Before: a raw ResourceExhausted/OutOfRange traceback and ckpt-N_temp left behind."""
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(2000)(inputs)))
    opt = build_optimizer(OptimizerConfig(name="momentum"), 0.1, model.trainable_variables)
    opt.build(model.trainable_variables)
    ckpt = TrainingCheckpoint(str(tmp_path), model, opt)
    first = ckpt.save(1)
    with _FileSizeLimit(20_000), pytest.raises(RunError) as info:
        ckpt.save(2)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot write checkpoint {tmp_path}")
    assert "free on its filesystem" in message and f"still {first}" in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "checkpoint",
        "ckpt-1.data-00000-of-00001",
        "ckpt-1.index",
    ]
    assert ckpt.latest == first and ckpt.restore_latest() == 1


def _tiny_keras_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


def test_final_export_refuses_a_full_disk_before_h5py_writes(tmp_path, monkeypatch):
    """Before: disk full at the final .h5 export segfaulted (h5py) and left a truncated file."""
    from runtime.checkpoint import save_weights_atomically

    model = _tiny_keras_model()
    path = tmp_path / "model.weights.h5"
    path.write_bytes(b"previous weights")
    real = fileio.shutil.disk_usage
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(
        WriteError,
        match=r"cannot write .*model\.weights\.h5: it needs about "
        r"1\.0 MiB, only 1000 B free",
    ):
        save_weights_atomically(model, str(path))
    assert path.read_bytes() == b"previous weights"
    assert os.listdir(tmp_path) == ["model.weights.h5"]


def test_interrupted_export_keeps_the_previous_weights(tmp_path, monkeypatch):
    """Before: a write killed midway left a 0-byte / truncated model.weights.h5."""
    from runtime.checkpoint import save_weights_atomically

    model = _tiny_keras_model()
    path = tmp_path / "model.weights.h5"
    model.save_weights(str(path))
    good = path.read_bytes()

    def half_write_then_fail(target):
        with open(target, "wb") as f:
            f.write(good[: len(good) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_weights", half_write_then_fail)
    with pytest.raises(WriteError, match="No space left on device"):
        save_weights_atomically(model, str(path))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["model.weights.h5"]
    monkeypatch.undo()
    save_weights_atomically(model, str(path))
    _tiny_keras_model().load_weights(str(path))


def test_sigkill_during_weights_export_leaves_previous_file_loadable(tmp_path):
    """A process SIGKILLed inside save_weights: the old .h5 still loads, the temp is cleaned."""
    path = tmp_path / "model.weights.h5"
    proc = subprocess.run(
        program("killed_weights_export", path),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _tiny_keras_model().load_weights(str(path))
    assert fileio.remove_stale_temps(str(tmp_path)) and os.listdir(tmp_path) == ["model.weights.h5"]
