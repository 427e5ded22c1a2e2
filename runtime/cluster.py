"""Cluster discovery: where this process sits in a training cluster, read from the launcher.

Owns the pure, TensorFlow-free half of distribution: `ClusterSpec` (jobs, task, local rank),
`resolve_cluster` (a function of an environment dict), SLURM hostlist and tasks-per-node
expansion, and `ClusterError` for a launcher environment that does not describe a usable
cluster. Importing it does not import TensorFlow, so main.py and runtime.lock can ask "am I the
chief?" before TensorFlow starts; runtime.distribute builds the tf.distribute strategy from the
spec.

Cluster sources, first match wins (see `resolve_cluster`):
  1. TF_CONFIG (JSON, the TensorFlow convention).
  2. Open MPI's mpirun / horovodrun: OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE} (before
     SLURM: mpirun inside an sbatch job passes the batch shell's SLURM_* variables on).
  3. SLURM under `srun`: SLURM_PROCID, SLURM_NTASKS (SLURM_STEP_NUM_TASKS), SLURM_STEP_NODELIST
     (or SLURM_JOB_NODELIST), SLURM_STEP_TASKS_PER_NODE (or SLURM_TASKS_PER_NODE), SLURM_LOCALID;
     only inside a job step (SLURM_STEP_ID set): a batch script's shell has SLURM_PROCID=0 and
     the job's SLURM_NTASKS but no step, so `python main.py` run there without srun is one
     process, not rank 0 of a cluster whose other ranks never start.
  4. Other MPI launchers: PMI_RANK / PMI_SIZE with MPI_LOCALRANKID / MPI_LOCALNRANKS (MPICH,
     Intel MPI).
MPI does not publish the host list: WORKER_HOSTS (comma-separated or a SLURM-style hostlist,
one entry per node) names it, or MASTER_ADDR alone when every rank runs on one node.
Ports: task `local_rank` on a node listens on MASTER_PORT + local_rank (default 12345), so rank 0
(the coordination-service leader) is reachable at <first node>:MASTER_PORT.
Ranks are laid out in blocks: node 0 holds ranks 0..k-1, node 1 the next ones (srun's and
mpirun's default distribution).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from utils.errors import UserError

DEFAULT_PORT = 12345


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

    @property
    def addresses(self) -> list[str]:
        """Every task's "host:port" in rank order (chief first)."""
        return list(self.jobs.get("chief", ())) + list(self.jobs.get("worker", ()))

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

    Sources in order: TF_CONFIG, Open MPI (mpirun), SLURM (srun), PMI (MPICH / Intel MPI); a
    launcher that started a single process gives a "local" spec. See the module docstring for the exact
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
    # NOTE: Open MPI before SLURM: mpirun's ranks inside an sbatch job inherit the batch shell's
    # SLURM_PROCID=0 and SLURM_NTASKS (the job's, not theirs); srun sets no OMPI_COMM_WORLD_*.
    if "OMPI_COMM_WORLD_RANK" in environ:
        return _from_mpi(
            environ,
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
        )
    # NOTE: measured on slurm-wlm 22.05: srun's tasks have SLURM_STEP_ID; the batch shell of
    # `sbatch --ntasks=8` has SLURM_PROCID=0 and SLURM_NTASKS=8 but no SLURM_STEP_ID.
    if "SLURM_STEP_ID" in environ and "SLURM_PROCID" in environ:
        return _from_slurm(environ)
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
    hosts = [a.rsplit(":", 1)[0] for a in spec.addresses]
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
