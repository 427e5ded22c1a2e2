"""`--mode export`: the trained model as a TF SavedModel, an ONNX file and/or a LiteRT (TFLite) file.

Owns the export driver: every artifact goes through Keras 3's own exporters
(`keras.export.ExportArchive` for the SavedModel, `Model.export(format="onnx")` which wraps
tf2onnx, `Model.export(format="litert")` which wraps `tf.lite.TFLiteConverter`), is written
under a temporary name and renamed when complete, and then verifies itself: the exported file
is run by its runtime (runtime.runtimes) on a few validation images and compared with the Keras
model. The max abs difference is printed (one line per artifact on stdout, the export's
result) and written to the DLLogger log and to export.json, which records every artifact; above
the tolerance of its precision the export is an error.

What is exported (the serving model, its signature and the eval transform in the graph) is
runtime.serving's; opening an artifact for predict / inference_benchmark is runtime.runtimes'.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dataloader import DataError, build_dataset
from dataloader.preprocessing import preprocess_for_eval
from runtime import components, runtimes
from runtime.class_names import trained_classes
from runtime.errors import RunError, first_line
from runtime.finetune import load_for_inference
from runtime.runtimes import artifact_name, export_dir, planned_artifacts
from runtime.serving import serving_model, signature, write_saved_model
from utils.dllogger import print_result

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
VERIFY_IMAGES = 32
# Max abs difference allowed between the exported model and Keras: on logits for float32
# artifacts; on probabilities for quantized LiteRT files (their logits move by design), whose
# top-1 agreement with Keras is reported too.
LOGIT_TOLERANCE = 1e-3
PROBABILITY_TOLERANCE = {"float16": 0.02, "dynamic_int8": 0.15}


class ExportError(RunError):
    """An export that failed or did not pass its self-check; the message is one line."""


def litert_options(quantize: str) -> dict[str, Any]:
    """TFLiteConverter settings for `--export_quantize` (post-training, no calibration data).

    float16: float16 weights (half the file), computed in float32 on CPU.
    dynamic_int8: int8 weights, activations quantized on the fly (dynamic range).
    """
    if quantize == "none":
        return {}
    options: dict[str, Any] = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    return options


def write_artifact(
    fmt: str,
    serving: keras.Model,
    path: str,
    quantize: str = "none",
    bytes_endpoint: dict[str, Any] | None = None,
) -> None:
    """Write one artifact atomically: to a temporary sibling, renamed to `path` when complete.

    Args:
      fmt: a key of FORMATS.
      serving: from `serving_model`.
      path: final file or folder; must not exist.
      quantize: LiteRT quantization.
      bytes_endpoint: SavedModel only: `write_saved_model` keyword arguments adding
        `serve_bytes`.

    Raises:
      ExportError: the exporter failed (nothing is left at `path`).
    """
    folder, name = os.path.split(path)
    # Keras wants the real extension (".tflite"); a dot-prefixed name hides the partial file.
    tmp = os.path.join(folder, f".tmp{os.getpid()}.{name}")
    try:
        if fmt == "saved_model":
            write_saved_model(serving, tmp, **(bytes_endpoint or {}))
        elif fmt == "onnx":
            runtimes.require("tf2onnx", "--export_format onnx")
            serving.export(tmp, format="onnx", verbose=False, opset_version=ONNX_OPSET)
        else:
            serving.export(tmp, format="litert", verbose=False, **litert_options(quantize))
        os.replace(tmp, path)
    except runtimes.RuntimeUnavailable as err:
        raise ExportError(str(err)) from err
    except Exception as err:
        raise ExportError(f"{fmt} export to {path} failed: {first_line(err)}") from err
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)


def check_images(params: Mapping[str, Any], count: int = VERIFY_IMAGES) -> tuple[np.ndarray, str]:
    """Up to `count` validation images (float32 [N, S, S, 3] 0..255) for the self-check.

    Returns:
      (images, where they come from); random images when the dataset cannot be read.
    """
    cfg = components.data_config(params, training=False, batch_size=min(count, 64))
    try:
        batches = []
        for images, _ in build_dataset(cfg, "validation", repeat=False):
            batches.append(images.numpy())
            if sum(len(b) for b in batches) >= count:
                break
        if batches:
            return np.concatenate(batches)[:count], f"{params['dataset']} validation"
    except (DataError, OSError, tf.errors.OpError) as err:
        logger.warning("export self-check on random images: no validation data (%s)", err)
    rng = np.random.default_rng(0)
    size = cfg.image_size
    return rng.uniform(0, 255, (count, size, size, 3)).astype(np.float32), "random"


def _run_in_batches(fn, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    return np.concatenate(
        [fn(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def compare(reference_logits: np.ndarray, logits: np.ndarray, quantize: str) -> dict[str, Any]:
    """Differences between an artifact's logits and Keras' on the same images.

    Returns:
      max_abs_diff_logits, max_abs_diff_probabilities, top1_agreement, the checked quantity
      ("logits" or "probabilities"), its tolerance and whether it passed.
    """
    probs, reference_probs = _softmax(logits), _softmax(reference_logits)
    result = {
        "max_abs_diff_logits": float(np.abs(logits - reference_logits).max()),
        "max_abs_diff_probabilities": float(np.abs(probs - reference_probs).max()),
        "top1_agreement": float(np.mean(logits.argmax(-1) == reference_logits.argmax(-1))),
        "checked": "logits" if quantize == "none" else "probabilities",
        "tolerance": LOGIT_TOLERANCE if quantize == "none" else PROBABILITY_TOLERANCE[quantize],
    }
    value = result[f"max_abs_diff_{result['checked']}"]
    result["passed"] = bool(np.isfinite(value) and value <= result["tolerance"])
    return result


def _uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def verify_artifact(
    fmt: str,
    path: str,
    serving: keras.Model,
    images: np.ndarray,
    quantize: str,
    preprocessing: bool,
) -> dict[str, Any]:
    """Run the written artifact with its runtime and compare with the Keras serving model.

    With preprocessing the inputs are the check images as uint8 and the reference is the
    Keras serving model (its transform included) on the same uint8 images.
    """
    inputs = _uint8(images) if preprocessing else images
    reference = _run_in_batches(lambda x: serving(x, training=False)["logits"].numpy(), inputs)
    runtime_name = {v: k for k, v in runtimes.RUNTIME_FORMATS.items()}[fmt]
    try:
        runtime = runtimes.load_runtime(runtime_name, path)
        logits = _run_in_batches(runtime, inputs)
    except runtimes.RuntimeUnavailable as err:
        raise ExportError(f"cannot self-check {path}: {err}") from err
    return compare(reference, logits, quantize)


def verify_serve_bytes(
    path: str,
    model: keras.Model,
    images: np.ndarray,
    image_size: int,
    crop_fraction: float,
    resize_method: str,
) -> dict[str, Any]:
    """Check the SavedModel's `serve_bytes` against Keras on the same JPEG files, decoded and
    transformed by `preprocess_for_eval` (the predict pipeline)."""
    encoded = [tf.io.encode_jpeg(tf.constant(img), quality=95).numpy() for img in _uint8(images)]
    decoded = np.stack(
        [preprocess_for_eval(b, image_size, crop_fraction, resize_method).numpy() for b in encoded]
    )
    reference = _run_in_batches(lambda x: model(x, training=False).numpy(), decoded)
    loaded = tf.saved_model.load(path)  # keep a reference: its variables die with it
    logits = np.concatenate(
        [
            loaded.serve_bytes(tf.constant(encoded[i : i + 8]))["logits"].numpy()
            for i in range(0, len(encoded), 8)
        ]
    )
    return compare(reference, logits, "none")


def run_export(params: Mapping[str, Any]) -> dict[str, Any]:
    """`--mode export`: write `--export_format` artifacts of the trained model and self-check them.

    Weights: `--pretrained` as published, else `--predict_ckpt` or the newest checkpoint of
    model_dir (EMA preferred), as eval.
    Artifacts go to `--export_dir` (default model_dir/export) with export.json describing each
    one (signature, eval transform, classes, weights, self-check results).

    Args:
      params: the resolved configuration (see main.py).

    Returns:
      {"artifacts": [one dict per artifact: format, path, quantize, seconds, self-check
      numbers], "manifest": path of export.json, "checkpoint", "weights"}.

    Raises:
      ExportError: an exporter failed, a needed package is missing or a self-check failed
        (the artifact that failed is kept for inspection and marked in export.json).
      RunError: no checkpoint to load.
    """
    if params["use_amp"]:
        logger.warning(
            "--use_amp ignored by export: artifacts are float32 (quantize LiteRT "
            "files with --export_quantize)"
        )
    is_chief = components.setup_run({**params, "use_amp": False}).is_chief
    num_classes, class_names = trained_classes(params)
    model = components.create_model(params, num_classes)
    loaded = load_for_inference(model, params, is_chief)
    cfg = components.data_config(params, training=False)
    crop_fraction = cfg.eval_crop_fraction
    preprocessing = bool(params["export_preprocessing"])
    serving = serving_model(model, cfg.image_size, crop_fraction, cfg.resize_method, preprocessing)
    images, source = check_images(params)
    out_dir = export_dir(params)
    if is_chief:
        os.makedirs(out_dir, exist_ok=True)
    records = []
    failures = []
    for fmt, path in planned_artifacts(params).items():
        if not is_chief:
            break
        quantize = params["export_quantize"] if fmt == "tflite" else "none"
        logger.info(
            "exporting %s (%s%s) to %s ...",
            fmt,
            quantize,
            ", with preprocessing" if preprocessing else "",
            path,
        )
        start = time.perf_counter()
        bytes_endpoint = None
        if fmt == "saved_model" and preprocessing:
            bytes_endpoint = {
                "model": model,
                "image_size": cfg.image_size,
                "crop_fraction": crop_fraction,
                "resize_method": cfg.resize_method,
            }
        write_artifact(fmt, serving, path, quantize, bytes_endpoint)
        seconds = time.perf_counter() - start
        check = verify_artifact(fmt, path, serving, images, quantize, preprocessing)
        record = {
            "format": fmt,
            "path": path,
            "quantize": quantize,
            "preprocessing": preprocessing,
            "seconds": seconds,
            "check_images": f"{len(images)} {source}",
            **check,
            "signature": signature(serving, num_classes, preprocessing, fmt),
        }
        if bytes_endpoint is not None:
            record["serve_bytes_check"] = verify_serve_bytes(
                path, model, images, cfg.image_size, crop_fraction, cfg.resize_method
            )
            record["passed"] = record["passed"] and record["serve_bytes_check"]["passed"]
        records.append(record)
        line = (
            f"{fmt}: max abs diff vs Keras {check['max_abs_diff_logits']:.3g} (logits), "
            f"{check['max_abs_diff_probabilities']:.3g} (probabilities), top-1 agreement "
            f"{check['top1_agreement']:.2%} on {len(images)} {source} images; "
            f"{check['checked']} tolerance {check['tolerance']:g}: "
            f"{'ok' if record['passed'] else 'FAILED'} ({seconds:.1f} s)"
        )
        print_result(line)
        if not record["passed"]:
            checked = check["checked"]
            failures.append(
                f"{fmt} ({path}): max abs diff of {checked} "
                f"{check['max_abs_diff_' + checked]:.3g} > tolerance "
                f"{check['tolerance']:g}"
            )
    result = {"artifacts": records, "checkpoint": loaded["path"], "weights": loaded["weights"]}
    if is_chief:
        result["manifest"] = write_manifest(
            out_dir,
            params,
            cfg.image_size,
            crop_fraction,
            cfg.resize_method,
            num_classes,
            class_names,
            loaded,
            records,
        )
        with components.open_metrics_log(params, is_chief, append=True) as log:
            log.log_params(params)
            for record in records:
                name = artifact_name(record["format"], record["quantize"], preprocessing)
                log.log(
                    [],
                    {
                        f"export.{name}.{k}": v
                        for k, v in record.items()
                        if isinstance(v, int | float | str)
                    },
                )
    if failures:
        raise ExportError("export self-check failed: " + "; ".join(failures))
    return result


def write_manifest(
    out_dir: str,
    params: Mapping[str, Any],
    image_size: int,
    crop_fraction: float,
    resize_method: str,
    num_classes: int,
    class_names: Sequence[str] | None,
    loaded: Mapping[str, str],
    records: Sequence[Mapping[str, Any]],
) -> str:
    """Write (or update) out_dir/export.json: one entry per artifact, newest kept per path."""
    path = os.path.join(out_dir, runtimes.MANIFEST)
    previous: list[dict[str, Any]] = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f).get("artifacts", [])
    written = {os.path.abspath(r["path"]) for r in records}
    artifacts = [a for a in previous if a["path"] not in written and os.path.exists(a["path"])]
    artifacts.extend({**r, "path": os.path.abspath(r["path"])} for r in records)
    document = {
        "model": params["model"].get("name"),
        "cfg": params["cfg"],
        "image_size": image_size,
        "crop_fraction": crop_fraction,
        "resize_method": resize_method,
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names else None,
        "checkpoint": loaded["path"],
        "weights": loaded["weights"],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "artifacts": artifacts,
    }
    return components.write_json(path, document)
