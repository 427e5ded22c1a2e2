"""Predict mode: top-k classes for every JPEG/PNG image under a folder (any depth) or one file.

Images are decoded and center-cropped with the same `preprocess_for_eval` as validation, so a
file on disk is classified exactly as the evaluation pipeline would see it. Results go to
`model_dir/predictions.csv` (one row per file and rank) and `model_dir/predictions.json`
(per file, plus the list of unreadable files with the reason); a short table is printed.
Unreadable files are reported and skipped, never silently dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from dataloader.files import FilePolicy, skip_reason
from dataloader.preprocessing import preprocess_for_eval
from runtime import components, runtimes
from runtime.class_names import trained_classes
from runtime.errors import RunError
from runtime.finetune import load_for_inference
from utils.dllogger import ProgressBar, print_result
from utils.fileio import atomic_write_text

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
SUMMARY_ROWS = 20


class PredictError(RunError):
    """A predict input that cannot be used (missing path, no images); the message is one line."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Top-k result for one image file.

    Attributes:
      file: the path as given, relative to the predict folder when a folder was given.
      classes: class indices, most probable first.
      names: class names in the same order.
      probabilities: softmax probabilities in the same order.
    """

    file: str
    classes: tuple[int, ...]
    names: tuple[str, ...]
    probabilities: tuple[float, ...]


def find_images(
    path: str, policy: FilePolicy | None = None, skipped: list[dict[str, str]] | None = None
) -> list[str]:
    """List the JPEG/PNG files to classify, in a stable (sorted) order.

    Args:
      path: an image file, or a folder searched recursively (extensions case-insensitive;
        hidden files and folders are skipped).
      policy: which files are safe to read (dataloader.files): FIFOs, devices, symlinks out of
        the folder and images above the pixel limit are left out (default FilePolicy()).
      skipped: when given, gets one {"file", "error"} per file left out by the policy.

    Returns:
      Absolute file paths.

    Raises:
      PredictError: the path does not exist, or a folder holds no JPEG/PNG file.
    """
    if not path:
        raise PredictError("predict needs --predict_img_dir (a folder of images or one image)")
    policy = policy or FilePolicy()
    skipped = [] if skipped is None else skipped
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise PredictError(f"--predict_img_dir {path!r} does not exist")
        reason = skip_reason(path, None, policy)
        if reason is not None:
            raise PredictError(f"--predict_img_dir {path!r} cannot be read: {reason}")
        return [os.path.abspath(path)]
    found = []
    # os.walk does not descend into symlinked folders (followlinks=False); files are checked.
    for root, dirs, files in os.walk(path, followlinks=policy.follow_symlinks):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            file = os.path.join(root, name)
            reason = skip_reason(file, path, policy)
            if reason is None:
                found.append(file)
            else:
                skipped.append({"file": os.path.relpath(file, path), "error": reason})
    for bad in skipped:
        logger.warning("skipping %s: %s", bad["file"], bad["error"])
    if not found and skipped:
        raise PredictError(
            f"--predict_img_dir {path!r} holds no readable image: "
            f"{len(skipped)} skipped, e.g. {skipped[0]['file']}: {skipped[0]['error']}"
        )
    if not found:
        raise PredictError(f"--predict_img_dir {path!r} holds no {'/'.join(IMAGE_EXTENSIONS)} file")
    return sorted(os.path.abspath(f) for f in found)


def _decode_error(path: str, preprocess: Callable[[tf.Tensor], tf.Tensor]) -> str:
    """Why `path` could not be decoded (eager retry of the one failing file)."""
    try:
        preprocess(tf.io.read_file(path))
    except (tf.errors.OpError, OSError, ValueError) as err:
        message = getattr(err, "message", None) or str(err)
        # Keep TF's reason ("Input is empty.") without the op and device decoration around it.
        message = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\].*", "", message).strip()
        return message.splitlines()[0] if message else type(err).__name__
    return "could not be read"


def predict_files(
    model: keras.Model,
    files: Sequence[str],
    image_size: int,
    crop_fraction: float,
    batch_size: int = 32,
    top_k: int = 5,
    class_names: Sequence[str] | None = None,
    jit_compile: bool = False,
    relative_to: str | None = None,
    progress: bool = True,
    preprocess_fn: Callable | None = None,
) -> tuple[list[Prediction], list[dict[str, str]]]:
    """Classify image files.

    Args:
      model: returns logits [B, num_classes]: a keras.Model, or a runtime.runtimes.Runtime
        (an exported model run by ONNX Runtime, LiteRT, a SavedModel) called on numpy.
      files: image paths (see `find_images`).
      image_size: model input size (the eval image size).
      crop_fraction: center-crop fraction, as in evaluation.
      batch_size: images per forward pass.
      top_k: classes reported per file (capped at the number of classes).
      class_names: one name per class; None names them by index.
      jit_compile: XLA for the forward pass.
      relative_to: report paths relative to this folder (None: as given).
      progress: show a progress bar.
      preprocess_fn: `(image_bytes, image_size, crop_fraction) -> [H, W, 3]`; default
        `dataloader.preprocessing.preprocess_for_eval`.

    Returns:
      (predictions in file order, unreadable files as {"file", "error"} dicts).
    """
    preprocess_fn = preprocess_fn or preprocess_for_eval
    num_classes = int(model.output_shape[-1])
    k = min(top_k, num_classes)
    if class_names is not None and len(class_names) != num_classes:
        raise PredictError(f"{len(class_names)} class names for a model with {num_classes} classes")
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]

    def preprocess(image_bytes):
        return preprocess_fn(image_bytes, image_size, crop_fraction)

    def load(path):
        return path, preprocess(tf.io.read_file(path))

    # Decoding in tf.data runs in parallel; a file that fails is dropped by ignore_errors and
    # found again below by comparing paths, so it is reported with its own error message.
    dataset = (
        tf.data.Dataset.from_tensor_slices(list(files))
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .batch(batch_size)
        .prefetch(1)
    )

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def top_k_probs(images):
        probs = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32), axis=-1)
        return tf.math.top_k(probs, k=k)

    def shown(path: str) -> str:
        return os.path.relpath(path, relative_to) if relative_to else path

    predictions: list[Prediction] = []
    seen: set[str] = set()
    bar = ProgressBar(len(files), desc="predict", enabled=progress)
    for paths, images in dataset:
        if isinstance(model, keras.Model):
            values, indices = top_k_probs(images)
        else:
            values, indices = tf.math.top_k(tf.nn.softmax(model(images.numpy()), axis=-1), k=k)
        for path, probs, classes in zip(
            paths.numpy(), values.numpy(), indices.numpy(), strict=True
        ):
            path = path.decode()
            seen.add(path)
            predictions.append(
                Prediction(
                    file=shown(path),
                    classes=tuple(int(c) for c in classes),
                    names=tuple(names[c] for c in classes),
                    probabilities=tuple(float(p) for p in probs),
                )
            )
        bar.update(len(paths))
    unreadable = [
        {"file": shown(f), "error": _decode_error(f, preprocess)} for f in files if f not in seen
    ]
    bar.update(len(unreadable))
    bar.close()
    for bad in unreadable:
        logger.warning("skipping unreadable image %s: %s", bad["file"], bad["error"])
    return predictions, unreadable


def output_paths(out_dir: str) -> tuple[str, str]:
    """The CSV and JSON paths of a new predict run: predictions.csv/.json, or, when an earlier
    run's files are there, the first free predictions_N.csv/.json (N = 2, 3, ...): a predict
    run never overwrites another's results."""
    stem_csv, ext_csv = os.path.splitext(PREDICTIONS_CSV)
    stem_json, ext_json = os.path.splitext(PREDICTIONS_JSON)
    n = 1
    while True:
        suffix = "" if n == 1 else f"_{n}"
        paths = (
            os.path.join(out_dir, f"{stem_csv}{suffix}{ext_csv}"),
            os.path.join(out_dir, f"{stem_json}{suffix}{ext_json}"),
        )
        if not any(os.path.exists(p) for p in paths):
            if n > 1:
                logger.info(
                    "%s exists (an earlier predict run): writing %s and %s",
                    PREDICTIONS_CSV,
                    *(os.path.basename(p) for p in paths),
                )
            return paths
        n += 1


def write_predictions(
    out_dir: str,
    predictions: Sequence[Prediction],
    unreadable: Sequence[dict[str, str]],
    extra: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Write predictions as CSV (file, rank, class_id, class_name, probability) and JSON.

    Args:
      out_dir: destination folder (model_dir).
      predictions: from `predict_files`.
      unreadable: from `predict_files`; listed in the JSON file.
      extra: more fields for the JSON header (checkpoint, image size...).

    Returns:
      (csv path, json path): predictions.csv/.json, or predictions_N.* when taken
      (`output_paths`).
    """
    os.makedirs(out_dir, exist_ok=True)
    csv_path, json_path = output_paths(out_dir)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "rank", "class_id", "class_name", "probability"])
    for pred in predictions:
        for rank, (cls, name, prob) in enumerate(
            zip(pred.classes, pred.names, pred.probabilities, strict=True), start=1
        ):
            writer.writerow([pred.file, rank, cls, name, f"{prob:.6f}"])
    atomic_write_text(csv_path, buffer.getvalue())

    document = {
        **(extra or {}),
        "num_files": len(predictions) + len(unreadable),
        "num_predicted": len(predictions),
        "num_unreadable": len(unreadable),
        "predictions": [
            {
                "file": p.file,
                "top_k": [
                    {"class_id": c, "class_name": n, "probability": pr}
                    for c, n, pr in zip(p.classes, p.names, p.probabilities, strict=True)
                ],
            }
            for p in predictions
        ],
        "unreadable": list(unreadable),
    }
    components.write_json(json_path, document)
    return csv_path, json_path


def format_summary(
    predictions: Sequence[Prediction],
    unreadable: Sequence[dict[str, str]],
    max_rows: int = SUMMARY_ROWS,
) -> str:
    """The on-screen summary: a top-1 table (first `max_rows` files) and class counts."""
    lines = []
    if predictions:
        width = min(60, max(len(p.file) for p in predictions[:max_rows]))
        lines.append(f"{'file':<{width}}  {'top-1 class':<24} {'prob':>6}")
        for pred in predictions[:max_rows]:
            name = pred.names[0]
            if name != str(pred.classes[0]):
                name = f"{name} ({pred.classes[0]})"
            lines.append(
                f"{pred.file[-width:]:<{width}}  {name[:24]:<24} {pred.probabilities[0]:>6.3f}"
            )
        if len(predictions) > max_rows:
            lines.append(f"... {len(predictions) - max_rows} more files (see the CSV/JSON files)")
        counts = Counter(p.names[0] for p in predictions)
        lines.append("top-1 counts: " + ", ".join(f"{n}: {c}" for n, c in counts.most_common(10)))
    lines.append(f"{len(predictions)} file(s) classified, {len(unreadable)} unreadable skipped")
    lines.extend(f"  unreadable: {u['file']} ({u['error']})" for u in unreadable)
    return "\n".join(lines)


def run_predict(params: Mapping[str, Any]) -> dict[str, Any]:
    """`--mode predict`: classify `--predict_img_dir` (a folder, any depth, or one image).

    Writes model_dir/predictions.csv and predictions.json, prints a summary table. Weights:
    `--pretrained` as published (runtime.finetune.load_for_inference), else `--predict_ckpt`
    or the newest checkpoint of model_dir (EMA preferred).

    Args:
      params: the resolved configuration (see main.py).

    Returns:
      num_files, num_predicted, num_unreadable, csv and json paths, checkpoint, weights.

    Raises:
      PredictError: no image file at the path.
      RunError: no checkpoint, or no file could be decoded (outputs are still written).
    """
    refused: list[dict[str, str]] = []
    files = find_images(
        params["predict_img_dir"],
        FilePolicy(params["follow_symlinks"], params["max_image_pixels"]),
        refused,
    )
    dist = components.setup_run(params)
    is_chief = dist.is_chief
    num_classes, class_names = trained_classes(params)
    if params["runtime"] == "keras":
        with dist.strategy.scope():
            model = components.create_model(params, num_classes)
        loaded = load_for_inference(model, params, is_chief)
    else:
        model, loaded = runtimes.open_exported(params, num_classes)
    folder = params["predict_img_dir"] if os.path.isdir(params["predict_img_dir"]) else None
    # The evaluation data config fixes size, crop and resize method: a file is seen as the
    # validation pipeline would see it.
    cfg = components.data_config(params, training=False)
    predictions, unreadable = predict_files(
        model,
        files,
        image_size=cfg.image_size,
        crop_fraction=cfg.eval_crop_fraction,
        batch_size=params["predict_batch_size"],
        top_k=params["predict_top_k"],
        class_names=class_names,
        jit_compile=bool(params["use_xla"]),
        relative_to=folder,
        progress=is_chief,
        preprocess_fn=functools.partial(
            preprocess_for_eval, resize_method=cfg.resize_method, eval_crop=cfg.eval_crop
        ),
    )
    unreadable = refused + unreadable
    files = [*files, *(bad["file"] for bad in refused)]
    result: dict[str, Any] = {
        "num_files": len(files),
        "num_predicted": len(predictions),
        "num_unreadable": len(unreadable),
        "runtime": params["runtime"],
        "checkpoint": loaded["path"],
        "weights": loaded["weights"],
    }
    if is_chief:
        csv_path, json_path = write_predictions(
            params["model_dir"],
            predictions,
            unreadable,
            extra={
                "input": os.path.abspath(params["predict_img_dir"]),
                "runtime": params["runtime"],
                "checkpoint": loaded["path"],
                "weights": loaded["weights"],
                "image_size": cfg.image_size,
                "crop_fraction": cfg.eval_crop_fraction,
            },
        )
        result.update(csv=csv_path, json=json_path)
        print_result(
            f"{format_summary(predictions, unreadable)}\n"
            f"predictions written to {csv_path} and {json_path}"
        )
        with components.open_metrics_log(params, is_chief, append=True) as log:
            log.log_params(params)
            log.log([], {f"predict.{k}": v for k, v in result.items()})
    if not predictions:
        raise RunError(
            f"none of the {len(files)} image file(s) under "
            f"{params['predict_img_dir']} could be decoded"
        )
    return result
