"""Fine-tuning: start from pretrained weights, freeze layers, train in two phases.

`--pretrained PATH` starts training from a keras.applications EfficientNet(V2) weight file
(`.h5` full model or weights, `_notop.h5`, Keras 3 `.weights.h5`; model.weights), a PyTorch
EfficientNet state dict (`.pth`/`.safetensors`; model.torch_weights) or from one of our own
runs (a run directory, its `checkpoints/` folder, a checkpoint prefix or its
`model.weights.h5`; EMA weights preferred). `--pretrained imagenet` is the keras.applications
ImageNet file of the config's model, downloaded once into the Keras cache
(runtime.imagenet_weights). Every layer but the classifier must load, shapes checked; when the
class count differs the classifier keeps its fresh initialization and the log says so in one
line. A pretrained start is not a resume: the optimizer, its step count (so the learning-rate
schedule) and the EMA start fresh.

Eval, predict and export given `--pretrained` (a weight file or `imagenet`) use the model as
published, without training (`load_for_inference`): then the classifier must load too. The run
records itself: a model_dir without a params.json gets one naming the weights, so later modes
on that model_dir need only `--model_dir` (runtime.flag_checks keeps a trained run's checkpoints
apart from such a record).

Freezing (`--freeze_until`, `--freeze_bn`) sets `trainable = False` on layers before the
training step is built; the step differentiates `model.trainable_variables` only, so frozen
variables get no gradient, no L2 penalty, no all-reduce and no optimizer update (when frozen
for the whole run the optimizer does not even hold slots for them). A frozen BatchNormalization
runs in inference mode (Keras 3: moving statistics used and left unchanged), the usual choice
for small data sets.

Two phases (`--unfreeze_epoch N`): epochs before N train with `--freeze_until` (default
"head": the classifier only), from epoch N on every layer trains (BatchNorm stays frozen with
`--freeze_bn`) and the learning rate warms up again over `--lr_warmup_epochs`, as in the
Keras transfer-learning guide's "train the top, then fine-tune everything at a low rate". The
training loop splits its stage at that epoch (runtime.stages.split_at) and the schedule warms
up again there (utils.schedules.with_rewarm).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf

from config.loader import ConfigError
from model import build_model
from model.weights import load_weights_file
from runtime import components, imagenet_weights, run_params
from runtime.checkpoint import CHECKPOINT_SUBDIR, restore_for_inference
from runtime.errors import RunError

logger = logging.getLogger(__name__)

CLASSIFIER = "logits"
HEAD_ONLY = "head"
FINAL_WEIGHTS_FILE = (
    "model.weights.h5"  # the final export of training (runtime.train.FINAL_WEIGHTS)
)


# ---------------------------------------------------------------------------------------------
# Pretrained weights


def _is_our_checkpoint(path: str) -> bool:
    return os.path.isdir(path) or os.path.isfile(path + ".index")


def _is_our_weights_file(path: str) -> bool:
    """Whether a `.weights.h5` was saved from one of our models (not keras.applications).

    Keras 3 stores a functional model's layers under auto-generated class-based names; ours
    are MBConvBlock / FusedMBConvBlock layers, keras.applications' are plain Conv2D etc.
    """
    try:
        with h5py.File(path, "r") as f:
            layers = f.get("layers")
            return layers is not None and any(
                name.startswith(("mb_conv_block", "fused_mb_conv_block")) for name in layers
            )
    except OSError:
        return False


def _classifier_classes(path: str) -> int | None:
    """The class count of a weights file / checkpoint of our model: the width of its 2-D
    tensors (the classifier kernel and its optimizer slots; every convolution kernel is 4-D)."""
    shapes: list[tuple[int, ...]] = []
    if path.endswith(".h5"):
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda _, obj: shapes.append(obj.shape) if isinstance(obj, h5py.Dataset) else None
            )
    else:
        shapes = [tuple(s) for _, s in tf.train.list_variables(path)]
    matrices = {s for s in shapes if len(s) == 2}
    return next(iter(matrices))[-1] if len(matrices) == 1 else None


def _our_source_path(path: str) -> str:
    """A run directory / checkpoints folder / prefix / .weights.h5 of ours -> one loadable path."""
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(
            os.path.join(path, "checkpoints")
        ) or tf.train.latest_checkpoint(path)
        if latest:
            return latest
        weights = os.path.join(path, FINAL_WEIGHTS_FILE)
        if os.path.isfile(weights):
            return weights
        raise RunError(f"--pretrained {path}: no checkpoint and no {FINAL_WEIGHTS_FILE} in it")
    return path


def copy_matching_layers(model: keras.Model, source: keras.Model) -> dict[str, Any]:
    """Copy every weighted layer of `source` into the same-named layer of `model`.

    The classifier is skipped (left freshly initialized, logged in one line) when its shape
    differs; any other missing layer or shape mismatch is an error.

    Returns:
      {"layers": layers copied, "weights": arrays copied, "skipped": layer names skipped}.

    Raises:
      RunError: a backbone layer is missing in the source or has another shape.
    """
    layers, copied, skipped = 0, 0, []
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            src = source.get_layer(layer.name)
        except ValueError:
            raise RunError(
                f"pretrained weights have no layer {layer.name!r}: not the same architecture"
            ) from None
        values = src.get_weights()
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if want != got:
            if layer.name == CLASSIFIER:
                logger.info(
                    "classifier re-initialized: pretrained weights have %d classes, this run %d",
                    got[0][-1],
                    want[0][-1],
                )
                skipped.append(layer.name)
                continue
            raise RunError(
                f"pretrained layer {layer.name!r} has shapes {got}, this model "
                f"{want}: not the same architecture"
            )
        layer.set_weights(values)
        layers += 1
        copied += len(values)
    return {"layers": layers, "weights": copied, "skipped": skipped}


def load_pretrained(
    model: keras.Model, path: str, model_config: Mapping[str, Any], inference: bool = False
) -> dict:
    """Load `--pretrained` weights into a freshly built model (see the module docstring).

    Args:
      model: the run's model (built, possibly under a distribution strategy).
      path: a keras.applications weight file, a PyTorch .pth/.safetensors state dict, a run
        dir / checkpoint / .weights.h5 of ours, or "imagenet" (runtime.imagenet_weights).
      model_config: the run's model config (builds the twin that reads our own files).
      inference: the weights are used as they are (eval, predict, export): the classifier
        must load too.

    Returns:
      {"source", "kind" ("keras.applications" | "pytorch" | "checkpoint"), "layers", "weights",
       "skipped"}.

    Raises:
      RunError / ConfigError: unreadable file, other architecture, backbone shape mismatch,
        (inference) no classifier for this model's classes.
      WeightsDownloadError: "imagenet" could not be downloaded.
    """
    classes = int(model.output_shape[-1])
    if path == imagenet_weights.IMAGENET:
        include_top = inference or classes == imagenet_weights.IMAGENET_CLASSES
        path = imagenet_weights.fetch(model_config.get("name"), include_top)
    if _is_our_checkpoint(path) or (path.endswith(".weights.h5") and _is_our_weights_file(path)):
        source_path = _our_source_path(path)
        twin = build_model(model_config, num_classes=_classifier_classes(source_path) or classes)
        loaded = restore_for_inference(twin, "", source_path)
        summary = {
            **copy_matching_layers(model, twin),
            "kind": "checkpoint",
            "source": f"{loaded['path']} ({loaded['weights']} weights)",
        }
    elif os.path.isfile(path):
        imported = load_weights_file(model, path)  # keras.applications or PyTorch
        summary = {**imported, "kind": imported["format"], "source": path}
    else:
        raise ConfigError(f"--pretrained {path}: no such file, run directory or checkpoint")
    if inference and summary["skipped"]:
        raise RunError(
            f"--pretrained {path} has no classifier for this model's {classes} classes: "
            "eval, predict and export use the weights as they are; fine-tune them first "
            "(--mode train_and_eval --pretrained ...)"
        )
    logger.info(
        "%s %s: loaded %d tensors into %d layers%s%s",
        "using the weights of" if inference else "pretrained start from",
        summary["source"],
        summary["weights"],
        summary["layers"],
        f", re-initialized {', '.join(summary['skipped'])}" if summary["skipped"] else "",
        "" if inference else "; optimizer, step and EMA start fresh",
    )
    return summary


def fetch_imagenet_before_run(params: Mapping[str, Any]) -> str | None:
    """`--pretrained imagenet`: have the file in the Keras cache before anything is written.

    Called by main.py's pre-run checks, so that no network, a stalled server or a bad MD5 ends
    the run with exit 2 and nothing in model_dir (the run's own load then finds the cached
    file). Nothing is fetched for a training run that resumes from its own checkpoint (it does
    not load `--pretrained`) or for the benchmark modes. The class count is the data source's
    (read without touching TensorFlow's runtime), which picks the file with or without the
    classifier exactly as `load_pretrained` does.

    Returns:
      The cached file's path, or None when nothing was needed.

    Raises:
      WeightsDownloadError: the download failed (exit 2, one line).
    """
    from dataloader import dataset_classes

    if params.get("pretrained") != imagenet_weights.IMAGENET:
        return None
    mode = params["mode"]
    if mode in run_params.TRAINING_MODES:
        index = os.path.join(params["model_dir"], CHECKPOINT_SUBDIR, "checkpoint")
        if params["resume_checkpoint"] and os.path.isfile(index):
            return None
        classes, _ = dataset_classes(components.data_config(params, training=True))
        include_top = classes == imagenet_weights.IMAGENET_CLASSES
    elif mode in run_params.INFERENCE_MODES:
        include_top = True
    else:
        return None
    return imagenet_weights.fetch(params["model"].get("name"), include_top)


def load_for_inference(model: keras.Model, params: Mapping[str, Any], is_chief: bool) -> dict:
    """The weights of eval / predict / export: `--pretrained` as published, else the run's.

    With `--pretrained` (params after runtime.flag_checks: given for this model_dir, or recorded
    by an earlier run of it), the weights are imported as they are and, when model_dir has no
    params.json yet, the chief writes one naming them (`record_pretrained_run`). Otherwise
    `--predict_ckpt` or the newest checkpoint of model_dir (runtime.checkpoint).

    Returns:
      {"path": what was loaded, "weights": "pretrained" | "ema" | "raw"}.

    Raises:
      RunError / ConfigError / WeightsDownloadError: as `load_pretrained` and
        `restore_for_inference`.
    """
    if not params.get("pretrained"):
        return restore_for_inference(model, params["model_dir"], params["predict_ckpt"])
    summary = load_pretrained(model, params["pretrained"], params["model"], inference=True)
    if is_chief:
        record_pretrained_run(params)
    return {"path": summary["source"], "weights": "pretrained"}


def record_pretrained_run(params: Mapping[str, Any]) -> str | None:
    """Write model_dir/params.json for a model used as published, unless model_dir has one.

    Eval, predict and export read a model_dir's params.json (runtime.run_params): with this
    record they find the config and `--pretrained` again from `--model_dir` alone.

    Returns:
      The path written, or None when model_dir already had a params.json.
    """
    path = os.path.join(params["model_dir"], run_params.PARAMS_FILE)
    if os.path.exists(path):
        return None
    components.write_json(path, params)
    logger.info("recorded the model (config and --pretrained %s) in %s", params["pretrained"], path)
    return path


# ---------------------------------------------------------------------------------------------
# Freezing


def _sublayers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """`layer` and every layer it holds as an attribute (or in a list attribute), depth first."""
    yield layer
    for value in vars(layer).values():
        children = value if isinstance(value, list | tuple) else [value]
        for child in children:
            if isinstance(child, keras.layers.Layer) and child is not layer:
                yield from _sublayers(child)


def freeze_boundary(model: keras.Model, until: str) -> int:
    """Index in `model.layers` of the last layer frozen by `--freeze_until until`.

    `until` names a layer ("stem_conv", "stage3_block2") or a group of layers by prefix
    ("stem", "stage4", "head" = everything but the classifier): the last layer whose name is
    `until` or starts with `until_`.

    Raises:
      ConfigError: no layer matches, or nothing would be left to train.
    """
    names = [layer.name for layer in model.layers]
    matches = [i for i, n in enumerate(names) if n == until or n.startswith(until + "_")]
    if not matches:
        stages = sorted(
            {n.split("_")[0] for n in names if n.startswith("stage")},
            key=lambda s: int(s[len("stage") :]),
        )
        raise ConfigError(
            f"--freeze_until {until!r} names no layer of {model.name}; use stem, "
            f"{stages[0]}..{stages[-1]}, head or a layer name such as "
            f"{stages[-1]}_block1"
        )
    last = matches[-1]
    if not any(layer.weights for layer in model.layers[last + 1 :]):
        raise ConfigError(f"--freeze_until {until!r} freezes every layer: nothing left to train")
    return last


def apply_freezing(model: keras.Model, freeze_until: str | None, freeze_bn: bool) -> None:
    """Set which layers train: everything up to `freeze_until` and (with `freeze_bn`) every
    BatchNormalization is frozen; all other layers are made trainable again."""
    boundary = freeze_boundary(model, freeze_until) if freeze_until else -1
    for i, layer in enumerate(model.layers):
        for sub in _sublayers(layer):
            sub.trainable = i > boundary
        if freeze_bn:
            for sub in _sublayers(layer):
                if isinstance(sub, keras.layers.BatchNormalization):
                    sub.trainable = False


@dataclasses.dataclass(frozen=True)
class FreezePlan:
    """Which layers train in which epochs (from --freeze_until, --freeze_bn, --unfreeze_epoch).

    Attributes:
      freeze_until: layers frozen before `unfreeze_epoch` (or the whole run without it).
      freeze_bn: BatchNormalization frozen for the whole run.
      unfreeze_epoch: 0-based epoch from which everything (BN aside) trains; None = never.
    """

    freeze_until: str | None = None
    freeze_bn: bool = False
    unfreeze_epoch: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> FreezePlan:
        until = params.get("freeze_until")
        unfreeze = params.get("unfreeze_epoch")
        if unfreeze is not None and until is None:
            until = HEAD_ONLY
        return cls(until, bool(params.get("freeze_bn")), unfreeze)

    def until_at(self, epoch: int | None) -> str | None:
        """The --freeze_until boundary in force at 0-based `epoch`; None = the widest set
        (what the optimizer must hold slots for)."""
        if self.unfreeze_epoch is None:
            return self.freeze_until
        if epoch is None or epoch >= self.unfreeze_epoch:
            return None
        return self.freeze_until

    def apply(self, model: keras.Model, epoch: int | None) -> None:
        """Freeze `model` as planned for 0-based `epoch` (None: the widest trainable set)."""
        apply_freezing(model, self.until_at(epoch), self.freeze_bn)

    @property
    def active(self) -> bool:
        return self.freeze_until is not None or self.freeze_bn

    def describe(self, epoch: int) -> str:
        """What trains from 0-based `epoch`, for the log: `phase 1/2 (classifier only)`, `phase
        2/2 (all layers, BatchNorm frozen)`; without --unfreeze_epoch only the parenthesis."""
        until = self.until_at(epoch)
        if until is None:
            what = "all layers"
        elif until == HEAD_ONLY:
            what = "classifier only"
        else:
            what = f"layers after {until}"
        if self.freeze_bn:
            what += ", BatchNorm frozen"
        if self.unfreeze_epoch is None:
            return what
        return f"phase {1 if epoch < self.unfreeze_epoch else 2}/2 ({what})"


def describe_trainable(model: keras.Model) -> str:
    """`N of M parameters trainable` for the log."""
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return f"{trainable:,} of {model.count_params():,} parameters trainable"
