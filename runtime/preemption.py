"""Graceful stop: on SIGTERM, SIGINT or SIGUSR1 training ends its step, every worker writes a
checkpoint at the same step, and the run exits with status 75 (utils.errors.RESUMABLE).

SIGTERM is what `scancel`, `kill`, a SLURM time limit, a preemption and mpirun send; SIGUSR1 is
the warning the SLURM jobs ask for before their time limit (`#SBATCH --signal=USR1@300`);
SIGINT is Ctrl-C. The stopped run prints one line (main.py) and leaves no lock behind:

    main.py: stopped by SIGTERM at epoch 3 step 41; checkpoint results/checkpoints/ckpt-241;
    rerun the same command to resume

The mechanism is TensorFlow's own, tf.distribute.experimental.PreemptionCheckpointHandler, with
a TerminationConfig (tensorflow/python/distribute/failure_handling/failure_handling.py):

- `termination_watcher_fn`: whether this process got a stop signal. The handler polls it once
  a second in a thread instead of installing its own SIGTERM handler. `StopSignals` sets it
  from Python signal handlers installed once the strategy exists: the C++ preemption notifier
  that a MultiWorkerMirroredStrategy's coordination service starts takes SIGTERM and would
  swallow it (the process trained on until SIGKILL).
- `save_fn`: runtime.checkpoint.TrainingCheckpoint.save at the position the training loop
  reports (atomic, numbered by the global step, keep-last-K), not the handler's own manager.
- `exit_fn`: raises TrainingStopped, so the run unwinds: the log is closed, main.py releases
  the model_dir lock and exits 75.
- `grace_period=0`: save at once (the default on GCE GPUs would train on for an hour).

The handler aligns the workers through the coordination service's key-value store, without a
collective per step: the worker that got the signal publishes "save after call k + 1" (k = its
calls of `run` so far), waits until every worker acknowledged, and each worker saves when its
own count reaches k + 1. Workers are at most one step apart, so the run trains at most one step
past the one in flight, and loses none. Without a cluster (one process, MirroredStrategy) the
handler runs in its "local mode" with the same logic and no key-value store, so the one-process
run stops the same way.

The handler is given a checkpoint object of its own (only its call counter, never written):
its constructor restores the newest checkpoint of the manager it gets and adds a
`checkpointed_runs` variable to it, which would change our checkpoint layout and break the
check that every object of a restore is found. Its counter starts at 0 in every process; the
workers still agree, because each counts its own calls from the same start.

A second signal only sets the flag again: the Python handlers never raise, so nothing can
interrupt the save or the cleanup after it. After a stop they stay installed until the process
ends (srun --kill-on-bad-exit=1 sends SIGTERM to the other tasks as soon as the first exits 75;
that signal must not turn a clean stop into a kill). A run that ends without a stop restores the
previous handlers before the final evaluation and export.

NOTE: the handler acts only in `run`, i.e. between training steps. A signal during an
evaluation or a checkpoint save takes effect at the next step, after it; one after the last
step (final evaluation and export) finds the handlers restored: SIGINT ends the run with
"interrupted", SIGTERM and SIGUSR1 end the process at once; the final checkpoint is already
written, so a rerun evaluates and exports. On GCE CPU and TPU VMs the handler never saves
(runtime.compat.preemption_handler_acts): there the signals keep their default action.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from runtime import compat, distribute
from runtime.checkpoint import Position, TrainingCheckpoint
from runtime.errors import TrainingStopped

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class _OwnDeprecationFilter(logging.Filter):
    """Drops the deprecation warning TF's handler triggers itself when it saves (it reads its
    own deprecated `total_run_calls`); we never call it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "PreemptionCheckpointHandler.total_run_calls" not in record.getMessage()


_DEPRECATION_FILTER = _OwnDeprecationFilter()


class StopSignals:
    """Python handlers for STOP_SIGNALS that record the first signal and never raise.

    Attributes:
      requested: set once any of the signals arrived.
      name: the first signal's name ("SIGTERM"), None before.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take STOP_SIGNALS over (main thread only), remembering the previous handlers."""
        for sig in STOP_SIGNALS:
            previous = signal.signal(sig, self._record)
            self._previous.setdefault(sig, previous)

    def _record(self, signum: int, frame: Any) -> None:
        del frame
        if self.name is None:
            self.name = signal.Signals(signum).name
        self.requested.set()

    def restore(self) -> None:
        """Give the signals back their previous handlers (the default one where a handler was
        not Python's, e.g. TensorFlow's C++ preemption notifier)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()


class GracefulStop:
    """Runs each training step through a PreemptionCheckpointHandler that saves and stops on a
    signal (see the module docstring). Use as a context manager around the epoch loop.

    Args:
      dist: the run's Distribution (a MultiWorkerMirroredStrategy brings its cluster).
      checkpoint: the run's TrainingCheckpoint; every worker saves through it.
      steps_per_epoch: steps of an epoch, for the stop message.
    """

    def __init__(
        self,
        dist: distribute.Distribution,
        checkpoint: TrainingCheckpoint,
        steps_per_epoch: int,
    ) -> None:
        import tensorflow as tf

        logging.getLogger("tensorflow").addFilter(_DEPRECATION_FILTER)  # once: a set
        self.signals = StopSignals()
        self._dist = dist
        self._checkpoint = checkpoint
        self._steps_per_epoch = steps_per_epoch
        self._position = Position()
        self._stopped = False
        counter = tf.train.CheckpointManager(
            tf.train.Checkpoint(), f"{checkpoint.directory}/.handler_unused", max_to_keep=1
        )
        self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            getattr(dist.strategy, "cluster_resolver", None) if dist.num_workers > 1 else None,
            counter,
            termination_config=tf.distribute.experimental.TerminationConfig(
                termination_watcher_fn=self.signals.requested.is_set,
                exit_fn=self._exit,
                grace_period=0,
                save_fn=self._save,
            ),
        )
        if compat.preemption_handler_acts(self._handler):
            self.signals.install()
        else:
            logger.warning(
                "TensorFlow's PreemptionCheckpointHandler does not act on this platform: "
                "SIGTERM, SIGINT and SIGUSR1 end training at once, without a checkpoint"
            )

    def run(self, step_fn: Callable, inputs: Any, position: Position) -> Any:
        """`step_fn(inputs)`, unless a stop is due first: then save at `position` and raise.

        Args:
          step_fn: one training step (one call = one step: the handler counts calls).
          inputs: its input batch.
          position: where training is before this step (finished epochs, steps of this one).

        Raises:
          TrainingStopped: a signal arrived; every worker saved at the same step.
        """
        self._position = position
        return self._handler.run(step_fn, inputs)

    def after_training(self, position: Position) -> None:
        """Stop now if a signal came that no step was left to act on (every worker calls this
        after its last step; they decide together).

        Args:
          position: where training ended (max_epochs finished, step 0); its checkpoint is
            written already, so nothing is saved again.

        Raises:
          TrainingStopped: a worker got a stop signal.
        """
        if distribute.any_worker(self.signals.requested.is_set(), self._dist):
            self._position = position
            self._save()
            self._exit()

    def _save(self) -> None:
        self._checkpoint.save(self._position.epoch, self._position.step)

    def _exit(self) -> None:
        self._stopped = True
        epoch, step = self._position.epoch + 1, self._position.step
        if step == 0 and epoch > 1:  # at an epoch boundary: the end of the previous epoch
            epoch, step = epoch - 1, self._steps_per_epoch
        raise TrainingStopped(
            f"stopped by {self.signals.name or 'a signal to another worker'} at epoch {epoch} "
            f"step {step}; "
            f"checkpoint {self._checkpoint.last_saved}; rerun the same command to resume"
        )

    def close(self) -> None:
        """End the watcher threads; give the signals back unless the run stopped on one (then
        later signals stay recorded and ignored until the process ends)."""
        compat.stop_preemption_watchers(self._handler)  # a no-op once the handler stopped them
        if not self._stopped:
            self.signals.restore()

    def __enter__(self) -> GracefulStop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
