"""`--mode export`: the trained model as a TF SavedModel, an ONNX file and/or a LiteRT (TFLite) file.

Every artifact goes through Keras 3's own exporters (`keras.export.ExportArchive` for the
SavedModel, `Model.export(format="onnx")` which wraps tf2onnx, `Model.export(format="litert")`
which wraps `tf.lite.TFLiteConverter`), is written under a temporary name and renamed when
complete, and then verifies itself: the exported file is run by its runtime (runtime.runtimes)
on a few validation images and compared with the Keras model. The max abs difference is
printed (one line per artifact on stdout, the export's result), written to the DLLogger log and
to export.json; above the tolerance of its precision the export is an error.

The exported signature (docs/deployment.md):
  input  `images`: float32 [B, S, S, 3], RGB 0..255, the eval transform (center crop of
         `crop_fraction` of the shorter side, resize to S) already applied; normalization is
         part of the graph. With `--export_preprocessing`: uint8 [B, H, W, 3] of any size, the
         center crop and resize in the graph; the SavedModel also gets `serve_bytes`, a
         string [B] of encoded JPEG/PNG files.
  outputs `logits` and `probabilities` (softmax): float32 [B, num_classes].
"""

from __future__ import annotations

import functools
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

from dataloader import DataError, build_dataset, dataset_info
from dataloader.preprocessing import preprocess_for_eval, resize
from runtime import components, runtimes
from runtime.checkpoint import restore_for_inference
from runtime.errors import RunError
from runtime.runtimes import artifact_name, export_dir, planned_artifacts
from utils.dllogger import print_result

logger = logging.getLogger(__name__)

MANIFEST = "export.json"
ONNX_OPSET = 17
VERIFY_IMAGES = 32
# Max abs difference allowed between the exported model and Keras: on logits for float32
# artifacts; on probabilities for quantized LiteRT files (their logits move by design), whose
# top-1 agreement with Keras is reported too.
LOGIT_TOLERANCE = 1e-3
PROBABILITY_TOLERANCE = {"float16": 0.02, "dynamic_int8": 0.15}


class ExportError(RunError):
    """An export that failed or did not pass its self-check; the message is one line."""


@keras.saving.register_keras_serializable(package="efficientnet_export")
class EvalTransform(keras.layers.Layer):
    """Batched eval transform in the graph: uint8 [B, H, W, 3] -> float32 [B, S, S, 3] 0..255.

    The same center crop and resize as `dataloader.preprocessing.preprocess_for_eval` on a
    decoded image (tests/test_export.py checks they agree). The crop is cast to float32 before
    the resize: TF resizes uint8 in float32 anyway, and ONNX's Resize would keep uint8.

    Args:
      image_size: output side S.
      crop_fraction: fraction of the shorter side kept.
      resize_method: "bilinear" or "bicubic".
    """

    def __init__(
        self, image_size: int, crop_fraction: float, resize_method: str = "bilinear", **kwargs
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.crop_fraction = float(crop_fraction)
        self.resize_method = resize_method

    def call(self, images):
        shape = tf.shape(images)
        height, width = shape[1], shape[2]
        side = tf.cast(
            self.crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32
        )
        side = tf.maximum(side, 1)
        top, left = (height - side + 1) // 2, (width - side + 1) // 2
        cropped = tf.cast(images[:, top : top + side, left : left + side, :], tf.float32)
        return resize(cropped, self.image_size, self.resize_method)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, 3)

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "crop_fraction": self.crop_fraction,
            "resize_method": self.resize_method,
        }


def serving_model(
    model: keras.Model,
    image_size: int,
    crop_fraction: float,
    resize_method: str = "bilinear",
    preprocessing: bool = False,
) -> keras.Model:
    """The model as exported: `images` in, {"logits", "probabilities"} out (see module doc).

    Args:
      model: the trained model (logits out, raw 0..255 images in).
      image_size: the eval size S (a fixed input side lets the runtimes plan ahead).
      crop_fraction: eval center-crop fraction (for `preprocessing`).
      resize_method: eval resize method (for `preprocessing`).
      preprocessing: uint8 images of any size in; crop and resize in the graph.
    """
    if preprocessing:
        inputs = keras.Input((None, None, 3), dtype="uint8", name="images")
        images = EvalTransform(image_size, crop_fraction, resize_method, name="eval_transform")(
            inputs
        )
    else:
        inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="images")
        images = inputs
    logits = model(images, training=False)
    probabilities = keras.layers.Softmax(dtype="float32", name="probabilities")(logits)
    serving = keras.Model(
        inputs, {"logits": logits, "probabilities": probabilities}, name=f"{model.name}_serving"
    )
    # Keras' ONNX exporter refuses a model that was never called ("has never called").
    serving(
        np.zeros((1, image_size, image_size, 3), "uint8" if preprocessing else "float32"),
        training=False,
    )
    return serving


def _input_spec(serving: keras.Model) -> tf.TensorSpec:
    spec = serving.inputs[0]
    return tf.TensorSpec(spec.shape, spec.dtype, name="images")


def write_saved_model(
    serving: keras.Model,
    path: str,
    model: keras.Model | None = None,
    image_size: int | None = None,
    crop_fraction: float | None = None,
    resize_method: str = "bilinear",
) -> None:
    """A SavedModel with `serve` (= serving_default) and, given `model`, `serve_bytes`.

    Args:
      serving: from `serving_model`.
      path: destination folder.
      model: the inner model; when given, adds `serve_bytes` (string [B] of encoded images,
        decoded and transformed by `preprocess_for_eval`, as predict does).
      image_size, crop_fraction, resize_method: the eval transform of `serve_bytes`.
    """
    archive = keras.export.ExportArchive()
    archive.track(serving)
    archive.add_endpoint(
        "serve",
        functools.partial(serving.__call__, training=False),
        input_signature=[_input_spec(serving)],
    )
    if model is not None:
        archive.track(model)

        def serve_bytes(images):
            decoded = tf.map_fn(
                lambda b: preprocess_for_eval(b, image_size, crop_fraction, resize_method),
                images,
                fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
            )
            logits = model(decoded, training=False)
            return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}

        archive.add_endpoint(
            "serve_bytes",
            serve_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name="images")],
        )
    archive.write_out(path, verbose=False)


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
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ExportError(f"{fmt} export to {path} failed: {first}") from err
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


def signature(
    serving: keras.Model, num_classes: int, preprocessing: bool, fmt: str
) -> dict[str, Any]:
    """The documented input/output signature of an artifact (written to export.json)."""
    spec = serving.inputs[0]
    shape = ["batch" if d is None else int(d) for d in spec.shape]
    if preprocessing:
        shape = ["batch", "height", "width", 3]
    out = {
        "input": {
            "name": "images",
            "dtype": str(spec.dtype),
            "shape": shape,
            "range": "0..255 RGB"
            + ("" if preprocessing else ", eval center crop and resize already applied"),
        },
        "outputs": {
            name: {"dtype": "float32", "shape": ["batch", int(num_classes)]}
            for name in ("logits", "probabilities")
        },
    }
    if preprocessing and fmt == "saved_model":
        out["serve_bytes"] = {
            "name": "images",
            "dtype": "string",
            "shape": ["batch"],
            "range": "encoded JPEG/PNG files",
        }
    return out


def run_export(params: Mapping[str, Any]) -> dict[str, Any]:
    """`--mode export`: write `--export_format` artifacts of the trained model and self-check them.

    Weights: `--predict_ckpt` or the newest checkpoint of model_dir (EMA preferred), as eval.
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
    num_classes, class_names = _classes(params)
    model = components.create_model(params, num_classes)
    loaded = restore_for_inference(model, params["model_dir"], params["predict_ckpt"])
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


def _classes(params: Mapping[str, Any]) -> tuple[int, tuple[str, ...] | None]:
    """Class count and names as predict finds them (training's class_names.json first)."""
    from runtime.predict import _classes_for_predict

    return _classes_for_predict(params)


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
    path = os.path.join(out_dir, MANIFEST)
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


def open_exported(
    params: Mapping[str, Any], num_classes: int
) -> tuple[runtimes.Runtime, dict[str, str]]:
    """The `--runtime` artifact of the export folder, checked against the run's classes and size.

    Returns:
      (the runtime, {"path": artifact, "weights": "ema" | "raw" | "unknown"} as in
      restore_for_inference).

    Raises:
      RunError: the runtime package is missing, or the artifact was exported for another
        class count or image size.
    """
    path = runtimes.runtime_artifact(params)
    try:
        runtime = runtimes.load_runtime(
            params["runtime"], path, params["runtime_threads"], params["runtime_batch"]
        )
    except runtimes.RuntimeUnavailable as err:
        raise RunError(str(err)) from err
    if int(runtime.output_shape[-1]) != num_classes:
        raise RunError(
            f"{path} has {runtime.output_shape[-1]} classes, this run "
            f"{num_classes}; export this run's model with --mode export"
        )
    size = int(params["eval_img_size"])
    if runtime.image_size is not None and runtime.image_size != size:
        raise RunError(
            f"{path} takes {runtime.image_size} px images, --eval_img_size is {size}; "
            f"pass --eval_img_size {runtime.image_size} or export again"
        )
    weights = "unknown"
    manifest = os.path.join(os.path.dirname(path), MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as f:
            weights = json.load(f).get("weights", weights)
    logger.info("running %s with %s", path, params["runtime"])
    return runtime, {"path": path, "weights": weights}


def run_runtime_benchmark(params: Mapping[str, Any]) -> dict[str, Any]:
    """`--mode inference_benchmark --runtime R` for an exported model (R != keras).

    One batch of the eval input (`--dataset synthetic`: random images) is run
    `--benchmark_warmup_steps` + `--benchmark_steps` times per batch size: latency is the
    runtime's call on host memory, images/s = batch / mean latency (input pipeline excluded).

    Returns:
      The benchmark document as `run_inference_benchmark` (plus "runtime" and "artifact").
    """
    from runtime import benchmark
    from runtime.evaluate import latency_stats

    dist = components.setup_run(params)
    is_chief = dist.is_chief
    info = dataset_info(components.data_config(params, training=False))
    runtime, loaded = open_exported(params, info.num_classes)
    rows = []
    with components.open_metrics_log(params, is_chief, append=True) as log:
        log.log_params(params)
        for batch_size in benchmark._batch_sizes(params, params["eval_batch_size"]):
            images, _ = next(
                iter(
                    components.eval_dataset(
                        params, dist.strategy, repeat=True, batch_size=batch_size
                    )
                )
            )
            images = images.numpy()
            times = benchmark.time_steps(
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
        document = benchmark._header(params, dist, "inference_benchmark", params["eval_img_size"])
        document.update(
            runtime=params["runtime"],
            artifact=loaded["path"],
            runtime_batch=runtime.micro_batch,
            results=rows,
        )
        return benchmark._report(params, document, "latency", log, is_chief)
