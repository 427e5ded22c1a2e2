"""Training: build the run, then the epoch loop (stages, freezing, logging, checkpoints, eval).

`build_run` makes what a run works with (Distribution, model, optimizer with its LR schedule,
EMA, checkpoint, the stages of runtime.stages, the step configuration of runtime.step);
`train` resumes from the newest checkpoint (at its epoch and step) and runs the epochs: per
stage a new input pipeline (runtime.train_input) and a new training step
(runtime.step.make_train_step), each step through the graceful stop of runtime.preemption, a
log line every `log_steps`, a checkpoint (runtime.cadence) and an evaluation when due, and at
the end the better of the raw and EMA weights exported
(runtime.checkpoint.save_weights_atomically).

Metric names (DLLogger): train.loss (label-smoothed cross-entropy, without the L2 term),
train.top1 (against the argmax of the possibly mixed labels), train.lr (of the next update),
train.images_per_sec, and the eval results of runtime.evaluate named by the weights evaluated
(runtime.train_report): val.* raw, val_ema.* EMA (val.top1, val_ema.top5, ...); the final
summary has both and best.* when EMA is on. The run ends with runtime.train_report's block.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras

from dataloader import DatasetInfo, dataset_info, skipping
from runtime import advprop, distribute, finetune, train_report
from runtime.cadence import CheckpointCadence, after_step
from runtime.checkpoint import (
    Position,
    TrainingCheckpoint,
    checkpoint_dir,
    save_weights_atomically,
)
from runtime.checkpoint_integrity import listed_checkpoints
from runtime.class_names import save_class_names
from runtime.components import (
    create_model,
    data_config,
    eval_dataset,
    open_metrics_log,
    setup_run,
    small_data_bn_momentum,
    write_json,
)
from runtime.errors import NonFiniteLossError, RunError
from runtime.evaluate import evaluate, make_eval_step, without_missing_timing
from runtime.preemption import GracefulStop
from runtime.run_params import params_filename
from runtime.stages import Stage, split_at, stage_for_epoch, stages_from_params
from runtime.step import StepConfig, TrainMetrics, make_train_step
from runtime.train_input import train_dataset
from utils.dllogger import MetricsLogger, Verbosity, print_result, read_log
from utils.ema import ExponentialMovingAverage
from utils.fileio import atomic_dir
from utils.optimizers import OptimizerConfig, build_optimizer, current_learning_rate
from utils.precision import needs_loss_scaling
from utils.progress import ProgressBar
from utils.schedules import build_schedule, with_rewarm

logger = logging.getLogger(__name__)

FINAL_WEIGHTS = finetune.FINAL_WEIGHTS_FILE
_METRIC_FORMATS = {
    "train.loss": {"format": ":.4f"},
    "train.top1": {"format": ":.4f"},
    "train.lr": {"format": ":.6g"},
    "train.images_per_sec": {"format": ":.1f", "unit": "img/s"},
    "train.epoch_time_s": {"format": ":.1f", "unit": "s"},
    "val.top1": {"format": ":.4f"},
    "val.top5": {"format": ":.4f"},
    "val.loss": {"format": ":.4f"},
    "val_ema.top1": {"format": ":.4f"},
    "val_ema.top5": {"format": ":.4f"},
    "val_ema.loss": {"format": ":.4f"},
}
SAVED_MODEL_DIR = "saved_model"


@dataclasses.dataclass
class TrainRun:
    """Everything the epoch loop of one run works with."""

    params: Mapping[str, Any]
    dist: distribute.Distribution
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    ema: ExponentialMovingAverage | None
    checkpoint: TrainingCheckpoint
    stages: tuple[Stage, ...]
    steps_per_epoch: int
    global_batch: int
    num_classes: int
    step_config: StepConfig
    log: MetricsLogger
    metrics: TrainMetrics
    cadence: CheckpointCadence
    _eval_step: Callable | None = None

    def evaluate(self, desc: str) -> dict[str, float]:
        """Evaluate the model's current weights on the validation split (one traced step)."""
        if self._eval_step is None:
            self._eval_step = make_eval_step(
                self.model,
                self.dist.strategy,
                top_k=min(5, self.num_classes),
                jit_compile=self.params["use_xla"],
            )
        return without_missing_timing(
            evaluate(
                self.model,
                eval_dataset(self.params, self.dist.strategy),
                strategy=self.dist.strategy,
                jit_compile=self.params["use_xla"],
                num_classes=self.num_classes,
                progress=self.dist.is_chief,
                desc=desc,
                eval_step=self._eval_step,
            )
        )


def build_run(params: Mapping[str, Any]) -> TrainRun:
    """Build everything a training run (or the training benchmark) works with.

    Args:
      params: the resolved configuration (see main.py).

    Returns:
      The TrainRun: Distribution, model, optimizer with its LR schedule, EMA, checkpoint,
      stages, step configuration and the chief's metrics log (appending when resuming).
    """
    dist = setup_run(params)
    info = dataset_info(data_config(params, training=True))
    accum = params["grad_accum_steps"]
    global_batch = dist.global_batch_size(params["train_batch_size"], accum)
    steps_per_epoch = params["steps_per_epoch"] or max(math.ceil(info.num_train / global_batch), 1)
    momentum = small_data_bn_momentum(params, steps_per_epoch)
    if momentum != params["model"]["bn_momentum"]:
        params = {**params, "model": {**params["model"], "bn_momentum": momentum}}
    opt_config = OptimizerConfig.from_params(params)
    freeze = finetune.FreezePlan.from_params(params)
    # One answer for the whole run: the newest listed checkpoint counts even when it is
    # damaged (restore_latest falls back to an intact older one).
    listed = listed_checkpoints(checkpoint_dir(params["model_dir"]))
    resume_from = listed[0] if listed and params["resume_checkpoint"] else None
    with dist.strategy.scope():
        model = create_model(params, info.num_classes)
        _start_from_pretrained(params, model, resume_from)
        advprop_config = advprop.setup(params, model)  # None without --advprop
        # The optimizer holds slots for every variable trained in some epoch of the run.
        freeze.apply(model, epoch=None)
        optimizer, schedule = _build_optimizer(
            params, opt_config, model, global_batch, steps_per_epoch
        )
        decay = params["moving_average_decay"]
        ema = ExponentialMovingAverage(model, decay) if decay > 0 else None
    metrics = TrainMetrics()
    checkpoint = TrainingCheckpoint(
        params["model_dir"],
        model,
        optimizer,
        ema,
        dist=dist,
        max_to_keep=params["keep_checkpoints"],
        running=metrics.state(),
    )
    step_config = StepConfig.from_params(params, advprop_config)
    log = open_metrics_log(params, dist.is_chief, append=resume_from is not None)
    stages = split_at(stages_from_params(params), freeze.unfreeze_epoch)
    derived = train_report.derived_values(
        dist, global_batch, steps_per_epoch, schedule, stages, params["max_epochs"]
    )
    _announce_run(params, dist, info, derived)
    return TrainRun(
        params,
        dist,
        model,
        optimizer,
        ema,
        checkpoint,
        stages,
        steps_per_epoch,
        global_batch,
        info.num_classes,
        step_config,
        log,
        metrics,
        CheckpointCadence.from_params(params),
    )


def _build_optimizer(
    params: Mapping[str, Any],
    opt_config: OptimizerConfig,
    model: keras.Model,
    global_batch: int,
    steps_per_epoch: int,
) -> tuple[keras.optimizers.Optimizer, Any]:
    """The built optimizer (loss scaling under float16) and its LR schedule (under the scope)."""
    schedule = with_rewarm(
        build_schedule(
            params["lr_decay"],
            params["lr_init"],
            global_batch,
            steps_per_epoch,
            params["max_epochs"],
            params["lr_warmup_epochs"],
            params["lr_decay_epochs"],
            params["lr_decay_rate"],
            params["lr_decay_origin"],
        ),
        params["unfreeze_epoch"],
        params["lr_warmup_epochs"],
        steps_per_epoch,
    )
    policy = keras.mixed_precision.global_policy().name
    optimizer = build_optimizer(
        opt_config, schedule, model.trainable_variables, loss_scaling=needs_loss_scaling(policy)
    )
    optimizer.build(model.trainable_variables)
    return optimizer, schedule


def _announce_run(
    params: Mapping[str, Any],
    dist: distribute.Distribution,
    info: DatasetInfo,
    derived: Mapping[str, Any],
) -> None:
    """Log the derived values once; on the chief write class_names.json and add them to
    params.json (written before the strategy existed)."""
    for line in train_report.announcement(params, derived):
        logger.info("%s", line)
    if dist.is_chief:
        save_class_names(params["model_dir"], info.num_classes, info.class_names)
        # params.json was written before the strategy existed; add what a user checks a run by.
        write_json(
            os.path.join(params["model_dir"], params_filename(params["mode"])),
            {**params, "derived": derived},
        )


def _start_from_pretrained(
    params: Mapping[str, Any], model: keras.Model, resume_from: str | None
) -> None:
    """Load --pretrained weights unless the run resumes from its own checkpoint."""
    if not params.get("pretrained"):
        return
    if resume_from:
        logger.info(
            "--pretrained %s not loaded: resuming from %s", params["pretrained"], resume_from
        )
        return
    finetune.load_pretrained(model, params["pretrained"], params["model"])


def _check_finite(loss: float, epoch: int, step: int, run: TrainRun) -> None:
    if not math.isfinite(loss):
        latest = run.checkpoint.latest or "none (no checkpoint was written yet)"
        raise NonFiniteLossError(
            f"training loss became {loss} at epoch {epoch}, step {step}; stopped without "
            f"saving. Last good checkpoint: {latest}. Lower --lr_init, set --grad_clip_norm, "
            "or check the input data"
        )


def _train_epochs(run: TrainRun, start: Position, with_eval: bool, stop: GracefulStop) -> None:
    """Train from `start` (finished epochs, steps into the next) to max_epochs, logging and
    checkpointing; `stop` saves and raises TrainingStopped on a signal."""
    for stage in run.stages:
        if stage.end_epoch <= start.epoch:
            continue
        first = max(stage.first_epoch, start.epoch)
        _apply_freeze(run, stage, first)
        # Seeded runs read every epoch from its own seed, so that a resumed run reads what the
        # uninterrupted one did (the iterator's position is not part of the checkpoint).
        per_epoch = run.params["seed"] is not None
        iterator = None if per_epoch else iter(train_dataset(run, stage))
        step_fn = _stage_train_step(run, stage, run.metrics)
        for epoch in range(first, stage.end_epoch):
            done = start.step if epoch == start.epoch else 0
            if per_epoch:
                iterator = iter(
                    train_dataset(run, stage, epoch, announce=epoch == first, skip_steps=done)
                )
            result, epoch_time = _train_epoch(run, stage, epoch, done, iterator, step_fn, stop)
            _end_epoch(run, stage, epoch + 1, result, epoch_time, with_eval)
        del iterator, step_fn  # drop the stage's pipeline and traced step before the next stage


def _apply_freeze(run: TrainRun, stage: Stage, first_epoch: int) -> None:
    """With --freeze_*: set which layers train from `first_epoch` of `stage`, and say so."""
    freeze = finetune.FreezePlan.from_params(run.params)
    if freeze.active:
        freeze.apply(run.model, first_epoch)
        logger.info(
            "%s, epochs %d-%d: %s",
            freeze.describe(first_epoch),
            first_epoch + 1,
            stage.end_epoch,
            finetune.describe_trainable(run.model),
        )


def _stage_train_step(run: TrainRun, stage: Stage, metrics: TrainMetrics) -> Callable:
    """The training step of `stage`: with deferred mixing, its MixUp/CutMix alphas."""
    mixing = (
        {"mixup_alpha": stage.mixup_alpha, "cutmix_alpha": stage.cutmix_alpha}
        if run.params["defer_img_mixing"]
        else {}
    )
    return make_train_step(
        run.model,
        run.optimizer,
        dist=run.dist,
        config=dataclasses.replace(run.step_config, **mixing),
        metrics=metrics,
        ema=run.ema,
    )


def _train_epoch(
    run: TrainRun,
    stage: Stage,
    epoch: int,
    done: int,
    iterator,
    step_fn: Callable,
    stop: GracefulStop,
) -> tuple[dict[str, float], float]:
    """Run steps `done` + 1.. of 0-based `epoch`, logging every log_steps steps and at the end,
    checkpointing when due. With `done` > 0 (resumed mid-epoch) the epoch's running metrics are
    the checkpoint's.

    Returns:
      The epoch's train metrics (`TrainMetrics.result` and the images/s of this process's
      steps) and the wall time of its steps in seconds.
    """
    metrics, steps = run.metrics, run.steps_per_epoch
    if done == 0:
        metrics.reset()
    bar = ProgressBar(
        steps,
        desc=f"epoch {epoch + 1}/{run.params['max_epochs']}",
        enabled=run.dist.is_chief,
        initial=done,
    )
    interval_start = epoch_start = time.perf_counter()
    interval_images = 0.0
    for step in range(done + 1, steps + 1):
        stop.run(step_fn, next(iterator), Position(epoch, step - 1))
        interval_images += run.global_batch
        bar.update(1)
        if step % run.params["log_steps"] == 0 or step == steps:
            now = _log_steps(run, stage, epoch, step, metrics, interval_start, interval_images)
            interval_start, interval_images = now, 0.0
        if run.cadence.step_due(epoch * steps + step, step, run.dist):
            position = after_step(epoch, step, steps)
            run.checkpoint.save(position.epoch, position.step)
            run.cadence.saved()
    bar.close()
    elapsed = time.perf_counter() - epoch_start
    images_per_sec = (steps - done) * run.global_batch / elapsed if elapsed > 0 else 0.0
    return {**metrics.result(), "images_per_sec": images_per_sec}, elapsed


def _log_steps(
    run: TrainRun,
    stage: Stage,
    epoch: int,
    step: int,
    metrics: TrainMetrics,
    interval_start: float,
    interval_images: float,
) -> float:
    """Stop on a non-finite loss, else log the running train metrics since the last log.

    Returns:
      The time (time.perf_counter) the logged interval ends at.
    """
    result = metrics.result()
    _check_finite(result["loss"], epoch + 1, step, run)
    now = time.perf_counter()
    record = {
        "train.loss": result["loss"],
        "train.top1": result["top1"],
        "train.lr": current_learning_rate(run.optimizer),
        "train.images_per_sec": interval_images / (now - interval_start),
        "stage": stage.index + 1,
        "image_size": stage.image_size,
    }
    run.log.log([epoch + 1, step], record, global_step=int(run.optimizer.iterations.numpy()))
    return now


def _end_epoch(
    run: TrainRun,
    stage: Stage,
    done: int,
    result: Mapping[str, float],
    epoch_time: float,
    with_eval: bool,
) -> None:
    """After `done` finished epochs: checkpoint and evaluate when due, log the epoch summary."""
    params = run.params
    max_epochs = params["max_epochs"]
    if run.cadence.epoch_due(done):
        run.checkpoint.save(done)
        run.cadence.saved()
    summary = {
        "train.loss": result["loss"],
        "train.top1": result["top1"],
        "train.lr": current_learning_rate(run.optimizer),
        "train.images_per_sec": result["images_per_sec"],
        "train.epoch_time_s": epoch_time,
        "stage": stage.index + 1,
    }
    if with_eval and (done % params["num_epochs_between_eval"] == 0 or done == max_epochs):
        summary.update(_evaluate_during_training(run))
    run.log.log([done], summary, global_step=int(run.optimizer.iterations.numpy()))
    skipping.report_pending(f"epoch {done}")  # the bad records of the train input, once


def _evaluate_during_training(run: TrainRun) -> dict[str, float]:
    """Evaluation during training uses the EMA weights when EMA is on (val_ema.* keys)."""
    if run.ema is None:
        return train_report.with_prefix(run.evaluate("eval"), train_report.RAW)
    with run.ema.averaged_weights():
        return train_report.with_prefix(run.evaluate("eval (EMA)"), train_report.EMA)


def _finish(run: TrainRun, with_eval: bool) -> dict[str, Any]:
    """Pick raw or EMA weights (by eval top-1 when evaluating), export them, return a summary."""
    params = run.params
    summary: dict[str, Any] = {
        "global_step": int(run.optimizer.iterations.numpy()),
        "epochs": params["max_epochs"],
    }
    use_ema = run.ema is not None
    if with_eval:
        logger.info(
            "training done: final evaluation of the %s weights on the validation split "
            "(building the eval input and tracing the eval step first)",
            "raw and EMA" if use_ema else "raw",
        )
        raw = run.evaluate("final eval (raw)")
        summary.update(train_report.with_prefix(raw, train_report.RAW))
        if run.ema is not None:
            with run.ema.averaged_weights():
                averaged = run.evaluate("final eval (EMA)")
            summary.update(train_report.with_prefix(averaged, train_report.EMA))
            use_ema = averaged["top1"] >= raw["top1"]
            best = averaged if use_ema else raw
            summary.update({f"best.{k}": v for k, v in best.items()})
        check_validation(summary, best if run.ema is not None else raw, run)
    summary["exported_weights"] = "ema" if use_ema else "raw"
    if use_ema:
        run.ema.copy_to_model()
    export_dir = distribute.chief_or_temp_dir(params["model_dir"], run.dist)
    weights_path = os.path.join(export_dir, FINAL_WEIGHTS)
    save_weights_atomically(run.model, weights_path)
    if params["export_SavedModel"]:
        # Keras 3 `Model.export` writes a TF SavedModel with a `serve` endpoint.
        with atomic_dir(os.path.join(export_dir, SAVED_MODEL_DIR)) as tmp:
            run.model.export(tmp, verbose=False)
    if run.dist.is_chief:
        summary["weights_path"] = weights_path
        if params["export_SavedModel"]:
            summary["saved_model_path"] = os.path.join(export_dir, SAVED_MODEL_DIR)
        logger.info("exported %s weights to %s", summary["exported_weights"], weights_path)
    return summary


def check_validation(summary: dict[str, Any], results: Mapping[str, float], run: TrainRun) -> None:
    """Fail on a non-finite validation loss (nothing exported); warn at or below chance top-1."""
    loss, top1 = results.get("loss", math.nan), results.get("top1", math.nan)
    chance = 1.0 / run.num_classes
    if not top1 > chance:
        warning = (
            f"validation top-1 {top1:.4f} is at or below chance (1/{run.num_classes} = "
            f"{chance:.4f}): the model has not learned; check --lr_init and the labels"
        )
        logger.warning(warning)
        summary.setdefault("warnings", []).append(warning)
    if not math.isfinite(loss):
        message = (
            f"validation loss is {loss} after training (top-1 {top1:.4f}); the weights "
            f"are not exported. Checkpoints are in {run.checkpoint.directory}. Lower "
            "--lr_init, set --grad_clip_norm, or check the input data"
        )
        summary.setdefault("warnings", []).append(message)
        run.log.log([], summary)
        raise RunError(message)


def train(params: Mapping[str, Any], with_eval: bool) -> dict[str, Any]:
    """Train (and evaluate) as configured by `params`; resumes from model_dir when asked.

    Args:
      params: the resolved configuration (see main.py).
      with_eval: evaluate every num_epochs_between_eval epochs and at the end.

    Returns:
      The final summary (also logged as the DLLogger `[]` record).

    Raises:
      NonFiniteLossError: the loss became NaN/Inf (nothing saved after the last good epoch).
    """
    run = build_run(params)
    with run.log:
        start = Position()
        if params["resume_checkpoint"] and run.checkpoint.restore_latest() is not None:
            start = run.checkpoint.position
            # Records of steps after the checkpoint (a killed run) are logged again below.
            run.log.drop_after([start.epoch + 1, start.step] if start.step else [start.epoch])
        run.log.log_params(params)
        for name, fmt in _METRIC_FORMATS.items():
            run.log.metadata(name, fmt)
        if start != Position():
            logger.info(
                "resuming at epoch %d step %d (stage %d), global step %d, learning rate %.6g",
                start.epoch + 1,
                start.step + 1,
                stage_for_epoch(run.stages, start.epoch).index + 1,
                int(run.optimizer.iterations.numpy()),
                current_learning_rate(run.optimizer),
            )
        with GracefulStop(run.dist, run.checkpoint, run.steps_per_epoch) as stop:
            _train_epochs(run, start, with_eval, stop)
            stop.after_training(Position(params["max_epochs"], 0))
        summary = _finish(run, with_eval and not params["skip_eval"])
        # File only: the console gets the end-of-run block instead of a 1,000-character line.
        run.log.log([], summary, verbosity=Verbosity.VERBOSE)
    if run.dist.is_chief:
        records = read_log(os.path.join(params["model_dir"], params["log_filename"]))
        print_result(train_report.end_of_run(summary, records, params))
    return summary


def run_train(params: Mapping[str, Any]) -> dict[str, Any]:
    """`--mode train`: train, no evaluation; exports the EMA weights when EMA is on."""
    return train(params, with_eval=False)


def run_train_and_eval(params: Mapping[str, Any]) -> dict[str, Any]:
    """`--mode train_and_eval`: train with periodic evaluation (EMA weights when on); at the end
    evaluate raw and EMA weights and export the better one (unless --skip_eval)."""
    return train(params, with_eval=not params["skip_eval"])
