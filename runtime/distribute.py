"""Distribution: the run's tf.distribute strategy, built from the launcher's cluster.

The one place in the application that knows about tf.distribute (STYLE.md, "framework-specific
distribution code lives in one runtime/ module"). Owns the strategy (`Distribution`,
`create_strategy`), the start-up watchdog of a multi-worker job (a runtime.watchdog process),
the per-worker checkpoint and export directories, the gradient all-reduce and the diagnosis of
a failed peer. Where this process sits in the cluster is runtime.cluster's (TF_CONFIG / SLURM /
MPI parsing, no TensorFlow).

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
launcher environment, `runtime.cluster.resolve_cluster`); `Distribution` carries that spec next
to the strategy built from it and the run's all-reduce options, and every mode reads them from
it.

Scaling model (computed by the runtime from the strategy): global batch = per-replica batch x
replicas (x grad_accum_steps); the learning rate is lr_init x global_batch / 128; steps per epoch
= ceil(num_train / global_batch). Every replica runs the same number of steps.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from runtime import watchdog
from runtime.cluster import ClusterError, ClusterSpec, resolve_cluster

if TYPE_CHECKING:  # TensorFlow is imported lazily (see "Strategies" below)
    import tensorflow as tf

logger = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------------
# Strategies. TensorFlow is imported lazily: runtime.flags reads ALL_REDUCE_CHOICES before it starts.


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


def _startup_watchdog(spec: ClusterSpec, seconds: float) -> subprocess.Popen:
    """Kill this process, with a one-line reason on stderr, if the cluster is not up in time.

    NOTE: measured on TF 2.21: the MultiWorkerMirroredStrategy constructor blocks in
    `context.ensure_initialized()` until every task has started, past the coordination
    service's cluster_register_timeout (still waiting after 7 minutes), holding the GIL (no
    Python thread or signal handler runs), and TF's preemption notifier swallows SIGTERM. So
    the watchdog is a separate process (runtime.watchdog) that sends SIGKILL; stop it with
    `.kill()`.
    """
    message = (
        f"main.py: error: multi-worker startup: not all {spec.num_workers} workers joined "
        f"within {seconds:g}s (cluster from {spec.source}; this is task "
        f"{spec.task_type}:{spec.task_index}, peers {', '.join(spec.addresses)}); check "
        "that every task was started and can reach the others' ports"
    )
    # `-m` finds the package from the working directory: start it in the folder above runtime/.
    return subprocess.Popen(
        [sys.executable, "-m", watchdog.__name__, str(os.getpid()), str(seconds), message],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(watchdog.__file__))),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


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

    if compat.runtime_started():
        # Something before the strategy ran TensorFlow (a pre-run check that read data through
        # tf.data): TF would refuse the strategy with an opaque "Collective ops must be
        # configured at program startup" while the peers wait for the startup timeout.
        raise RuntimeError(
            "TensorFlow's runtime started before the MultiWorkerMirroredStrategy was created: "
            "nothing may run TensorFlow ops before runtime.distribute.create_strategy"
        )
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
