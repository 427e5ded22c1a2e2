"""End to end through main.py on the bundled digits with a tiny model: resume after a crash or
kill -9 (step, LR, stage), NaN handling. train_and_eval + predict:
tests/scripts/test_quickstart.py."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import main
from tests.helpers import ROOT
from utils.dllogger import read_log
from utils.schedules import build_schedule

CFG = os.path.join(ROOT, "config", "efficientnet_v1", "b0_cfg.py")
STEPS = 3
BATCH = 16
# Two MBConv blocks (strides 1 and 2): what these tests check does not depend on depth, and a
# small graph halves the seconds spent tracing the train step of each stage.
MPARAMS = (
    "width_coefficient=0.1,depth_coefficient=0.1,"
    "blocks=('r1_k3_s1_e1_i32_o16_se0.25','r1_k3_s2_e6_i16_o24_se0.25')"
)


def tiny_args(model_dir, *extra):
    return [
        "--cfg",
        CFG,
        "--mparams",
        MPARAMS,
        "--dataset",
        "digits",
        "--train_img_size",
        "32",
        "--eval_img_size",
        "32",
        "--base_img_size",
        "24",
        "--train_batch_size",
        str(BATCH),
        "--eval_batch_size",
        "120",
        "--steps_per_epoch",
        str(STEPS),
        "--log_steps",
        "2",
        "--augmenter_name",
        "none",
        "--lr_warmup_epochs",
        "1",
        "--seed",
        "3",
        "--model_dir",
        str(model_dir),
        *extra,
    ]


def progress(records):
    """{(epoch, step): data} of the [epoch, step] records."""
    return {
        tuple(r["step"]): r["data"]
        for r in records
        if r["type"] == "LOG" and isinstance(r["step"], list) and len(r["step"]) == 2
    }


def resume_run_args(model_dir):
    """A 4-epoch, 2-stage run (stage 1: epochs 1-2 at 24 px) with a checkpoint every epoch."""
    return tiny_args(
        model_dir,
        "--mode",
        "train",
        "--max_epochs",
        "4",
        "--n_stages",
        "2",
        "--save_checkpoint_freq",
        "1",
        "--moving_average_decay",
        "0.9",
        "--lr_decay",
        "cosine",
    )


def check_resumed_run(model_dir, args, saved_epoch):
    """Rerun `args`: it resumes at the epoch after `saved_epoch`, in the stage of that epoch,
    with the global step and learning rate where they were, and finishes the run."""
    assert main.main(args) == 0
    records = read_log(str(model_dir / "log.json"))
    resumed_from = max(i for i, r in enumerate(records) if r.get("step") == "PARAMETER")
    after = progress(records[resumed_from:])
    first = min(after)
    assert first == (saved_epoch + 1, 2)
    schedule = build_schedule("cosine", 0.008, BATCH, STEPS, 4, 1, 2.4, 0.97)
    for (epoch, step), data in after.items():
        global_step = (epoch - 1) * STEPS + step
        assert (data["stage"], data["image_size"]) == ((1, 24) if epoch <= 2 else (2, 32))
        # The logged LR is the one of the next update, i.e. schedule(global step).
        assert data["train.lr"] == pytest.approx(float(schedule(global_step)), rel=1e-5)
    assert records[-1]["data"]["global_step"] == 4 * STEPS
    # Numbered by the global step.
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith(f"ckpt-{4 * STEPS}")


class _Crash(Exception):
    """Ends a run right after a checkpoint, as a crash would (nothing in the loop catches it)."""


def test_resume_after_a_crash_continues_step_lr_and_stage(tmp_path, monkeypatch):
    """The run dies right after its 2nd checkpoint (end of stage 1); the rerun resumes at
    epoch 3, in stage 2, with the global step and learning rate where they were. In-process:
    the SIGKILL variant below needs a second TensorFlow process (slow); a checkpoint that a
    SIGKILL interrupts is tested in tests/runtime/test_checkpoint.py."""
    from runtime.checkpoint import TrainingCheckpoint

    args = resume_run_args(tmp_path)
    real_save = TrainingCheckpoint.save

    def save_then_crash(self, epoch):
        path = real_save(self, epoch)
        if epoch == 2:
            raise _Crash
        return path

    monkeypatch.setattr(TrainingCheckpoint, "save", save_then_crash)
    with pytest.raises(_Crash):
        main.main(args)
    monkeypatch.setattr(TrainingCheckpoint, "save", real_save)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith(f"ckpt-{2 * STEPS}")
    check_resumed_run(tmp_path, args, saved_epoch=2)


@pytest.mark.slow  # a second TensorFlow process; the in-process crash above is the fast variant
def test_resume_after_kill_9_continues_step_lr_and_stage(tmp_path):
    """Kill -9 a 4-epoch, 2-stage run after its 2nd checkpoint; the rerun resumes at the next
    epoch, in stage 2, with the global step and learning rate where they were."""
    args = resume_run_args(tmp_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, "main.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    index = tmp_path / "checkpoints" / f"ckpt-{2 * STEPS}.index"
    deadline = time.time() + 240
    while not index.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert index.exists(), "the first run never wrote its 2nd checkpoint"
    # The 2nd checkpoint's files may be complete while the `checkpoint` index still names the
    # 1st (killed in between): then the 1st is the latest, and loadable.
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    saved_epoch = int(latest.rsplit("-", 1)[1]) // STEPS
    assert saved_epoch in (1, 2, 3)
    check_resumed_run(tmp_path, args, saved_epoch)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tmp_path, capsys, monkeypatch
):
    from runtime import train_input

    real_build = train_input.build_dataset
    train_builds = []

    def poisoned(cfg, split, input_context=None, repeat=None):
        dataset = real_build(cfg, split, input_context=input_context, repeat=repeat)
        if split != "train":
            return dataset
        # Batches after the first epoch carry NaN pixels (seeded runs build one train input
        # per epoch, unseeded ones one per stage).
        train_builds.append(cfg.seed)
        later = len(train_builds) > 1
        return dataset.enumerate().map(
            lambda i, xy: (tf.where(later or i >= STEPS, np.nan, xy[0]), xy[1])
        )

    monkeypatch.setattr(train_input, "build_dataset", poisoned)
    code = main.main(
        tiny_args(
            tmp_path,
            "--mode",
            "train",
            "--max_epochs",
            "3",
            "--save_checkpoint_freq",
            "1",
            "--enable_tensorboard",
        )
    )
    err = capsys.readouterr().err
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith(
        "main.py: error: training loss became nan at epoch 2, step 2; "
        "stopped without saving. Last good checkpoint: "
    )
    assert line.endswith(
        f"ckpt-{STEPS}. Lower --lr_init, set --grad_clip_norm, or check the input data"
    )
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "checkpoint",
        f"ckpt-{STEPS}.data-00000-of-00001",
        f"ckpt-{STEPS}.index",
    ]
    assert not (tmp_path / "model.weights.h5").exists()
    # The epoch before the NaN was logged to TensorBoard too.
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
