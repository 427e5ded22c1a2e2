"""Inference runtimes behind one call: the Keras model, or an exported SavedModel, ONNX or LiteRT file.

Owns where exports live (the export folder, artifact names, export.json) and how they are run.
`predict` and `inference_benchmark` take `--runtime {keras,saved_model,onnxruntime,litert}` and
run the file `--mode export` wrote (runtime.export) through `open_exported`, so a user measures
and uses the exported model with the same command. Every runtime is a callable
`images -> logits` on numpy arrays (float32 [B, S, S, 3] in 0..255, the eval transform already
applied), with `output_shape`.

ONNX Runtime and LiteRT are optional dependencies (requirements-export.txt); `require` turns a
missing one into a one-line error naming the file to install. This module imports neither
TensorFlow nor a runtime until one is opened: runtime.flag_checks checks export paths with it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from runtime.errors import RunError
from utils.errors import UserError

logger = logging.getLogger(__name__)

FORMATS = ("saved_model", "onnx", "tflite")
QUANTIZATIONS = ("none", "float16", "dynamic_int8")
EXPORT_SUBDIR = "export"
MANIFEST = "export.json"
RUNTIMES = ("keras", "saved_model", "onnxruntime", "litert")
# The export format each runtime reads (one of FORMATS).
RUNTIME_FORMATS = {"saved_model": "saved_model", "onnxruntime": "onnx", "litert": "tflite"}
# The Python module each optional runtime (or exporter) needs, and the pip package that has it.
OPTIONAL_MODULES = {
    "onnxruntime": "onnxruntime",
    "tf2onnx": "tf2onnx",
    "ai_edge_litert": "ai-edge-litert",
}
REQUIREMENTS_FILE = "requirements-export.txt"
# Images per call into ONNX Runtime / LiteRT when a larger batch is given (--runtime_batch).
# Measured (docs/deployment.md, scripts/bench_inference.py): 4 calls on 8 images are up to 1.18x
# faster than one call on 32 (B0 in ONNX Runtime; the activations of 8 images stay closer to
# the CPU caches); the TF runtimes gain nothing, so they take the whole batch.
DEFAULT_MICRO_BATCH = {"onnxruntime": 8, "litert": 8}


def export_dir(params: Mapping[str, Any]) -> str:
    """Where exports go: --export_dir, else model_dir/export."""
    return params.get("export_dir") or os.path.join(params["model_dir"], EXPORT_SUBDIR)


def artifact_name(fmt: str, quantize: str = "none", preprocessing: bool = False) -> str:
    """File (or folder) name of one artifact inside the export folder.

    Args:
      fmt: a key of FORMATS.
      quantize: LiteRT quantization (ignored for the other formats).
      preprocessing: the eval transform is in the graph (uint8 input).
    """
    suffix = "_preprocessing" if preprocessing else ""
    if fmt == "saved_model":
        return f"saved_model{suffix}"
    if fmt == "onnx":
        return f"model{suffix}.onnx"
    quant = "" if quantize == "none" else f"_{quantize}"
    return f"model{quant}{suffix}.tflite"


def planned_artifacts(params: Mapping[str, Any]) -> dict[str, str]:
    """{format: path} that `--mode export` with these params writes."""
    return {
        fmt: os.path.join(
            export_dir(params),
            artifact_name(fmt, params["export_quantize"], params["export_preprocessing"]),
        )
        for fmt in params["export_format"]
    }


def runtime_artifact(params: Mapping[str, Any]) -> str:
    """The artifact `--runtime` runs for predict / inference_benchmark (float input)."""
    fmt = RUNTIME_FORMATS[params["runtime"]]
    return os.path.join(export_dir(params), artifact_name(fmt, params["export_quantize"]))


class RuntimeUnavailable(UserError, ImportError):
    """An optional runtime or exporter is not installed; the message is one line."""


def require(module: str, what: str) -> Any:
    """Import an optional module or raise RuntimeUnavailable saying what to install.

    Args:
      module: a key of OPTIONAL_MODULES.
      what: what needs it, for the message ("--runtime onnxruntime").
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise RuntimeUnavailable(
            f"{what} needs the {OPTIONAL_MODULES[module]} package ({err}); "
            f"pip install -r {REQUIREMENTS_FILE}"
        ) from err


class Runtime:
    """`runtime(images) -> logits`: float32 [B, num_classes] for float32 [B, S, S, 3] 0..255.

    Attributes:
      name: a key of RUNTIMES.
      path: the file or folder it runs ("" for the in-memory Keras model).
      output_shape: (None, num_classes), as keras.Model.output_shape.
      image_size: the fixed input side of the artifact, None when any size is accepted.
      micro_batch: images per call into the runtime; a larger batch is run in slices of this
        many and the logits concatenated (same result). None: the whole batch in one call.
    """

    name = ""

    def __init__(self, path: str, output_shape: tuple, image_size: int | None) -> None:
        self.path = path
        self.output_shape = output_shape
        self.image_size = image_size
        self.micro_batch: int | None = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        step = self.micro_batch
        if not step or len(images) <= step:
            return self._run(images)
        return np.concatenate(
            [self._run(images[i : i + step]) for i in range(0, len(images), step)]
        )

    def _run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class KerasRuntime(Runtime):
    """The Keras model in a tf.function (the training application's own forward pass)."""

    name = "keras"

    def __init__(self, model, jit_compile: bool = False) -> None:
        import tensorflow as tf

        super().__init__("", tuple(model.output_shape), None)
        self._forward = tf.function(
            lambda x: model(x, training=False), jit_compile=jit_compile, reduce_retracing=True
        )

    def _run(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._forward(images), dtype=np.float32)


class SavedModelRuntime(Runtime):
    """The SavedModel's `serving_default` signature (what TF Serving runs)."""

    name = "saved_model"

    def __init__(self, path: str) -> None:
        import tensorflow as tf

        self._loaded = tf.saved_model.load(path)
        self._fn = self._loaded.signatures["serving_default"]
        _, inputs = self._fn.structured_input_signature
        self._input_name, spec = next(iter(inputs.items()))
        outputs = self._fn.structured_outputs
        super().__init__(
            path, (None, int(outputs["logits"].shape[-1])), _fixed_side(spec.shape.as_list())
        )
        self._tf = tf

    def _run(self, images: np.ndarray) -> np.ndarray:
        out = self._fn(**{self._input_name: self._tf.constant(images)})
        return out["logits"].numpy()


class OnnxRuntime(Runtime):
    """ONNX Runtime's CPU execution provider, all graph optimizations (constant folding,
    Conv+BatchNorm / Conv+activation fusion, layout transformation)."""

    name = "onnxruntime"

    def __init__(self, path: str, threads: int | None = None) -> None:
        ort = require("onnxruntime", "--runtime onnxruntime")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        image_input = self._session.get_inputs()[0]
        self._input_name = image_input.name
        outputs = {o.name: o for o in self._session.get_outputs()}
        super().__init__(
            path, (None, int(outputs["logits"].shape[-1])), _fixed_side(image_input.shape)
        )

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(["logits"], {self._input_name: images})[0]


class LiteRTRuntime(Runtime):
    """The LiteRT (TFLite) interpreter with its default XNNPACK CPU delegate.

    The input is resized (and tensors re-allocated) only when the batch shape changes, not on
    every call as the signature runner does.
    """

    name = "litert"

    def __init__(self, path: str, threads: int | None = None) -> None:
        require("ai_edge_litert", "--runtime litert")
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=path, num_threads=threads or os.cpu_count())
        runner = self._interpreter.get_signature_runner()
        ((self._input_index, spec),) = [
            (d["index"], d) for d in runner.get_input_details().values()
        ]
        self._logits_index = runner.get_output_details()["logits"]["index"]
        self._shape: tuple[int, ...] | None = None
        output_shape = runner.get_output_details()["logits"]["shape_signature"]
        super().__init__(
            path, (None, int(output_shape[-1])), _fixed_side(list(spec["shape_signature"]))
        )

    def _run(self, images: np.ndarray) -> np.ndarray:
        if images.shape != self._shape:
            self._interpreter.resize_tensor_input(self._input_index, images.shape)
            self._interpreter.allocate_tensors()
            self._shape = images.shape
        self._interpreter.set_tensor(self._input_index, images)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._logits_index).copy()


def _fixed_side(shape: list) -> int | None:
    """The fixed spatial side of an NHWC input shape, None when dynamic."""
    height = shape[1] if len(shape) == 4 else None
    return int(height) if isinstance(height, int | np.integer) and height > 0 else None


def load_runtime(
    name: str, path: str, threads: int | None = None, micro_batch: int | None = None
) -> Runtime:
    """Open an exported model with a runtime.

    Args:
      name: "saved_model", "onnxruntime" or "litert" (the Keras runtime wraps a model:
        KerasRuntime).
      path: the artifact runtime.export wrote.
      threads: CPU threads (ONNX Runtime intra-op, LiteRT); None = the runtime's default
        (all cores).
      micro_batch: images per runtime call (--runtime_batch): None = DEFAULT_MICRO_BATCH for
        this runtime, 0 = the whole batch in one call.
    """
    if micro_batch is None:
        micro_batch = DEFAULT_MICRO_BATCH.get(name)
    micro_batch = micro_batch or None
    openers: dict[str, Callable[[], Runtime]] = {
        "saved_model": lambda: SavedModelRuntime(path),
        "onnxruntime": lambda: OnnxRuntime(path, threads),
        "litert": lambda: LiteRTRuntime(path, threads),
    }
    if name not in openers:
        raise ValueError(f"unknown runtime {name!r}; valid: {', '.join(openers)}")
    runtime = openers[name]()
    runtime.micro_batch = micro_batch
    return runtime


def open_exported(params: Mapping[str, Any], num_classes: int) -> tuple[Runtime, dict[str, str]]:
    """The `--runtime` artifact of the export folder, checked against the run's classes and size.

    Returns:
      (the runtime, {"path": artifact, "weights": "ema" | "raw" | "unknown"} as in
      restore_for_inference).

    Raises:
      RunError: the runtime package is missing, or the artifact was exported for another
        class count or image size.
    """
    path = runtime_artifact(params)
    try:
        runtime = load_runtime(
            params["runtime"], path, params["runtime_threads"], params["runtime_batch"]
        )
    except RuntimeUnavailable as err:
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
