"""Real launchers: `sbatch` of a .sub job and `mpirun -np 2`, two CPU tasks training a tiny model.

Slow (`-m slow`); each test skips with a reason when its launcher is missing. A one-node SLURM
with munge, and Open MPI's mpirun, come from `sudo scripts/dev/local_slurm.sh`
(docs/development.md). The jobs are the shipped ones made small from the environment
(scripts/multinode.sh: NUM_GPUS=0, CONTAINER="", EXTRA_ARGS): 2 workers x batch 4 on the bundled
digits, 3 epochs of 100 steps, a checkpoint per epoch.

- `sbatch run_S_multinode.sub` runs to completion;
- the job cancelled with `scancel` (SIGTERM) in the middle of epoch 2: both tasks stop at one
  step with a checkpoint there (runtime/preemption.py); submitted again, it resumes at that step
  and ends with the uninterrupted job's weights, optimizer state and EMA;
- `scancel --signal=USR1` (what `#SBATCH --signal=USR1@300` sends before the time limit): the
  tasks stop likewise and exit 75, and the job requeues itself and resumes;
- the job requeued by an administrator (`scontrol requeue`, as preemption does) runs again under
  the same job id, resumes, keeps its first run's log, and ends with those weights;
- `mpirun -np 2 scripts/launch.sh FP32 0 ...` likewise, stopped by SIGUSR1 or SIGTERM to mpirun
  (both ranks checkpoint at one step) and rerun;
- mpirun inside an sbatch job (its ranks inherit the batch shell's SLURM_* variables).

One fast test (no launcher needed) pins the cluster source of mpirun's ranks inside a SLURM
job; the scripts' CPU and requeue settings are checked without launchers in
tests/scripts/test_launch_scripts.py.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from runtime.cluster import resolve_cluster
from tests.helpers import ROOT
from tests.helpers.launchers import (
    ACTIVE,
    MID_EPOCH_2,
    SLURM_HELP,
    STEPS,
    TINY_ARGS,
    Job,
    assert_completed,
    assert_same_training,
    assert_stopped_mid_training,
    final_state,
    job_env,
    mpirun_command,
    release_requeued,
    start_mpirun,
    wait_for_first_checkpoint,
)
from tests.helpers.processes import finish, wait_for_text


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


# --- SLURM -------------------------------------------------------------------------------------


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

    first = tf.train.load_checkpoint(str(results / "checkpoints" / f"ckpt-{STEPS}"))
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
        wait_for_text(first.log, MID_EPOCH_2, alive=lambda: first.state() in ACTIVE)
        first.cancel()
        cancelled_at = time.monotonic()
        info = first.wait_done(timeout=120)
        stop_s = time.monotonic() - cancelled_at
    finally:
        first.cancel()
    assert info["JobState"] == "CANCELLED", first.tail()
    # SIGTERM to the tasks: both finish their step, checkpoint there and exit (75).
    stopped_at = assert_stopped_mid_training(first.log(), "SIGTERM", results)
    assert not (results / "model.weights.h5").exists()

    again = Job(env, tmp_path / "again.out")
    info = again.wait_done(timeout=600)
    assert_completed(info, again)
    assert f"({stopped_at})" in again.log(), again.tail()  # "resumed from .../ckpt-N (...)"
    largest = assert_same_training(results, reference)
    print(
        f"job {first.id} gone {stop_s:.1f} s after scancel, stopped at {stopped_at}; resubmitted "
        f"job {again.id} finished {time.monotonic() - again.submitted:.1f} s after sbatch; "
        f"largest difference {largest:g}"
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
def test_warning_signal_checkpoints_and_the_job_requeues_itself(tmp_path, slurm_reference):
    """What `#SBATCH --signal=USR1@300` does before the time limit, sent now by scancel: both
    tasks stop at one step with a checkpoint and exit 75 (srun --kill-on-bad-exit's SIGTERM to
    the later one does not turn that into a failure); the job requeues itself and resumes."""
    results = tmp_path / "run"
    job = Job(job_env(results), tmp_path / "job.out")
    try:
        wait_for_text(job.log, MID_EPOCH_2, alive=lambda: job.state() in ACTIVE)
        job.cancel("--signal=USR1")  # to the job steps (the training tasks), as --signal does
        signalled_at = time.monotonic()
        release_requeued(job, timeout=120)
        requeued_s = time.monotonic() - signalled_at
        info = job.wait_done(timeout=600)
    finally:
        job.cancel()
    assert_completed(info, job)
    log = job.log()
    assert f"(exit 75): requeueing job {job.id}" in log, job.tail()
    first_run = log[: log.index(f"job {job.id} run 2")]
    stopped_at = assert_stopped_mid_training(first_run, "SIGUSR1", results)
    assert f"({stopped_at})" in log[len(first_run) :], job.tail()  # resumed there
    largest = assert_same_training(results, slurm_reference[0])
    print(
        f"job {job.id} stopped at {stopped_at} and was requeued {requeued_s:.1f} s after "
        f"SIGUSR1; largest difference {largest:g}"
    )


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


# --- mpirun ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mpirun_reference(mpirun, tmp_path_factory):
    results = tmp_path_factory.mktemp("mpirun_reference")
    started = time.monotonic()
    rc, log = finish(start_mpirun(job_env(results), results / "mpirun.log"), timeout=600)
    return results, rc, log, time.monotonic() - started


@pytest.mark.slow
def test_mpirun_trains_to_completion(mpirun_reference):
    results, rc, log, seconds = mpirun_reference
    assert rc == 0, log[-6000:]
    assert "2 worker(s), 2 replica(s) in sync, chief=True, cluster from mpi" in log
    assert (results / "model.weights.h5").is_file()
    print(f"mpirun -np 2: {seconds:.1f} s")


# Open MPI 4.1's mpirun forwards SIGUSR1 (and SIGUSR2) to the ranks as they are. SIGTERM and
# SIGINT make it abort the job: SIGCONT to the ranks, then SIGTERM after odls_base_sigkill_timeout
# seconds (default 1), then SIGKILL after as many more; the ranks need that long to stop.
MPIRUN_STOPS = {
    "SIGUSR1": ((), 75),
    "SIGTERM": (("--mca", "odls_base_sigkill_timeout", "5"), 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", sorted(MPIRUN_STOPS))
def test_mpirun_stopped_then_rerun_ends_with_the_uninterrupted_weights(
    tmp_path, mpirun_reference, signal_name
):
    """A signal to mpirun reaches both ranks; they stop at one step with a checkpoint; the same
    command again resumes there and ends with the uninterrupted run's weights."""
    mpirun_args, status = MPIRUN_STOPS[signal_name]
    results = tmp_path / "run"
    env = job_env(results)
    proc = start_mpirun(env, tmp_path / "first.log", *mpirun_args)
    try:
        wait_for_text(
            lambda: open(proc.log_file.name).read(),
            "Epoch: 1 Step: 50 ",
            alive=lambda: proc.poll() is None,
        )
        proc.send_signal(getattr(signal, signal_name))  # `kill -TERM <mpirun pid>`, ...
        signalled_at = time.monotonic()
        rc, log = finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stop_s = time.monotonic() - signalled_at
    assert rc == status, log[-6000:]
    stopped_at = assert_stopped_mid_training(log, signal_name, results)

    started = time.monotonic()
    rc, log = finish(start_mpirun(env, tmp_path / "again.log"), timeout=600)
    assert rc == 0, log[-6000:]
    assert f"({stopped_at})" in log, log[-6000:]  # "resumed from .../ckpt-N (...)"
    largest = assert_same_training(results, mpirun_reference[0])
    print(
        f"mpirun exited {stop_s:.1f} s after {signal_name} (status {status}), stopped at "
        f"{stopped_at}; the rerun took {time.monotonic() - started:.1f} s; largest difference "
        f"{largest:g}"
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
