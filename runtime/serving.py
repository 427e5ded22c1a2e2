"""The serving wrapper of an exported model: its input, its outputs and its signatures.

Owns what every exported artifact looks like from outside (docs/deployment.md): the serving
model around the trained one (`serving_model`), the eval transform as a graph layer
(`EvalTransform`), the SavedModel endpoints (`write_saved_model`) and the documented signature
written to export.json (`signature`). runtime.export drives the exporters and self-checks.

The exported signature:
  input  `images`: float32 [B, S, S, 3], RGB 0..255, the eval transform (center crop of
         `crop_fraction` of the shorter side, resize to S) already applied; normalization is
         part of the graph. With `--export_preprocessing`: uint8 [B, H, W, 3] of any size, the
         center crop and resize in the graph; the SavedModel also gets `serve_bytes`, a
         string [B] of encoded JPEG/PNG files.
  outputs `logits` and `probabilities` (softmax): float32 [B, num_classes].
"""

from __future__ import annotations

import functools
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dataloader.preprocessing import preprocess_for_eval, resize


@keras.saving.register_keras_serializable(package="efficientnet_export")
class EvalTransform(keras.layers.Layer):
    """Batched eval transform in the graph: uint8 [B, H, W, 3] -> float32 [B, S, S, 3] 0..255.

    The same center crop and resize as `dataloader.preprocessing.preprocess_for_eval` on a
    decoded image (tests/runtime/test_export.py checks they agree). The crop is cast to float32 before
    the resize: TF resizes uint8 in float32 anyway, and ONNX's Resize would keep uint8.

    Args:
      image_size: output side S.
      crop_fraction: fraction of the shorter side kept.
      resize_method: "bilinear", "bicubic" or "bicubic_tf1" (as matrix products that ONNX and
        LiteRT convert exactly; dataloader.preprocessing.resize).
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
        return resize(cropped, self.image_size, self.resize_method, portable=True)

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
