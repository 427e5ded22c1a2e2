"""The standard ImageNet TFRecord format (build_imagenet_data.py) and its metadata file.

Shared by the reader (`sources.TFRecordSource`), the converter (scripts/build_tfrecords.py)
and test fixtures, so the feature keys and the label convention are defined once.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

ENCODED, LABEL, TEXT, SYNSET = (
    "image/encoded",
    "image/class/label",
    "image/class/text",
    "image/class/synset",
)
# Written next to the shards; lets the reader skip counting and know the label convention.
METADATA_FILE = "dataset_info.json"
SPLIT_PREFIXES = {"train": "train", "validation": "validation"}


def shard_name(split: str, index: int, num_shards: int) -> str:
    """`train-00003-of-01024`, the standard shard file name."""
    return f"{SPLIT_PREFIXES[split]}-{index:05d}-of-{num_shards:05d}"


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(
    image_bytes: bytes,
    label: int,
    height: int,
    width: int,
    text: str = "",
    synset: str = "",
    filename: str = "",
) -> bytes:
    """A serialized tf.train.Example in the standard layout.

    Args:
      image_bytes: encoded JPEG (the standard build stores only RGB JPEG).
      label: the stored label (1-based in the standard build).
      height: image height in pixels.
      width: image width in pixels.
      text: human-readable class name.
      synset: WordNet id (e.g. n01440764) or folder name.
      filename: source file name, for tracing.

    Returns:
      The serialized Example.
    """
    feature = {
        ENCODED: _bytes(image_bytes),
        "image/format": _bytes(b"JPEG"),
        LABEL: _int(label),
        TEXT: _bytes(text.encode()),
        SYNSET: _bytes(synset.encode()),
        "image/height": _int(height),
        "image/width": _int(width),
        "image/colorspace": _bytes(b"RGB"),
        "image/channels": _int(3),
        "image/filename": _bytes(filename.encode()),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_metadata(
    data_dir: str,
    num_classes: int,
    num_train: int,
    num_eval: int,
    class_names: list[str] | None,
    label_offset: int = 1,
    **extra,
) -> str:
    """Write `dataset_info.json` next to the shards; returns its path.

    Args:
      data_dir: the TFRecord directory.
      num_classes: number of classes.
      num_train: records in train-*.
      num_eval: records in validation-*.
      class_names: names in label order, or None.
      label_offset: stored label of class 0 (1 for the standard build).
      **extra: more JSON-serializable fields (e.g. skipped-file counts).

    Returns:
      The path written.
    """
    meta = {
        "num_classes": num_classes,
        "num_train": num_train,
        "num_eval": num_eval,
        "class_names": list(class_names) if class_names else None,
        "label_offset": label_offset,
        **extra,
    }
    path = os.path.join(data_dir, METADATA_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, path)
    return path
