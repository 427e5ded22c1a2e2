"""Learning-rate schedules with linear warm-up, as in the EfficientNet training recipes.

The schedule is a pure function of the optimizer's update count, so a resumed run continues
on exactly the same curve (the count is part of the checkpoint). Under gradient accumulation
the count advances once per *effective* step, so warm-up and decay see the effective batch.

Kinds (after `warmup_steps` of linear ramp from 0 to the peak):
- exponential: peak * decay_rate ** floor(t / decay_steps) (staircase, as in Tan & Le 2019,
  "EfficientNet", rate 0.97 every 2.4 epochs).
- cosine: half a cosine from the peak to 0 at the last step (Loshchilov & Hutter 2017).
- piecewise: constant, multiplied by decay_rate at 1x, 2x and 3x decay_steps (the ResNet-style
  30/60/90-epoch drops when lr_decay_epochs=30, lr_decay_rate=0.1).
- linearcosine: TF1's `linear_cosine_decay` (Bello et al. 2017, "Neural Optimizer Search"),
  num_periods=0.5, alpha=0, beta=0.001.
where t counts steps after warm-up (`origin="warmup_end"`, NVIDIA's TF2 ConvNets:
`WarmupDecaySchedule` evaluates the decay at `step - warmup_steps`) or from step 0
(`origin="start"`, google/automl `WarmupLearningRateSchedule`: the warm-up replaces the first
steps of a curve that starts at step 0, so exponential decay is 0.97 ** (5 / 2.4) = 6% lower
after the default warm-up). Step counts are not rounded: NVIDIA's `decay_steps` is
`lr_decay_epochs * steps_per_epoch` as a float (748.8 for 2.4 x 312), so the staircase drops
at the same updates as NVIDIA's.

Fine-tuning's second phase (`--unfreeze_epoch`, runtime/finetune.py) ramps the run's schedule up
from 0 again (`RewarmSchedule`, built by `with_rewarm`).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from utils.choices import SCHEDULE_ORIGINS, SCHEDULES  # noqa: F401 (re-exported)

# The recipes quote lr_init for a global batch of 128 (NVIDIA's convention).
REFERENCE_BATCH_SIZE = 128
PIECEWISE_DROPS = 3


def scaled_learning_rate(lr_init: float, global_batch_size: int) -> float:
    """The peak learning rate for a global (effective) batch, linear scaling rule.

    Args:
      lr_init: learning rate for a global batch of 128.
      global_batch_size: per-replica batch * replicas * gradient-accumulation steps.

    Returns:
      lr_init * global_batch_size / 128.
    """
    return lr_init * global_batch_size / REFERENCE_BATCH_SIZE


class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak_lr`, then one of `SCHEDULES`.

    Args:
      kind: one of SCHEDULES.
      peak_lr: learning rate at the end of warm-up (already batch-scaled).
      total_steps: optimizer updates of the whole run (cosine and linearcosine reach their
        end value there).
      warmup_steps: updates of linear warm-up (0 for none; may be fractional).
      decay_steps: updates between exponential / piecewise drops (may be fractional).
      decay_rate: multiplier per drop.
      origin: "warmup_end" (NVIDIA: the decay curve starts when warm-up ends) or "start"
        (automl: it starts at step 0 and warm-up overrides its first steps).
    """

    def __init__(
        self,
        kind: str,
        peak_lr: float,
        total_steps: int,
        warmup_steps: float = 0,
        decay_steps: float = 1,
        decay_rate: float = 0.97,
        origin: str = "warmup_end",
    ) -> None:
        super().__init__()
        if kind not in SCHEDULES:
            raise ValueError(f"unknown lr_decay {kind!r}; valid: {', '.join(SCHEDULES)}")
        if origin not in SCHEDULE_ORIGINS:
            raise ValueError(
                f"unknown lr_decay_origin {origin!r}; valid: {', '.join(SCHEDULE_ORIGINS)}"
            )
        self.kind = kind
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = float(warmup_steps)
        self.decay_steps = max(float(decay_steps), 1.0)
        self.decay_rate = float(decay_rate)
        self.origin = origin

    def _decayed(self, t):
        """Learning rate `t` steps after warm-up (float32 tensor)."""
        peak = self.peak_lr
        if self.kind == "exponential":
            return peak * ops.power(self.decay_rate, ops.floor(t / self.decay_steps))
        if self.kind == "piecewise":
            drops = ops.minimum(ops.floor(t / self.decay_steps), float(PIECEWISE_DROPS))
            return peak * ops.power(self.decay_rate, drops)
        offset = self.warmup_steps if self.origin == "warmup_end" else 0.0
        span = float(max(self.total_steps - offset, 1))
        progress = ops.minimum(t, span) / span
        if self.kind == "cosine":
            return 0.5 * peak * (1.0 + ops.cos(math.pi * progress))
        # linearcosine: num_periods=0.5, alpha=0.0, beta=0.001 (TF1 defaults).
        linear = 1.0 - progress
        cosine = 0.5 * (1.0 + ops.cos(math.pi * 2.0 * 0.5 * progress))
        return peak * (linear * cosine + 0.001)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        offset = self.warmup_steps if self.origin == "warmup_end" else 0.0
        t = ops.maximum(step - offset, 0.0)
        decayed = self._decayed(t)
        if self.warmup_steps <= 0:
            return decayed
        warm = self.peak_lr * step / float(self.warmup_steps)
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict:
        return {
            "kind": self.kind,
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "origin": self.origin,
        }


def build_schedule(
    kind: str,
    lr_init: float,
    global_batch_size: int,
    steps_per_epoch: int,
    max_epochs: int,
    warmup_epochs: float,
    decay_epochs: float,
    decay_rate: float,
    origin: str = "warmup_end",
) -> WarmupDecaySchedule:
    """Build the run's schedule from epoch-denominated flags.

    Args:
      kind: one of SCHEDULES (`--lr_decay`).
      lr_init: `--lr_init`, the rate for a global batch of 128.
      global_batch_size: effective global batch (replicas and accumulation included).
      steps_per_epoch: optimizer updates per epoch.
      max_epochs: epochs of the whole run.
      warmup_epochs: `--lr_warmup_epochs`.
      decay_epochs: `--lr_decay_epochs`.
      decay_rate: `--lr_decay_rate`.
      origin: `--lr_decay_origin`, see WarmupDecaySchedule.

    Returns:
      A WarmupDecaySchedule over optimizer updates.
    """
    return WarmupDecaySchedule(
        kind=kind,
        peak_lr=scaled_learning_rate(lr_init, global_batch_size),
        total_steps=max_epochs * steps_per_epoch,
        warmup_steps=warmup_epochs * steps_per_epoch,
        decay_steps=decay_epochs * steps_per_epoch,
        decay_rate=decay_rate,
        origin=origin,
    )


@keras.saving.register_keras_serializable(package="efficientnet")
class RewarmSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`base` learning rate, ramped linearly from 0 again over `warmup_steps` from `restart_step`.

    Args:
      base: the run's schedule.
      restart_step: optimizer update at which the second warm-up starts (the unfreeze epoch).
      warmup_steps: length of the second warm-up; 0 = none.
    """

    def __init__(self, base, restart_step: int, warmup_steps: int) -> None:
        super().__init__()
        self.base = base
        self.restart_step = int(restart_step)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        lr = self.base(step)
        if self.warmup_steps <= 0:
            return lr
        since = keras.ops.cast(step, "float32") - float(self.restart_step)
        ramp = keras.ops.clip(since / float(self.warmup_steps), 0.0, 1.0)
        return keras.ops.where(since < 0, lr, lr * ramp)

    def get_config(self) -> dict:
        return {
            "base": keras.saving.serialize_keras_object(self.base),
            "restart_step": self.restart_step,
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config):
        return cls(
            keras.saving.deserialize_keras_object(config["base"]),
            config["restart_step"],
            config["warmup_steps"],
        )


def with_rewarm(
    schedule: keras.optimizers.schedules.LearningRateSchedule,
    restart_epoch: int | None,
    warmup_epochs: float,
    steps_per_epoch: int,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """`schedule` with a second warm-up over `warmup_epochs` from `restart_epoch` (fine-tuning's
    `--unfreeze_epoch`, runtime/finetune.py); `schedule` itself when `restart_epoch` is None."""
    if restart_epoch is None:
        return schedule
    return RewarmSchedule(
        schedule,
        restart_epoch * steps_per_epoch,
        int(round(warmup_epochs * steps_per_epoch)),
    )
