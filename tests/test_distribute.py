"""Cluster discovery (runtime.cluster: TF_CONFIG / SLURM / MPI env dicts) and runtime.distribute.

`resolve_cluster` is a pure function of an environment dict, so every launcher layout and every
bad value is checked here without starting TensorFlow servers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from runtime.cluster import (
    ClusterError,
    ClusterSpec,
    expand_hostlist,
    expand_tasks_per_node,
    resolve_cluster,
)
from tests import replica_worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tf_config(cluster, task_type="worker", index=0):
    return {
        "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})
    }


# --- hostlists --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("node1", ["node1"]),
        ("a,b,c", ["a", "b", "c"]),
        ("gpu[01-03,7]", ["gpu01", "gpu02", "gpu03", "gpu7"]),
        ("n[1-2],m5,o[3-4,6,7-9]", ["n1", "n2", "m5", "o3", "o4", "o6", "o7", "o8", "o9"]),
        ("r[1-2]n[08-09]", ["r1n08", "r1n09", "r2n08", "r2n09"]),
        ("dgx-[009-011]-ib", ["dgx-009-ib", "dgx-010-ib", "dgx-011-ib"]),
        (" x[9-10] ", ["x9", "x10"]),
    ],
)
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize(
    "hostlist, message",
    [
        ("n[1-2", "unclosed"),
        ("n1-2]", "without"),
        ("n[[1]]", "nested"),
        ("a,,b", "empty host"),
        ("n[3-1]", "decreasing"),
        ("n[a-b]", "bad range"),
        ("n[1-2-3]", "bad range"),
    ],
)
def test_expand_hostlist_errors(hostlist, message):
    with pytest.raises(ClusterError, match=message):
        expand_hostlist(hostlist)


@pytest.mark.parametrize(
    "spec, nodes, counts",
    [
        ("8(x4)", 4, [8, 8, 8, 8]),
        ("2(x2),1", 3, [2, 2, 1]),
        ("3", 1, [3]),
    ],
)
def test_expand_tasks_per_node(spec, nodes, counts):
    assert expand_tasks_per_node(spec, nodes) == counts


def test_expand_tasks_per_node_errors():
    with pytest.raises(ClusterError, match="cannot parse"):
        expand_tasks_per_node("8(4)", 1)
    with pytest.raises(ClusterError, match="covers 2 nodes, the node list has 3"):
        expand_tasks_per_node("4(x2)", 3)


# --- no launcher ------------------------------------------------------------------------------


def test_local_when_no_launcher():
    spec = resolve_cluster({"HOME": "/root", "TF_CONFIG": "  "})
    assert spec == ClusterSpec()
    assert (spec.num_workers, spec.is_multi_worker, spec.is_chief, spec.rank) == (1, False, True, 0)


def test_cluster_parsing_imports_no_tensorflow():
    """main.py and runtime.lock ask "am I the chief?" before TensorFlow starts."""
    code = (
        "import sys, runtime.cluster; "
        "sys.exit(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# --- TF_CONFIG --------------------------------------------------------------------------------


def test_tf_config_workers():
    env = tf_config({"worker": ["h1:2222", "h1:2223", "h2:2222"]}, index=2)
    spec = resolve_cluster(env)
    assert spec.source == "tf_config"
    assert (spec.task_type, spec.task_index, spec.rank, spec.num_workers) == ("worker", 2, 2, 3)
    assert not spec.is_chief
    assert (spec.local_rank, spec.local_size) == (0, 1)
    assert spec.tf_config() == json.loads(env["TF_CONFIG"])
    assert resolve_cluster(tf_config({"worker": ["h1:1", "h1:2"]}, index=1)).local_rank == 1
    assert resolve_cluster(tf_config({"worker": ["h1:1", "h1:2"]}, index=0)).is_chief


def test_tf_config_with_chief():
    cluster = {"chief": ["c:1000"], "worker": ["w:1000", "w:1001"]}
    chief = resolve_cluster(tf_config(cluster, "chief", 0))
    worker0 = resolve_cluster(tf_config(cluster, "worker", 0))
    assert chief.is_chief and not worker0.is_chief
    assert (chief.rank, worker0.rank, chief.num_workers) == (0, 1, 3)


def test_tf_config_wins_over_slurm():
    env = {
        **tf_config({"worker": ["a:1", "b:1"]}, index=1),
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "8",
    }
    assert resolve_cluster(env).source == "tf_config"


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
        ('{"cluster": {"worker": ["a:1"]}}', "no 'task'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker"}}', "no 'task'"),
        (
            '{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
            r"unsupported job\(s\) \['ps'\]",
        ),
        (
            '{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
            "non-empty list",
        ),
        ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "non-empty list"),
        (
            '{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
            "is not 'host:port'",
        ),
        (
            '{"cluster": {"worker": ["a:x"]}, "task": {"type": "worker", "index": 0}}',
            "is not 'host:port'",
        ),
        (
            '{"cluster": {"chief": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}}',
            "exactly one",
        ),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "not a job"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
            r"out of range.*\(0..0\)",
        ),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}',
            "out of range",
        ),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": true}}',
            "out of range",
        ),
    ],
)
def test_tf_config_errors(text, message):
    with pytest.raises(ClusterError, match=message):
        resolve_cluster({"TF_CONFIG": text})


# --- SLURM ------------------------------------------------------------------------------------


def slurm(procid, ntasks, nodelist, per_node=None, localid=None, **extra):
    env = {
        "SLURM_PROCID": str(procid),
        "SLURM_NTASKS": str(ntasks),
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_JOB_ID": "42",
        **extra,
    }
    if per_node is not None:
        env["SLURM_STEP_TASKS_PER_NODE"] = per_node
    if localid is not None:
        env["SLURM_LOCALID"] = str(localid)
    return env


def test_slurm_4_nodes_8_tasks_each():
    # sbatch -N 4 --ntasks-per-node=8 + srun: rank 13 is the 6th task of the second node.
    env = slurm(13, 32, "dgx[01-04]", "8(x4)", localid=5, MASTER_PORT="20000")
    spec = resolve_cluster(env)
    assert spec.source == "slurm"
    assert spec.num_workers == 32 and spec.task_index == 13 and not spec.is_chief
    assert (spec.local_rank, spec.local_size) == (5, 8)
    workers = spec.jobs["worker"]
    assert workers[0] == "dgx01:20000" and workers[7] == "dgx01:20007"
    assert workers[13] == "dgx02:20005" and workers[31] == "dgx04:20007"


def test_slurm_step_variables_win_and_default_port():
    env = slurm(
        0,
        99,
        "ignored[1-9]",
        SLURM_STEP_NUM_TASKS="2",
        SLURM_STEP_NODELIST="a,b",
        SLURM_LOCALID="0",
    )
    spec = resolve_cluster(env)
    assert spec.jobs == {"worker": ("a:12345", "b:12345")}
    assert spec.is_chief and spec.local_size == 1


def test_slurm_uneven_tasks_per_node():
    spec = resolve_cluster(slurm(4, 5, "n[1-3]", "2(x2),1", localid=0))
    assert spec.jobs["worker"] == ("n1:12345", "n1:12346", "n2:12345", "n2:12346", "n3:12345")
    assert (spec.local_rank, spec.local_size) == (0, 1)


def test_slurm_without_tasks_per_node_divides_evenly():
    spec = resolve_cluster(slurm(3, 4, "n[1-2]"))
    assert spec.jobs["worker"][3] == "n2:12346" and spec.local_rank == 1


def test_slurm_single_task_is_local():
    assert resolve_cluster(slurm(0, 1, "n1")) == ClusterSpec()


@pytest.mark.parametrize(
    "env, message",
    [
        (slurm("x", 2, "a,b"), "SLURM_PROCID='x' is not an integer"),
        (slurm(-1, 2, "a,b"), "SLURM_PROCID=-1 must be >= 0"),
        (slurm(2, 2, "a,b"), "SLURM_PROCID=2 is not below SLURM_NTASKS=2"),
        (slurm(0, 0, "a,b"), "SLURM_NTASKS=0 must be >= 1"),
        (
            {"SLURM_PROCID": "0", "SLURM_NTASKS": "2"},
            "neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST",
        ),
        (slurm(0, 3, "a,b"), "3 tasks do not divide over 2 nodes"),
        (slurm(0, 4, "a,b", "3(x2)"), "add up to 6, not SLURM_NTASKS=4"),
        (slurm(0, 4, "a,b", "2(x3)"), "covers 3 nodes"),
        (
            slurm(3, 4, "a,b", "2(x2)", localid=0),
            "SLURM_LOCALID=0 but block layout gives local rank 1",
        ),
        (slurm(0, 2, "a[1-", "1(x2)"), "unclosed"),
        (slurm(0, 2, "a,b", MASTER_PORT="http"), "MASTER_PORT='http' is not an integer"),
        (slurm(0, 2, "a,b", MASTER_PORT="70000"), "not a TCP port"),
        (slurm(0, 16, "a,b", "8(x2)", MASTER_PORT="65530"), "exceeds 65535"),
    ],
)
def test_slurm_errors(env, message):
    with pytest.raises(ClusterError, match=message):
        resolve_cluster(env)


# --- MPI launchers ----------------------------------------------------------------------------


def ompi(rank, size, local_rank=None, local_size=None, **extra):
    env = {"OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(size), **extra}
    if local_rank is not None:
        env["OMPI_COMM_WORLD_LOCAL_RANK"] = str(local_rank)
    if local_size is not None:
        env["OMPI_COMM_WORLD_LOCAL_SIZE"] = str(local_size)
    return env


def test_ompi_one_node_uses_master_addr():
    spec = resolve_cluster(ompi(1, 4, 1, 4, MASTER_ADDR="10.0.0.5", MASTER_PORT="3000"))
    assert spec.source == "mpi"
    assert spec.jobs["worker"] == (
        "10.0.0.5:3000",
        "10.0.0.5:3001",
        "10.0.0.5:3002",
        "10.0.0.5:3003",
    )
    assert (spec.task_index, spec.local_rank, spec.local_size) == (1, 1, 4)


def test_ompi_one_node_defaults_to_localhost():
    assert resolve_cluster(ompi(0, 2)).jobs["worker"] == ("localhost:12345", "localhost:12346")


def test_ompi_several_nodes_with_worker_hosts():
    env = ompi(5, 8, 1, 4, WORKER_HOSTS="node[1-2]", MASTER_ADDR="node1")
    spec = resolve_cluster(env)
    assert spec.jobs["worker"][5] == "node2:12346" and spec.local_rank == 1 and not spec.is_chief


def test_pmi_mpich():
    env = {
        "PMI_RANK": "3",
        "PMI_SIZE": "4",
        "MPI_LOCALRANKID": "1",
        "MPI_LOCALNRANKS": "2",
        "WORKER_HOSTS": "a,b",
    }
    spec = resolve_cluster(env)
    assert spec.jobs["worker"] == ("a:12345", "a:12346", "b:12345", "b:12346")
    assert (spec.task_index, spec.local_rank) == (3, 1)


def test_mpi_single_rank_is_local():
    assert resolve_cluster(ompi(0, 1)) == ClusterSpec()
    assert resolve_cluster({"PMI_RANK": "0", "PMI_SIZE": "1"}) == ClusterSpec()


@pytest.mark.parametrize(
    "env, message",
    [
        (ompi(0, 8, 0, 4), "set WORKER_HOSTS to the node list"),
        (ompi(4, 4), "OMPI_COMM_WORLD_RANK=4 is not below OMPI_COMM_WORLD_SIZE=4"),
        ({"OMPI_COMM_WORLD_RANK": "0"}, "OMPI_COMM_WORLD_SIZE is not set"),
        (ompi(0, 6, 0, 2, WORKER_HOSTS="a,b,c,d"), "do not divide over WORKER_HOSTS' 4 nodes"),
        (ompi(0, 4, 0, 2, WORKER_HOSTS="a,b", MASTER_ADDR="b"), "is not the first node 'a'"),
        (
            ompi(3, 4, 0, 2, WORKER_HOSTS="a,b"),
            "OMPI_COMM_WORLD_LOCAL_RANK=0 but block layout gives local rank 1",
        ),
        ({"PMI_RANK": "0", "PMI_SIZE": "two"}, "PMI_SIZE='two' is not an integer"),
        (ompi(0, 2, MASTER_PORT="0"), "MASTER_PORT=0 must be >= 1"),
    ],
)
def test_mpi_errors(env, message):
    with pytest.raises(ClusterError, match=message):
        resolve_cluster(env)


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
    # One place decides who is chief: no strategy-based duplicates, no side table of options.
    for gone in ("is_chief", "num_workers", "worker_index", "_FP16_COMPRESSION"):
        assert not hasattr(distribute, gone), gone


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


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `code` in the shared two-replica worker, or in a fresh process with `env` added."""
    if env is None:
        return replica_worker.run(code)
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TF_CONFIG", "SLURM_", "OMPI_", "PMI_"))
    }
    full_env.update(
        {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO, **(env or {})}
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_create_strategy_on_cpu():
    result = run_python("""
        import dataclasses
        import json
        import tensorflow as tf
        from runtime import distribute as d
        from runtime.cluster import ClusterError
        default = d.create_strategy()
        mirrored = d.create_strategy(cpu_replicas=2, fp16_compression=True)
        grads = [tf.ones([2]), None, tf.ones([1], tf.int32)]
        out = {
            "default": [type(default.strategy).__name__, default.num_replicas, default.is_chief,
                        default.num_workers, default.global_batch_size(16, 2)],
            "mirrored": [type(mirrored.strategy).__name__, mirrored.num_replicas,
                         mirrored.is_chief, mirrored.global_batch_size(16, 2)],
            "compressed": [None if g is None else g.dtype.name
                           for g in d.compress_gradients(grads, mirrored)],
            "uncompressed": [g.dtype.name for g in d.compress_gradients(grads[:1], default)],
            # The option lives on the Distribution, not on the strategy it wraps.
            "option_off": [g.dtype.name for g in d.compress_gradients(
                grads[:1], dataclasses.replace(mirrored, fp16_compression=False))],
            "write_dir": d.checkpoint_write_dir("/m/ckpt", mirrored),
        }
        # runtime.step's step with float16 all-reduce vs one device: equal to fp16 precision.
        import numpy as np
        from tests.train_fixtures import batch, build_trainer
        images, labels = batch(8)
        single, compressed = build_trainer(), build_trainer(mirrored)
        single[3]((images, labels))
        halves = [mirrored.strategy.experimental_distribute_values_from_function(
            lambda ctx, a=a: a[4 * ctx.replica_id_in_sync_group:][:4]) for a in (images, labels)]
        compressed[3](tuple(halves))
        out["fp16_max_diff"] = max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in
                                   zip(single[0].weights, compressed[0].weights))
        out["fp16_moved"] = max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in
                                zip(single[0].weights, build_trainer()[0].weights))
        for bad in ({"all_reduce": "tree"}, {"num_gpus": 1}, {"num_gpus": -1},
                    {"cpu_replicas": 0}, {"cpu_replicas": 3}):
            try:
                d.create_strategy(**bad)
            except ClusterError as err:
                out[str(bad)] = str(err)
        print(json.dumps(out))
    """)
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
        """
        from runtime import distribute as d
        from runtime.cluster import ClusterError
        try:
            d.create_strategy()
        except ClusterError as err:
            print("ERR", err)
    """,
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
    result = run_python(
        """
        from runtime import distribute as d
        d.create_strategy(num_gpus=0, startup_timeout_s=3)
        print("STRATEGY CREATED")
    """,
        env=env,
    )
    # SIGKILL from the watchdog process: TF blocks the interpreter and swallows SIGTERM here.
    assert result.returncode == -9, result.stderr[-3000:]
    assert "STRATEGY CREATED" not in result.stdout
    assert (
        "main.py: error: multi-worker startup: not all 2 workers joined within 3s" in result.stderr
    )
    assert f"peers 127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}" in result.stderr
    assert time.monotonic() - started < 90


def test_watchdog_kills_its_parent_with_one_line_and_leaves_when_the_parent_is_gone(
    tmp_path, capsys, monkeypatch
):
    from runtime import watchdog

    parent = (
        "import os, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-m', 'runtime.watchdog', str(os.getpid()), '0.5',"
        f" 'main.py: error: too slow'], cwd={REPO!r})\n"
        "time.sleep(60)\n"
        "print('NOT KILLED')\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", parent], cwd=tmp_path, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == -9 and result.stdout == ""
    assert result.stderr == "main.py: error: too slow\n"
    assert time.monotonic() - started < 30
    # The watched process is no longer its parent (it ended): it returns at once, silently.
    kills = []
    monkeypatch.setattr(os, "kill", lambda *args: kills.append(args))
    started = time.monotonic()
    watchdog.watch(os.getpid(), 60.0, "never written")
    assert time.monotonic() - started < 5
    assert kills == [] and capsys.readouterr().err == ""


def test_fp16_all_reduce_is_scale_aware_in_both_precisions():
    """A bare float16 cast overflowed the *sum* of loss-scaled gradients (x32768 under AMP: each
    replica's float16 gradient fits, two of them near the top do not: inf, a skipped step) and
    flushed small float32 gradients to zero; the scaled all-reduce keeps both."""
    result = run_python("""
        import json
        import keras
        import numpy as np
        import tensorflow as tf
        from runtime import distribute as d
        from tests.train_fixtures import batch, build_trainer

        mirrored = d.create_strategy(cpu_replicas=2, fp16_compression=True)

        @tf.function
        def reduce(values):
            return mirrored.strategy.run(lambda g: d.all_reduce_gradients([g], mirrored)[0],
                                         args=(values,))

        def summed(r0, r1):
            values = mirrored.strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.constant([r0, r1][ctx.replica_id_in_sync_group], tf.float32))
            return mirrored.strategy.experimental_local_results(reduce(values))[0].numpy().tolist()

        out = {
            "amp": summed([40000.0, -30000.0, 1.5], [40000.0, 20000.0, 2.5]),
            "small": summed([1e-9, 3e-10], [2e-9, -1e-10]),
            "nonfinite": summed([float("inf"), 1.0], [1.0, 1.0]),
            "zeros": summed([0.0, 0.0], [0.0, 0.0]),
        }
        # One AMP training step (dynamic loss scale 32768): 2 replicas with the float16
        # all-reduce take the same step as one device.
        keras.mixed_precision.set_global_policy("mixed_float16")
        images, labels = batch(8)
        single, compressed = build_trainer(loss_scaling=True), build_trainer(mirrored, loss_scaling=True)
        start = [w.numpy() for w in single[0].weights]
        single[3]((images, labels))
        halves = [mirrored.strategy.experimental_distribute_values_from_function(
            lambda ctx, a=a: a[4 * ctx.replica_id_in_sync_group:][:4]) for a in (images, labels)]
        compressed[3](tuple(halves))
        out["amp_moved"] = max(float(np.max(np.abs(a - b.numpy())))
                               for a, b in zip(start, compressed[0].weights))
        out["amp_diff"] = max(float(np.max(np.abs(a.numpy() - b.numpy()))) / max(
            float(np.max(np.abs(a.numpy() - s))), 1e-12)
            for a, b, s in zip(single[0].weights, compressed[0].weights, start))
        print(json.dumps(out))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["amp"], [80000.0, -10000.0, 4.0], rtol=2e-3, atol=80000 * 1e-3)
    np.testing.assert_allclose(out["small"], [3e-9, 2e-10], rtol=2e-3)
    assert not np.isfinite(out["nonfinite"][0])
    assert out["zeros"] == [0.0, 0.0]
    assert out["amp_moved"] > 0, "the float16 all-reduce overflowed and the step was skipped"
    assert out["amp_diff"] < 1e-2
