"""Resuming a run: a checkpoint of another architecture, class list, optimizer or EMA is refused
before anything is written; the random state is in the checkpoint, so a killed and resumed seeded
run reproduces the losses (issue #12; each test names the behaviour before the fix)."""

import json
import os

import numpy as np
import pytest

import main
from tests.helpers.cli import assert_one_line
from tests.helpers.tiny_run import TINY_MPARAMS, save_random_checkpoint, tiny_args, tiny_params


def test_resume_with_another_architecture_is_refused_before_writing(run_main, tmp_path):
    """Before: refused only after params.json was overwritten and log.json appended."""
    model_dir = tmp_path / "run"
    params = tiny_params(model_dir, "train")
    save_random_checkpoint(params)
    from runtime.class_names import save_class_names
    from runtime.components import write_json

    write_json(str(model_dir / "params.json"), params)
    save_class_names(str(model_dir), 10, [str(i) for i in range(10)])
    before = {n: (model_dir / n).read_bytes() for n in ("params.json", "class_names.json")}
    listing = sorted(os.listdir(model_dir))
    argv = tiny_args(model_dir, "train")
    other = TINY_MPARAMS.replace("width_coefficient=0.1", "width_coefficient=0.2")
    argv[argv.index(TINY_MPARAMS)] = other
    code, err = run_main(argv)
    assert_one_line(err, code, 2)
    assert "cannot resume: the checkpoint in" in err and "width_coefficient=0.1" in err
    assert "this run has width_coefficient=0.2" in err and "--no-resume_checkpoint" in err
    assert sorted(os.listdir(model_dir)) == listing
    assert {n: (model_dir / n).read_bytes() for n in before} == before


def test_check_resume_fits_classes_optimizer_and_ema(tmp_path):
    from runtime.checkpoint import check_resume_fits
    from runtime.class_names import save_class_names
    from runtime.errors import RunError

    params = tiny_params(tmp_path, "train")
    saved = json.loads(json.dumps(params, default=str))
    check_resume_fits(params, saved, 10, None)  # the same run fits
    save_class_names(str(tmp_path), 10, [str(i) for i in range(10)])
    with pytest.raises(RunError, match="has 10 classes, the data set of this run has 7"):
        check_resume_fits(params, saved, 7, None)
    names = tuple("0123456789"[::-1])
    with pytest.raises(RunError, match="class 0 of the checkpoint is '0'.*'9'.*mixed up"):
        check_resume_fits(params, saved, 10, names)
    with pytest.raises(RunError, match="--optimizer rmsprop, this run has adam"):
        check_resume_fits({**params, "optimizer": "adam"}, saved, 10, None)
    with pytest.raises(RunError, match="has no EMA"):
        check_resume_fits({**params, "moving_average_decay": 0.9}, saved, 10, None)


# ---------------------------------------------------------------------------------------------
# Random state in the checkpoint: a killed and resumed seeded run reproduces the losses


class _Killed(Exception):
    pass


def _step_losses(model_dir) -> dict:
    losses = {}
    for line in open(model_dir / "log.json"):
        record = json.loads(line[len("DLLL ") :])
        if record.get("type") == "LOG" and len(record["step"]) == 2:
            losses[tuple(record["step"])] = record["data"]["train.loss"]
    return losses


@pytest.mark.slow  # four tiny training runs (~90 s on 2 busy cores)
def test_resumed_seeded_run_with_dropout_and_stochastic_depth_reproduces_losses(
    capsys, tmp_path, monkeypatch
):
    """Before: the SeedGenerator states were not checkpointed and the resumed run restarted the
    data stream, so epoch 2 of a resumed run drew other dropout masks and other batches.

    Tolerance: both runs execute the same ops on the same inputs with the same random numbers;
    only the order of multi-threaded float32 reductions may differ, far below 1e-5 relative."""
    from runtime.checkpoint import TrainingCheckpoint

    args = (
        "--seed",
        "3",
        "--max_epochs",
        "2",
        "--steps_per_epoch",
        "2",
        "--log_steps",
        "1",
        "--train_batch_size",
        "8",
        "--save_checkpoint_freq",
        "1",
        "--augmenter_name",
        "randaugment",
        "--lr_warmup_epochs",
        "0",
    )
    mparams = TINY_MPARAMS + ",dropout_rate=0.5,drop_connect_rate=0.5"

    def argv(model_dir):
        out = tiny_args(model_dir, "train", *args)
        out[out.index(TINY_MPARAMS)] = mparams
        return out

    assert main.main(argv(tmp_path / "full")) == 0
    full = _step_losses(tmp_path / "full")
    real_save = TrainingCheckpoint.save

    def save_then_die(self, epoch):
        path = real_save(self, epoch)
        if epoch == 1:
            raise _Killed
        return path

    monkeypatch.setattr(TrainingCheckpoint, "save", save_then_die)
    with pytest.raises(_Killed):
        main.main(argv(tmp_path / "resumed"))
    monkeypatch.setattr(TrainingCheckpoint, "save", real_save)
    assert main.main(argv(tmp_path / "resumed")) == 0
    resumed = _step_losses(tmp_path / "resumed")
    assert sorted(full) == sorted(resumed) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for step in full:
        assert resumed[step] == pytest.approx(full[step], rel=1e-5), step
    # The random state matters: a run with another seed gives other losses.
    assert full[(2, 1)] != pytest.approx(_other_seed_loss(capsys, tmp_path, argv), rel=1e-3)


def _other_seed_loss(capsys, tmp_path, argv):
    out = argv(tmp_path / "other")
    out[out.index("--seed") + 1] = "4"
    assert main.main(out) == 0
    return _step_losses(tmp_path / "other")[(2, 1)]


def test_seed_states_of_dropout_and_stochastic_depth_are_in_the_checkpoint(tmp_path):
    import tensorflow as tf

    from runtime.checkpoint import seed_states
    from runtime.components import create_model

    params = tiny_params(tmp_path, "train")
    model = create_model(params, 10)
    states = seed_states(model)
    dropouts = [layer for layer in model.layers if "dropout" in layer.name]
    assert dropouts and len(states) >= 2  # head dropout + stochastic-depth blocks
    from runtime.checkpoint import random_state

    path = tf.train.Checkpoint(rng=random_state(model)).save(str(tmp_path / "ck"))
    keys = [name for name, _ in tf.train.list_variables(path)]
    assert sum(k.startswith("rng/seed_") for k in keys) == len(states)
    assert any(k.startswith("rng/generator") for k in keys)


def test_checkpoint_restores_dropout_random_state(tmp_path):
    """Restoring a training checkpoint restores the dropout masks drawn next (before: the
    SeedGenerator states were not saved, so the masks after a resume were the first run's
    masks from its start)."""
    import keras

    from runtime.checkpoint import TrainingCheckpoint
    from utils.optimizers import OptimizerConfig, build_optimizer

    keras.utils.set_random_seed(5)
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dropout(0.5)(inputs))
    opt = build_optimizer(OptimizerConfig(name="momentum"), 0.1, model.trainable_variables)
    ckpt = TrainingCheckpoint(str(tmp_path), model, opt)
    x = np.ones((4, 64), np.float32)
    model(x, training=True)
    ckpt.save(1)
    expected = [np.asarray(model(x, training=True)) for _ in range(2)]
    assert not np.array_equal(expected[0], expected[1])
    ckpt.restore_latest()
    again = [np.asarray(model(x, training=True)) for _ in range(2)]
    np.testing.assert_array_equal(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])


def test_epoch_data_seed_depends_only_on_seed_and_epoch():
    from runtime.train_input import epoch_data_seed

    assert epoch_data_seed(None, 3) is None and epoch_data_seed(7, None) == 7
    seeds = {epoch_data_seed(7, e) for e in range(100)}
    assert len(seeds) == 100
