"""Distribution: cluster discovery (TF_CONFIG / SLURM / MPI launchers) and tf.distribute strategies.

The one place in the application that knows about tf.distribute (STYLE.md, "framework-specific
distribution code lives in one runtime/ module").

API for the training loop (runtime/train.py):

    dist = create_strategy(num_gpus, all_reduce="auto", fp16_compression=False)  # Distribution
    dist.is_chief, dist.rank, dist.num_workers, dist.num_replicas   # from the one ClusterSpec
    global_batch = dist.global_batch_size(per_replica_batch)        # x replicas
    with dist.strategy.scope():
        model, optimizer, checkpoint = ...                              # variables mirrored
    dataset = dist.strategy.distribute_datasets_from_function(
        lambda ctx: build_dataset(data_cfg, "train", input_context=ctx))  # disjoint shard/worker
    # in the replica function: loss = sum(per-example loss) / global_batch, then one all-reduce
    grads = all_reduce_gradients(grads, dist)    # SUM; float16 on the wire when compressed
    # checkpoints: every worker saves (MultiWorkerMirroredStrategy needs all of them in the
    # save), only the chief's copy is kept; every worker restores from model_dir:
    manager = tf.train.CheckpointManager(ckpt, checkpoint_write_dir(ckpt_dir, dist), ...)
    manager.save(); remove_worker_write_dir(ckpt_dir, dist)
    if dist.is_chief: write logs, TensorBoard, exports

Who is chief, the rank and the worker count are decided in one place, `ClusterSpec` (from the
launcher environment, `resolve_cluster`); `Distribution` carries that spec next to the strategy
built from it and the run's all-reduce options, and every mode reads them from it.

Scaling model (computed by the runtime from the strategy): global batch = per-replica batch x
replicas (x grad_accum_steps); the learning rate is lr_init x global_batch / 128; steps per epoch
= ceil(num_train / global_batch). Every replica runs the same number of steps.

Cluster sources, first match wins (see `resolve_cluster`):
  1. TF_CONFIG (JSON, the TensorFlow convention).
  2. SLURM under `srun`: SLURM_PROCID, SLURM_NTASKS (SLURM_STEP_NUM_TASKS), SLURM_STEP_NODELIST
     (or SLURM_JOB_NODELIST), SLURM_STEP_TASKS_PER_NODE (or SLURM_TASKS_PER_NODE), SLURM_LOCALID.
  3. MPI launchers (mpirun / horovodrun): OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}
     (Open MPI) or PMI_RANK / PMI_SIZE with MPI_LOCALRANKID / MPI_LOCALNRANKS (MPICH, Intel MPI).
     MPI does not publish the host list: WORKER_HOSTS (comma-separated or a SLURM-style hostlist,
     one entry per node) names it, or MASTER_ADDR alone when every rank runs on one node.
Ports: task `local_rank` on a node listens on MASTER_PORT + local_rank (default 12345), so rank 0
(the coordination-service leader) is reachable at <first node>:MASTER_PORT.
Ranks are laid out in blocks: node 0 holds ranks 0..k-1, node 1 the next ones (srun's and
mpirun's default distribution).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from utils.errors import UserError

if TYPE_CHECKING:  # TensorFlow is imported lazily (see "Strategies" below)
    import tensorflow as tf

logger = logging.getLogger(__name__)

DEFAULT_PORT = 12345
ALL_REDUCE_CHOICES = ("auto", "nccl", "ring")
# Failure detection. A collective that waits longer than this for a peer fails instead of
# hanging; the first step after startup may wait for the slowest worker's tf.function tracing
# (and XLA compilation on GPU), so the value is generous.
DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0
# Coordination-service heartbeat: a worker that stops sending heartbeats for this long is
# declared dead and every other worker's pending collectives are aborted with UnavailableError.
DEFAULT_HEARTBEAT_TIMEOUT_S = 10
# How long a worker waits at startup for every other worker to join; after that it exits with
# a clear error instead of waiting forever for a task that never started.
DEFAULT_STARTUP_TIMEOUT_S = 300
# Exit barrier: a worker whose peers died does not wait long for them at shutdown.
DEFAULT_SHUTDOWN_BARRIER_TIMEOUT_S = 10


class ClusterError(UserError, ValueError):
    """The launcher environment does not describe a usable cluster; the message is one line."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """Where this process sits in a (possibly one-process) training cluster.

    Attributes:
      source: "local" (no cluster), "tf_config", "slurm" or "mpi".
      jobs: job name -> task addresses ("host:port"); empty for "local".
      task_type: this process's job ("worker" or "chief"); "worker" for "local".
      task_index: index within `task_type`.
      local_rank: index of this process among the processes on its node (GPU pinning).
      local_size: number of training processes on this node.
    """

    source: str = "local"
    jobs: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    task_type: str = "worker"
    task_index: int = 0
    local_rank: int = 0
    local_size: int = 1

    @property
    def num_workers(self) -> int:
        """Number of training processes (chief + workers); 1 without a cluster."""
        return max(1, sum(len(self.jobs.get(j, ())) for j in ("chief", "worker")))

    @property
    def is_multi_worker(self) -> bool:
        return self.num_workers > 1

    @property
    def is_chief(self) -> bool:
        """The chief writes checkpoints, logs and exports: task chief:0, else worker:0."""
        if self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.task_index == 0 and "chief" not in self.jobs

    @property
    def rank(self) -> int:
        """Global index of this process (chief first)."""
        offset = len(self.jobs.get("chief", ())) if self.task_type == "worker" else 0
        return offset + self.task_index

    def tf_config(self) -> dict[str, Any]:
        """The equivalent TF_CONFIG dict (what MultiWorkerMirroredStrategy reads)."""
        return {
            "cluster": {job: list(addresses) for job, addresses in self.jobs.items()},
            "task": {"type": self.task_type, "index": self.task_index},
        }


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a SLURM hostlist such as `gpu[01-03,7],login1` into host names, order kept.

    Zero padding follows the range's first bound (`[01-03]` -> 01, 02, 03). Several bracket
    groups in one name expand as a product (`r[1-2]n[1-2]` -> r1n1, r1n2, r2n1, r2n2).

    Args:
      hostlist: the compact SLURM form (SLURM_JOB_NODELIST) or a plain comma-separated list.

    Returns:
      The host names.

    Raises:
      ClusterError: on unbalanced brackets, empty items or malformed/decreasing ranges.
    """
    items, depth, current = [], 0, ""
    for ch in hostlist.strip():
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ClusterError(f"hostlist {hostlist!r}: nested '['")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ClusterError(f"hostlist {hostlist!r}: ']' without '['")
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise ClusterError(f"hostlist {hostlist!r}: unclosed '['")
    items.append(current)
    hosts: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            raise ClusterError(f"hostlist {hostlist!r}: empty host name")
        hosts.extend(_expand_host(item, hostlist))
    return hosts


def _expand_host(item: str, hostlist: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if not match:
        return [item]
    head, tail = item[: match.start()], item[match.end() :]
    suffixes = _expand_host(tail, hostlist) if tail else [""]
    return [
        head + value + suffix
        for value in _expand_ranges(match.group(1), hostlist)
        for suffix in suffixes
    ]


def _expand_ranges(ranges: str, hostlist: str) -> list[str]:
    values = []
    for part in ranges.split(","):
        bounds = part.strip().split("-")
        if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
            raise ClusterError(f"hostlist {hostlist!r}: bad range {part!r} (want N or N-M)")
        lo, hi = int(bounds[0]), int(bounds[-1])
        if hi < lo:
            raise ClusterError(f"hostlist {hostlist!r}: decreasing range {part!r}")
        values.extend(str(i).zfill(len(bounds[0])) for i in range(lo, hi + 1))
    return values


def expand_tasks_per_node(spec: str, num_nodes: int) -> list[int]:
    """Expand SLURM_STEP_TASKS_PER_NODE, e.g. `8(x4)` or `2(x2),1`, to one count per node.

    Args:
      spec: the SLURM value.
      num_nodes: number of nodes in the node list (the expansion must match it).

    Returns:
      Task count per node, in node-list order.

    Raises:
      ClusterError: on a malformed value or a node count that does not match.
    """
    counts: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise ClusterError(f"tasks per node {spec!r}: cannot parse {part!r} (want N or N(xM))")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    if len(counts) != num_nodes:
        raise ClusterError(
            f"tasks per node {spec!r} covers {len(counts)} nodes, the node list has {num_nodes}"
        )
    return counts


def resolve_cluster(environ: Mapping[str, str]) -> ClusterSpec:
    """Work out the training cluster from launcher environment variables (a pure function).

    Sources in order: TF_CONFIG, SLURM (srun), Open MPI, PMI (MPICH / Intel MPI); a launcher
    that started a single process gives a "local" spec. See the module docstring for the exact
    variables.

    Args:
      environ: the environment (`os.environ` or a dict in tests).

    Returns:
      The ClusterSpec of this process.

    Raises:
      ClusterError: when a variable is present but malformed or inconsistent.
    """
    if environ.get("TF_CONFIG", "").strip():
        return _from_tf_config(environ["TF_CONFIG"])
    if "SLURM_PROCID" in environ and (
        "SLURM_STEP_NUM_TASKS" in environ or "SLURM_NTASKS" in environ
    ):
        return _from_slurm(environ)
    if "OMPI_COMM_WORLD_RANK" in environ:
        return _from_mpi(
            environ,
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
        )
    if "PMI_RANK" in environ:
        return _from_mpi(environ, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")
    return ClusterSpec()


def _from_tf_config(text: str) -> ClusterSpec:
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClusterError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(tf_config, dict):
        raise ClusterError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ClusterError(
            'TF_CONFIG has no \'cluster\' object (e.g. {"worker": ["host:port", ...]})'
        )
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ClusterError("TF_CONFIG has no 'task' object with 'type' and 'index'")
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        # NOTE: "ps" and "evaluator" belong to ParameterServerStrategy / side-car evaluation,
        # which this application does not use; failing here beats a hang at startup.
        raise ClusterError(
            f"TF_CONFIG cluster has unsupported job(s) {unsupported}; use 'chief' and 'worker'"
        )
    jobs: dict[str, tuple[str, ...]] = {}
    for job, addresses in cluster.items():
        if isinstance(addresses, str) or not isinstance(addresses, Sequence) or not addresses:
            raise ClusterError(
                f"TF_CONFIG cluster[{job!r}] must be a non-empty list of 'host:port'"
            )
        jobs[job] = tuple(_check_address(a, f"TF_CONFIG cluster[{job!r}]") for a in addresses)
    if len(jobs.get("chief", ())) > 1:
        raise ClusterError("TF_CONFIG cluster['chief'] must have exactly one address")
    task_type, index = task["type"], task["index"]
    if task_type not in jobs:
        raise ClusterError(
            f"TF_CONFIG task type {task_type!r} is not a job of the cluster {sorted(jobs)}"
        )
    if (
        not isinstance(index, int)
        or isinstance(index, bool)
        or not 0 <= index < len(jobs[task_type])
    ):
        raise ClusterError(
            f"TF_CONFIG task index {index!r} is out of range for {task_type!r} "
            f"(0..{len(jobs[task_type]) - 1})"
        )
    spec = ClusterSpec(source="tf_config", jobs=jobs, task_type=task_type, task_index=index)
    local_rank, local_size = _local_position(spec)
    return dataclasses.replace(spec, local_rank=local_rank, local_size=local_size)


def _local_position(spec: ClusterSpec) -> tuple[int, int]:
    """(rank among this host's tasks, tasks on this host), counting by host name in TF_CONFIG."""
    hosts = [a.rsplit(":", 1)[0] for a in _addresses(spec)]
    mine = hosts[spec.rank]
    return hosts[: spec.rank].count(mine), hosts.count(mine)


def _check_address(address: Any, where: str) -> str:
    if not isinstance(address, str) or not re.fullmatch(
        r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}", address
    ):
        raise ClusterError(f"{where}: address {address!r} is not 'host:port'")
    return address


def _int_var(
    environ: Mapping[str, str], name: str, default: int | None = None, minimum: int = 0
) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ClusterError(f"{name} is not set")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ClusterError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ClusterError(f"{name}={value} must be >= {minimum}")
    return value


def _base_port(environ: Mapping[str, str]) -> int:
    port = _int_var(environ, "MASTER_PORT", DEFAULT_PORT, minimum=1)
    if port > 65535:
        raise ClusterError(f"MASTER_PORT={port} is not a TCP port (1..65535)")
    return port


def _block_cluster(
    source: str, hosts: Sequence[str], tasks_per_node: Sequence[int], rank: int, base_port: int
) -> ClusterSpec:
    """Workers laid out in blocks over nodes; task `l` of a node listens on base_port + l."""
    if base_port + max(tasks_per_node) - 1 > 65535:
        raise ClusterError(
            f"MASTER_PORT={base_port} + {max(tasks_per_node) - 1} tasks per node exceeds 65535"
        )
    workers, node_of_rank = [], []
    for node, (host, count) in enumerate(zip(hosts, tasks_per_node, strict=True)):
        workers.extend(f"{host}:{base_port + local}" for local in range(count))
        node_of_rank.extend([node] * count)
    node = node_of_rank[rank]
    local_rank = rank - node_of_rank.index(node)
    return ClusterSpec(
        source=source,
        jobs={"worker": tuple(workers)},
        task_type="worker",
        task_index=rank,
        local_rank=local_rank,
        local_size=tasks_per_node[node],
    )


def _from_slurm(environ: Mapping[str, str]) -> ClusterSpec:
    ntasks_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in environ else "SLURM_NTASKS"
    ntasks = _int_var(environ, ntasks_var, minimum=1)
    rank = _int_var(environ, "SLURM_PROCID")
    if rank >= ntasks:
        raise ClusterError(f"SLURM_PROCID={rank} is not below {ntasks_var}={ntasks}")
    if ntasks == 1:
        return ClusterSpec(source="local")
    nodelist = (
        environ.get("SLURM_STEP_NODELIST")
        or environ.get("SLURM_JOB_NODELIST")
        or environ.get("SLURM_NODELIST")
    )
    if not nodelist:
        raise ClusterError(
            f"{ntasks_var}={ntasks} but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set"
        )
    hosts = expand_hostlist(nodelist)
    per_node_spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if per_node_spec:
        per_node = expand_tasks_per_node(per_node_spec, len(hosts))
    elif ntasks % len(hosts) == 0:
        per_node = [ntasks // len(hosts)] * len(hosts)
    else:
        raise ClusterError(
            f"{ntasks} tasks do not divide over {len(hosts)} nodes and SLURM_STEP_TASKS_PER_NODE is not set"
        )
    if sum(per_node) != ntasks:
        raise ClusterError(
            f"tasks per node {per_node} add up to {sum(per_node)}, not {ntasks_var}={ntasks}"
        )
    spec = _block_cluster("slurm", hosts, per_node, rank, _base_port(environ))
    local_id = environ.get("SLURM_LOCALID")
    if local_id is not None and _int_var(environ, "SLURM_LOCALID") != spec.local_rank:
        raise ClusterError(
            f"SLURM_LOCALID={local_id} but block layout gives local rank {spec.local_rank}: "
            "launch with the default block distribution (srun -m block)"
        )
    return spec


def _from_mpi(
    environ: Mapping[str, str],
    rank_var: str,
    size_var: str,
    local_rank_var: str,
    local_size_var: str,
) -> ClusterSpec:
    size = _int_var(environ, size_var, minimum=1)
    rank = _int_var(environ, rank_var)
    if rank >= size:
        raise ClusterError(f"{rank_var}={rank} is not below {size_var}={size}")
    if size == 1:
        return ClusterSpec(source="local")
    local_size = _int_var(environ, local_size_var, default=size, minimum=1)
    if "WORKER_HOSTS" in environ:
        hosts = expand_hostlist(environ["WORKER_HOSTS"])
    elif local_size == size:
        hosts = [environ.get("MASTER_ADDR") or "localhost"]
    else:
        raise ClusterError(
            f"{size_var}={size} ranks over several nodes ({local_size_var}={local_size}): "
            "set WORKER_HOSTS to the node list (one entry per node, rank order)"
        )
    if size % len(hosts):
        raise ClusterError(
            f"{size_var}={size} ranks do not divide over WORKER_HOSTS' {len(hosts)} nodes"
        )
    if "MASTER_ADDR" in environ and environ["MASTER_ADDR"] != hosts[0]:
        raise ClusterError(
            f"MASTER_ADDR={environ['MASTER_ADDR']!r} is not the first node {hosts[0]!r}, where rank 0 runs"
        )
    spec = _block_cluster(
        "mpi", hosts, [size // len(hosts)] * len(hosts), rank, _base_port(environ)
    )
    if local_rank_var in environ and _int_var(environ, local_rank_var) != spec.local_rank:
        raise ClusterError(
            f"{local_rank_var}={environ[local_rank_var]} but block layout gives local rank "
            f"{spec.local_rank}: map ranks by slot/node in blocks (mpirun --map-by slot)"
        )
    return spec


# ---------------------------------------------------------------------------------------------
# Strategies. TensorFlow is imported lazily so that `resolve_cluster` stays a cheap pure function.


@dataclasses.dataclass(frozen=True)
class Distribution:
    """The run's tf.distribute strategy, where this process sits in the cluster, and options.

    What `create_strategy` returns and every mode reads: chief, rank and worker count come
    from `cluster` (the `ClusterSpec` the strategy was built from), never from the strategy.

    Attributes:
      strategy: the tf.distribute strategy (variables, `run`, distributed datasets).
      cluster: this process's ClusterSpec (the "local" one without a cluster).
      fp16_compression: all-reduce gradients in float16 (`--fp16_compression`); takes effect
        with more than one replica (`compresses_gradients`).
    """

    strategy: tf.distribute.Strategy
    cluster: ClusterSpec = ClusterSpec()
    fp16_compression: bool = False

    @classmethod
    def current(cls, environ: Mapping[str, str] | None = None) -> Distribution:
        """The current tf.distribute strategy (the default one outside a scope), the cluster of
        the launcher environment, no compression: for code given no Distribution (tests)."""
        import tensorflow as tf

        return cls(
            tf.distribute.get_strategy(),
            resolve_cluster(os.environ if environ is None else environ),
        )

    @property
    def is_chief(self) -> bool:
        """True for the process that writes checkpoints, logs and exports."""
        return self.cluster.is_chief

    @property
    def rank(self) -> int:
        """This process's global index (0 = chief), used for per-worker temp dirs."""
        return self.cluster.rank

    @property
    def num_workers(self) -> int:
        """Number of training processes (1 without a cluster)."""
        return self.cluster.num_workers

    @property
    def num_replicas(self) -> int:
        """Replicas in sync over all workers (GPUs, or logical CPUs in tests)."""
        return self.strategy.num_replicas_in_sync

    @property
    def compresses_gradients(self) -> bool:
        """Gradients travel in float16: compression asked for and more than one replica."""
        return self.fp16_compression and self.num_replicas > 1

    def global_batch_size(self, per_replica_batch: int, grad_accum_steps: int = 1) -> int:
        """Images per optimizer update: per-replica batch x replicas x accumulation steps."""
        return per_replica_batch * self.num_replicas * grad_accum_steps


def create_strategy(
    num_gpus: int | None = None,
    all_reduce: str = "auto",
    fp16_compression: bool = False,
    *,
    cpu_replicas: int = 1,
    environ: Mapping[str, str] | None = None,
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> Distribution:
    """Build the tf.distribute strategy for this process from the launcher environment.

    - several processes (TF_CONFIG / SLURM / MPI): MultiWorkerMirroredStrategy, NCCL all-reduce
      on GPU, ring on CPU; with one process per GPU on a node, each process keeps the GPU of
      its local rank;
    - one process, several GPUs: MirroredStrategy (NCCL by default);
    - one process, one GPU: OneDeviceStrategy on it;
    - CPU only: the default strategy, or MirroredStrategy over `cpu_replicas` logical CPU
      devices (tests; must run before TensorFlow initializes its devices).

    Args:
      num_gpus: GPUs this process uses; None = all visible (after local-rank pinning), 0 = CPU.
      all_reduce: "auto" (TF picks; NCCL on GPU), "nccl", or "ring" (no NCCL: ring collectives
        across workers, hierarchical copy between the GPUs of one host).
      fp16_compression: all-reduce gradients in float16 (half the bytes); see
        `all_reduce_gradients`.
      cpu_replicas: number of logical CPU replicas when no GPU is used (1 = default strategy).
      environ: environment to read the cluster from (default os.environ).
      collective_timeout_s: a collective that waits longer than this fails instead of hanging.
      heartbeat_timeout_s: a worker silent this long is declared dead (coordination service).
      startup_timeout_s: a worker whose peers have not all joined after this long exits with
        status 1 and one line on stderr.

    Returns:
      The Distribution: the strategy, this process's ClusterSpec and the options.

    Raises:
      ClusterError: bad launcher environment, unknown all_reduce, or more GPUs asked than seen.
    """
    import tensorflow as tf

    if all_reduce not in ALL_REDUCE_CHOICES:
        raise ClusterError(
            f"all_reduce {all_reduce!r} is not one of {', '.join(ALL_REDUCE_CHOICES)}"
        )
    if num_gpus is not None and num_gpus < 0:
        raise ClusterError(f"num_gpus={num_gpus} must be >= 0")
    if cpu_replicas < 1:
        raise ClusterError(f"cpu_replicas={cpu_replicas} must be >= 1")
    spec = resolve_cluster(os.environ if environ is None else environ)
    gpus = _select_gpus(tf, spec, num_gpus)

    if spec.is_multi_worker:
        watchdog = _startup_watchdog(spec, startup_timeout_s)
        try:
            strategy = _multi_worker_strategy(
                tf,
                spec,
                gpus,
                all_reduce,
                collective_timeout_s,
                heartbeat_timeout_s,
                startup_timeout_s,
            )
        finally:
            watchdog.kill()
            watchdog.wait()
    elif len(gpus) > 1:
        cross_device_ops = {
            "auto": None,
            "nccl": tf.distribute.NcclAllReduce(),
            "ring": tf.distribute.HierarchicalCopyAllReduce(),
        }[all_reduce]
        strategy = tf.distribute.MirroredStrategy(
            devices=[f"/gpu:{i}" for i in range(len(gpus))], cross_device_ops=cross_device_ops
        )
    elif len(gpus) == 1:
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0")
    elif cpu_replicas > 1:
        strategy = tf.distribute.MirroredStrategy(
            devices=_logical_cpus(tf, cpu_replicas),
            cross_device_ops=tf.distribute.ReductionToOneDevice(),
        )
    else:
        strategy = tf.distribute.get_strategy()
    logger.info(
        "strategy %s: %d worker(s), %d replica(s) in sync, chief=%s, cluster from %s",
        type(strategy).__name__,
        spec.num_workers,
        strategy.num_replicas_in_sync,
        spec.is_chief,
        spec.source,
    )
    return Distribution(strategy, spec, bool(fp16_compression))


def _select_gpus(tf, spec: ClusterSpec, num_gpus: int | None) -> list:
    """Visible GPUs this process uses, pinning one GPU per process when a node runs several."""
    gpus = tf.config.list_physical_devices("GPU")
    if num_gpus == 0:
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        return []
    if gpus and spec.local_size > 1 and len(gpus) > 1:
        # One process per GPU (srun --ntasks-per-node=8, mpirun -np 8): each keeps its own GPU.
        # When the launcher already narrowed CUDA_VISIBLE_DEVICES to one GPU there is nothing to do.
        gpus = [gpus[spec.local_rank % len(gpus)]]
        tf.config.set_visible_devices(gpus, "GPU")
    if num_gpus is not None:
        if num_gpus > len(gpus):
            raise ClusterError(f"num_gpus={num_gpus} but this process sees {len(gpus)} GPU(s)")
        gpus = gpus[:num_gpus]
        tf.config.set_visible_devices(gpus, "GPU")
    return gpus


def _logical_cpus(tf, count: int) -> list[str]:
    cpus = tf.config.list_physical_devices("CPU")
    if len(tf.config.get_logical_device_configuration(cpus[0]) or ()) != count:
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
            )
        except RuntimeError:
            raise ClusterError(
                f"cpu_replicas={count} must be set before TensorFlow initializes its devices "
                "(call create_strategy first)"
            ) from None
    return [f"/cpu:{i}" for i in range(count)]


# Runs in a separate small process: see _startup_watchdog.
_WATCHDOG_SCRIPT = """
import os, sys, time
parent, deadline, message = int(sys.argv[1]), time.monotonic() + float(sys.argv[2]), sys.argv[3]
while time.monotonic() < deadline:
    if os.getppid() != parent:
        sys.exit(0)
    time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
sys.stderr.write(message + "\\n")
sys.stderr.flush()
os.kill(parent, 9)
"""


def _startup_watchdog(spec: ClusterSpec, seconds: float) -> subprocess.Popen:
    """Kill this process, with a one-line reason on stderr, if the cluster is not up in time.

    NOTE: measured on TF 2.21: the MultiWorkerMirroredStrategy constructor blocks in
    `context.ensure_initialized()` until every task has started, past the coordination
    service's cluster_register_timeout (still waiting after 7 minutes), holding the GIL (no
    Python thread or signal handler runs), and TF's preemption notifier swallows SIGTERM. So
    the watchdog is a separate process that sends SIGKILL; stop it with `.kill()`.
    """
    message = (
        f"main.py: error: multi-worker startup: not all {spec.num_workers} workers joined "
        f"within {seconds:g}s (cluster from {spec.source}; this is task "
        f"{spec.task_type}:{spec.task_index}, peers {', '.join(_addresses(spec))}); check "
        "that every task was started and can reach the others' ports"
    )
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG_SCRIPT, str(os.getpid()), str(seconds), message],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def _addresses(spec: ClusterSpec) -> list[str]:
    return list(spec.jobs.get("chief", ())) + list(spec.jobs.get("worker", ()))


def _multi_worker_strategy(
    tf,
    spec: ClusterSpec,
    gpus: list,
    all_reduce: str,
    collective_timeout_s: float,
    heartbeat_timeout_s: int,
    startup_timeout_s: float,
):
    from runtime import compat

    context = compat.eager_context()
    if all_reduce == "nccl" and not gpus:
        raise ClusterError("all_reduce='nccl' needs GPUs; this worker has none (use auto or ring)")
    implementation = tf.distribute.experimental.CommunicationImplementation
    chosen = {
        "auto": implementation.NCCL if gpus else implementation.RING,
        "nccl": implementation.NCCL,
        "ring": implementation.RING,
    }[all_reduce]
    # Configure the coordination service before the strategy does (it only fills in defaults
    # when none is configured): heartbeats detect a dead worker in seconds and abort everyone's
    # pending collectives, so a lost worker fails the job instead of hanging it.
    if context.context().coordination_service is None:
        coordination_config_pb2 = compat.coordination_config_pb2()
        jobs = [
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(addresses))
            for job, addresses in spec.jobs.items()
        ]
        leader = (
            "/job:chief/replica:0/task:0"
            if "chief" in spec.jobs
            else "/job:worker/replica:0/task:0"
        )
        context.context().configure_coordination_service(
            service_type="standalone",
            service_leader=leader,
            enable_health_check=True,
            cluster_register_timeout_in_ms=int(startup_timeout_s * 1000),
            heartbeat_timeout_in_ms=heartbeat_timeout_s * 1000,
            shutdown_barrier_timeout_in_ms=DEFAULT_SHUTDOWN_BARRIER_TIMEOUT_S * 1000,
            coordinated_jobs=jobs,
        )
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({job: list(a) for job, a in spec.jobs.items()}),
        task_type=spec.task_type,
        task_id=spec.task_index,
        rpc_layer="grpc",
        num_accelerators={"GPU": len(gpus)} if gpus else None,
    )
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=chosen, timeout_seconds=collective_timeout_s
    )
    return tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver, communication_options=options
    )


# ---------------------------------------------------------------------------------------------
# Helpers the runtime uses with any strategy.


def checkpoint_write_dir(directory: str, dist: Distribution) -> str:
    """Where this worker writes checkpoints: `directory` on the chief, a private temp dir elsewhere.

    Under MultiWorkerMirroredStrategy every worker must take part in `CheckpointManager.save`
    (reading mirrored variables runs collectives), but only the chief's copy is kept: the
    others write under `directory/.workertemp_<index>` and delete it after the save
    (`remove_worker_write_dir`). Every worker restores from `directory`, which must be on a
    filesystem all workers share (as the TensorFlow multi-worker guide assumes).

    Args:
      directory: the checkpoint directory of the run (the chief's).
      dist: the run's Distribution.

    Returns:
      The directory this process passes to tf.train.CheckpointManager.
    """
    if dist.is_chief:
        return directory
    return os.path.join(directory, f".workertemp_{dist.rank}")


def remove_worker_write_dir(directory: str, dist: Distribution) -> None:
    """Delete a non-chief worker's temporary checkpoint copy (no-op on the chief)."""
    if not dist.is_chief:
        shutil.rmtree(checkpoint_write_dir(directory, dist), ignore_errors=True)


def chief_or_temp_dir(directory: str, dist: Distribution) -> str:
    """`directory` on the chief; elsewhere a temp dir deleted at exit (for exports, logs).

    Every worker must run the same collective ops, so non-chief workers also write their
    exports, but to a directory nobody keeps.
    """
    if dist.is_chief:
        return directory
    path = tempfile.mkdtemp(prefix=f"worker{dist.rank}_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def compress_gradients(grads: Sequence[Any], dist: Distribution) -> list[Any]:
    """Cast float32 gradients to float16 for the all-reduce, when `dist` compresses them.

    Halves the all-reduce bytes; the caller casts the reduced sum back to float32 before the
    update. Only done when `dist.compresses_gradients` (`create_strategy(...,
    fp16_compression=True)` and more than one replica). A bare cast overflows above 65504 and flushes magnitudes
    below ~6e-8: the training step reduces through `all_reduce_gradients`, which scales first.

    Args:
      grads: per-replica gradients (None entries are kept).
      dist: the Distribution returned by `create_strategy`.

    Returns:
      The gradients to pass to `optimizer.apply_gradients`.
    """
    if not dist.compresses_gradients:
        return list(grads)
    import tensorflow as tf

    return [g if g is None or g.dtype != tf.float32 else tf.cast(g, tf.float16) for g in grads]


# The float16 all-reduce scales each tensor so that its sum over replicas has max-abs <= this:
# far from float16's 65504 and 2**39 above its smallest subnormal (2**-24).
_FP16_SUM_MAX = 2.0**15


def all_reduce_gradients(grads: Sequence[Any], dist: Distribution) -> list[Any]:
    """Sum per-replica gradients over replicas (call in replica context).

    With `--fp16_compression` (and more than one replica) the sum travels in float16, half the
    bytes, scale-aware: float16 holds 6e-8..65504, so loss-scaled gradients (x32768 under AMP)
    would overflow to inf (a skipped step) and small float32 gradients would flush to zero.
    Each tensor is multiplied by `2**15 / S` before the cast, where S is the sum over replicas
    of the tensor's max-abs (one float32 all-reduce of one number per tensor); S bounds the
    max-abs of the reduced sum, so the float16 sum never overflows, and the result is divided
    back in float32. Inf/NaN stay non-finite, so the LossScaleOptimizer still skips such steps.
    NVIDIA's Horovod `Compression.fp16` casts unscaled gradients without this scaling.

    Args:
      grads: per-replica float gradients (None entries are kept).
      dist: the Distribution returned by `create_strategy`.

    Returns:
      The summed gradients, in their original dtypes.
    """
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    compressed = compress_gradients(grads, dist)
    if all(c is g for c, g in zip(compressed, grads, strict=True)):
        return list(ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(grads)))
    index = [i for i, g in enumerate(grads) if g is not None and g.dtype == tf.float32]
    peaks = tf.stack([tf.reduce_max(tf.abs(grads[i])) for i in index])
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, peaks)
    scales = tf.where(total > 0, _FP16_SUM_MAX / total, tf.ones_like(total))
    wire = list(grads)
    for k, i in enumerate(index):
        wire[i] = tf.cast(grads[i] * scales[k], tf.float16)
    reduced = list(ctx.all_reduce(tf.distribute.ReduceOp.SUM, wire))
    for k, i in enumerate(index):
        reduced[i] = tf.cast(reduced[i], tf.float32) / scales[k]
    return reduced


def describe_worker_failure(exc: BaseException) -> str | None:
    """A one-line explanation when `exc` means a peer worker died or a collective timed out.

    Args:
      exc: an exception raised by a training step.

    Returns:
      The message, or None when `exc` is not a distribution failure or this process is not
      part of a multi-worker cluster.
    """
    import tensorflow as tf

    if not resolve_cluster(os.environ).is_multi_worker:
        return None
    kinds = (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
        tf.errors.CancelledError,
    )
    if not isinstance(exc, kinds):
        return None
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # TF prefixes "Graph execution error:" and node tracebacks; the cause is the line that
    # names the unhealthy task or the refused connection.
    cause = next(
        (
            line
            for line in lines
            if re.search(
                r"unhealthy|heartbeat|Connection refused|timed out|Deadline|aborted", line, re.I
            )
        ),
        None,
    )
    tasks = sorted(set(re.findall(r"/job:\w+/replica:\d+/task:\d+", str(exc))))
    detail = (cause or (lines[0] if lines else type(exc).__name__))[:200]
    return (
        f"a worker of the multi-worker job failed or stopped responding "
        f"({type(exc).__name__}: {detail}{'; tasks ' + ', '.join(tasks) if tasks else ''}); "
        "restart the same command on every worker to resume from the last checkpoint"
    )
