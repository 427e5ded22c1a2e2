"""runtime/cluster.py: cluster discovery from TF_CONFIG / SLURM / MPI environment dicts.

`resolve_cluster` is a pure function of an environment dict, so every launcher layout and every
bad value is checked here without starting TensorFlow servers.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from runtime.cluster import (
    ClusterError,
    ClusterSpec,
    expand_hostlist,
    expand_tasks_per_node,
    resolve_cluster,
)
from tests.helpers import ROOT
from tests.helpers.cluster_env import tf_config
from tests.helpers.processes import program

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
    assert (
        subprocess.run(
            program("imports_without_tensorflow", "runtime.cluster"), cwd=ROOT
        ).returncode
        == 0
    )


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
    """The environment of task `procid` of an srun job step (SLURM_STEP_ID is srun's)."""
    env = {
        "SLURM_PROCID": str(procid),
        "SLURM_NTASKS": str(ntasks),
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_JOB_ID": "42",
        "SLURM_STEP_ID": "0",
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


def test_a_batch_script_without_srun_is_one_process():
    """What the batch shell of `sbatch --ntasks-per-node=8` sees (slurm-wlm 22.05): rank 0 of
    8 tasks, but no job step. Before: `python main.py` run there took itself for rank 0 of an
    8-worker cluster and waited 300 s for peers that never start."""
    batch_shell = slurm(0, 8, "vm", SLURM_TASKS_PER_NODE="8", SLURM_LOCALID="0")
    del batch_shell["SLURM_STEP_ID"]
    assert resolve_cluster(batch_shell) == ClusterSpec()
    step = {**batch_shell, "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8"}
    assert resolve_cluster(step).num_workers == 8


@pytest.mark.parametrize(
    "env, message",
    [
        (slurm("x", 2, "a,b"), "SLURM_PROCID='x' is not an integer"),
        (slurm(-1, 2, "a,b"), "SLURM_PROCID=-1 must be >= 0"),
        (slurm(2, 2, "a,b"), "SLURM_PROCID=2 is not below SLURM_NTASKS=2"),
        (slurm(0, 0, "a,b"), "SLURM_NTASKS=0 must be >= 1"),
        (
            {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"},
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
