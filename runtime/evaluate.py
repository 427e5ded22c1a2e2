"""Evaluation: top-1 / top-5 accuracy, loss, throughput and per-batch latency percentiles.

`evaluate()` is the one evaluation loop of the application: `--mode eval` (`run_eval`),
evaluation during training and the inference benchmark all call it.

Latency percentiles are true order statistics of the per-batch step times (numpy's linear
interpolation). NOTE: NVIDIA's TF2 EfficientNet reference reported the mean of the fastest X% of
batches as "p90/p95/p99"; that understates tail latency, so it is not reproduced here.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dataloader import dataset_info
from runtime import components
from runtime.class_names import class_names_for, load_class_names
from runtime.eval_report import write_eval_report
from runtime.finetune import load_for_inference
from runtime.train_report import val_prefix, with_prefix
from utils.progress import ProgressBar

logger = logging.getLogger(__name__)


@functools.cache
def warn_untimed(steps: int, warmup_steps: int) -> None:
    """Once per process and size: a small validation set would repeat it every epoch."""
    logger.warning(
        "all %d evaluation steps were warm-up: no timing reported; evaluate more "
        "than %d batches for images/s and latency",
        steps,
        warmup_steps,
    )


PERCENTILES = (50, 90, 95, 99)


def latency_stats(latencies_s: Sequence[float], prefix: str = "latency") -> dict[str, float]:
    """Mean and true percentiles of per-batch latencies.

    Args:
      latencies_s: step times in seconds (warm-up steps already removed).
      prefix: key prefix, e.g. "latency" -> "latency_p90_ms".

    Returns:
      `{prefix}_mean_ms` and `{prefix}_p50_ms` ... `{prefix}_p99_ms` in milliseconds; NaN when
      there is no latency to summarize (never a made-up number).
    """
    values = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    if values.size == 0:
        return {
            f"{prefix}_mean_ms": math.nan,
            **{f"{prefix}_p{p}_ms": math.nan for p in PERCENTILES},
        }
    out = {f"{prefix}_mean_ms": float(values.mean())}
    for p, value in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        out[f"{prefix}_p{p}_ms"] = float(value)
    return out


def _batch_sums(
    model: keras.Model,
    images: tf.Tensor,
    labels: tf.Tensor,
    top_k: int,
    confusion_classes: int | None = None,
) -> dict[str, tf.Tensor]:
    """Per-replica sums (not means) so that partial batches and replicas weigh correctly.

    An empty batch sums to zero without running the model. Under MultiWorkerMirroredStrategy
    a worker whose validation shard ends first is fed empty batches while the others finish,
    and TF 2.21's CPU convolution passes an empty batch through unconvolved, so the next layer
    fails on its channel count.
    """

    def empty():
        zeros = {k: tf.constant(0.0) for k in ("loss_sum", "top1_sum", "top5_sum", "count")}
        if confusion_classes:
            zeros["confusion"] = tf.zeros([confusion_classes, confusion_classes], tf.float32)
        return zeros

    return tf.cond(
        tf.shape(images)[0] > 0,
        lambda: _nonempty_batch_sums(model, images, labels, top_k, confusion_classes),
        empty,
    )


def _nonempty_batch_sums(
    model: keras.Model,
    images: tf.Tensor,
    labels: tf.Tensor,
    top_k: int,
    confusion_classes: int | None = None,
) -> dict[str, tf.Tensor]:
    logits = tf.cast(model(images, training=False), tf.float32)
    num_classes = tf.shape(logits)[-1]
    if labels.shape.rank == logits.shape.rank:  # one-hot (or soft) labels
        onehot = tf.cast(labels, tf.float32)
        target = tf.argmax(onehot, axis=-1, output_type=tf.int32)
    else:
        target = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        onehot = tf.one_hot(target, num_classes, dtype=tf.float32)
    loss = tf.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=logits)
    target_logit = tf.gather(logits, target, axis=-1, batch_dims=1)
    # Rank counts every other class scoring >= the true class: ties count against the model,
    # so a constant (dead) model scores 0, not 100%; a NaN logit is never counted correct.
    others_ahead = tf.reduce_sum(tf.cast(logits >= target_logit[:, None], tf.int32), axis=-1) - 1
    finite = tf.math.is_finite(target_logit)
    top1 = tf.logical_and(others_ahead < 1, finite)
    topk = tf.logical_and(others_ahead < top_k, finite)
    sums = {
        "loss_sum": tf.reduce_sum(loss),
        "top1_sum": tf.reduce_sum(tf.cast(top1, tf.float32)),
        "top5_sum": tf.reduce_sum(tf.cast(topk, tf.float32)),
        "count": tf.cast(tf.shape(logits)[0], tf.float32),
    }
    if confusion_classes:
        # Rows: true class, columns: predicted class. A prediction counts on the diagonal
        # exactly when it counts for top-1 (a tie or a NaN logit goes off the diagonal).
        predicted = tf.where(top1, target, _runner_up(logits, target))
        sums["confusion"] = tf.math.confusion_matrix(
            target, predicted, confusion_classes, dtype=tf.float32
        )
    return sums


def _runner_up(logits: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """The best-scoring class other than `target` (the prediction of a wrong top-1)."""
    masked = tf.where(
        tf.one_hot(target, tf.shape(logits)[-1]) > 0,
        tf.constant(-math.inf, logits.dtype),
        tf.where(tf.math.is_nan(logits), -math.inf, logits),
    )
    return tf.argmax(masked, axis=-1, output_type=tf.int32)


def make_eval_step(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    top_k: int = 5,
    jit_compile: bool = False,
    confusion_classes: int | None = None,
) -> Callable:
    """Build the distributed evaluation step.

    Args:
      model: returns logits for images.
      strategy: the distribution strategy the model was built under.
      top_k: k of the top-k accuracy (5, or fewer when there are fewer classes).
      jit_compile: compile the per-replica forward pass with XLA.
      confusion_classes: also sum the [C, C] confusion matrix ("confusion") of C classes.

    Returns:
      A tf.function `(images, labels) -> dict of global sums` over all replicas.
    """
    replica_fn = tf.function(
        lambda x, y: _batch_sums(model, x, y, top_k, confusion_classes),
        jit_compile=jit_compile,
        reduce_retracing=True,
    )

    @tf.function(reduce_retracing=True)
    def step(images, labels):
        per_replica = strategy.run(replica_fn, args=(images, labels))
        return {
            k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in per_replica.items()
        }

    return step


def _num_steps(dataset: Any, num_steps: int | None) -> int | None:
    if num_steps is not None:
        return num_steps
    if isinstance(dataset, tf.data.Dataset):
        cardinality = int(dataset.cardinality())
        if cardinality >= 0:
            return cardinality
    return None


class EvalTally:
    """What `evaluate` accumulates over batches: global sums, confusion matrix and timing.

    Timing covers full batches after `warmup_steps`: a smaller last batch retraces and is not
    comparable with full batches.
    """

    def __init__(self, confusion_classes: int | None, warmup_steps: int):
        self.sums = {"loss_sum": 0.0, "top1_sum": 0.0, "top5_sum": 0.0, "count": 0.0}
        self.matrix = (
            np.zeros((confusion_classes, confusion_classes), np.int64)
            if confusion_classes
            else None
        )
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.latencies: list[float] = []
        self.timed_images = 0.0
        self.timed_wall = 0.0
        self.full_batch: float | None = None

    def add(
        self, result: Mapping[str, float], confusion: Any, wait_s: float, step_s: float
    ) -> None:
        """One batch: its sums, its [C, C] confusion sums (or None), input wait and step time."""
        if self.matrix is not None:
            self.matrix += np.rint(confusion.numpy()).astype(np.int64)
        for key, value in result.items():
            self.sums[key] += value
        self.full_batch = self.full_batch or result["count"]
        if self.steps >= self.warmup_steps and result["count"] == self.full_batch:
            self.latencies.append(step_s)
            self.timed_images += result["count"]
            self.timed_wall += wait_s + step_s
        self.steps += 1

    def results(self, num_replicas: int) -> dict[str, Any]:
        """The `evaluate` result dict (see there)."""
        count = self.sums["count"]
        images_per_sec = self.timed_images / self.timed_wall if self.timed_wall > 0 else math.nan
        extra = {"confusion_matrix": self.matrix} if self.matrix is not None else {}
        return {
            **extra,
            "top1": self.sums["top1_sum"] / count,
            "top5": self.sums["top5_sum"] / count,
            "loss": self.sums["loss_sum"] / count,
            "num_images": int(count),
            "num_steps": self.steps,
            "timed_steps": len(self.latencies),
            "images_per_sec": images_per_sec,
            "images_per_sec_per_device": images_per_sec / num_replicas,
            **latency_stats(self.latencies),
        }


def evaluate(
    model: keras.Model,
    dataset: Any,
    strategy: tf.distribute.Strategy | None = None,
    num_steps: int | None = None,
    warmup_steps: int = 1,
    jit_compile: bool = False,
    num_classes: int | None = None,
    progress: bool = True,
    desc: str = "eval",
    eval_step: Callable | None = None,
    confusion: bool = False,
) -> dict[str, Any]:
    """Evaluate `model` on `dataset` and time every batch.

    Args:
      model: a Keras model returning logits (float32 or float16; cast to float32 here).
      dataset: a tf.data.Dataset of (images, labels) batches, labels one-hot [B, C] or integer
        [B]; or a distributed dataset from `strategy.distribute_datasets_from_function`. A plain
        dataset under a multi-replica strategy is split across replicas (its batch is global).
      strategy: the strategy the model lives in; None = the current (default) strategy.
      num_steps: stop after this many batches; None = until the dataset ends.
      warmup_steps: leading batches left out of the timing (tracing / XLA compilation); their
        images still count for accuracy.
      jit_compile: XLA for the forward pass (on for GPU, off for CPU: XLA on CPU is slower).
      num_classes: for top-k with fewer than 5 classes; None = read from the model output.
      progress: show a progress bar with ETA.
      desc: progress bar label.
      eval_step: a step from `make_eval_step` to reuse across calls (evaluation every epoch
        then traces / compiles once); None builds one.

    Returns:
      top1, top5 and loss (means over every evaluated image; accuracies are fractions),
      num_images, num_steps, timed_steps, images_per_sec (wall clock, input pipeline included,
      warm-up excluded), images_per_sec_per_device, and latency_mean_ms / latency_p{50,90,95,99}_ms
      over timed full batches (compute and result transfer, input wait excluded).

    Raises:
      ValueError: the dataset yields no batch.
    """
    strategy = strategy or tf.distribute.get_strategy()
    total_steps = _num_steps(dataset, num_steps)
    if isinstance(dataset, tf.data.Dataset) and strategy.num_replicas_in_sync > 1:
        dataset = strategy.experimental_distribute_dataset(dataset)
    if num_classes is None:
        num_classes = int(model.output_shape[-1])
    step = eval_step or make_eval_step(
        model,
        strategy,
        top_k=min(5, num_classes),
        jit_compile=jit_compile,
        confusion_classes=num_classes if confusion else None,
    )
    tally = EvalTally(num_classes if confusion else None, warmup_steps)
    bar = ProgressBar(total_steps, desc=desc, enabled=progress)
    iterator = iter(dataset)
    while num_steps is None or tally.steps < num_steps:
        t_fetch = time.perf_counter()
        try:
            images, labels = next(iterator)
        except (StopIteration, tf.errors.OutOfRangeError):
            break
        t_start = time.perf_counter()
        outputs = step(images, labels)
        result = {k: float(v.numpy()) for k, v in outputs.items() if k != "confusion"}
        t_end = time.perf_counter()
        tally.add(
            result, outputs.get("confusion"), wait_s=t_start - t_fetch, step_s=t_end - t_start
        )
        bar.update(1)
    bar.close()
    if tally.steps == 0:
        raise ValueError("evaluation dataset is empty: no batch to evaluate")
    if not tally.latencies:
        warn_untimed(tally.steps, warmup_steps)
    return tally.results(strategy.num_replicas_in_sync)


def without_missing_timing(results: Mapping[str, Any]) -> dict[str, Any]:
    """`results` less the timing entries that are NaN (an evaluation too short to time)."""
    return {
        k: v
        for k, v in results.items()
        if not (
            k.startswith(("images_per_sec", "latency_")) and isinstance(v, float) and math.isnan(v)
        )
    }


def describe_speed(results: Mapping[str, Any]) -> str:
    """`N images/s, p99 latency M ms`, or "too few batches to time" when every batch was
    warm-up (the timing entries are NaN or absent)."""
    speed, p99 = results.get("images_per_sec", math.nan), results.get("latency_p99_ms", math.nan)
    if not (math.isfinite(speed) and math.isfinite(p99)):
        return "too few batches to time"
    return f"{speed:.1f} images/s, p99 latency {p99:.2f} ms"


def run_eval(params: Mapping[str, Any]) -> dict[str, Any]:
    """`--mode eval`: evaluate the trained model of model_dir on the validation split.

    Weights: `--pretrained` as published (runtime.finetune.load_for_inference); else
    `--predict_ckpt` when given (checkpoint prefix, directory or .weights.h5), else the newest
    training checkpoint of model_dir, EMA weights preferred when it has them.
    Results are logged as the DLLogger summary (`[]`), named by the weights as in training
    (runtime.train_report: "val." raw, "val_ema." EMA), appended to the run's log so training
    history is kept.

    Args:
      params: the resolved configuration (see main.py).

    Returns:
      The `evaluate` results plus "checkpoint" and "weights" ("ema" or "raw").

    Raises:
      RunError: no checkpoint to load, or it does not fit the model.
    """
    dist = components.setup_run(params)
    strategy, is_chief = dist.strategy, dist.is_chief
    info = dataset_info(components.data_config(params, training=False))
    with strategy.scope():
        model = components.create_model(params, info.num_classes)
    loaded = load_for_inference(model, params, is_chief)
    with components.open_metrics_log(params, is_chief, append=True) as log:
        log.log_params(params)
        results = evaluate(
            model,
            components.eval_dataset(params, strategy),
            strategy=strategy,
            jit_compile=bool(params["use_xla"]),
            num_classes=info.num_classes,
            progress=is_chief,
            confusion=True,
        )
        matrix = results.pop("confusion_matrix")
        report = _write_report(params, matrix, info) if is_chief else {}
        class_mean = {"mean_class_accuracy": report["mean_class_accuracy"]} if report else {}
        log.log([], with_prefix(results | class_mean, val_prefix(loaded["weights"] == "ema")))
    logger.info(
        "eval of %s (%s weights): top-1 %.4f, top-5 %.4f, loss %.4f, %s",
        loaded["path"],
        loaded["weights"],
        results["top1"],
        results["top5"],
        results["loss"],
        describe_speed(results),
    )
    return {**results, "checkpoint": loaded["path"], "weights": loaded["weights"], **report}


def _write_report(params: Mapping[str, Any], matrix: np.ndarray, info) -> dict[str, Any]:
    """Per-class accuracy and confusion matrix files (runtime.eval_report), class names from
    training's class_names.json, the data set, or the ImageNet-1k names."""
    saved = load_class_names(params["model_dir"])
    names = saved[1] if saved is not None and saved[0] == info.num_classes else None
    names = class_names_for(info.num_classes, names or info.class_names)
    report = write_eval_report(params["model_dir"], matrix, names)
    worst = ", ".join(f"{n} {a:.3f}" for n, a in report["worst_classes"])
    logger.info(
        "per-class accuracy: mean %.4f, lowest: %s; confusion matrix in %s%s",
        report["mean_class_accuracy"],
        worst,
        report["confusion_csv"],
        f" and {report['confusion_png']}" if report["confusion_png"] else "",
    )
    return report
