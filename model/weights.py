"""Import keras.applications EfficientNet / EfficientNetV2 weights into our models.

Users who have ImageNet checkpoints locally (`efficientnetb0.h5`,
`efficientnetv2-s.h5`, or a `.weights.h5` saved by Keras 3) fine-tune from them: the layers are
matched by structure, keras.applications' `block{s}{letter}_{part}` to our
`stage{s}_block{b}/{part}` (letter a = block 1), `top_*` to `head_*`, `predictions` to `logits`.
Every weight of our model must find a source of the same shape and every source weight must be
used; the only tolerated gap is the classifier when the class counts differ (fine-tuning to
another dataset), which is logged. No file is downloaded.

Input normalization: keras.applications EfficientNetB* and EfficientNetV2B0..B3 normalize
in-graph with the ImageNet mean/std and EfficientNetV2S/M/L with (x - 128) / 128; our configs use the matching
`input_normalization` ("imagenet" / "scale128"), so on raw 0..255 input the imported model gives
the reference outputs (logits here; keras.applications applies a softmax on top).
"""

from __future__ import annotations

import logging
import os
import warnings

import keras

from model.efficientnet import InputNormalization
from model.torch_format import SAFETENSORS_SUFFIX, TORCH_SUFFIXES
from model.torch_weights import load_torch_weights
from utils.errors import ConfigError

logger = logging.getLogger(__name__)

# Our model name -> (keras.applications constructor, input normalization it expects).
_REFERENCES = {
    **{f"efficientnet-b{i}": (f"EfficientNetB{i}", "imagenet") for i in range(8)},
    **{f"efficientnetv2-{v}": (f"EfficientNetV2{v.upper()}", "scale128") for v in "sml"},
    # keras.applications gives V2-B0..B3 the v1 ImageNet mean/std input, as automl trained them.
    **{f"efficientnetv2-b{i}": (f"EfficientNetV2B{i}", "imagenet") for i in range(4)},
}
_TOP_LEVEL = {
    "stem_conv": "stem_conv",
    "stem_bn": "stem_bn",
    "head_conv": "top_conv",
    "head_bn": "top_bn",
    "logits": "predictions",
}
_BLOCK_PARTS = (
    "expand_conv",
    "expand_bn",
    "dwconv",
    "bn",
    "se.reduce",
    "se.expand",
    "project_conv",
    "project_bn",
)
# Layers of the reference that hold preprocessing statistics, not learned weights.
_PREPROCESSING = (keras.layers.Normalization, keras.layers.Rescaling)


def load_keras_applications_weights(
    model: keras.Model, source: str | os.PathLike | keras.Model
) -> dict:
    """Copy weights from a keras.applications EfficientNet(V2) model or weights file.

    Args:
      model: a model from `model.build_model` (B0-B7, V2-B0..B3 or V2-S/M/L for a file
        source).
      source: a keras.applications model, or the path of its weights (`.h5` as published by
        keras-applications, with or without top, or a Keras 3 `.weights.h5`).

    Returns:
      {"layers": number of layers copied, "weights": number of arrays copied,
       "skipped": names of our layers left as they were (the classifier on a class mismatch)}.

    Raises:
      ConfigError: if the file is missing or unreadable, or the structures do not match.
    """
    reference = source if isinstance(source, keras.Model) else _load_reference(model, source)
    src_layers = {layer.name: layer for layer in reference.layers}
    # keras.applications names the depthwise conv `dwconv` in v1 and `dwconv2` in v2.
    dv2 = "dwconv2" if any(n.endswith("_dwconv2") for n in src_layers) else "dwconv"
    used, skipped, copied = set(), [], 0
    for ours, src_name in _pairs(model, dv2):
        src = src_layers.get(src_name)
        if src is None:
            if src_name == "predictions":  # a no-top source
                skipped.append(ours.path)
                continue
            raise ConfigError(
                f"source model {reference.name!r} has no layer {src_name!r} "
                f"for our {ours.path!r}: not the same architecture"
            )
        values = src.get_weights()
        want = [tuple(w.shape) for w in ours.weights]
        got = [tuple(v.shape) for v in values]
        if want != got:
            if src_name == "predictions":
                logger.warning(
                    "classifier not imported: source shapes %s, ours %s (class "
                    "count differs); it keeps its fresh initialization",
                    got,
                    want,
                )
                skipped.append(ours.path)
                continue
            raise ConfigError(
                f"shape mismatch importing {src_name!r} into {ours.path!r}: "
                f"source {got}, ours {want}"
            )
        ours.set_weights(values)
        used.add(src_name)
        copied += len(values)
    # The source classifier may stay unused: skipped on a class mismatch, or we have no top.
    unused = [
        layer.name
        for layer in reference.layers
        if layer.weights
        and layer.name not in used
        and layer.name != "predictions"
        and not isinstance(layer, _PREPROCESSING)
    ]
    if unused:
        raise ConfigError(
            f"source weights left unused (architecture differs): {', '.join(unused[:5])}"
        )
    _check_normalization(model)
    logger.info(
        "imported %d weight arrays into %d layers from %s (skipped: %s)",
        copied,
        len(used),
        reference.name,
        ", ".join(skipped) or "none",
    )
    return {"layers": len(used), "weights": copied, "skipped": skipped}


def load_weights_file(model: keras.Model, path: str | os.PathLike) -> dict:
    """Import a pretrained weights file by its kind: PyTorch (`.pth`, `.pt`, `.bin`,
    `.safetensors`; model.torch_weights) or keras.applications (anything else, `.h5`).

    Returns:
      The importer's summary ("layers", "weights", "skipped") with "format": "pytorch" or
      "keras.applications".

    Raises:
      ConfigError: as the importer (missing file, other architecture, shape mismatch).
    """
    if os.fspath(path).endswith((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)):
        return {**load_torch_weights(model, path), "format": "pytorch"}
    return {**load_keras_applications_weights(model, path), "format": "keras.applications"}


def _names(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers}


def _pairs(model: keras.Model, dwconv_name: str):
    """Yield (our leaf layer with weights, source layer name) in network order."""
    for layer in model.layers:
        if layer.name in _TOP_LEVEL:
            yield layer, _TOP_LEVEL[layer.name]
        elif hasattr(layer, "branch"):  # stage{s}_block{b}
            stage, index = (int(p) for p in layer.name[len("stage") :].split("_block"))
            prefix = f"block{stage}{chr(ord('a') + index - 1)}_"
            for part in _BLOCK_PARTS:
                sub = layer
                for attr in part.split("."):
                    sub = getattr(sub, attr, None)
                    if sub is None:
                        break
                if sub is None:
                    continue
                src_part = {
                    "dwconv": dwconv_name,
                    "se.reduce": "se_reduce",
                    "se.expand": "se_expand",
                }.get(part, part)
                yield sub, prefix + src_part
        elif layer.weights:
            raise ConfigError(
                f"layer {layer.name!r} has weights but no keras.applications counterpart"
            )


def _load_reference(model: keras.Model, path: str | os.PathLike) -> keras.Model:
    """Build the keras.applications twin of `model` and load the weights file into it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"weights file not found: {path}")
    if model.name not in _REFERENCES:
        raise ConfigError(
            f"no keras.applications counterpart for {model.name!r}; weight files "
            f"can be imported for {', '.join(_REFERENCES)}"
        )
    ctor = getattr(keras.applications, _REFERENCES[model.name][0])
    classes = model.output_shape[-1] if "logits" in _names(model) else 1000
    attempts = [{"include_top": True, "classes": c} for c in dict.fromkeys((classes, 1000))]
    attempts.append({"include_top": False})
    errors = []
    for kwargs in attempts:
        reference = ctor(weights=None, **kwargs)
        try:
            with warnings.catch_warnings():
                # Keras 3 warns about the functional's empty "_operations_by_depth" container
                # when reading a .weights.h5 of a keras.applications model; every layer's
                # weights do load (tests compare outputs).
                warnings.filterwarnings("ignore", message="Skipping nested container")
                reference.load_weights(path)
        except Exception as err:  # noqa: BLE001 -- try the next layout, report all below
            errors.append(f"{kwargs}: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            continue
        logger.info("loaded %s into keras.applications.%s(%s)", path, ctor.__name__, kwargs)
        return reference
    raise ConfigError(f"cannot read {path} as {ctor.__name__} weights ({'; '.join(errors)})")


def _check_normalization(model: keras.Model) -> None:
    expected = _REFERENCES.get(model.name, (None, None))[1]
    layer = next((la for la in model.layers if isinstance(la, InputNormalization)), None)
    mode = layer.mode if layer is not None else "none"
    if expected and mode != expected:
        logger.warning(
            "model normalizes input with %r but the imported weights were trained "
            "with %r: feed inputs normalized accordingly",
            mode,
            expected,
        )
