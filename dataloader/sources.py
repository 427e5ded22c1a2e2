"""Data sources: where records come from, how they are sharded and what the data set contains.

Each source yields, per pass, a dataset of raw records (serialized Examples, file paths, TFDS
dicts or in-memory arrays) already sharded for this input pipeline and, for training, with the
file order reshuffled on every pass, plus `origin` (the file a raw record comes from, by which
dataloader.skipping names bad files) and a `parse` function turning a raw record into (image,
0-based label, origin). Decoding and augmentation are shared (`pipeline.py`).
"""

from __future__ import annotations

import collections
import json
import logging
import os

import numpy as np
import tensorflow as tf

from dataloader import layout
from dataloader.config import DataConfig, DataError, DatasetInfo
from dataloader.digits import digits_splits
from dataloader.files import FilePolicy, dir_is_followed, report_skipped, skip_reason
from dataloader.tfrecord_format import ENCODED, LABEL, METADATA_FILE, SPLIT_PREFIXES

logger = logging.getLogger(__name__)

# Standard ImageNet-1k build (build_imagenet_data.py layout), used when no metadata exists.
IMAGENET_NUM_CLASSES, IMAGENET_NUM_TRAIN, IMAGENET_NUM_EVAL = 1000, 1_281_167, 50_000
# Counting records of a TFRecord set without metadata reads every byte: only for small sets.
_MAX_COUNT_BYTES = 2 << 30
# Records with an out-of-range label are skipped and counted (corrupt records) up to this
# fraction of a split (at least one record); more means a label convention or class-count mix-up: the run stops.
MAX_BAD_LABEL_FRACTION = 0.01
# Stored-label histograms of scanned TFRecord splits, keyed by (file, size) tuples.
_LABEL_COUNTS: dict[tuple, collections.Counter] = {}


def _shard_list(items: list, input_context, what: str) -> tuple[list, bool]:
    """Split a list of files across input pipelines; returns (items, also shard records).

    Two workers always see disjoint files. With fewer files than pipelines each pipeline reads
    every file and keeps every n-th record instead (slower, still disjoint).
    """
    if input_context is None or input_context.num_input_pipelines <= 1:
        return items, False
    n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(items) < n:
        logger.warning(
            "%d %s for %d input pipelines: sharding by record (every pipeline reads all)",
            len(items),
            what,
            n,
        )
        return items, True
    if len(items) % n:
        logger.info(
            "%d %s do not split evenly over %d input pipelines; pipelines get %d or %d",
            len(items),
            what,
            n,
            len(items) // n,
            len(items) // n + 1,
        )
    return items[i::n], False


def _require_dir(data_dir: str | None, dataset: str) -> str:
    if not data_dir:
        raise DataError(f"dataset {dataset!r} needs --data_dir")
    if not tf.io.gfile.isdir(data_dir):
        raise DataError(f"data_dir {data_dir!r} does not exist or is not a directory")
    return data_dir


class TFRecordSource:
    """ImageNet-layout TFRecords: `data_dir/train-*`, `data_dir/validation-*`.

    Features `image/encoded` and `image/class/label` (1-based in the standard build; see
    `DataConfig.one_based_labels`); `image/class/text` and bounding boxes are not needed.

    Splits up to 2 GiB are scanned once per process for their stored labels (`check_labels`):
    a few out-of-range labels are corrupt records (skipped and counted by the pipeline); more
    than 1% (and more than one record) is a label-convention or class-count mix-up and raises
    DataError naming the flag.
    """

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.data_dir = _require_dir(cfg.data_dir, cfg.dataset)
        meta_path = os.path.join(self.data_dir, METADATA_FILE)
        self.meta = {}
        if tf.io.gfile.exists(meta_path):
            with tf.io.gfile.GFile(meta_path) as f:
                self.meta = json.load(f)
        if cfg.one_based_labels is not None:
            self.label_offset = 1 if cfg.one_based_labels else 0
        else:
            self.label_offset = int(self.meta.get("label_offset", 1))

    def files(self, split: str) -> list[str]:
        pattern = os.path.join(self.data_dir, f"{SPLIT_PREFIXES[split]}-*")
        # Unfinished converter output is named *.tmp until complete.
        files = sorted(f for f in tf.io.gfile.glob(pattern) if not f.endswith(".tmp"))
        if not files:
            raise DataError(f"no TFRecord files match {pattern}")
        return files

    @property
    def num_classes(self) -> int:
        num_classes = self.meta.get("num_classes", IMAGENET_NUM_CLASSES)
        if self.cfg.num_classes is None:
            return num_classes
        if "num_classes" in self.meta and self.cfg.num_classes != num_classes:
            raise DataError(
                f"num_classes={self.cfg.num_classes} but {self.data_dir}/{METADATA_FILE} "
                f"says {num_classes}"
            )
        return self.cfg.num_classes

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The class names of dataset_info.json, None without them (read no record)."""
        names = self.meta.get("class_names")
        return tuple(names) if names else None

    def info(self) -> DatasetInfo:
        meta, num_classes = self.meta, self.num_classes
        if "num_train" in meta and "num_eval" in meta:
            num_train, num_eval = meta["num_train"], meta["num_eval"]
        else:
            num_train, num_eval = (self._count(s) for s in ("train", "validation"))
        for split in SPLIT_PREFIXES:
            if self._has_files(split):
                self.check_labels(split)
        return DatasetInfo(num_classes, num_train, num_eval, self.class_names)

    def _has_files(self, split: str) -> bool:
        pattern = os.path.join(self.data_dir, f"{SPLIT_PREFIXES[split]}-*")
        return any(not f.endswith(".tmp") for f in tf.io.gfile.glob(pattern))

    def check_labels(self, split: str) -> None:
        """Raise DataError when more than 1% (and more than one) of `split`'s labels are out of
        range.

        Only splits up to 2 GiB are scanned (reading the labels reads every byte); larger ones
        are trusted (the standard build, or our converter's dataset_info.json).
        """
        files = self.files(split)
        sizes = tuple(tf.io.gfile.stat(f).length for f in files)
        if sum(sizes) > _MAX_COUNT_BYTES:
            return
        key = tuple(zip(files, sizes, strict=True))
        if key not in _LABEL_COUNTS:
            _LABEL_COUNTS[key] = _stored_label_counts(files)
        counts = _LABEL_COUNTS[key]
        num_classes, offset = self.num_classes, self.label_offset
        total = sum(counts.values())
        bad = {v: n for v, n in counts.items() if not 0 <= v - offset < num_classes}
        num_bad = sum(bad.values())
        if num_bad > max(MAX_BAD_LABEL_FRACTION * total, 1):
            raise DataError(
                _label_error(split, self.data_dir, counts, bad, num_bad, total, num_classes, offset)
            )
        present = sum(1 for v in counts if 0 <= v - offset < num_classes)
        if split == "train" and present < num_classes:
            logger.warning(
                "%s: only %d of %d classes have train records (stored labels %d..%d, "
                "label_offset %d); set --mparams num_classes to the real class count",
                self.data_dir,
                present,
                num_classes,
                min(counts),
                max(counts),
                offset,
            )

    def _count(self, split: str) -> int:
        files = self.files(split)
        size = sum(tf.io.gfile.stat(f).length for f in files)
        if size > _MAX_COUNT_BYTES:
            standard = IMAGENET_NUM_TRAIN if split == "train" else IMAGENET_NUM_EVAL
            logger.warning(
                "no %s in %s: assuming the ImageNet-1k %s size %d",
                METADATA_FILE,
                self.data_dir,
                split,
                standard,
            )
            return standard
        logger.info("counting records of %d %s files (no %s)", len(files), split, METADATA_FILE)
        return int(tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda n, _: n + 1))

    def records(self, split: str, input_context, train: bool) -> tf.data.Dataset:
        self.check_labels(split)
        files, shard_records = _shard_list(self.files(split), input_context, "files")
        ds = tf.data.Dataset.from_tensor_slices(files)
        if train:
            # NOTE: reshuffled on every pass: in the reference the file shuffle was a no-op.
            ds = ds.shuffle(len(files), seed=self.cfg.seed, reshuffle_each_iteration=True)

        def read(path):
            records = tf.data.TFRecordDataset(path, buffer_size=8 << 20)
            # A truncated TFRecord file ends early (warned) instead of stopping the epoch.
            return records.ignore_errors(log_warning=True).map(lambda r: (r, path))

        ds = ds.interleave(
            read,
            cycle_length=min(len(files), 16),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=not train or self.cfg.seed is not None,
        )
        if shard_records:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return ds

    def origin(self, record, path):
        """The file a raw record comes from (dataloader.skipping names bad files by it)."""
        return path

    def parse(self, record, path):
        features = tf.io.parse_single_example(
            record,
            {
                ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
                LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
            },
        )
        label = tf.cast(features[LABEL], tf.int32) - self.label_offset
        return features[ENCODED], label, path


def _stored_label_counts(files: list[str]) -> collections.Counter:
    """Histogram of the stored `image/class/label` values of TFRecord files (-1 = missing)."""
    logger.info("checking the labels of %d TFRecord file(s)", len(files))
    spec = {LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1)}
    ds = tf.data.TFRecordDataset(files, buffer_size=8 << 20).ignore_errors()
    ds = (
        ds.map(
            lambda r: tf.io.parse_single_example(r, spec)[LABEL],
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .ignore_errors()
        .batch(4096)
    )
    counts: collections.Counter = collections.Counter()
    for labels in ds.as_numpy_iterator():
        values, n = np.unique(labels, return_counts=True)
        counts.update(dict(zip(values.tolist(), n.tolist(), strict=True)))
    return counts


def _label_error(split, data_dir, counts, bad, num_bad, total, num_classes, offset) -> str:
    """One line: how many labels are out of range, the likely cause and the flag to set."""
    low, high = min(counts), max(counts)
    head = (
        f"{num_bad} of {total} {split} records in {data_dir} have a label outside "
        f"[0, {num_classes}) (stored labels {low}..{high}, label_offset {offset})"
    )
    if offset == 1 and 0 in bad and high <= num_classes - 1:
        return (
            f"{head}: every stored label 0 is a whole class lost; the shards look 0-based: "
            "pass --label_offset 0"
        )
    if offset == 0 and low >= 1 and high == num_classes:
        return f"{head}: the shards look 1-based (the standard build): pass --label_offset 1"
    return (
        f"{head}: set --mparams num_classes to the real class count (or fix "
        f"{METADATA_FILE}), or --label_offset if the label convention is wrong"
    )


class _NamedClasses:
    """info() for sources that know their class names and split sizes up front."""

    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_size(self, split: str) -> int:
        raise NotImplementedError

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            self.num_classes,
            self.split_size("train"),
            self.split_size("validation"),
            self.class_names,
        )


class FolderSource(_NamedClasses):
    """Class-per-folder tree: `data_dir/train/<class>/*`, `data_dir/val/<class>/*`.

    Class names are the sorted sub-folder names of train/; validation folders must use the same
    names, and a train class folder without a usable file is an error naming it (it would
    silently become a class no image belongs to). Files whose bytes are not an image are
    skipped and counted, not guessed from their extension; FIFOs, devices, symlinks out of
    data_dir and images above `max_image_pixels` are skipped and counted when listing
    (dataloader.files).
    """

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.data_dir = _require_dir(cfg.data_dir, cfg.dataset)
        self.policy = FilePolicy(cfg.follow_symlinks, cfg.max_image_pixels)
        train_dir = self._split_dir("train")
        self.class_names = tuple(sorted(e.name for e in self._class_dirs(train_dir)))
        if not self.class_names:
            raise DataError(f"no class folders match {os.path.join(train_dir, '*/')}")
        if cfg.num_classes is not None and cfg.num_classes != len(self.class_names):
            raise DataError(
                f"num_classes={cfg.num_classes} but {train_dir} has {len(self.class_names)} "
                "class folders"
            )
        self._lists = {}
        self.skipped: dict[str, list[tuple[str, str]]] = {}

    def _class_dirs(self, root: str) -> list[os.DirEntry]:
        dirs = []
        for e in os.scandir(root):
            if not e.is_dir() or e.name.startswith("."):
                continue
            if dir_is_followed(e.path, self.data_dir, self.policy):
                dirs.append(e)
            else:
                logger.warning(
                    "skipping class folder %s: a symlink out of %s (--follow_symlinks reads it)",
                    e.path,
                    self.data_dir,
                )
        return dirs

    def _split_dir(self, split: str) -> str:
        return layout.split_dir(self.data_dir, split)

    def file_list(self, split: str) -> tuple[list[str], list[int]]:
        """All files of a split (sorted) and their 0-based labels."""
        if split not in self._lists:
            root = self._split_dir(split)
            index = {name: i for i, name in enumerate(self.class_names)}
            paths, labels, skipped = [], [], []
            for entry in sorted(self._class_dirs(root), key=lambda e: e.name):
                if entry.name not in index:
                    raise DataError(
                        f"{entry.path} is not a class of the train folder "
                        f"({len(self.class_names)} classes)"
                    )
                found = 0
                for f in sorted(os.scandir(entry.path), key=lambda e: e.name):
                    if f.name.startswith(".") or f.is_dir():
                        continue
                    reason = skip_reason(f.path, self.data_dir, self.policy)
                    if reason is not None:
                        skipped.append((f.path, reason))
                        continue
                    paths.append(f.path)
                    labels.append(index[entry.name])
                    found += 1
                if not found and split == "train":
                    raise DataError(
                        f"class folder {entry.path} holds no usable file; add images or "
                        "remove the folder (it would become a class without examples)"
                    )
            self.skipped[split] = skipped
            report_skipped(skipped, f"folder/{split}")
            if not paths:
                raise DataError(f"no files match {os.path.join(root, '*', '*')}")
            self._lists[split] = (paths, labels)
        return self._lists[split]

    def split_size(self, split: str) -> int:
        return len(self.file_list(split)[0])

    def records(self, split: str, input_context, train: bool) -> tf.data.Dataset:
        paths, labels = self.file_list(split)
        pairs, _ = _shard_list(list(zip(paths, labels, strict=True)), input_context, "files")
        ds = tf.data.Dataset.from_tensor_slices(
            ([p for p, _ in pairs], np.array([label for _, label in pairs], np.int32))
        )
        if train:
            ds = ds.shuffle(len(pairs), seed=self.cfg.seed, reshuffle_each_iteration=True)
        return ds

    def origin(self, path, label):
        return path

    def parse(self, path, label):
        return tf.io.read_file(path), label, path


class TFDSSource:
    """A prepared TFDS image-classification data set (`tfds:NAME`) in data_dir.

    Images stay encoded (`SkipDecoding`) so training decodes only the crop window.
    """

    def __init__(self, cfg: DataConfig):
        import tensorflow_datasets as tfds

        self.cfg = cfg
        self.name = cfg.dataset.split(":", 1)[1]
        try:
            self.builder = tfds.builder(self.name, data_dir=cfg.data_dir)
        except Exception as e:  # tfds raises several types for unknown/misspelled names
            raise DataError(f"unknown TFDS data set {self.name!r}: {e}".splitlines()[0]) from e
        keys = self.builder.info.supervised_keys or ("image", "label")
        self.image_key, self.label_key = keys[0], keys[1]
        features = self.builder.info.features
        if self.label_key not in features or not hasattr(features[self.label_key], "names"):
            raise DataError(f"TFDS data set {self.name!r} is not image classification")
        self.label_feature = features[self.label_key]

    def split_name(self, split: str) -> str:
        splits = self.builder.info.splits
        if split == "train" or not splits:  # no split metadata (e.g. tfds mock data)
            return split
        for name in ("validation", "test"):
            if name in splits:
                return name
        raise DataError(f"TFDS data set {self.name!r} has no validation or test split")

    @property
    def num_classes(self) -> int:
        num_classes = self.label_feature.num_classes
        if self.cfg.num_classes is not None and self.cfg.num_classes != num_classes:
            raise DataError(f"num_classes={self.cfg.num_classes} but {self.name} has {num_classes}")
        return num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.label_feature.names)

    def info(self) -> DatasetInfo:
        splits, num_classes = self.builder.info.splits, self.num_classes

        def size(split):
            name = self.split_name(split)
            return splits[name].num_examples if name in splits else 0

        return DatasetInfo(num_classes, size("train"), size("validation"), self.class_names)

    def records(self, split: str, input_context, train: bool) -> tf.data.Dataset:
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(
            input_context=input_context,
            shuffle_seed=self.cfg.seed,
            shuffle_reshuffle_each_iteration=True,
        )
        try:
            return self.builder.as_dataset(
                split=self.split_name(split),
                shuffle_files=train,
                decoders={self.image_key: tfds.decode.SkipDecoding()},
                read_config=read_config,
            )
        except AssertionError as e:  # tfds asserts when the data set was never prepared
            raise DataError(
                f"TFDS data set {self.name!r} is not prepared in {self.cfg.data_dir}: "
                f"{e}".splitlines()[0]
            ) from e

    def origin(self, example):
        return tf.constant(f"tfds:{self.name}")

    def parse(self, example):
        label = tf.cast(example[self.label_key], tf.int32)
        return example[self.image_key], label, tf.constant(f"tfds:{self.name}")


class DigitsSource(_NamedClasses):
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes): the no-download data set.

    A fixed permutation (seed 0) splits it 80/20 into train/validation. Images are gray 0..16,
    scaled to uint8 0..255 and repeated to RGB; the pipeline upscales them to image_size.
    """

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.split_arrays, self.class_names = digits_splits()
        if cfg.num_classes is not None and cfg.num_classes != len(self.class_names):
            raise DataError(f"num_classes={cfg.num_classes} but digits has 10 classes")

    def split_size(self, split: str) -> int:
        return len(self.split_arrays[split][1])

    def records(self, split: str, input_context, train: bool) -> tf.data.Dataset:
        images, labels = self.split_arrays[split]
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        if input_context is not None and input_context.num_input_pipelines > 1:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if train:
            ds = ds.shuffle(len(labels), seed=self.cfg.seed, reshuffle_each_iteration=True)
        return ds

    def origin(self, image, label):
        return tf.constant("digits")

    def parse(self, image, label):
        return image, label, tf.constant("digits")


def get_source(cfg: DataConfig):
    """The source object for `cfg.dataset` (not "synthetic", which has no records)."""
    if cfg.dataset.startswith("tfds:"):
        return TFDSSource(cfg)
    sources = {"imagenet": TFRecordSource, "folder": FolderSource, "digits": DigitsSource}
    return sources[cfg.dataset](cfg)
