"""Every access to a private Keras / TensorFlow attribute, checked in one place.

Public APIs cannot do these few things (see each function). Each function checks that what it
touches still exists and fails in one line (`CompatError`) when it does not, so a Keras or TF
upgrade that renames a private method breaks loudly instead of silently changing training
(e.g. gradients summed twice, LR x replicas). `check_versions` says which releases these were
tested with; `EFFICIENTNET_ALLOW_UNTESTED=1` skips that check (the attribute checks stay).
"""

from __future__ import annotations

import inspect
import os
from types import ModuleType

from utils.errors import UserError

TESTED = {"keras": "3.15.", "tensorflow": "2.21."}
ALLOW_UNTESTED_ENV = "EFFICIENTNET_ALLOW_UNTESTED"


class CompatError(UserError, RuntimeError):
    """A private Keras/TF attribute we rely on is missing, or the version is untested."""


def check_versions(keras_version: str, tf_version: str) -> None:
    """Raise CompatError unless Keras and TF are releases the private accesses were tested on."""
    if os.environ.get(ALLOW_UNTESTED_ENV) == "1":
        return
    for name, version in (("keras", keras_version), ("tensorflow", tf_version)):
        if not version.startswith(TESTED[name]):
            raise CompatError(
                f"{name} {version} is untested with runtime/compat.py (tested: {TESTED[name]}x); "
                f"install the pinned requirements or set {ALLOW_UNTESTED_ENV}=1 to try it"
            )


def skip_optimizer_all_reduce(optimizer) -> None:
    """Make a Keras 3 TF optimizer apply gradients as given, without summing them over replicas.

    Keras 3.15's `TFOptimizer._backend_update_step` all-reduces (sums) gradients in replica
    context through `_all_reduce_sum_gradients`, after `global_clipnorm` was applied to the
    per-replica gradients. Our step reduces once itself (optionally compressed) before
    unscaling and clipping, so the optimizer must not reduce again. No public switch exists.

    Args:
      optimizer: the inner optimizer (not a LossScaleOptimizer wrapper).

    Raises:
      CompatError: the method is gone or no longer called by `_backend_update_step`.
    """
    import keras
    import tensorflow as tf

    check_versions(keras.__version__, tf.__version__)
    cls = type(optimizer)
    name = "_all_reduce_sum_gradients"
    update = getattr(cls, "_backend_update_step", None)
    if not hasattr(optimizer, name) or update is None or name not in inspect.getsource(update):
        raise CompatError(
            f"{cls.__name__} no longer sums gradients through {name} in "
            "_backend_update_step: update runtime/compat.py for this Keras"
        )
    setattr(optimizer, name, lambda grads_and_vars: list(grads_and_vars))


def _context_module(function: str) -> ModuleType:
    """`tensorflow.python.eager.context`, checked to still have `function`."""
    try:
        from tensorflow.python.eager import context
    except ImportError as err:
        raise CompatError(
            f"tensorflow.python.eager.context is gone ({err}): update "
            "runtime/compat.py for this TensorFlow"
        ) from err
    if not hasattr(context, function):
        raise CompatError(
            f"tensorflow.python.eager.context.{function} is gone: update "
            "runtime/compat.py for this TensorFlow"
        )
    return context


def eager_context() -> ModuleType:
    """`tensorflow.python.eager.context`: configures the coordination service before a
    MultiWorkerMirroredStrategy exists (no public API sets heartbeats and timeouts)."""
    context = _context_module("context")
    ctx = context.context()
    for attr in ("coordination_service", "configure_coordination_service"):
        if not hasattr(ctx, attr):
            raise CompatError(
                f"TF's eager context has no {attr}: update runtime/compat.py for this TensorFlow"
            )
    return context


def runtime_started() -> bool:
    """Whether TensorFlow's eager runtime has started (devices and collectives configured).

    No public API tells. A MultiWorkerMirroredStrategy must be created before the runtime
    starts (TF: "Collective ops must be configured at program startup"): runtime.distribute
    checks it first, tests check that the pre-run checks never start it.
    """
    ctx = _context_module("context_safe").context_safe()
    if ctx is None:
        return False
    if not isinstance(getattr(ctx, "_initialized", None), bool):
        raise CompatError(
            "TF's eager context has no _initialized flag: update runtime/compat.py for this "
            "TensorFlow"
        )
    return ctx._initialized


def coordination_config_pb2() -> ModuleType:
    """The coordination-service protobufs (`CoordinatedJob`) that eager_context() takes."""
    try:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2 as pb2
    except ImportError as err:
        raise CompatError(
            f"tensorflow.compiler.xla.tsl.protobuf.coordination_config_pb2 is gone "
            f"({err}): update runtime/compat.py for this TensorFlow"
        ) from err
    if not hasattr(pb2, "CoordinatedJob"):
        raise CompatError(
            "coordination_config_pb2.CoordinatedJob is gone: update "
            "runtime/compat.py for this TensorFlow"
        )
    return pb2


# PreemptionCheckpointHandler (tensorflow/python/distribute/failure_handling/failure_handling.py)
# platforms on which `run` only calls the step: no signal is ever acted upon there.
PASSIVE_PREEMPTION_PLATFORMS = ("GCE_CPU", "GCE_TPU", "INTERNAL_TPU")


def preemption_handler_acts(handler) -> bool:
    """Whether a tf.distribute.experimental.PreemptionCheckpointHandler saves on a signal here.

    TF 2.21's handler detects its platform at construction (`_platform_device`); on GCE CPU and
    TPU VMs `run` only calls the training step, and on TPUs it uses another mechanism. No
    public attribute says which.

    Raises:
      CompatError: the attribute is gone.
    """
    platform = getattr(handler, "_platform_device", None)
    if platform is None or not hasattr(platform, "name"):
        raise CompatError(
            "PreemptionCheckpointHandler has no _platform_device: update runtime/compat.py "
            "for this TensorFlow"
        )
    return platform.name not in PASSIVE_PREEMPTION_PLATFORMS


def stop_preemption_watchers(handler) -> None:
    """Stop a PreemptionCheckpointHandler's watcher threads when training ends without a stop.

    The handler stops them itself before its exit_fn; otherwise only its `__del__` does (the
    thread watching the peers blocks in the coordination service's key-value store until a
    worker writes the stop value). This ends that thread now, and tells the thread polling our
    signal flag to stop without waiting for it: it is a daemon that ends within its one-second
    sleep, and the handler's own stop method joins it (up to a second at the end of every run).

    Raises:
      CompatError: the attributes are gone.
    """
    should_stop = getattr(handler, "_poll_termination_signal_thread_should_stop", None)
    stop_peer_watcher = getattr(handler, "_stop_cluster_wise_termination_watcher_thread", None)
    if not hasattr(should_stop, "set") or not callable(stop_peer_watcher):
        raise CompatError(
            "PreemptionCheckpointHandler has no _poll_termination_signal_thread_should_stop or "
            "_stop_cluster_wise_termination_watcher_thread: update runtime/compat.py for this "
            "TensorFlow"
        )
    should_stop.set()
    stop_peer_watcher()
