"""Generate small real image data sets for tests: JPEG/PNG bytes, TFRecords, folder trees.

Every image of class k is filled with `class_color(k)`, so a test can recover the label from
the pixels after decoding, cropping, flipping and resizing (`label_from_image`) and check that
no image ever travels with a wrong label.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

from dataloader import tfrecord_format

_STEP = 50  # color spacing per channel: far above JPEG's error on flat colors


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct flat RGB color for each of up to 125 classes."""
    return (
        25 + _STEP * (label % 5),
        25 + _STEP * ((label // 5) % 5),
        25 + _STEP * ((label // 25) % 5),
    )


def label_from_image(image: np.ndarray, num_classes: int) -> int:
    """The class whose color is nearest to the image's mean color."""
    mean = np.asarray(image, np.float64).reshape(-1, 3).mean(0)
    colors = np.array([class_color(k) for k in range(num_classes)], np.float64)
    return int(np.argmin(((colors - mean) ** 2).sum(1)))


def collect(ds) -> tuple[np.ndarray, np.ndarray]:
    """All (images, labels) batches of a finite dataset, concatenated into two arrays."""
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in ds), strict=True)
    return np.concatenate(images), np.concatenate(labels)


def image_array(label: int, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    """uint8 [H, W, 3] image filled with the class color."""
    return np.broadcast_to(np.array(class_color(label), np.uint8), (*size, 3)).copy()


def encode(array: np.ndarray, fmt: str = "JPEG", mode: str = "RGB", quality: int = 95) -> bytes:
    """Encode an RGB array as JPEG/PNG bytes; mode "CMYK" or "L" converts first."""
    image = Image.fromarray(array).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def jpeg(label: int, size: tuple[int, int] = (40, 48), mode: str = "RGB") -> bytes:
    """JPEG bytes of a class-colored image."""
    return encode(image_array(label, size), "JPEG", mode)


def png(label: int, size: tuple[int, int] = (40, 48)) -> bytes:
    """PNG bytes of a class-colored image."""
    return encode(image_array(label, size), "PNG")


def truncated_jpeg(label: int = 0) -> bytes:
    """A JPEG cut in half: the header parses, the scan data ends early."""
    data = encode(np.random.RandomState(label).randint(0, 255, (40, 48, 3), np.uint8))
    return data[: len(data) // 2]


def corrupt_jpeg_header() -> bytes:
    """JPEG magic followed by garbage: passes the magic-bytes check, fails decoding."""
    return b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring width x height (no image data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def write_tfrecords(
    data_dir: str,
    split: str,
    labels_per_file: list[list[int]],
    one_based: bool = True,
    size: tuple[int, int] = (40, 48),
    extra_records: dict[int, list[tuple[bytes, int]]] | None = None,
) -> list[str]:
    """Write `split-0000i-of-0000n` files of class-colored JPEG Examples.

    Args:
      data_dir: output directory (created).
      split: "train" or "validation".
      labels_per_file: the 0-based labels of the records of each file, in order.
      one_based: store label + 1 (the standard build) instead of label.
      size: image (height, width).
      extra_records: file index -> extra (image bytes, stored label) records appended as is.

    Returns:
      The file paths written.
    """
    import tensorflow as tf

    os.makedirs(data_dir, exist_ok=True)
    offset = 1 if one_based else 0
    paths = []
    for i, labels in enumerate(labels_per_file):
        path = os.path.join(data_dir, tfrecord_format.shard_name(split, i, len(labels_per_file)))
        with tf.io.TFRecordWriter(path) as writer:
            for label in labels:
                example = tfrecord_format.make_example(
                    jpeg(label, size), label + offset, *size, text=f"class{label}"
                )
                writer.write(example)
            for image_bytes, stored in (extra_records or {}).get(i, []):
                writer.write(tfrecord_format.make_example(image_bytes, stored, *size))
        paths.append(path)
    return paths


def make_folder_tree(
    root: str,
    classes: list[str],
    per_class: dict[str, int],
    size: tuple[int, int] = (40, 48),
) -> dict[str, list[tuple[str, int]]]:
    """Write `root/<split_dir>/<class>/img_j.jpg` for each split dir in `per_class`.

    Class k (in sorted order of `classes`) gets `class_color(k)`; every 3rd image is a PNG.

    Args:
      root: output root.
      classes: class folder names.
      per_class: split folder name ("train", "val") -> images per class.
      size: image (height, width).

    Returns:
      split folder name -> list of (path, 0-based label).
    """
    written = {}
    for split_dir, count in per_class.items():
        written[split_dir] = []
        for label, name in enumerate(sorted(classes)):
            folder = os.path.join(root, split_dir, name)
            os.makedirs(folder, exist_ok=True)
            for j in range(count):
                data = png(label, size) if j % 3 == 2 else jpeg(label, size)
                ext = "png" if j % 3 == 2 else "jpg"
                path = os.path.join(folder, f"img_{j}.{ext}")
                with open(path, "wb") as f:
                    f.write(data)
                written[split_dir].append((path, label))
    return written
