"""Training and inference benchmarks: images/s and step-time percentiles over a batch-size sweep.

`--mode training_benchmark` times the real training step (`runtime.step.make_train_step`,
the same one training runs: accumulation, loss scaling, EMA, XLA as configured);
`--mode inference_benchmark` times the evaluation forward pass (`runtime.evaluate.evaluate`).
Both run on `--dataset synthetic` (one batch repeated: measures the model, not the input
pipeline) or on real data, for every `--benchmark_batch_sizes` entry:
`--benchmark_warmup_steps` untimed steps (tracing, XLA compilation, tf.data autotuning), then
`--benchmark_steps` timed ones. Results go to model_dir/benchmark_{training,inference}.json,
to the DLLogger log, and to a table on stdout.

Timing: a training step is timed from fetching its batch to reading the optimizer's step
counter back (a device sync), so images/s is end to end. Inference latency is the forward
pass of one batch (see `evaluate`); inference images/s includes the input pipeline. A batch
size that runs out of accelerator memory is reported as such and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from dataloader import dataset_info
from runtime import components, distribute, runtimes, train
from runtime.checkpoint import restore_for_inference
from runtime.evaluate import PERCENTILES, evaluate, latency_stats
from runtime.step import make_train_step
from utils.dllogger import MetricsLogger, Verbosity, print_result
from utils.progress import ProgressBar

logger = logging.getLogger(__name__)

RESULT_FILES = {
    "training_benchmark": "benchmark_training.json",
    "inference_benchmark": "benchmark_inference.json",
}


def time_steps(
    run_step: Callable[[], Any],
    warmup_steps: int,
    steps: int,
    desc: str = "",
    progress: bool = True,
) -> list[float]:
    """Call `run_step` warmup_steps + steps times; return the durations of the timed calls.

    Args:
      run_step: one synchronous step (it must wait for the device before returning).
      warmup_steps: leading calls not timed.
      steps: timed calls.
      desc: progress bar label.
      progress: show a progress bar.

    Returns:
      `steps` durations in seconds.
    """
    times = []
    bar = ProgressBar(warmup_steps + steps, desc=desc, enabled=progress)
    for i in range(warmup_steps + steps):
        start = time.perf_counter()
        run_step()
        if i >= warmup_steps:
            times.append(time.perf_counter() - start)
        bar.update(1)
    bar.close()
    return times


def _device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)}x {details.get('device_name', 'GPU')}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _header(
    params: Mapping[str, Any], dist: distribute.Distribution, mode: str, image_size: int
) -> dict[str, Any]:
    return {
        "mode": mode,
        "model": params["model"].get("name"),
        "image_size": image_size,
        "dataset": params["dataset"],
        "precision": keras.mixed_precision.global_policy().name,
        "use_xla": bool(params["use_xla"]),
        "num_replicas": dist.num_replicas,
        "num_workers": dist.num_workers,
        "device": _device_name(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "warmup_steps": params["benchmark_warmup_steps"],
        "steps": params["benchmark_steps"],
    }


def _batch_sizes(params: Mapping[str, Any], default: int) -> tuple[int, ...]:
    return tuple(params["benchmark_batch_sizes"] or (default,))


def _oom_row(batch_size: int, global_batch: int, err: Exception) -> dict[str, Any]:
    logger.warning(
        "batch size %d: out of memory (%s); continuing the sweep",
        batch_size,
        str(err).strip().splitlines()[0][:200] if str(err).strip() else "",
    )
    return {"batch_size": batch_size, "global_batch_size": global_batch, "error": "out of memory"}


def format_table(rows: Sequence[Mapping[str, Any]], prefix: str) -> str:
    """A fixed-width table of sweep results.

    Args:
      rows: result rows (batch_size, global_batch_size, images_per_sec, ... or error).
      prefix: "step_time" (training) or "latency" (inference) keys of the timing columns.

    Returns:
      The table text.
    """
    columns = [
        "batch",
        "global",
        "img/s",
        "img/s/dev",
        "mean ms",
        *(f"p{p} ms" for p in PERCENTILES),
    ]
    lines = [" ".join(f"{c:>10}" for c in columns)]
    for row in rows:
        head = f"{row['batch_size']:>10} {row['global_batch_size']:>10}"
        if "error" in row:
            lines.append(f"{head} {row['error']:>10}")
            continue
        values = [
            row["images_per_sec"],
            row["images_per_sec_per_device"],
            row[f"{prefix}_mean_ms"],
            *(row[f"{prefix}_p{p}_ms"] for p in PERCENTILES),
        ]
        lines.append(head + " " + " ".join(f"{v:>10.2f}" for v in values))
    return "\n".join(lines)


def _report(
    params: Mapping[str, Any],
    document: dict[str, Any],
    prefix: str,
    log: MetricsLogger,
    is_chief: bool,
) -> dict[str, Any]:
    """Log rows, write the JSON file and show the table (chief only)."""
    metric = "train" if document["mode"] == "training_benchmark" else "infer"
    for row in document["results"]:
        # File only (VERBOSE): the console gets the table below instead.
        log.log([], {f"{metric}.{k}": v for k, v in row.items()}, verbosity=Verbosity.VERBOSE)
    if not is_chief:
        return document
    path = components.write_json(
        os.path.join(params["model_dir"], RESULT_FILES[document["mode"]]), document
    )
    header = (
        f"{document['mode']}: {document['model']} at {document['image_size']} px, "
        f"{document['precision']}, XLA {'on' if document['use_xla'] else 'off'}, "
        f"{document['num_replicas']} replica(s) on {document['device']}"
    )
    print_result(
        f"{header}\n{format_table(document['results'], prefix)}\nresults written to {path}"
    )
    return {**document, "path": path}


def bare_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> Callable:
    """A bare `tf.function` training step (forward, softmax cross-entropy on logits, gradients,
    `optimizer.apply`): what the benchmark scripts compare the runtime's step with.

    Returns:
      `step(images, labels)` returning the loss.
    """
    variables = model.trainable_variables

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            loss = tf.reduce_mean(
                keras.losses.categorical_crossentropy(labels, logits, from_logits=True)
            )
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return step


def run_training_benchmark(params: Mapping[str, Any]) -> dict[str, Any]:
    """`--mode training_benchmark`: time the training step over the batch-size sweep.

    The model, optimizer (with its LR schedule, loss scaling, clipping), EMA and step come from
    runtime.train, so the numbers are those of real training; nothing is checkpointed.

    Args:
      params: the resolved configuration (see main.py).

    Returns:
      The benchmark document: header fields and "results", one row per batch size with
      batch_size (per device), global_batch_size (x replicas x grad_accum_steps),
      images_per_sec, images_per_sec_per_device, step_time_mean_ms and
      step_time_p{50,90,95,99}_ms; or "error" for a batch size that ran out of memory.
    """
    run = train.build_run(params)  # the exact objects training uses (see module docstring)
    stage = run.stages[-1]  # the final training image size and augmentation
    step_config = run.step_config
    if params["defer_img_mixing"]:  # as training does: MixUp/CutMix inside the step
        step_config = dataclasses.replace(
            step_config, mixup_alpha=stage.mixup_alpha, cutmix_alpha=stage.cutmix_alpha
        )
    rows = []
    with run.log:
        run.log.log_params(params)
        for batch_size in _batch_sizes(params, params["train_batch_size"]):
            global_batch = run.dist.global_batch_size(batch_size, params["grad_accum_steps"])
            sized = dataclasses.replace(run, params={**params, "train_batch_size": batch_size})
            iterator = iter(train.train_dataset(sized, stage))
            step = make_train_step(
                run.model, run.optimizer, dist=run.dist, config=step_config, ema=run.ema
            )

            def one_step(step=step, iterator=iterator):
                step(next(iterator))
                # Reading a variable the step updated waits for the device to finish.
                run.optimizer.iterations.numpy()

            try:
                times = time_steps(
                    one_step,
                    params["benchmark_warmup_steps"],
                    params["benchmark_steps"],
                    desc=f"train batch {batch_size}",
                    progress=run.dist.is_chief,
                )
            except tf.errors.ResourceExhaustedError as err:
                rows.append(_oom_row(batch_size, global_batch, err))
                continue
            images_per_sec = global_batch * len(times) / sum(times)
            rows.append(
                {
                    "batch_size": batch_size,
                    "global_batch_size": global_batch,
                    "images_per_sec": images_per_sec,
                    "images_per_sec_per_device": images_per_sec / run.dist.num_replicas,
                    **latency_stats(times, prefix="step_time"),
                }
            )
        document = {
            **_header(params, run.dist, "training_benchmark", stage.image_size),
            "grad_accum_steps": params["grad_accum_steps"],
            "results": rows,
        }
        return _report(params, document, "step_time", run.log, run.dist.is_chief)


def run_inference_benchmark(params: Mapping[str, Any]) -> dict[str, Any]:
    """`--mode inference_benchmark`: time the forward pass over the batch-size sweep.

    Weights do not change the speed: a freshly built model is timed unless `--predict_ckpt`
    names weights to load.

    Args:
      params: the resolved configuration (see main.py).

    Returns:
      The benchmark document: header fields and "results", one row per batch size with
      batch_size, global_batch_size, images_per_sec, images_per_sec_per_device,
      latency_mean_ms and latency_p{50,90,95,99}_ms per batch; or "error" (out of memory).
    """
    if params["runtime"] != "keras":
        return run_runtime_benchmark(params)
    dist = components.setup_run(params)
    strategy, is_chief = dist.strategy, dist.is_chief
    info = dataset_info(components.data_config(params, training=False))
    with strategy.scope():
        model = components.create_model(params, info.num_classes)
    if params["predict_ckpt"]:
        restore_for_inference(model, params["model_dir"], params["predict_ckpt"])
    warmup, steps = params["benchmark_warmup_steps"], params["benchmark_steps"]
    rows = []
    with components.open_metrics_log(params, is_chief, append=True) as log:
        log.log_params(params)
        for batch_size in _batch_sizes(params, params["eval_batch_size"]):
            global_batch = dist.global_batch_size(batch_size)
            dataset = components.eval_dataset(params, strategy, repeat=True, batch_size=batch_size)
            try:
                result = evaluate(
                    model,
                    dataset,
                    strategy=strategy,
                    num_steps=warmup + steps,
                    warmup_steps=warmup,
                    jit_compile=bool(params["use_xla"]),
                    num_classes=info.num_classes,
                    progress=is_chief,
                    desc=f"inference batch {batch_size}",
                )
            except tf.errors.ResourceExhaustedError as err:
                rows.append(_oom_row(batch_size, global_batch, err))
                continue
            rows.append(
                {
                    "batch_size": batch_size,
                    "global_batch_size": global_batch,
                    "timed_steps": result["timed_steps"],
                    **{
                        k: v
                        for k, v in result.items()
                        if k.startswith(("images_per_sec", "latency_"))
                    },
                }
            )
        document = _header(params, dist, "inference_benchmark", params["eval_img_size"])
        document["results"] = rows
        return _report(params, document, "latency", log, is_chief)


def run_runtime_benchmark(params: Mapping[str, Any]) -> dict[str, Any]:
    """`--mode inference_benchmark --runtime R` for an exported model (R != keras).

    One batch of the eval input (`--dataset synthetic`: random images) is run
    `--benchmark_warmup_steps` + `--benchmark_steps` times per batch size: latency is the
    runtime's call on host memory, images/s = batch / mean latency (input pipeline excluded).

    Returns:
      The benchmark document as `run_inference_benchmark` (plus "runtime" and "artifact").
    """
    dist = components.setup_run(params)
    is_chief = dist.is_chief
    info = dataset_info(components.data_config(params, training=False))
    runtime, loaded = runtimes.open_exported(params, info.num_classes)
    rows = []
    with components.open_metrics_log(params, is_chief, append=True) as log:
        log.log_params(params)
        for batch_size in _batch_sizes(params, params["eval_batch_size"]):
            images, _ = next(
                iter(
                    components.eval_dataset(
                        params, dist.strategy, repeat=True, batch_size=batch_size
                    )
                )
            )
            images = images.numpy()
            times = time_steps(
                lambda images=images: runtime(images),
                params["benchmark_warmup_steps"],
                params["benchmark_steps"],
                desc=f"{params['runtime']} batch {batch_size}",
                progress=is_chief,
            )
            images_per_sec = batch_size * len(times) / sum(times)
            rows.append(
                {
                    "batch_size": batch_size,
                    "global_batch_size": batch_size,
                    "timed_steps": len(times),
                    "images_per_sec": images_per_sec,
                    "images_per_sec_per_device": images_per_sec,
                    **latency_stats(times),
                }
            )
        document = _header(params, dist, "inference_benchmark", params["eval_img_size"])
        document.update(
            runtime=params["runtime"],
            artifact=loaded["path"],
            runtime_batch=runtime.micro_batch,
            results=rows,
        )
        return _report(params, document, "latency", log, is_chief)
