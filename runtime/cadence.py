"""When training writes a checkpoint: every N epochs, every N steps, every M minutes.

- `--save_checkpoint_freq N`: after every N-th epoch and the last one (as before).
- `--save_checkpoint_steps N`: after every N-th step of the run (steps counted from the start of
  the run, so a resumed run saves where the uninterrupted one would); off by default.
- `--save_checkpoint_minutes M` (default 30, 0 = off): when M minutes passed since the last
  checkpoint of this process (or its start), checked every `--log_steps` steps.
- `--keep_checkpoints K` (default 3): the newest K checkpoints are kept, of every kind.

A signal loses no training (runtime.preemption); the clock bounds what a hard kill (SIGKILL,
node failure, out of memory) loses. NOTE: 30 minutes is a time, not an epoch count, because an
epoch's length varies by two orders of magnitude: a v2-S epoch of ImageNet on 8 GPUs takes a
few minutes, a B7 epoch on one GPU hours, so `--save_checkpoint_freq 5` lost up to hours. The
cost is small at that interval (docs/reliability.md has the checkpoint sizes and write times).

Under MultiWorkerMirroredStrategy every worker must take part in every save. Step and epoch
counts are the same on every worker; clocks are not, so the workers decide together
(runtime.distribute.any_worker: one all-reduce of one number per check).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from runtime import distribute
from runtime.checkpoint import Position


@dataclasses.dataclass
class CheckpointCadence:
    """The checkpoint schedule of a run.

    Attributes:
      every_epochs: save after every this many epochs (and after the last).
      max_epochs: epochs of the run.
      every_steps: save after every this many steps of the run; None = off.
      every_minutes: save when this many minutes passed since the last save; 0 = off.
      check_every: read the clock every this many steps of an epoch.
    """

    every_epochs: int
    max_epochs: int
    every_steps: int | None = None
    every_minutes: float = 0.0
    check_every: int = 100
    _last_save: float = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._last_save = time.monotonic()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> CheckpointCadence:
        return cls(
            every_epochs=params["save_checkpoint_freq"],
            max_epochs=params["max_epochs"],
            every_steps=params["save_checkpoint_steps"],
            every_minutes=params["save_checkpoint_minutes"],
            check_every=params["log_steps"],
        )

    def epoch_due(self, done: int) -> bool:
        """Whether to save after `done` finished epochs."""
        return done % self.every_epochs == 0 or done == self.max_epochs

    def step_due(self, run_step: int, step: int, dist: distribute.Distribution) -> bool:
        """Whether to save after step `step` of an epoch, the `run_step`-th step of the run.

        Every worker must call this after every step (it may run an all-reduce).
        """
        if self.every_steps and run_step % self.every_steps == 0:
            return True
        if self.every_minutes > 0 and step % self.check_every == 0:
            late = time.monotonic() - self._last_save >= self.every_minutes * 60
            return distribute.any_worker(late, dist)
        return False

    def saved(self) -> None:
        """Restart the clock (call after every save)."""
        self._last_save = time.monotonic()


def after_step(epoch: int, step: int, steps_per_epoch: int) -> Position:
    """The position after step `step` (1-based) of 0-based `epoch`: the last step of an epoch
    is the start of the next, where the epoch checkpoint is."""
    if step >= steps_per_epoch:
        return Position(epoch + 1, 0)
    return Position(epoch, step)
