"""The training step: our own `tf.function` + `strategy.run` step, with gradient accumulation.

Why not `model.fit`: on TF 2.21 / Keras 3.15 `fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585) and the optimizer's `gradient_accumulation_steps` fails under every
tf.distribute strategy (keras-team/keras#20582, merge_call inside a cond). The step below is the
same code with no strategy, MirroredStrategy and MultiWorkerMirroredStrategy:

1. each replica runs `grad_accum_steps` micro-batches in a `tf.while_loop`, summing gradients of
   `sum(per-example loss) / effective global batch` (plus the L2 penalty / replicas / steps), so
   the summed gradient is the gradient of the mean loss over the effective batch;
2. one all-reduce (SUM) per effective step, in float16 with `--fp16_compression`, scaled per
   tensor so it neither overflows nor flushes (runtime.distribute.all_reduce_gradients);
3. `optimizer.apply`: a LossScaleOptimizer unscales and skips non-finite steps (float16), the
   optimizer clips the *global* norm of the reduced gradient (`global_clipnorm`) and updates;
   its update count drives the LR schedule, so warm-up and decay see effective steps;
4. in cross-replica context: EMA update and the running train metrics.

This module owns the step and what it computes (`StepConfig`, `TrainMetrics`,
`make_train_step`); runtime.train builds the run and runs the epoch loop around it, and
runtime.benchmark times it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from config.defaults import STEP_DEFAULTS
from dataloader.config import DataConfig
from dataloader.mixing import mix_batch
from runtime import advprop, compat, distribute
from utils.ema import ExponentialMovingAverage
from utils.optimizer_config import OptimizerConfig
from utils.optimizers import inner_optimizer, l2_penalty, uses_l2_penalty


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the training step computes besides forward/backward.

    Fields named like a flag default to that flag's default, taken from where the flag takes
    it (config.defaults.STEP_DEFAULTS, DataConfig); the derived ones default to off. A run
    builds its config with `from_params`.

    Attributes:
      grad_accum_steps: micro-batches per optimizer update; inputs then carry a leading axis
        of this size ([A, B, H, W, 3]).
      label_smoothing: label smoothing of the cross-entropy.
      l2_weight_decay: L2 penalty coefficient added to the loss (0 when the optimizer decays
        weights itself, see utils.optimizers).
      mixup_alpha: MixUp alpha applied in the step (deferred mixing); 0 for none.
      cutmix_alpha: CutMix alpha applied in the step (deferred mixing); 0 for none.
      jit_compile: compile the per-replica step with XLA.
      advprop: add the adversarial loss through the auxiliary BNs; None for none.
    """

    grad_accum_steps: int = STEP_DEFAULTS["grad_accum_steps"]
    label_smoothing: float = STEP_DEFAULTS["label_smoothing"]
    l2_weight_decay: float = 0.0
    mixup_alpha: float = DataConfig.mixup_alpha
    cutmix_alpha: float = DataConfig.cutmix_alpha
    jit_compile: bool = False
    advprop: advprop.AdvPropConfig | None = None  # --advprop: the attack (runtime/advprop.py)

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], advprop_config: advprop.AdvPropConfig | None = None
    ) -> StepConfig:
        """The step of a run's resolved params.

        MixUp/CutMix stay off: with --defer_img_mixing the epoch loop sets each stage's alphas
        (runtime.train), otherwise the input pipeline mixes.

        Args:
          params: the resolved configuration (see main.py).
          advprop_config: the attack of `runtime.advprop.setup` (it needs the model); None = off.
        """
        optimizer = OptimizerConfig.from_params(params)
        return cls(
            grad_accum_steps=params["grad_accum_steps"],
            label_smoothing=params["label_smoothing"],
            l2_weight_decay=params["weight_decay"] if uses_l2_penalty(optimizer) else 0.0,
            mixup_alpha=0.0,
            cutmix_alpha=0.0,
            jit_compile=params["use_xla"],
            advprop=advprop_config,
        )


class TrainMetrics:
    """Running sums of the train loss and top-1 over the steps since the last `reset`.

    Plain (not mirrored) variables updated in cross-replica context with already-reduced
    values, so every strategy reads the same numbers. A NaN loss stays NaN in the sum, so a
    check at log time catches a NaN of any step since the last check.
    """

    def __init__(self) -> None:
        with tf.init_scope():
            self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)
            self.correct = tf.Variable(0.0, dtype=tf.float64, trainable=False)
            self.count = tf.Variable(0.0, dtype=tf.float64, trainable=False)

    def update(self, loss_sum, correct, count) -> None:
        self.loss_sum.assign_add(tf.cast(loss_sum, tf.float64))
        self.correct.assign_add(tf.cast(correct, tf.float64))
        self.count.assign_add(tf.cast(count, tf.float64))

    def reset(self) -> None:
        for var in (self.loss_sum, self.correct, self.count):
            var.assign(0.0)

    def state(self) -> dict[str, tf.Variable]:
        """The sums by name, for the training checkpoint (a mid-epoch resume keeps them)."""
        return {"loss_sum": self.loss_sum, "correct": self.correct, "count": self.count}

    def result(self) -> dict[str, float]:
        """{"loss", "top1", "count"}; loss is NaN when no step ran."""
        count = float(self.count.numpy())
        if count == 0:
            return {"loss": math.nan, "top1": math.nan, "count": 0.0}
        return {
            "loss": float(self.loss_sum.numpy()) / count,
            "top1": float(self.correct.numpy()) / count,
            "count": count,
        }


def _skip_optimizer_all_reduce(optimizer: keras.optimizers.Optimizer) -> None:
    """Make the optimizer use gradients as given instead of summing them over replicas again.

    Keras 3.15's TFOptimizer._backend_update_step all-reduces (sums) gradients in replica
    context, *after* `global_clipnorm` was applied to the per-replica gradients. The step
    reduces once itself (once per accumulated step, optionally compressed) before
    unscaling/clipping, so the optimizer must not reduce a second time.
    tests/runtime/test_step.py checks MirroredStrategy(2 replicas) == no strategy; runtime/compat.py
    fails in one line when Keras no longer reduces through the patched method.
    """
    compat.skip_optimizer_all_reduce(inner_optimizer(optimizer))


def make_train_step(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    *,
    dist: distribute.Distribution | None = None,
    config: StepConfig = StepConfig(),
    metrics: TrainMetrics | None = None,
    ema: ExponentialMovingAverage | None = None,
) -> Callable:
    """Build the distributed training step (also used by the training benchmark).

    Args:
      model: the model (built; its variables created under `dist.strategy.scope()`).
      optimizer: a built optimizer (possibly a LossScaleOptimizer).
      dist: the run's Distribution (strategy, float16 all-reduce); None =
        `Distribution.current()`.
      config: accumulation, loss and compilation settings.
      metrics: running train metrics to update; None to skip.
      ema: the EMA to update after each optimizer update; None when off.

    Returns:
      A tf.function `step((images, labels))` taking one element of the (distributed) train
      dataset: per-replica [B, H, W, 3] / [B, C], or [A, B, ...] with accumulation.
    """
    dist = dist or distribute.Distribution.current()
    strategy = dist.strategy
    variables = list(model.trainable_variables)
    _skip_optimizer_all_reduce(optimizer)
    # The loss of one micro-batch is divided by this times its batch size, so that the sum over
    # micro-batches and replicas is the mean over the effective global batch.
    loss_divisor = float(dist.num_replicas * config.grad_accum_steps)
    micro_step = _micro_step_fn(model, optimizer, variables, config, loss_divisor)

    def replica_step(images, labels):
        grads, loss_sum, correct, count = _accumulate(
            micro_step, images, labels, variables, config.grad_accum_steps
        )
        grads = distribute.all_reduce_gradients(grads, dist)
        optimizer.apply(grads, variables)
        return loss_sum, correct, count

    # XLA compiles the per-replica computation (XLA cannot compile the cross-replica part);
    # without XLA a nested tf.function only adds tracing time.
    replica_fn = tf.function(replica_step, jit_compile=True) if config.jit_compile else replica_step

    @tf.function
    def step(inputs):
        images, labels = inputs
        per_replica = strategy.run(replica_fn, args=(images, labels))
        loss_sum, correct, count = (
            strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in per_replica
        )
        if ema is not None:
            ema.update(optimizer.iterations)
        if metrics is not None:
            metrics.update(loss_sum, correct, count)

    return step


def _micro_step_fn(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    variables: Sequence[tf.Variable],
    config: StepConfig,
    loss_divisor: float,
) -> Callable:
    """`micro_step(images, labels) -> (grads, loss sum, correct, count)` of one micro-batch.

    The loss is `sum(per-example loss) / (batch * loss_divisor)` plus the L2 penalty and the
    model's own losses / `loss_divisor`, scaled by the optimizer's loss scale; MixUp/CutMix
    (deferred mixing) and the AdvProp attack run first when configured.
    """

    def micro_step(images, labels):
        labels = tf.cast(labels, tf.float32)
        if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
            images, labels = mix_batch(images, labels, config.mixup_alpha, config.cutmix_alpha)
        if config.advprop is not None:
            adv_images = advprop.adversarial_images(
                model, images, labels, config.advprop, config.label_smoothing, optimizer.scale_loss
            )
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            per_example = keras.losses.categorical_crossentropy(
                labels, logits, from_logits=True, label_smoothing=config.label_smoothing
            )
            if config.advprop is not None:  # AdvProp: loss = clean + adversarial
                per_example += advprop.adversarial_loss(
                    model, adv_images, labels, config.label_smoothing
                )
            batch = tf.cast(tf.shape(per_example)[0], tf.float32)
            loss = tf.reduce_sum(per_example) / (batch * loss_divisor)
            penalty = l2_penalty(variables, config.l2_weight_decay)
            if model.losses:
                penalty += tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
            loss += penalty / loss_divisor
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        grads = [
            tf.zeros_like(v.value) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, variables, strict=True)
        ]
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1)), tf.float32)
        )
        return grads, tf.reduce_sum(per_example), correct, batch

    return micro_step


def _accumulate(
    micro_step: Callable, images, labels, variables: Sequence[tf.Variable], accum: int
) -> tuple:
    """(grads, loss sum, correct, count) summed over the `accum` micro-batches of one replica.

    With accumulation the inputs carry a leading axis of `accum` micro-batches, run in a
    `tf.while_loop`; without it the inputs are one micro-batch.
    """
    if accum == 1:
        return micro_step(images, labels)

    def body(i, grads, loss_sum, correct, count):
        micro_grads, micro_loss, micro_correct, micro_count = micro_step(images[i], labels[i])
        return (
            i + 1,
            [a + b for a, b in zip(grads, micro_grads, strict=True)],
            loss_sum + micro_loss,
            correct + micro_correct,
            count + micro_count,
        )

    zeros = [tf.zeros_like(v.value) for v in variables]
    _, grads, loss_sum, correct, count = tf.while_loop(
        lambda i, *_: i < accum,
        body,
        (tf.constant(0), zeros, tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)),
    )
    return grads, loss_sum, correct, count
