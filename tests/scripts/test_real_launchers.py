"""Real launchers: `sbatch` of a .sub job and `mpirun -np 2`, two CPU tasks training a tiny model.

Slow (`-m slow`); each test skips with a reason when its launcher is missing. A one-node SLURM
with munge, and Open MPI's mpirun, come from `sudo scripts/dev/local_slurm.sh`
(docs/development.md). The jobs are the shipped ones made small from the environment
(scripts/multinode.sh: NUM_GPUS=0, CONTAINER="", EXTRA_ARGS): 2 workers x batch 4 on the bundled
digits, 3 epochs of 100 steps, a checkpoint per epoch.

- `sbatch run_S_multinode.sub` runs to completion;
- the job cancelled with `scancel` mid-training and submitted again resumes from its last epoch
  checkpoint and ends with the uninterrupted job's weights, optimizer state and EMA;
- the job requeued by an administrator (`scontrol requeue`, as preemption does) runs again under
  the same job id, resumes, keeps its first run's log, and ends with those weights;
- `mpirun -np 2 scripts/launch.sh FP32 0 ...` likewise, stopped by SIGTERM to mpirun and rerun;
- mpirun inside an sbatch job (its ranks inherit the batch shell's SLURM_* variables).

One fast test (no launcher needed) pins the cluster source of mpirun's ranks inside a SLURM
job; the scripts' CPU and requeue settings are checked without launchers in
tests/scripts/test_launch_scripts.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from runtime.cluster import resolve_cluster
from tests.helpers import ROOT
from tests.helpers.tiny_run import TINY_MPARAMS, TWO_BLOCKS

SUB = "run_S_multinode.sub"
EPOCHS = 3
TINY_ARGS = (
    f"--mparams {TINY_MPARAMS},{TWO_BLOCKS} --dataset digits --n_stages 1 --train_img_size 32"
    f" --eval_img_size 32 --augmenter_name none --max_epochs {EPOCHS} --steps_per_epoch 100"
    " --save_checkpoint_freq 1 --log_steps 50 --lr_init 0.05 --lr_warmup_epochs 0"
    " --moving_average_decay 0.99 --seed 1"
)
# Job states of a job that has not ended (REQUEUED: between `scontrol requeue` and PENDING).
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED")
SLURM_HELP = "start one with `sudo scripts/dev/local_slurm.sh` (docs/development.md)"


@pytest.fixture(scope="module")
def slurm():
    """Skips unless `sbatch` exists and a SLURM node is idle (or busy with other jobs)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip(f"sbatch not found: {SLURM_HELP}")
    probe = subprocess.run(
        ["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=60
    )
    states = probe.stdout.split()
    if probe.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        pytest.skip(
            f"no SLURM node up ({(probe.stderr or ' '.join(states)).strip()}): {SLURM_HELP}"
        )


@pytest.fixture(scope="module")
def mpirun():
    if shutil.which("mpirun") is None:
        pytest.skip(
            "mpirun not found: install Open MPI (`sudo scripts/dev/local_slurm.sh` installs "
            "openmpi-bin; docs/development.md)"
        )


def free_port_pair() -> int:
    """A port p with p and p + 1 free (task l of the node listens on MASTER_PORT + l)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two adjacent free ports")


def job_env(results_dir, **extra: str) -> dict[str, str]:
    """The submitting shell's environment: the scripts' CPU settings, nothing from a launcher."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TF_CONFIG", "SLURM_", "OMPI_", "PMI_", "MASTER_", "DRY_RUN"))
    }
    env.update(
        {
            "CONTAINER": "",
            "NUM_GPUS": "0",
            "PRECISION": "FP32",
            "BATCH": "4",
            "RESULTS_DIR": str(results_dir),
            "MODEL_DIR": str(results_dir),
            "PYTHON": sys.executable,
            "MASTER_PORT": str(free_port_pair()),
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
            if '"ckpt-1"' in f.read():
                return
        assert alive(), "the run ended before its epoch-1 checkpoint"
        assert time.monotonic() < deadline, f"no epoch-1 checkpoint after {timeout} s"
        time.sleep(0.2)


def final_state(results_dir) -> dict[str, np.ndarray]:
    """Every value of the last checkpoint (weights, optimizer slots, EMA, BN statistics, step)."""
    import tensorflow as tf

    prefix = os.path.join(results_dir, "checkpoints", f"ckpt-{EPOCHS}")
    reader = tf.train.load_checkpoint(prefix)
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(prefix)
        if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
    }


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


def assert_completed(info: dict[str, str], job: Job) -> None:
    assert (info.get("JobState"), info.get("ExitCode")) == ("COMPLETED", "0:0"), job.tail()


def release_requeued(job: Job, timeout: float = 60) -> None:
    """Start a requeued job now: SLURM holds a requeued batch job for about 2 minutes."""
    deadline = time.monotonic() + timeout
    while not (job.info().get("Restarts", "0") != "0" and job.state() == "PENDING"):
        assert job.state() in ACTIVE, job.tail()
        assert time.monotonic() < deadline, job.tail()
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job.id}", "StartTime=now"], timeout=30)


@pytest.fixture(scope="module")
def slurm_reference(slurm, tmp_path_factory):
    """An uninterrupted `sbatch run_S_multinode.sub` (2 CPU tasks): (results dir, job, info, s)."""
    results = tmp_path_factory.mktemp("slurm_reference")
    job = Job(job_env(results), results / "slurm.out")
    info = job.wait_done(timeout=600)
    return results, job, info, time.monotonic() - job.submitted


@pytest.mark.slow
def test_sbatch_job_trains_to_completion(slurm_reference):
    results, job, info, seconds = slurm_reference
    assert_completed(info, job)
    log = job.log()
    assert "2 worker(s), 2 replica(s) in sync, chief=True, cluster from slurm" in log, job.tail()
    assert f"job {job.id} run 1 (SLURM_RESTART_COUNT=0)" in log, job.tail()
    assert (results / "model.weights.h5").is_file()
    # Training moved the weights far beyond the comparison tolerance of the tests below.
    import tensorflow as tf

    first = tf.train.load_checkpoint(str(results / "checkpoints" / "ckpt-1"))
    moved = max(
        float(np.max(np.abs(first.get_tensor(k) - v), initial=0.0))
        for k, v in final_state(results).items()
        if v.dtype.kind == "f"
    )
    assert moved > 1e-3
    print(f"sbatch job {job.id}: submitted to completed in {seconds:.1f} s")


@pytest.mark.slow
def test_scancel_then_resubmit_ends_with_the_uninterrupted_weights(tmp_path, slurm_reference):
    reference = slurm_reference[0]
    results = tmp_path / "run"
    env = job_env(results)
    first = Job(env, tmp_path / "first.out")
    try:
        wait_for_first_checkpoint(results, alive=lambda: first.state() in ACTIVE)
        first.cancel()
        cancelled_at = time.monotonic()
        info = first.wait_done(timeout=120)
        stop_s = time.monotonic() - cancelled_at
    finally:
        first.cancel()
    assert info["JobState"] == "CANCELLED", first.tail()
    assert not (results / "checkpoints" / f"ckpt-{EPOCHS}.index").exists(), "not mid-training"
    assert not (results / "model.weights.h5").exists()

    again = Job(env, tmp_path / "again.out")
    info = again.wait_done(timeout=600)
    assert_completed(info, again)
    assert re.search(r"ckpt-\d \(epoch \d\)", again.log()), again.tail()
    largest = assert_same_training(results, reference)
    print(
        f"job {first.id} gone {stop_s:.1f} s after scancel; resubmitted job {again.id} finished "
        f"{time.monotonic() - again.submitted:.1f} s after sbatch; largest difference {largest:g}"
    )


@pytest.mark.slow
def test_requeued_job_resumes_and_keeps_its_log(tmp_path, slurm_reference):
    reference = slurm_reference[0]
    results = tmp_path / "run"
    job = Job(job_env(results), tmp_path / "job.out")
    try:
        wait_for_first_checkpoint(results, alive=lambda: job.state() in ACTIVE)
        requeued = subprocess.run(
            ["scontrol", "requeue", job.id], capture_output=True, text=True, timeout=30
        )
        assert requeued.returncode == 0, requeued.stderr
        requeued_at = time.monotonic()
        release_requeued(job)
        info = job.wait_done(timeout=600)
    finally:
        job.cancel()
    assert_completed(info, job)
    assert info["Restarts"] == "1"
    log = job.log()
    # --open-mode=append: the first run's output is still there, before the second run's.
    first_run = log.index(f"job {job.id} run 1 (SLURM_RESTART_COUNT=0)")
    assert log.index(f"job {job.id} run 2 (SLURM_RESTART_COUNT=1)") > first_run
    largest = assert_same_training(results, reference)
    print(
        f"requeued job {job.id} finished {time.monotonic() - requeued_at:.1f} s after "
        f"`scontrol requeue`; largest difference {largest:g}"
    )


@pytest.mark.slow
def test_job_requeues_itself_on_the_resumable_exit_status(slurm, tmp_path):
    """scripts/slurm_requeue.sh's end_job in a real batch job: EXIT_RESUMABLE requeues the job
    (same id, SLURM_RESTART_COUNT=1, log appended); any other status ends it with that status."""
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --requeue\n#SBATCH --open-mode=append\n"
        f'. "{ROOT}/scripts/slurm_requeue.sh"\n'
        'echo "run $((${SLURM_RESTART_COUNT:-0} + 1))"\n'
        "# The first run ends as main.py does after a graceful stop; the requeued one finishes.\n"
        "end_job $(( ${SLURM_RESTART_COUNT:-0} ? 0 : EXIT_RESUMABLE ))\n"
    )
    env = job_env(tmp_path)
    job = Job(env, tmp_path / "job.out", script=str(script))
    failing = Job(
        env,
        tmp_path / "failing.out",
        f"--wrap=. {ROOT}/scripts/slurm_requeue.sh; end_job 3",
        script=None,
    )
    try:
        release_requeued(job)
        info = job.wait_done(timeout=120)
        failed = failing.wait_done(timeout=120)
    finally:
        job.cancel()
        failing.cancel()
    assert_completed(info, job)
    assert info["Restarts"] == "1"
    log = job.log()
    assert (
        log.index("run 1") < log.index(f"(exit 75): requeueing job {job.id}") < log.index("run 2")
    )
    assert (failed["JobState"], failed["ExitCode"], failed["Restarts"]) == ("FAILED", "3:0", "0")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 20, next step: main.py does not yet stop on SIGUSR1 with a checkpoint and "
    "exit 75 (today SIGUSR1 ends it at once), so the job cannot requeue itself",
)
def test_warning_signal_checkpoints_and_the_job_requeues_itself(tmp_path, slurm_reference):
    """What `#SBATCH --signal=USR1@300` does before the time limit, sent now by scancel."""
    results = tmp_path / "run"
    job = Job(job_env(results), tmp_path / "job.out")
    try:
        wait_for_first_checkpoint(results, alive=lambda: job.state() in ACTIVE)
        job.cancel("--signal=USR1")  # to the job steps (the training tasks), as --signal does
        release_requeued(job, timeout=120)
        info = job.wait_done(timeout=600)
    finally:
        job.cancel()
    assert_completed(info, job)
    assert "exit 75): requeueing job" in job.log(), job.tail()
    assert_same_training(results, slurm_reference[0])


@pytest.mark.slow
def test_mpirun_inside_an_sbatch_job(slurm, mpirun, tmp_path):
    """mpirun's ranks see the batch shell's SLURM_PROCID=0 / SLURM_NTASKS=2: the cluster must
    come from Open MPI's variables, or both ranks would be worker 0."""
    results = tmp_path / "run"
    env = job_env(results, EXTRA_ARGS=TINY_ARGS.replace("--max_epochs 3", "--max_epochs 1"))
    command = " ".join(shlex.quote(w) for w in mpirun_command())
    job = Job(env, tmp_path / "job.out", f"--wrap={command}", script=None)
    info = job.wait_done(timeout=600)
    assert_completed(info, job)
    assert "2 worker(s), 2 replica(s) in sync, chief=True, cluster from mpi" in job.log(), (
        job.tail()
    )
    print(f"mpirun in sbatch job {job.id}: {time.monotonic() - job.submitted:.1f} s")


@pytest.mark.slow
def test_main_in_a_multi_task_batch_script_without_srun_is_one_process(slurm, tmp_path):
    """`sbatch --ntasks=2 --wrap "python main.py ..."`: the batch shell has SLURM_PROCID=0 and
    SLURM_NTASKS=2 but no job step. Before: main.py took itself for rank 0 of a 2-worker cluster
    and waited 300 s for a peer that never starts."""
    results = tmp_path / "run"
    args = TINY_ARGS.replace("--max_epochs 3", "--max_epochs 1").replace(
        "--steps_per_epoch 100", "--steps_per_epoch 2"
    )
    argv = [sys.executable, "main.py", "--cfg", "config/efficientnet_v2/s_cfg.py"]
    argv += ["--mode", "train", "--model_dir", str(results), "--num_gpus", "0", "--no-use_xla"]
    command = " ".join(shlex.quote(w) for w in argv + args.split())
    job = Job(job_env(results), tmp_path / "job.out", f"--wrap={command}", script=None)
    info = job.wait_done(timeout=280)
    assert_completed(info, job)
    assert "1 worker(s), 1 replica(s) in sync, chief=True, cluster from local" in job.log(), (
        job.tail()
    )
    print(f"main.py in the batch shell of job {job.id}: {time.monotonic() - job.submitted:.1f} s")


# --- mpirun -----------------------------------------------------------------------------------


def mpirun_command() -> list[str]:
    # --allow-run-as-root: containers and CI often run as root; --oversubscribe: 2 ranks on
    # fewer cores. scripts/launch.sh reads MODEL_DIR, PYTHON and EXTRA_ARGS from the environment.
    return [
        "mpirun",
        "-np",
        "2",
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


def start_mpirun(env: dict[str, str], log_path) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 - closed by `finish_mpirun`
    proc = subprocess.Popen(
        mpirun_command(),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc.log_file = log
    return proc


def finish_mpirun(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.log_file.close()
    with open(proc.log_file.name) as f:
        return proc.returncode, f.read()


@pytest.fixture(scope="module")
def mpirun_reference(mpirun, tmp_path_factory):
    results = tmp_path_factory.mktemp("mpirun_reference")
    started = time.monotonic()
    rc, log = finish_mpirun(start_mpirun(job_env(results), results / "mpirun.log"), timeout=600)
    return results, rc, log, time.monotonic() - started


@pytest.mark.slow
def test_mpirun_trains_to_completion(mpirun_reference):
    results, rc, log, seconds = mpirun_reference
    assert rc == 0, log[-6000:]
    assert "2 worker(s), 2 replica(s) in sync, chief=True, cluster from mpi" in log
    assert (results / "model.weights.h5").is_file()
    print(f"mpirun -np 2: {seconds:.1f} s")


@pytest.mark.slow
def test_mpirun_stopped_then_rerun_ends_with_the_uninterrupted_weights(tmp_path, mpirun_reference):
    results = tmp_path / "run"
    env = job_env(results)
    proc = start_mpirun(env, tmp_path / "first.log")
    try:
        wait_for_first_checkpoint(results, alive=lambda: proc.poll() is None)
        proc.send_signal(signal.SIGTERM)  # what `kill <mpirun pid>` or a batch system does
        stopped_at = time.monotonic()
        rc, log = finish_mpirun(proc, timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stop_s = time.monotonic() - stopped_at
    assert rc != 0, log[-6000:]
    assert not (results / "checkpoints" / f"ckpt-{EPOCHS}.index").exists(), "not mid-training"

    started = time.monotonic()
    rc, log = finish_mpirun(start_mpirun(env, tmp_path / "again.log"), timeout=600)
    assert rc == 0, log[-6000:]
    assert re.search(r"ckpt-\d \(epoch \d\)", log), log[-6000:]
    largest = assert_same_training(results, mpirun_reference[0])
    print(
        f"mpirun exited {stop_s:.1f} s after SIGTERM (status {proc.returncode}); the rerun took "
        f"{time.monotonic() - started:.1f} s; largest difference {largest:g}"
    )


def test_mpirun_ranks_inside_a_slurm_job_use_open_mpi_variables():
    """What mpirun's ranks saw in an `sbatch --ntasks=2` job on slurm-wlm 22.05 / Open MPI 4.1:
    the batch shell's SLURM_PROCID=0, SLURM_NTASKS=2 and node list, no SLURM_STEP_* variables."""
    batch_shell = {
        "SLURM_JOB_ID": "12",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "vm",
        "SLURM_TASKS_PER_NODE": "2",
    }
    ranks = [
        resolve_cluster(
            {
                **batch_shell,
                "OMPI_COMM_WORLD_RANK": str(rank),
                "OMPI_COMM_WORLD_SIZE": "2",
                "OMPI_COMM_WORLD_LOCAL_RANK": str(rank),
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
                "MASTER_PORT": "4000",
            }
        )
        for rank in (0, 1)
    ]
    assert [(r.source, r.rank, r.is_chief) for r in ranks] == [("mpi", 0, True), ("mpi", 1, False)]
    assert ranks[1].jobs["worker"] == ("localhost:4000", "localhost:4001")
    # srun's own tasks keep the SLURM source.
    step = {
        **batch_shell,
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "2",
    }
    assert (resolve_cluster(step).source, resolve_cluster(step).rank) == ("slurm", 1)
