"""runtime/distribute.py: the Distribution every mode reads, the strategies (two logical CPU
replicas, a TF_CONFIG cluster: in another process) and the float16 all-reduce."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time

import numpy as np
import pytest

from runtime.cluster import ClusterSpec, resolve_cluster
from tests.helpers import ROOT, replica_worker
from tests.helpers.cluster_env import tf_config
from tests.helpers.processes import cpu_env, program
from tests.helpers.programs import distribute_checks

# --- Distribution: the one object every mode reads ---------------------------------------------


def test_distribution_takes_chief_rank_and_workers_from_its_cluster_spec(tmp_path):
    import tensorflow as tf

    from runtime import distribute

    cluster = {"chief": ["c:1000"], "worker": ["w:1000", "w:1001"]}
    strategy = tf.distribute.get_strategy()
    chief = distribute.Distribution(strategy, resolve_cluster(tf_config(cluster, "chief", 0)))
    worker = distribute.Distribution(strategy, resolve_cluster(tf_config(cluster, "worker", 1)))
    assert (chief.is_chief, chief.rank, chief.num_workers) == (True, 0, 3)
    assert (worker.is_chief, worker.rank, worker.num_workers) == (False, 2, 3)
    assert distribute.checkpoint_write_dir("/m/ckpt", chief) == "/m/ckpt"
    assert distribute.checkpoint_write_dir("/m/ckpt", worker) == "/m/ckpt/.workertemp_2"
    (tmp_path / ".workertemp_2").mkdir()
    distribute.remove_worker_write_dir(str(tmp_path), chief)
    assert (tmp_path / ".workertemp_2").is_dir()
    distribute.remove_worker_write_dir(str(tmp_path), worker)
    assert not (tmp_path / ".workertemp_2").exists()
    assert distribute.chief_or_temp_dir(str(tmp_path), chief) == str(tmp_path)
    assert os.path.basename(distribute.chief_or_temp_dir(str(tmp_path), worker)).startswith(
        "worker2_"
    )
    # Without a Distribution (tests, TrainingCheckpoint(dist=None)): the environment's cluster.
    current = distribute.Distribution.current(tf_config({"worker": ["a:1", "b:1"]}, index=1))
    assert current.strategy is strategy
    assert (current.is_chief, current.rank, current.num_workers) == (False, 1, 2)
    assert distribute.Distribution.current({}).cluster == ClusterSpec()


def test_distribution_is_frozen_and_carries_fp16_compression():
    import tensorflow as tf

    from runtime import distribute

    strategy = tf.distribute.get_strategy()
    dist = distribute.Distribution(strategy, ClusterSpec(), fp16_compression=True)
    for field, value in (
        ("fp16_compression", False),
        ("cluster", ClusterSpec()),
        ("strategy", None),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(dist, field, value)
    assert dist.fp16_compression and dist.num_replicas == 1
    assert not dist.compresses_gradients  # one replica: nothing to all-reduce
    assert [g.dtype.name for g in distribute.compress_gradients([tf.ones([2])], dist)] == [
        "float32"
    ]
    assert dist.global_batch_size(16) == 16 and dist.global_batch_size(16, 4) == 64
    assert not distribute.Distribution(strategy).fp16_compression


# --- strategies (another process: logical devices must be set before TF starts) --------------


def run_python(check, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `check` (a function of distribute_checks) in the shared two-replica worker, or in a
    fresh process with `env` added."""
    if env is None:
        return replica_worker.run(check)
    return subprocess.run(
        program("distribute_checks", check.__name__),
        env=cpu_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_create_strategy_on_cpu():
    result = run_python(distribute_checks.create_strategy_on_cpu)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["default"] == ["_DefaultDistributionStrategy", 1, True, 1, 32]
    assert out["mirrored"] == ["MirroredStrategy", 2, True, 64]
    assert out["compressed"] == ["float16", None, "int32"]
    assert out["uncompressed"] == ["float32"]
    assert out["option_off"] == ["float32"]
    assert out["write_dir"] == "/m/ckpt"
    assert out["fp16_max_diff"] < 1e-3 < out["fp16_moved"]
    assert "is not one of auto, nccl, ring" in out[str({"all_reduce": "tree"})]
    assert "num_gpus=1 but this process sees 0 GPU(s)" in out[str({"num_gpus": 1})]
    assert "must be >= 0" in out[str({"num_gpus": -1})]
    assert "cpu_replicas=0 must be >= 1" in out[str({"cpu_replicas": 0})]
    assert "before TensorFlow initializes" in out[str({"cpu_replicas": 3})]


def test_create_strategy_rejects_bad_environment():
    result = run_python(
        distribute_checks.create_strategy_from_environment,
        env={
            "TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}'
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERR TF_CONFIG task index 3 is out of range" in result.stdout


def test_missing_worker_fails_at_startup_instead_of_hanging():
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        ports = [a.getsockname()[1], b.getsockname()[1]]
    # Worker 1 is never started: worker 0 must give up after startup_timeout_s.
    env = tf_config({"worker": [f"127.0.0.1:{p}" for p in ports]}, index=0)
    started = time.monotonic()
    result = run_python(distribute_checks.create_strategy_with_startup_timeout, env=env)
    # SIGKILL from the watchdog process: TF blocks the interpreter and swallows SIGTERM here.
    assert result.returncode == -9, result.stderr[-3000:]
    assert "STRATEGY CREATED" not in result.stdout
    assert (
        "main.py: error: multi-worker startup: not all 2 workers joined within 3s" in result.stderr
    )
    assert f"peers 127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}" in result.stderr
    assert time.monotonic() - started < 90


def test_multi_worker_strategy_after_tensorflow_started_names_the_cause():
    """TF's own refusal ("Collective ops must be configured at program startup") does not say
    that an op ran too early; tests/runtime/test_lock.py checks that the pre-run checks run none."""
    import tensorflow as tf

    from runtime import compat, distribute

    tf.add(1, 1)
    assert compat.runtime_started()
    with pytest.raises(RuntimeError, match="runtime started before the MultiWorkerMirrored"):
        distribute.create_strategy(num_gpus=0, environ=tf_config({"worker": ["a:1", "b:1"]}))


def test_fp16_all_reduce_is_scale_aware_in_both_precisions():
    """A bare float16 cast overflowed the *sum* of loss-scaled gradients (x32768 under AMP: each
    replica's float16 gradient fits, two of them near the top do not: inf, a skipped step) and
    flushed small float32 gradients to zero; the scaled all-reduce keeps both."""
    result = run_python(distribute_checks.fp16_all_reduce)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["amp"], [80000.0, -10000.0, 4.0], rtol=2e-3, atol=80000 * 1e-3)
    np.testing.assert_allclose(out["small"], [3e-9, 2e-10], rtol=2e-3)
    assert not np.isfinite(out["nonfinite"][0])
    assert out["zeros"] == [0.0, 0.0]
    assert out["amp_moved"] > 0, "the float16 all-reduce overflowed and the step was skipped"
    assert out["amp_diff"] < 1e-2
