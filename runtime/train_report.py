"""What the metric names say about the weights, and the block that ends a training run.

One rule names the weights in every validation key, in the per-epoch records, the final
summary and `--mode eval`: `val.*` are the raw (trained) weights, `val_ema.*` the exponential
moving average of them (`--moving_average_decay`), `best.*` the better of the two at the end,
the one exported. With EMA on, the evaluation after an epoch evaluates the EMA weights
(`val_ema.*`); the final one evaluates both.

At the start, `derived_values` are what a run derives from its flags and cluster (params.json's
"derived" entry) and `announcement` the log lines that say them, the learning rate in full:
`--lr_init` is the rate for a global batch of 128 (the recipes' linear scaling rule,
utils/schedules.py), so the peak rate is `lr_init x global batch / 128`.

`end_of_run` is the short block a training run ends with on stdout (utils.dllogger.print_result):
the final and best validation top-1 of the raw and EMA weights, where the weights were written
and the commands to run next. It is made from the run's log records, so a resumed run counts the
epochs before the resume too. Pure functions of the params, records and summary.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from utils.schedules import REFERENCE_BATCH_SIZE

RAW, EMA = "val", "val_ema"
WEIGHTS = {RAW: "raw", EMA: "EMA"}


def derived_values(
    dist: Any,
    global_batch: int,
    steps_per_epoch: int,
    schedule: Any,
    stages: Sequence[Any],
    max_epochs: int,
) -> dict[str, Any]:
    """The values a run derives from its flags and cluster (params.json's "derived" entry).

    Args:
      dist: the run's runtime.distribute.Distribution (num_replicas, num_workers).
      global_batch: the effective global batch.
      steps_per_epoch: optimizer updates per epoch.
      schedule: the LR schedule (utils.schedules; a RewarmSchedule wraps the base one).
      stages: the run's runtime.stages.Stage list.
      max_epochs: epochs of the run.
    """
    total_steps = steps_per_epoch * max_epochs
    final_lr = float(schedule(total_steps - 1))
    while not hasattr(schedule, "peak_lr") and hasattr(schedule, "base"):  # RewarmSchedule
        schedule = schedule.base
    return {
        "num_replicas": dist.num_replicas,
        "num_workers": dist.num_workers,
        "global_batch_size": global_batch,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "peak_lr": float(schedule.peak_lr),
        "final_lr": final_lr,
        "stages": [
            {
                "epochs": [st.first_epoch + 1, st.end_epoch],
                "image_size": st.image_size,
                "raug_magnitude": st.raug_magnitude,
                "mixup_alpha": st.mixup_alpha,
                "cutmix_alpha": st.cutmix_alpha,
            }
            for st in stages
        ],
    }


def _decay(params: Mapping[str, Any]) -> str:
    rate, every = params["lr_decay_rate"], params["lr_decay_epochs"]
    return {
        "exponential": f"exponential decay x{rate:g} every {every:g} epochs",
        "cosine": "cosine decay to 0",
        "piecewise": f"x{rate:g} at {every:g}, {2 * every:g} and {3 * every:g} epochs",
        "linearcosine": "linear-cosine decay",
    }.get(params["lr_decay"], f"{params['lr_decay']} decay")


def _warmup(epochs: float, max_epochs: int | None) -> str:
    if epochs <= 0:
        return "no warm-up"
    text = f"linear warm-up over {epochs:g} epoch(s)"
    if max_epochs is not None and epochs >= max_epochs:
        text += f" (not shorter than the {max_epochs}-epoch run: the peak is never reached)"
    return text


def announcement(params: Mapping[str, Any], derived: Mapping[str, Any]) -> list[str]:
    """The log lines that start a run: the cluster and steps, then the learning rate in full."""
    warmup, unfreeze = params["lr_warmup_epochs"], params.get("unfreeze_epoch")
    lr = [
        f"learning rate: peak {derived['peak_lr']:.6g} = --lr_init {params['lr_init']:g} x "
        f"global batch {derived['global_batch_size']} / {REFERENCE_BATCH_SIZE} (--lr_init is "
        f"the rate for a batch of {REFERENCE_BATCH_SIZE}, the recipes' linear scaling)",
        _warmup(warmup, params.get("max_epochs")),
        _decay(params),
    ]
    if unfreeze is not None and warmup > 0:
        lr.append(f"warm-up again from epoch {unfreeze + 1} (--unfreeze_epoch)")
    lr.append(f"{derived['final_lr']:.3g} at the last step")
    return [
        f"run: {derived['num_replicas']} replica(s) on {derived['num_workers']} worker(s), "
        f"global batch {derived['global_batch_size']}, {derived['steps_per_epoch']} "
        f"steps/epoch, {derived['total_steps']} steps",
        "; ".join(lr),
    ]


def val_prefix(ema: bool) -> str:
    """The key prefix of validation results of the EMA (`val_ema`) or raw (`val`) weights."""
    return EMA if ema else RAW


def with_prefix(results: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """`results` with every key prefixed: {"top1": x} -> {"val_ema.top1": x}."""
    return {f"{prefix}.{k}": v for k, v in results.items()}


def best_top1(records: Sequence[Mapping[str, Any]], prefix: str) -> tuple[float, int] | None:
    """The highest `{prefix}.top1` of the per-epoch records `[epoch]` and its epoch.

    A resumed run may log an epoch twice (the first try did not reach its checkpoint): the last
    record of an epoch counts. Returns None when no epoch has that key.
    """
    by_epoch: dict[int, float] = {}
    key = f"{prefix}.top1"
    for record in records:
        step, data = record.get("step"), record.get("data", {})
        if record.get("type") == "LOG" and isinstance(step, list) and len(step) == 1:
            value = data.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                by_epoch[int(step[0])] = float(value)
    if not by_epoch:
        return None
    epoch = max(by_epoch, key=lambda e: (by_epoch[e], -e))  # the earliest of equal values
    return by_epoch[epoch], epoch


def _top1_rows(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for prefix, name in WEIGHTS.items():
        final = summary.get(f"{prefix}.top1")
        if final is None:
            continue
        best = best_top1(records, prefix)
        if best is None or final > best[0]:
            best = (final, summary["epochs"])
        rows.append(f"  {name + ' weights':<18}{final:>8.4f}{best[0]:>8.4f} (epoch {best[1]})")
    return rows


def end_of_run(
    summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
) -> str:
    """The block that ends a training run (the chief prints it with print_result).

    Args:
      summary: the run's final summary (runtime.train: epochs, global_step, val.*, val_ema.*,
        exported_weights, weights_path, saved_model_path, warnings).
      records: the run's log records (utils.dllogger.read_log), for the best epoch.
      params: the resolved configuration (model_dir, log_filename, mode, skip_eval).

    Returns:
      Lines joined by newlines.
    """
    model_dir = params["model_dir"]
    lines = [
        f"training done: {summary['epochs']} epochs, {summary['global_step']} steps, in {model_dir}"
    ]
    rows = _top1_rows(summary, records)
    if rows:
        lines += [f"  {'validation top-1':<18}{'final':>8}{'best':>8}", *rows]
    else:
        why = "--skip_eval" if params.get("skip_eval") else f"--mode {params['mode']}"
        lines.append(f"  not evaluated ({why})")
    lines += [f"  warning: {w}" for w in summary.get("warnings", ())]
    if summary.get("weights_path"):
        saved = f" and {summary['saved_model_path']}" if summary.get("saved_model_path") else ""
        lines.append(
            f"  {WEIGHTS[val_prefix(summary['exported_weights'] == 'ema')]} weights written to "
            f"{summary['weights_path']}{saved}"
        )
    quoted = shlex.quote(str(model_dir))
    log_path = shlex.quote(os.path.join(str(model_dir), params["log_filename"]))
    lines += [
        "next:",
        f"  python main.py --mode eval --model_dir {quoted}",
        f"  python main.py --mode predict --model_dir {quoted} --predict_img_dir YOUR_IMAGES",
        f"  python main.py --mode export --model_dir {quoted}",
        f"  python scripts/plot_log.py {log_path}",
    ]
    return "\n".join(lines)
