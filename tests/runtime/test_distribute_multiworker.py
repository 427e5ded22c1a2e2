"""Multi-worker training on CPU: worker processes on 127.0.0.1 with TF_CONFIG.

CI (three TensorFlow processes each; 5-50 s on the shared 2-core box, depending on load):
- runtime.step's step under MultiWorkerMirroredStrategy (2 processes,
  tests/helpers/programs/multiworker_driver.py) gives the same weights as one device with the
  whole batch;
- a worker killed with SIGKILL makes the other exit within seconds with a one-line message.

Slow (`-m slow`), through `python main.py`:
- two workers end with the same weights, optimizer slots and BN statistics as one process with
  MirroredStrategy over two logical CPU replicas (tests/helpers/programs/two_replica_main.py):
  the same global batch (2 x 4), the same LR;
- after a worker is killed mid-epoch, running the same commands again resumes from the last
  checkpoint on every worker and finishes the run;
- the same on TFRecord shards (seeded, so the data are comparable), ending with the weights of
  an uninterrupted 2-worker run;
- SIGTERM to one worker stops both at one step with a checkpoint (runtime/preemption.py); the
  same commands again end with the uninterrupted run's values.

Synthetic data repeats one seeded batch per replica and dropout / stochastic depth are off, so
the main.py runs are deterministic and comparable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from tests.helpers.checkpoint_state import STOP_LINE, assert_same_values, checkpoint_values
from tests.helpers.data_fixtures import write_tfrecords
from tests.helpers.processes import cpu_env, finish, free_ports, start_logged, wait_for_text
from tests.helpers.tiny_run import TINY_MPARAMS, TWO_BLOCKS

MPARAMS = TINY_MPARAMS + ",dropout_rate=0.0,drop_connect_rate=0.0"


def train_args(model_dir, *extra: str) -> list[str]:
    return [
        "--cfg",
        "config/efficientnet_v2/s_cfg.py",
        "--mparams",
        MPARAMS,
        "--mode",
        "train",
        "--dataset",
        "synthetic",
        "--model_dir",
        str(model_dir),
        "--seed",
        "7",
        "--no-use_xla",
        "--num_gpus",
        "0",
        "--train_batch_size",
        "4",
        "--lr_init",
        "0.5",
        "--lr_warmup_epochs",
        "0",
        "--optimizer",
        "momentum",
        "--save_checkpoint_freq",
        "1",
        *extra,
    ]


def start(argv: list[str], log_path, env: dict[str, str]) -> subprocess.Popen:
    return start_logged([sys.executable, *argv], log_path, env)


def start_workers(
    ports: list[int], argv: Callable[[int], list[str]], tmp_path, tag: str
) -> list[subprocess.Popen]:
    """One process per port with TF_CONFIG naming all of them; `argv(index)` is its command."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(len(ports)):
        env = {
            **cpu_env(),
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        }
        procs.append(start(argv(index), tmp_path / f"{tag}_worker{index}.log", env))
    return procs


def kill_when(ready: Callable[[], bool], workers: list[subprocess.Popen], timeout: float):
    """Once `ready()`, SIGKILL worker 1; returns worker 0's (exit status, log, seconds to exit)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert all(p.poll() is None for p in workers), "a worker exited before the kill"
        assert time.monotonic() < deadline, f"not ready after {timeout} s"
        time.sleep(0.1)
    workers[1].kill()
    killed_at = time.monotonic()
    rc, log = finish(workers[0], timeout=60)
    detected_after = time.monotonic() - killed_at
    finish(workers[1], timeout=10)
    assert detected_after < 30, f"the surviving worker took {detected_after:.1f}s to fail"
    return rc, log, detected_after


def summary(model_dir) -> dict:
    with open(os.path.join(model_dir, "log.json")) as f:
        records = [json.loads(line[len("DLLL ") :]) for line in f if line.startswith("DLLL ")]
    return [r for r in records if r.get("step") == []][-1]["data"]


def test_two_worker_steps_equal_one_device_steps(tmp_path):
    """runtime.step's step under MultiWorkerMirroredStrategy (2 processes x batch 4) equals the
    same step on one device with batch 8 (BN-free model: every variable must match)."""
    procs = start_workers(
        free_ports(2),
        lambda i: [
            "-m",
            "tests.helpers.programs.multiworker_driver",
            str(tmp_path / f"w{i}.npz"),
            "3",
        ],
        tmp_path,
        "step",
    )
    procs.append(
        start(
            ["-m", "tests.helpers.programs.multiworker_driver", str(tmp_path / "one.npz"), "3"],
            tmp_path / "one.log",
            cpu_env(),
        )
    )
    for proc in procs:
        rc, log = finish(proc, timeout=120)
        assert rc == 0, log[-3000:]
    one = np.load(tmp_path / "one.npz")
    assert len(one.files) >= 4
    for name in ("w0.npz", "w1.npz"):
        worker = np.load(tmp_path / name)
        assert worker.files == one.files
        for key in one.files:
            np.testing.assert_allclose(worker[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_killed_worker_makes_the_other_fail_fast(tmp_path):
    procs = start_workers(
        free_ports(2),
        lambda i: [
            "-m",
            "tests.helpers.programs.multiworker_driver",
            str(tmp_path / f"w{i}.npz"),
            "100000",
            "0.05",
        ],
        tmp_path,
        "kill",
    )
    log1 = tmp_path / "kill_worker1.log"
    rc, log, _ = kill_when(lambda: "step 3" in log1.read_text(), procs, timeout=100)
    assert rc == 1, log[-3000:]
    assert "driver: error: a worker of the multi-worker job failed or stopped responding" in log
    assert "/job:worker/replica:0/task:1" in log.splitlines()[-1]


@pytest.mark.slow
def test_two_workers_match_one_process_with_the_same_global_batch(tmp_path):
    workers_dir, single_dir = tmp_path / "workers", tmp_path / "single"

    def args(model_dir):
        return train_args(model_dir, "--max_epochs", "2", "--steps_per_epoch", "2")

    started = time.monotonic()
    workers = start_workers(
        free_ports(2), lambda i: ["main.py", *args(workers_dir)], tmp_path, "run"
    )
    single = start(
        ["-m", "tests.helpers.programs.two_replica_main", *args(single_dir)],
        tmp_path / "single.log",
        cpu_env(),
    )
    results = [finish(p, timeout=240) for p in (*workers, single)]
    for rc, log in results:
        assert rc == 0, log[-3000:]
    assert "2 worker(s), 2 replica(s) in sync, chief=True" in results[0][1]
    assert "1 worker(s), 2 replica(s) in sync" in results[2][1]

    final = os.path.join("checkpoints", "ckpt-4")  # numbered by the global step
    ours, reference = (
        checkpoint_values(str(workers_dir / final)),
        checkpoint_values(str(single_dir / final)),
    )
    assert ours.keys() == reference.keys()
    compared = 0
    for name, value in reference.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
            compared += value.size
        else:
            assert np.array_equal(ours[name], value), name
    assert compared > 30_000  # every weight, optimizer slot and BN statistic
    # Training moved the weights by far more than the tolerance.
    first = checkpoint_values(str(workers_dir / "checkpoints" / "ckpt-2"))
    moved = max(float(np.max(np.abs(first[k] - v))) for k, v in ours.items() if v.dtype.kind == "f")
    assert moved > 1e-3
    # Only the chief keeps files: no per-worker temporary checkpoint directory is left behind.
    assert sorted(os.listdir(workers_dir / "checkpoints")) == sorted(
        os.listdir(single_dir / "checkpoints")
    )
    assert summary(workers_dir)["global_step"] == summary(single_dir)["global_step"] == 4
    print(f"3 processes in {time.monotonic() - started:.1f}s")


@pytest.mark.slow
def test_killed_worker_fails_fast_and_the_same_command_resumes(tmp_path):
    model_dir = tmp_path / "run"
    # Long enough epochs that worker 1 dies in the middle of epoch 2.
    args = train_args(model_dir, "--max_epochs", "3", "--steps_per_epoch", "60")
    ports = free_ports(2)
    workers = start_workers(ports, lambda i: ["main.py", *args], tmp_path, "first")
    index = model_dir / "checkpoints" / "checkpoint"  # rewritten last, once ckpt-60 is complete

    def first_checkpoint_done() -> bool:
        return index.exists() and '"ckpt-60"' in index.read_text()

    rc, log, detected_after = kill_when(first_checkpoint_done, workers, timeout=180)
    assert rc == 1, log[-3000:]
    assert "main.py: error: a worker of the multi-worker job failed or stopped responding" in log
    assert "restart the same command on every worker" in log
    assert not (model_dir / "checkpoints" / "ckpt-180.index").exists()

    # The same commands again: every worker restores epoch 1 and training completes.
    workers = start_workers(ports, lambda i: ["main.py", *args], tmp_path, "again")
    results = [finish(p, timeout=240) for p in workers]
    for rc, log in results:
        assert rc == 0, log[-3000:]
        assert "ckpt-60 (end of epoch 1)" in log, log[-3000:]
    assert (model_dir / "checkpoints" / "ckpt-180.index").exists()
    assert summary(model_dir)["global_step"] == 180
    print(f"surviving worker failed {detected_after:.1f}s after the kill")


@pytest.mark.slow
def test_killed_run_on_tfrecords_resumes_to_the_uninterrupted_weights(tmp_path):
    """Before: rerunning the workers of an interrupted run on TFRecords, the chief died with
    "Collective ops must be configured at program startup" (the resume check had read the
    shards through tf.data before the strategy existed) and its peer waited 300 s."""
    data_dir = tmp_path / "shards"
    write_tfrecords(str(data_dir), "train", [[i % 10 for i in range(30)]] * 2)
    write_tfrecords(str(data_dir), "validation", [list(range(10))])
    reference_dir, model_dir = tmp_path / "uninterrupted", tmp_path / "run"

    def args(run_dir):
        return train_args(
            run_dir,
            *("--mparams", f"{MPARAMS},{TWO_BLOCKS}", "--dataset", "imagenet"),
            *("--data_dir", str(data_dir), "--augmenter_name", "none"),
            *("--max_epochs", "3", "--steps_per_epoch", "20"),
        )

    started = time.monotonic()
    reference = start_workers(
        free_ports(2), lambda i: ["main.py", *args(reference_dir)], tmp_path, "ref"
    )
    ports = free_ports(2)
    workers = start_workers(ports, lambda i: ["main.py", *args(model_dir)], tmp_path, "first")
    index = model_dir / "checkpoints" / "checkpoint"
    rc, log, _ = kill_when(
        lambda: index.exists() and '"ckpt-20"' in index.read_text(), workers, timeout=300
    )
    assert rc == 1, log[-3000:]
    assert not (model_dir / "checkpoints" / "ckpt-40.index").exists()

    workers = start_workers(ports, lambda i: ["main.py", *args(model_dir)], tmp_path, "again")
    for rc, log in [finish(p, timeout=300) for p in (*workers, *reference)]:
        assert rc == 0, log[-3000:]
    for worker in range(2):
        log = (tmp_path / f"again_worker{worker}.log").read_text()
        assert "ckpt-20 (end of epoch 1)" in log and "checking the labels" in log, log[-3000:]

    final = os.path.join("checkpoints", "ckpt-60")  # numbered by the global step
    ours = checkpoint_values(str(model_dir / final))
    expected = checkpoint_values(str(reference_dir / final))
    assert ours.keys() == expected.keys()
    for name, value in expected.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            assert np.array_equal(ours[name], value), name
    first = checkpoint_values(str(model_dir / "checkpoints" / "ckpt-20"))
    moved = max(float(np.max(np.abs(first[k] - v))) for k, v in ours.items() if v.dtype.kind == "f")
    assert moved > 1e-3  # epochs 2-3 moved the weights far beyond the tolerance
    assert summary(model_dir)["global_step"] == summary(reference_dir)["global_step"] == 60
    print(f"3 runs of 2 workers in {time.monotonic() - started:.1f}s")


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_one_step_and_the_rerun_matches(tmp_path):
    """SIGTERM to the non-chief worker only: both finish their step, save a checkpoint at the
    same step (PreemptionCheckpointHandler aligns them) and exit 75 with one line each, the
    lock released; the same commands again end with the uninterrupted run's values, bit for
    bit. Before: a multi-worker process ignored SIGTERM (TF's preemption notifier took it)."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"

    def args(model_dir):
        # The bundled digits (data order matters), a checkpoint per epoch, logs every 10 steps.
        return [
            "main.py",
            *train_args(model_dir, "--max_epochs", "2", "--steps_per_epoch", "40"),
            *("--dataset", "digits", "--log_steps", "10", "--moving_average_decay", "0.9"),
        ]

    ports = free_ports(2)
    for rc, log in [
        finish(p, 300) for p in start_workers(ports, lambda i: args(reference), tmp_path, "ref")
    ]:
        assert rc == 0, log[-3000:]
    workers = start_workers(ports, lambda i: args(resumed), tmp_path, "first")
    chief_log = tmp_path / "first_worker0.log"
    wait_for_text(
        chief_log.read_text,
        "Epoch: 2 Step: 10 ",
        alive=lambda: all(p.poll() is None for p in workers),
        timeout=240,
    )
    workers[1].send_signal(signal.SIGTERM)
    sent = time.monotonic()
    results = [finish(p, timeout=120) for p in workers]
    stop_s = time.monotonic() - sent
    lines = []
    for rc, log in results:
        assert rc == 75, log[-3000:]
        lines += [line for line in log.splitlines() if line.startswith("main.py:")]
    assert len(lines) == 2, lines
    (chief_by, chief_epoch, chief_step, chief_path), (worker_by, *worker_stop) = (
        STOP_LINE.fullmatch(line).groups() for line in lines
    )
    assert chief_epoch == "2"
    chief_at = f"epoch {chief_epoch} step {chief_step}"
    worker_at = "epoch {} step {}".format(*worker_stop[:2])
    worker_path = worker_stop[2]
    assert (chief_by, worker_by) == ("a signal to another worker", "SIGTERM")
    assert (
        chief_at == worker_at
        and chief_path == worker_path
        and os.path.exists(chief_path + ".index")
    )
    assert not (resumed / "train.lock").exists()
    assert stop_s < 60

    workers = start_workers(ports, lambda i: args(resumed), tmp_path, "again")
    for rc, log in [finish(p, timeout=300) for p in workers]:
        assert rc == 0, log[-3000:]
        assert f"({chief_at})" in log, log[-3000:]  # resumed at that step
    final = os.path.join("checkpoints", "ckpt-80")
    assert_same_values(str(resumed / final), str(reference / final))
    print(f"both workers exited 75 {stop_s:.1f} s after SIGTERM, stopped at {chief_at}")
