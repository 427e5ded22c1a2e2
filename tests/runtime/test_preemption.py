"""runtime/preemption.py: a signal stops training at a step with a checkpoint there, exit 75, one
line, no lock; the rerun resumes at the next step and ends with the uninterrupted run's values.

In-process runs (the default suite) deliver the signal from inside a step, then wait until the
handler's watcher thread (it polls once a second) saw it: the stop then comes after that step,
deterministically. The subprocess tests signal a real `python main.py` from outside. The
2-worker case is in tests/runtime/test_distribute_multiworker.py, the real launchers (sbatch,
mpirun) in tests/scripts/test_real_launchers.py.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from runtime.checkpoint import Position, TrainingCheckpoint
from runtime.preemption import STOP_SIGNALS, GracefulStop, StopSignals
from tests.helpers.checkpoint_state import (
    STOP_LINE,
    assert_same_values,
    checkpoint_values,
    saved_position,
)
from tests.helpers.processes import cpu_env, finish, start_logged, wait_for_text
from tests.helpers.tiny_run import TINY_MPARAMS, TWO_BLOCKS, tiny_args
from utils.dllogger import read_log

STEPS = 12  # per epoch


def run_args(model_dir, *extra: str) -> list[str]:
    """A seeded 2-epoch run with EMA, step checkpoints and a log line every 2 steps."""
    return tiny_args(
        model_dir,
        "train",
        "--seed",
        "5",
        "--max_epochs",
        "2",
        "--steps_per_epoch",
        str(STEPS),
        "--train_batch_size",
        "8",
        "--log_steps",
        "2",
        "--moving_average_decay",
        "0.9",
        "--save_checkpoint_freq",
        "1",
        "--save_checkpoint_steps",
        "5",
        "--keep_checkpoints",
        "2",
        *extra,
        mparams=f"{TINY_MPARAMS},{TWO_BLOCKS}",
    )


@pytest.fixture
def own_signal_handlers():
    """Gives SIGTERM, SIGINT and SIGUSR1 their handlers back after an in-process stop (a stopped
    run keeps its recording handlers, as a process that ends right after must)."""
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def signal_before_step(monkeypatch, signum: int, at: Position, during_save: bool = False):
    """Send `signum` to this process just before the step after `at`, and let the handler's
    watcher (polling once a second) see it before that step runs."""
    real_run = GracefulStop.run

    def run(self, step_fn, inputs, position):
        if position == at:
            os.kill(os.getpid(), signum)
            time.sleep(1.5)
        return real_run(self, step_fn, inputs, position)

    monkeypatch.setattr(GracefulStop, "run", run)


def step_records(model_dir) -> dict[tuple, dict]:
    """{(epoch, step): data} of the progress records; a repeated step fails the test."""
    records = [
        r
        for r in read_log(str(model_dir / "log.json"))
        if r["type"] == "LOG" and isinstance(r["step"], list) and len(r["step"]) == 2
    ]
    steps = {tuple(r["step"]): r["data"] for r in records}
    assert len(steps) == len(records), "the log repeats steps"
    return steps


def assert_stopped(err: str, code: int, model_dir, name: str, epoch: int, step: int) -> str:
    """One stop line naming the signal and the step, exit 75, its checkpoint at that step, no
    lock; returns the checkpoint path."""
    assert code == 75, err
    lines = err.strip().splitlines()
    match = STOP_LINE.fullmatch(lines[-1])
    assert match, err
    assert "Traceback" not in err
    assert match.groups()[:3] == (name, str(epoch), str(step)), lines[-1]
    path = match.group(4)
    assert path == tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    position = saved_position(path)
    # Step S of epoch E is (E - 1 finished epochs, S steps); its last step is the end of E.
    assert position == ((epoch, 0) if step == STEPS else (epoch - 1, step))
    assert not (model_dir / "train.lock").exists()
    assert not (model_dir / "model.weights.h5").exists()
    return path


def test_sigterm_mid_epoch_checkpoints_the_step_and_the_rerun_ends_like_an_uninterrupted_run(
    run_main, tmp_path, monkeypatch, own_signal_handlers, caplog
):
    """Before: SIGTERM ended the process at once, without a checkpoint, leaving train.lock."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_main(run_args(reference))[0] == 0

    # The signal arrives before step 8 of epoch 2: step 8 (in flight) ends, then the stop.
    signal_before_step(monkeypatch, signal.SIGTERM, Position(1, 7))
    code, err = run_main(run_args(resumed))
    path = assert_stopped(err, code, resumed, "SIGTERM", epoch=2, step=8)
    assert path.endswith(f"ckpt-{STEPS + 8}")  # numbered by the global step
    # Saved at run steps 5, 10, 12 (end of epoch 1), 15 (every 5) and 20 (the stop); with
    # --keep_checkpoints 2 the newest two are kept.
    names = sorted(n for n in os.listdir(resumed / "checkpoints") if n.endswith(".index"))
    assert names == ["ckpt-15.index", "ckpt-20.index"]
    monkeypatch.undo()

    caplog.set_level(logging.INFO, logger="runtime")
    code, err = run_main(run_args(resumed))
    assert code == 0, err
    assert f"ckpt-{STEPS + 8} (epoch 2 step 8)" in caplog.text  # "resumed from .../ckpt-20 (...)"
    assert "epoch 2/2 9/12 " in err  # the progress bar goes on from the step
    final = os.path.join("checkpoints", f"ckpt-{2 * STEPS}")
    # Weights, optimizer slots, EMA, BN statistics, position, running metrics, random state.
    assert assert_same_values(str(resumed / final), str(reference / final)) > 5000
    # Every step logged once, with the uninterrupted run's loss (the epoch's running metrics
    # were in the checkpoint) and learning rate.
    ours, theirs = step_records(resumed), step_records(reference)
    assert sorted(ours) == sorted(theirs)
    for step, data in theirs.items():
        assert (ours[step]["train.loss"], ours[step]["train.lr"]) == (
            data["train.loss"],
            data["train.lr"],
        ), step


def test_a_second_signal_during_the_save_changes_nothing(
    run_main, tmp_path, monkeypatch, own_signal_handlers
):
    """SIGINT and SIGTERM arrive while the stop's checkpoint is being written: the save ends,
    the line names the first signal, the checkpoint loads, no lock and no temporary files."""
    real_save = TrainingCheckpoint.save

    def save_under_fire(self, epoch, step_in_epoch=0):
        if step_in_epoch:  # the stop's save, not an epoch checkpoint
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(self, epoch, step_in_epoch)

    monkeypatch.setattr(TrainingCheckpoint, "save", save_under_fire)
    signal_before_step(monkeypatch, signal.SIGUSR1, Position(0, 3))
    model_dir = tmp_path / "run"
    code, err = run_main(run_args(model_dir, "--max_epochs", "1"))
    path = assert_stopped(err, code, model_dir, "SIGUSR1", epoch=1, step=4)
    assert len(checkpoint_values(path)) > 50  # complete: every value loads
    assert sorted(os.listdir(model_dir / "checkpoints")) == [
        "checkpoint",
        f"{os.path.basename(path)}.data-00000-of-00001",
        f"{os.path.basename(path)}.index",
    ]


@pytest.mark.slow  # a rare case (no step left for the handler); the default suite is full
def test_a_signal_after_the_last_step_stops_before_the_export_and_the_rerun_exports(
    run_main, tmp_path, monkeypatch, own_signal_handlers, caplog
):
    """No step is left for the handler to act on: every worker agrees after the loop, the
    final checkpoint is there, and the rerun only evaluates and exports."""
    signal_before_step(monkeypatch, signal.SIGTERM, Position(0, STEPS - 1))
    model_dir = tmp_path / "run"
    args = run_args(model_dir, "--max_epochs", "1")
    code, err = run_main(args)
    assert_stopped(err, code, model_dir, "SIGTERM", epoch=1, step=STEPS)
    monkeypatch.undo()
    caplog.set_level(logging.INFO, logger="runtime")
    code, err = run_main(args)
    assert code == 0, err
    assert "(end of epoch 1)" in caplog.text and (model_dir / "model.weights.h5").is_file()
    assert sorted(step_records(model_dir)) == [(1, s) for s in range(2, STEPS + 1, 2)]


def test_stop_signals_record_the_first_and_never_raise(own_signal_handlers):
    signals = StopSignals()
    signals.install()
    try:
        for sig in (signal.SIGUSR1, signal.SIGINT, signal.SIGTERM):
            os.kill(os.getpid(), sig)  # SIGINT would raise KeyboardInterrupt, SIGTERM end us
        assert signals.requested.is_set() and signals.name == "SIGUSR1"
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- a real process, signalled from outside --------------------------------------------------


def start_run(model_dir, log_path, *extra: str) -> subprocess.Popen:
    return start_logged(
        [sys.executable, "main.py", *run_args(model_dir, *extra)], log_path, cpu_env()
    )


def signal_mid_epoch(proc: subprocess.Popen, signum: int, after: str) -> tuple[int, str, float]:
    """Send `signum` once the run logged `after`; (exit status, output, seconds to exit)."""
    wait_for_text(
        lambda: open(proc.log_file.name).read(),
        after,
        alive=lambda: proc.poll() is None,
        timeout=240,
    )
    proc.send_signal(signum)
    sent = time.monotonic()
    code, log = finish(proc, timeout=60)
    return code, log, time.monotonic() - sent


@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGTERM,
        # The same path (the in-process tests send both); a process each costs ~8 s.
        pytest.param(signal.SIGINT, marks=pytest.mark.slow),
        pytest.param(signal.SIGUSR1, marks=pytest.mark.slow),
    ],
    ids=lambda s: signal.Signals(s).name,
)
def test_a_signal_to_a_training_process_checkpoints_its_step_and_exits_75(tmp_path, signum):
    """Before: SIGTERM and SIGUSR1 ended the process in 0.2 s with no message, no checkpoint and
    train.lock left behind; SIGINT printed a 38-line traceback."""
    model_dir = tmp_path / "run"
    proc = start_run(model_dir, tmp_path / "run.log", "--steps_per_epoch", "4000")
    code, log, seconds = signal_mid_epoch(proc, signum, "Epoch: 1 Step: 10 ")
    lines = [line for line in log.splitlines() if line.startswith("main.py:")]
    assert code == 75 and len(lines) == 1, log[-3000:]
    name, epoch, step = STOP_LINE.fullmatch(lines[0]).groups()[:3]
    assert (name, epoch) == (signal.Signals(signum).name, "1") and int(step) >= 10
    assert "Traceback" not in log
    assert_stopped(lines[0] + "\n", code, model_dir, name, 1, int(step))
    assert seconds < 60
    print(f"{name}: exit 75 {seconds:.1f} s after the signal, at step {step}")


@pytest.mark.slow  # three more TensorFlow processes
def test_a_process_stopped_by_sigterm_reruns_to_the_uninterrupted_values(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    code, log = finish(start_run(reference, tmp_path / "reference.log"), timeout=300)
    assert code == 0, log[-3000:]
    proc = start_run(resumed, tmp_path / "first.log")
    code, log, _ = signal_mid_epoch(proc, signal.SIGTERM, "Epoch: 1 Step: 4 ")
    assert code == 75, log[-3000:]
    code, log = finish(start_run(resumed, tmp_path / "again.log"), timeout=300)
    assert code == 0, log[-3000:]
    final = os.path.join("checkpoints", f"ckpt-{2 * STEPS}")
    assert_same_values(str(resumed / final), str(reference / final))
