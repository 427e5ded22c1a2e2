"""Launching and watching the real-launcher test jobs (tests/scripts/test_real_launchers.py):
the jobs' environment, an sbatch job handle, mpirun processes, waiting for a job's output, and the
checks that a stopped and resumed run ended where the uninterrupted one did."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from tests.helpers import ROOT
from tests.helpers.checkpoint_state import STOP_LINE, checkpoint_values, saved_position
from tests.helpers.processes import LAUNCHER_PREFIXES, free_ports, start_logged
from tests.helpers.tiny_run import TINY_MPARAMS, TWO_BLOCKS

SUB = "run_S_multinode.sub"
EPOCHS = 3
STEPS = 100  # per epoch
TINY_ARGS = (
    f"--mparams {TINY_MPARAMS},{TWO_BLOCKS} --dataset digits --n_stages 1 --train_img_size 32"
    f" --eval_img_size 32 --augmenter_name none --max_epochs {EPOCHS} --steps_per_epoch {STEPS}"
    " --save_checkpoint_freq 1 --log_steps 50 --lr_init 0.05 --lr_warmup_epochs 0"
    " --moving_average_decay 0.99 --seed 1"
)
# Job states of a job that has not ended (REQUEUED: between `scontrol requeue` and PENDING).
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED")
SLURM_HELP = "start one with `sudo scripts/dev/local_slurm.sh` (docs/development.md)"


def job_env(results_dir, **extra: str) -> dict[str, str]:
    """The submitting shell's environment: the scripts' CPU settings, nothing from a launcher."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((*LAUNCHER_PREFIXES, "DRY_RUN"))}
    env.update(
        {
            "CONTAINER": "",
            "NUM_GPUS": "0",
            "PRECISION": "FP32",
            "BATCH": "4",
            "RESULTS_DIR": str(results_dir),
            "MODEL_DIR": str(results_dir),
            "PYTHON": sys.executable,
            "MASTER_PORT": str(free_ports(2)[0]),  # task l listens on MASTER_PORT + l
            "EXTRA_ARGS": TINY_ARGS,
            "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **extra,
        }
    )
    return env


# --- SLURM ------------------------------------------------------------------------------------


class Job:
    """One submitted batch job: its id, its output file and its environment."""

    def __init__(self, env: dict[str, str], log_path, *sbatch_args: str, script: str | None = SUB):
        self.env, self.log_path = env, str(log_path)
        out = subprocess.run(
            ["sbatch", "--parsable", "--ntasks=2", f"--output={self.log_path}", *sbatch_args]
            + ([script] if script else []),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        self.id = out.stdout.strip().split(";")[0]
        self.submitted = time.monotonic()

    def info(self) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, ...)."""
        out = subprocess.run(
            ["scontrol", "--oneliner", "show", "job", self.id],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def state(self) -> str:
        return self.info().get("JobState", "GONE")

    def wait_done(self, timeout: float) -> dict[str, str]:
        """Wait until the job has left the queue for good; returns its final `info()`."""
        deadline = time.monotonic() + timeout
        while (info := self.info()).get("JobState") in ACTIVE:
            if time.monotonic() > deadline:
                self.cancel()
                pytest.fail(
                    f"job {self.id} still {info['JobState']} after {timeout} s: {self.tail()}"
                )
            time.sleep(1)
        return info

    def cancel(self, *args: str) -> None:
        subprocess.run(["scancel", *args, self.id], capture_output=True, timeout=30)

    def log(self) -> str:
        """The job's output file (both tasks' output, and the batch shell's)."""
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return "(no output file)"

    def tail(self) -> str:
        return f"job {self.id}, {self.log_path}:\n{self.log()[-6000:]}"


def wait_for_first_checkpoint(results_dir, alive: Callable[[], bool], timeout: float = 600):
    """Wait until the run in `results_dir` has saved its epoch-1 checkpoint (while `alive()`)."""
    index = os.path.join(results_dir, "checkpoints", "checkpoint")  # rewritten after each save
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError), open(index) as f:
            if f'"ckpt-{STEPS}"' in f.read():  # numbered by the global step
                return
        assert alive(), "the run ended before its epoch-1 checkpoint"
        assert time.monotonic() < deadline, f"no epoch-1 checkpoint after {timeout} s"
        time.sleep(0.2)


MID_EPOCH_2 = f"Epoch: 2 Step: {STEPS // 2} "  # the DLL line of step 50 of epoch 2


def final_state(results_dir) -> dict[str, np.ndarray]:
    """Every value of the last checkpoint (weights, optimizer slots, EMA, BN statistics, step,
    position, running metrics), but the count of saves (a stop adds one)."""
    return checkpoint_values(os.path.join(results_dir, "checkpoints", f"ckpt-{EPOCHS * STEPS}"))


def exported_weights(results_dir) -> list[np.ndarray]:
    import h5py

    arrays: list[np.ndarray] = []
    with h5py.File(os.path.join(results_dir, "model.weights.h5"), "r") as f:
        f.visititems(
            lambda _, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return arrays


def assert_same_training(ours_dir, reference_dir) -> float:
    """The run in `ours_dir` ended where the uninterrupted one did; returns the largest diff."""
    ours, reference = final_state(ours_dir), final_state(reference_dir)
    assert ours.keys() == reference.keys()
    largest = 0.0
    for name, value in reference.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(ours[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
            largest = max(largest, float(np.max(np.abs(ours[name] - value), initial=0.0)))
        else:
            assert np.array_equal(ours[name], value), name
    # Weights and BN statistics, optimizer slots, EMA shadows, the data RNG, the epoch.
    assert {"model", "optimizer", "ema", "rng", "epoch"} <= {n.split("/")[0] for n in reference}
    for a, b in zip(exported_weights(ours_dir), exported_weights(reference_dir), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    return largest


def assert_stopped_mid_training(log: str, signal_name: str, results_dir) -> str:
    """Both tasks stopped with one line each, at the same step, with one checkpoint at that step
    (its recorded position says so) and no lock left; returns "epoch E step S"."""
    lines = STOP_LINE.findall(log)
    assert len(lines) == 2, log[-6000:]
    assert signal_name in {name for name, *_ in lines}, lines
    assert len({tuple(rest) for _, *rest in lines}) == 1, lines  # same epoch, step, checkpoint
    epoch, step, path = int(lines[0][1]), int(lines[0][2]), lines[0][3]
    assert 1 <= step <= STEPS and (epoch - 1) * STEPS + step < EPOCHS * STEPS, lines
    assert path == os.path.join(results_dir, "checkpoints", f"ckpt-{(epoch - 1) * STEPS + step}")
    at = saved_position(path)
    assert at in ((epoch - 1, step), (epoch, 0)), at  # (E - 1, S), or the end of epoch E
    assert not os.path.exists(os.path.join(results_dir, "train.lock"))
    return f"epoch {epoch} step {step}"


def assert_completed(info: dict[str, str], job: Job) -> None:
    assert (info.get("JobState"), info.get("ExitCode")) == ("COMPLETED", "0:0"), job.tail()


def release_requeued(job: Job, timeout: float = 60) -> None:
    """Start a requeued job now: SLURM holds a requeued batch job for about 2 minutes."""
    deadline = time.monotonic() + timeout
    while not (job.info().get("Restarts", "0") != "0" and job.state() == "PENDING"):
        assert job.state() in ACTIVE, job.tail()
        assert time.monotonic() < deadline, job.tail()
        time.sleep(0.5)
    # slurmd refuses a batch job whose credential is from the second in which its previous run's
    # credential was revoked ("Job credential revoked", the job FAILED): start it 2 s later.
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job.id}", "StartTime=now"], timeout=30)


# --- mpirun ------------------------------------------------------------------------------------


def mpirun_command(*mpirun_args: str) -> list[str]:
    # --allow-run-as-root: containers and CI often run as root; --oversubscribe: 2 ranks on
    # fewer cores. scripts/launch.sh reads MODEL_DIR, PYTHON and EXTRA_ARGS from the environment.
    return [
        "mpirun",
        "-np",
        "2",
        *mpirun_args,
        "--allow-run-as-root",
        "--oversubscribe",
        "scripts/launch.sh",
        "FP32",
        "0",
        "config/efficientnet_v2/s_cfg.py",
        "train_and_eval",
        "--train_batch_size",
        "4",
    ]


def start_mpirun(env: dict[str, str], log_path, *mpirun_args: str) -> subprocess.Popen:
    return start_logged(mpirun_command(*mpirun_args), log_path, env, own_session=True)
