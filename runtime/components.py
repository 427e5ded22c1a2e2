"""What every mode builds from the resolved `params` dict: strategy, precision, data configs, model.

Modes (train, eval, predict, benchmarks) call these instead of reading flags themselves, so a
flag means the same thing in every mode. `params` is main.py's resolved configuration: every
general flag by name, plus "model" (the model config dict) and "cfg" (its path).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from config.loader import parse_mparams
from dataloader import DataConfig, build_dataset
from dataloader.files import DEFAULT_MAX_IMAGE_PIXELS
from model import build_model
from runtime import distribute
from utils.dllogger import MetricsLogger, create_metrics_logger
from utils.fileio import atomic_write_text
from utils.precision import configure_precision

logger = logging.getLogger(__name__)

TENSORBOARD_SUBDIR = "tensorboard"


def setup_run(params: Mapping[str, Any]) -> distribute.Distribution:
    """Seed, precision policy and TF32, then the distribution strategy; call once per process.

    Args:
      params: resolved configuration (seed, use_amp, amp_dtype, use_tf32, num_gpus,
        all_reduce, fp16_compression).

    Returns:
      The run's Distribution: strategy, this process's place in the cluster, all-reduce options.
    """
    # The strategy first: it may need to configure devices before anything initializes them.
    dist = distribute.create_strategy(
        num_gpus=params["num_gpus"],
        all_reduce=params["all_reduce"],
        fp16_compression=params["fp16_compression"],
        cpu_replicas=params.get("cpu_replicas", 1),
    )
    if params["seed"] is not None:
        keras.utils.set_random_seed(params["seed"])
        # keras' seeding leaves TF's global tf.random.Generator non-deterministic; it is part of
        # every checkpoint (runtime.checkpoint.random_state), so the same seed gives the same one.
        tf.random.set_global_generator(tf.random.Generator.from_seed(params["seed"]))
    configure_precision(params["use_amp"], params["amp_dtype"], params["use_tf32"])
    return dist


def requested_num_classes(params: Mapping[str, Any]) -> int | None:
    """`num_classes` when the user asked for it (`--mparams num_classes=N`), else None.

    The config modules' default of 1000 is not a request: a folder or TFDS source brings its
    own count. A requested count is checked against the data (its metadata, folders or TFDS
    info), and sets it for TFRecords without metadata and for synthetic data.
    """
    if params["dataset"] == "synthetic":
        return int(params["model"]["num_classes"])
    value = parse_mparams(params.get("mparams")).get("num_classes")
    return None if value is None else int(params["model"]["num_classes"])


def eval_crop_mode(params: Mapping[str, Any], image_size: int) -> str:
    """ "crop" or "squash": `--eval_crop`, else the model family's rule at `image_size`.

    v2 (automl efficientnetv2/preprocessing.py) squashes the whole image at sizes >= 320
    (`eval_squash_min_size`) and center-crops below; v1 always center-crops.
    """
    if params.get("eval_crop"):
        return params["eval_crop"]
    squash_from = params["model"].get("eval_squash_min_size")
    return "squash" if squash_from is not None and image_size >= squash_from else "crop"


def _recipe_value(params: Mapping[str, Any], name: str) -> Any:
    """A data-recipe value: the flag when given, else the model config's, else DataConfig's."""
    if params.get(name) is not None:
        return params[name]
    default = DataConfig.__dataclass_fields__[name].default
    return params["model"].get(name, default)


def data_config(params: Mapping[str, Any], training: bool, **overrides: Any) -> DataConfig:
    """The DataConfig of the train or validation input for `params`.

    The crop area, `min_object_covered`, eval crop mode and resize method are the model
    family's recipe (config/efficientnet_v1, config/efficientnet_v2) unless `--crop_area_min`,
    `--eval_crop` or `--resize_method` override them (docs/parity.md).

    Args:
      params: resolved configuration.
      training: train split settings (train batch/size, augmentation, mixing) or eval ones.
      **overrides: fields that differ, e.g. a stage's image_size / raug_magnitude / mixup_alpha.

    Returns:
      A DataConfig (raises dataloader's DataError on invalid values).
    """
    label_offset = params.get("label_offset")
    common = {
        "dataset": params["dataset"],
        "data_dir": params["data_dir"],
        "num_classes": requested_num_classes(params),
        "cache": params["cache"],
        "crop_fraction": params["crop_fraction"],
        "crop_area_min": _recipe_value(params, "crop_area_min"),
        "crop_min_object_covered": _recipe_value(params, "crop_min_object_covered"),
        "resize_method": _recipe_value(params, "resize_method"),
        "seed": params["seed"],
        "follow_symlinks": params.get("follow_symlinks", False),
        "max_image_pixels": params.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
        "one_based_labels": None if label_offset is None else label_offset == 1,
    }
    if training:
        fields = {
            **common,
            "image_size": params["train_img_size"],
            "batch_size": params["train_batch_size"],
            "augmenter": params["augmenter_name"],
            "raug_num_layers": params["raug_num_layers"],
            "raug_magnitude": params["raug_magnitude"],
            "mixup_alpha": params["mixup_alpha"],
            "cutmix_alpha": params["cutmix_alpha"],
            "defer_img_mixing": params["defer_img_mixing"],
        }
    else:
        fields = {
            **common,
            "image_size": params["eval_img_size"],
            "batch_size": params["eval_batch_size"],
        }
    fields["eval_crop"] = eval_crop_mode(params, overrides.get("image_size", fields["image_size"]))
    return dataclasses.replace(DataConfig(**fields), **overrides)


# The auto rule never goes below the EfficientNetV2 (automl) momentum.
MIN_AUTO_BN_MOMENTUM = 0.9


def small_data_bn_momentum(params: Mapping[str, Any], steps_per_epoch: int) -> float:
    """The BN momentum to train with: the config's, or lower when epochs are too short.

    BN's moving statistics average over about 1 / (1 - momentum) updates (100 at v1's 0.99).
    With fewer steps per epoch (60 images at batch 16: 4 steps) evaluation after each epoch
    sees statistics still dominated by their initial values and by weights long gone: a run
    can end at chance with a validation loss in the millions while 0.9 reaches 83%. When
    `steps_per_epoch` is below that window, this logs a warning and (with
    `--auto_bn_momentum`, the default, unless `--mparams bn_momentum=...` was given) returns
    max(1 - 1 / steps_per_epoch, 0.9), capped at the configured value (docs/parity.md).

    Args:
      params: resolved configuration.
      steps_per_epoch: optimizer updates per epoch.

    Returns:
      The momentum for `params["model"]["bn_momentum"]`.
    """
    momentum = float(params["model"]["bn_momentum"])
    window = 1.0 / (1.0 - momentum)
    if steps_per_epoch >= window - 1e-6:
        return momentum
    explicit = "bn_momentum" in parse_mparams(params.get("mparams"))
    chosen = min(momentum, max(1.0 - 1.0 / steps_per_epoch, MIN_AUTO_BN_MOMENTUM))
    if params.get("auto_bn_momentum", True) and not explicit and chosen < momentum:
        logger.warning(
            "%d steps per epoch are fewer than the BN moving-average window 1/(1-%g) = %d "
            "steps: training with bn_momentum %g instead (--no-auto_bn_momentum keeps %g)",
            steps_per_epoch,
            momentum,
            round(window),
            chosen,
            momentum,
        )
        return chosen
    logger.warning(
        "%d steps per epoch are fewer than the BN moving-average window 1/(1-%g) = %d steps: "
        "evaluation may see stale BN statistics; consider --mparams bn_momentum=%g",
        steps_per_epoch,
        momentum,
        round(window),
        max(chosen, MIN_AUTO_BN_MOMENTUM),
    )
    return momentum


def create_model(params: Mapping[str, Any], num_classes: int) -> keras.Model:
    """Build the model of `params["model"]` with the dataset's class count.

    Call under `strategy.scope()` so its variables are mirrored across replicas.
    """
    model = build_model(params["model"], num_classes=num_classes)
    logger.info(
        "model %s: %d parameters, %d classes",
        params["model"].get("name", "?"),
        model.count_params(),
        num_classes,
    )
    return model


def eval_dataset(
    params: Mapping[str, Any],
    strategy: tf.distribute.Strategy,
    repeat: bool = False,
    **overrides: Any,
):
    """The validation input: a tf.data.Dataset on one replica, else a distributed dataset
    whose per-replica batch is `eval_batch_size` (each worker reads its own shard).

    `repeat=True` and DataConfig `overrides` (e.g. batch_size) serve the inference benchmark.
    """
    cfg = data_config(params, training=False, **overrides)
    if strategy.num_replicas_in_sync == 1:
        return build_dataset(cfg, "validation", repeat=repeat)
    return strategy.distribute_datasets_from_function(
        lambda ctx: build_dataset(cfg, "validation", input_context=ctx, repeat=repeat)
    )


def open_metrics_log(
    params: Mapping[str, Any], is_chief: bool, append: bool = False
) -> MetricsLogger:
    """The run's DLLogger log (model_dir/log_filename, plus TensorBoard when enabled).

    Args:
      params: resolved configuration.
      is_chief: only the chief writes; other workers get a logger that drops everything.
      append: keep earlier records (resumed training, eval/predict after training).
    """
    model_dir = params["model_dir"]
    tensorboard = (
        os.path.join(model_dir, TENSORBOARD_SUBDIR) if params["enable_tensorboard"] else None
    )
    return create_metrics_logger(
        os.path.join(model_dir, params["log_filename"]),
        is_chief=is_chief,
        tensorboard_dir=tensorboard,
        append=append,
    )


def write_json(path: str, data: Any) -> str:
    """Write `data` as JSON atomically (utils.fileio), creating the folder if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))
