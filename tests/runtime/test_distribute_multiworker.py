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
  an uninterrupted 2-worker run.

Synthetic data repeats one seeded batch per replica and dropout / stochastic depth are off, so
the main.py runs are deterministic and comparable.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from tests.helpers import ROOT
from tests.helpers.data_fixtures import write_tfrecords
from tests.helpers.processes import cpu_env
from tests.helpers.tiny_run import TINY_MPARAMS, TWO_BLOCKS

MPARAMS = TINY_MPARAMS + ",dropout_rate=0.0,drop_connect_rate=0.0"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


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
    log = open(log_path, "w")  # noqa: SIM115 - closed by `finish`
    proc = subprocess.Popen(
        [sys.executable, *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    proc.log_file = log
    return proc


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


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.log_file.close()
    with open(proc.log_file.name) as f:
        return proc.returncode, f.read()


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


def checkpoint_values(prefix: str) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(prefix)
        if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
    }


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

    final = os.path.join("checkpoints", "ckpt-2")
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
    first = checkpoint_values(str(workers_dir / "checkpoints" / "ckpt-1"))
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
    index = model_dir / "checkpoints" / "checkpoint"  # rewritten last, once ckpt-1 is complete

    def first_checkpoint_done() -> bool:
        return index.exists() and '"ckpt-1"' in index.read_text()

    rc, log, detected_after = kill_when(first_checkpoint_done, workers, timeout=180)
    assert rc == 1, log[-3000:]
    assert "main.py: error: a worker of the multi-worker job failed or stopped responding" in log
    assert "restart the same command on every worker" in log
    assert not (model_dir / "checkpoints" / "ckpt-3.index").exists()

    # The same commands again: every worker restores epoch 1 and training completes.
    workers = start_workers(ports, lambda i: ["main.py", *args], tmp_path, "again")
    results = [finish(p, timeout=240) for p in workers]
    for rc, log in results:
        assert rc == 0, log[-3000:]
        assert "ckpt-1 (epoch 1)" in log, log[-3000:]
    assert (model_dir / "checkpoints" / "ckpt-3.index").exists()
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
        lambda: index.exists() and '"ckpt-1"' in index.read_text(), workers, timeout=300
    )
    assert rc == 1, log[-3000:]
    assert not (model_dir / "checkpoints" / "ckpt-2.index").exists()

    workers = start_workers(ports, lambda i: ["main.py", *args(model_dir)], tmp_path, "again")
    for rc, log in [finish(p, timeout=300) for p in (*workers, *reference)]:
        assert rc == 0, log[-3000:]
    for worker in range(2):
        log = (tmp_path / f"again_worker{worker}.log").read_text()
        assert "ckpt-1 (epoch 1)" in log and "checking the labels" in log, log[-3000:]

    final = os.path.join("checkpoints", "ckpt-3")
    ours = checkpoint_values(str(model_dir / final))
    expected = checkpoint_values(str(reference_dir / final))
    assert ours.keys() == expected.keys()
    for name, value in expected.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            assert np.array_equal(ours[name], value), name
    first = checkpoint_values(str(model_dir / "checkpoints" / "ckpt-1"))
    moved = max(float(np.max(np.abs(first[k] - v))) for k, v in ours.items() if v.dtype.kind == "f")
    assert moved > 1e-3  # epochs 2-3 moved the weights far beyond the tolerance
    assert summary(model_dir)["global_step"] == summary(reference_dir)["global_step"] == 60
    print(f"3 runs of 2 workers in {time.monotonic() - started:.1f}s")
