"""runtime/checkpoint_integrity.py: a damaged newest checkpoint is named in one line and skipped
for the newest intact one, in training and in eval / predict / export; a checkpoint of another
model stays a mismatch (issue 20; each test names the behaviour before the fix)."""

import glob
import logging
import os

import keras
import numpy as np
import pytest

from runtime.checkpoint import TrainingCheckpoint, restore_for_inference
from runtime.checkpoint_integrity import checkpoint_damage, listed_checkpoints
from runtime.errors import RunError
from tests.helpers.checkpoint_state import bn_model, one_step, training_state
from tests.helpers.cli import assert_one_line
from tests.helpers.tiny_run import save_random_checkpoint, tiny_args, tiny_params
from utils.dllogger import read_log
from utils.optimizers import OptimizerConfig, build_optimizer


def _data_file(prefix: str) -> str:
    (path,) = glob.glob(prefix + ".data-*")
    return path


def truncate_data(prefix: str) -> str:
    path = _data_file(prefix)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


def flip_data_bytes(prefix: str) -> str:
    path = _data_file(prefix)
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    open(path, "wb").write(bytes(data))
    return path


def cut_index(prefix: str) -> str:
    path = prefix + ".index"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


def remove_index(prefix: str) -> str:
    os.remove(prefix + ".index")
    return prefix + ".index"


DAMAGES = {
    "truncated data": (truncate_data, "Read less bytes than requested"),
    "flipped data bytes": (flip_data_bytes, "Checksum does not match"),
    "cut index": (cut_index, "sstable"),
    "missing index": (remove_index, "missing"),
}


@pytest.fixture
def two_checkpoints(tmp_path):
    """ckpt-1 and ckpt-2 of one run in tmp_path; returns (their prefixes, ckpt-1's weights)."""
    model, opt, ema = training_state(0)
    checkpoint = TrainingCheckpoint(str(tmp_path), model, opt, ema)
    one_step(model, opt, ema)
    first = checkpoint.save(1)
    first_weights = [w.numpy() for w in model.weights]
    one_step(model, opt, ema)
    second = checkpoint.save(2)
    return (first, second), first_weights


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_skips_a_damaged_newest_checkpoint(damage, two_checkpoints, tmp_path, caplog):
    """Before: a truncated .data was an IndexError traceback ("Read less bytes than requested");
    flipped bytes or a cut .index read "does not match this model/optimizer ... use another
    --model_dir", advice that threw the intact ckpt-1 away; a missing .index started over."""
    (first, second), first_weights = two_checkpoints
    damage_fn, reason = DAMAGES[damage]
    damaged_file = damage_fn(second)
    assert listed_checkpoints(str(tmp_path / "checkpoints")) == [second, first]

    model, opt, ema = training_state(5)
    with caplog.at_level(logging.WARNING):
        assert TrainingCheckpoint(str(tmp_path), model, opt, ema).restore_latest() == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert f"checkpoint ckpt-2 is damaged ({damaged_file}: " in warnings[0]
    assert reason in warnings[0]
    assert int(opt.iterations.numpy()) == 1
    for expected, weight in zip(first_weights, model.weights, strict=True):
        np.testing.assert_array_equal(weight.numpy(), expected)  # nothing left of ckpt-2


def test_every_checkpoint_damaged_is_one_line_naming_each_file(two_checkpoints, tmp_path):
    (first, second), _ = two_checkpoints
    index, data = cut_index(second), truncate_data(first)
    model, opt, ema = training_state(5)
    with pytest.raises(RunError) as info:
        TrainingCheckpoint(str(tmp_path), model, opt, ema).restore_latest()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"no intact checkpoint in {tmp_path / 'checkpoints'} ({index}: ")
    assert f"; {data}: Read less bytes than requested)" in message
    assert message.endswith("--no-resume_checkpoint trains from scratch in this --model_dir")


def test_a_checkpoint_of_another_model_is_a_mismatch_not_damage(two_checkpoints, tmp_path):
    (_, second), _ = two_checkpoints
    assert checkpoint_damage(second) is None
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt = build_optimizer(OptimizerConfig(name="sgd"), 0.1)
    opt.build(other.trainable_variables)
    with pytest.raises(RunError, match="ckpt-2 does not match this model/optimizer"):
        TrainingCheckpoint(str(tmp_path), other, opt).restore_latest()
    with pytest.raises(RunError, match="ckpt-2 does not fit this model .*another architecture"):
        restore_for_inference(
            keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), "", str(tmp_path)
        )


def test_inference_skips_a_damaged_checkpoint_and_refuses_a_damaged_explicit_one(
    two_checkpoints, tmp_path, caplog
):
    """Before: eval / predict / export of a damaged newest checkpoint was a traceback or the
    mismatch message."""
    (first, second), _ = two_checkpoints
    data = flip_data_bytes(second)
    with caplog.at_level(logging.WARNING):
        loaded = restore_for_inference(bn_model(3), str(tmp_path))
    assert loaded == {"path": first, "weights": "ema"}
    assert f"checkpoint ckpt-2 is damaged ({data}: " in caplog.text
    with pytest.raises(RunError) as info:
        restore_for_inference(bn_model(3), "", checkpoint=second)
    assert str(info.value).startswith(f"checkpoint {second} is damaged ({data}: TensorBundle")
    assert str(info.value).endswith("pass an intact checkpoint (--predict_ckpt), or train again")


def test_eval_with_every_checkpoint_damaged_exits_1_in_one_line(run_main, tmp_path):
    from runtime.class_names import save_class_names
    from runtime.components import write_json

    params = tiny_params(tmp_path, "train")
    save_random_checkpoint(params)
    write_json(str(tmp_path / "params.json"), params)
    save_class_names(str(tmp_path), 10, [str(i) for i in range(10)])
    (prefix,) = listed_checkpoints(str(tmp_path / "checkpoints"))
    data = truncate_data(prefix)
    code, err = run_main(["--mode", "eval", "--model_dir", str(tmp_path), "--no-use_xla"])
    assert_one_line(err, code, 1)
    assert f"checkpoint {prefix} is damaged ({data}: Read less bytes than requested)" in err


def test_a_run_resuming_past_a_damaged_newest_checkpoint_appends_to_its_log(run_main, tmp_path):
    """Before: the log was moved aside to log.json.1 (tf.train.latest_checkpoint saw no
    checkpoint) while the run resumed from ckpt-2, so log.json lost the epochs before it."""
    model_dir = tmp_path / "run"
    steps = ("--steps_per_epoch", "2", "--save_checkpoint_freq", "1", "--lr_warmup_epochs", "0")
    assert run_main(tiny_args(model_dir, "train", "--max_epochs", "2", *steps))[0] == 0
    newest = listed_checkpoints(str(model_dir / "checkpoints"))[0]
    remove_index(newest)

    code, err = run_main(tiny_args(model_dir, "train", "--max_epochs", "3", *steps))
    assert code == 0, err
    assert not (model_dir / "log.json.1").exists()
    records = read_log(str(model_dir / "log.json"))
    epochs = [r["step"] for r in records if r.get("type") == "LOG" and len(r["step"]) == 1]
    assert epochs == [[1], [2], [3]]  # epoch 1 of the first run, then 2 and 3 again
