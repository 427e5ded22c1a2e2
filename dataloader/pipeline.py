"""`build_dataset`, `dataset_info` and `dataset_classes`: the tf.data input pipeline for training and evaluation.

Train: shard -> shuffle files per pass -> interleave -> shuffle records -> parse -> skip bad
records -> decode the random crop window + flip + resize -> AutoAugment/RandAugment ->
batch -> one-hot -> MixUp/CutMix (unless deferred) -> prefetch.
Validation: shard -> read in order -> parse -> skip bad records -> center crop + resize ->
(cache) -> batch (last batch kept) -> one-hot -> prefetch.
Images are float32 0..255 (the model normalizes), labels float32 one-hot.
"""

from __future__ import annotations

import functools
import logging

import tensorflow as tf

from dataloader import augment, mixing, preprocessing, skipping
from dataloader.config import DataConfig, DataError, DatasetInfo
from dataloader.sources import (
    IMAGENET_NUM_CLASSES,
    IMAGENET_NUM_EVAL,
    IMAGENET_NUM_TRAIN,
    DigitsSource,
    get_source,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Number of classes, split sizes and class names of the configured source.

    Args:
      cfg: the data config.

    Returns:
      DatasetInfo. "synthetic" reports ImageNet-1k sizes (num_classes from cfg or 1000).

    Raises:
      DataError: missing data_dir or files, or num_classes disagreeing with the source.
    """
    if cfg.dataset == "synthetic":
        return DatasetInfo(
            cfg.num_classes or IMAGENET_NUM_CLASSES, IMAGENET_NUM_TRAIN, IMAGENET_NUM_EVAL
        )
    return get_source(cfg).info()


def dataset_classes(cfg: DataConfig) -> tuple[int, tuple[str, ...] | None]:
    """The class count and class names (None when the source has none) of the configured source.

    Unlike `dataset_info` it reads no record (no counting, no label scan: no tf.data), so it
    leaves TensorFlow's runtime uninitialized: runtime.lock checks a resume with it before the
    run creates its strategy, and a MultiWorkerMirroredStrategy must come first.

    Raises:
      DataError: missing data_dir or files, or num_classes disagreeing with the source.
    """
    if cfg.dataset == "synthetic":
        return cfg.num_classes or IMAGENET_NUM_CLASSES, None
    source = get_source(cfg)
    return source.num_classes, source.class_names


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    # We shard ourselves (by file when possible); stop tf.distribute from sharding again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _synthetic(cfg: DataConfig, split: str, repeat: bool, num_classes: int) -> tf.data.Dataset:
    """One random batch made once and repeated: measures the step, not the input pipeline."""
    shape = [cfg.batch_size, cfg.image_size, cfg.image_size, 3]
    seed = cfg.seed if cfg.seed is not None else 0
    images = tf.random.stateless_uniform(shape, [seed, 0], maxval=255.0)
    labels = tf.one_hot(
        tf.random.stateless_uniform(
            [cfg.batch_size], [seed, 1], maxval=num_classes, dtype=tf.int32
        ),
        num_classes,
    )
    ds = tf.data.Dataset.from_tensors((images, labels))
    if repeat:
        ds = ds.repeat()
    else:
        ds = ds.repeat(-(-IMAGENET_NUM_EVAL // cfg.batch_size))
    return ds.with_options(_options(True))


def _train_map(source, cfg: DataConfig):
    """(image, label, seed) -> (float32 image, label) for training."""

    def fn(image, label, seed):
        crop_seed, aug_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if isinstance(source, DigitsSource):
            # NOTE: no crop or flip for digits: a mirrored or cut 8x8 digit changes identity.
            out = preprocessing.resize(image, cfg.image_size, cfg.resize_method)
        else:
            out = preprocessing.preprocess_for_train(
                image,
                cfg.image_size,
                crop_seed,
                area_min=cfg.crop_area_min,
                aspect_range=cfg.crop_aspect_range,
                resize_method=cfg.resize_method,
                min_object_covered=cfg.crop_min_object_covered,
            )
        if cfg.augmenter == "randaugment":
            out = augment.randaugment(out, cfg.raug_num_layers, cfg.raug_magnitude, aug_seed)
        elif cfg.augmenter == "autoaugment":
            out = augment.autoaugment(out, aug_seed)
        return out, label

    return fn


def eval_transform(cfg: DataConfig):
    """`encoded bytes or decoded image -> float32 [S, S, 3]`: the eval transform of `cfg`.

    Validation, predict and export all preprocess with this, so a file is seen the same way.
    """
    return functools.partial(
        preprocessing.preprocess_for_eval,
        image_size=cfg.image_size,
        crop_fraction=cfg.eval_crop_fraction,
        resize_method=cfg.resize_method,
        eval_crop=cfg.eval_crop,
    )


def _eval_map(source, cfg: DataConfig):
    def fn(image, label):
        if isinstance(source, DigitsSource):
            out = preprocessing.resize(image, cfg.image_size, cfg.resize_method)
        else:
            out = eval_transform(cfg)(image)
        return out, label

    return fn


def stream_seeds(
    cfg: DataConfig, input_context: tf.distribute.InputContext | None
) -> tuple[int | None, int | None]:
    """(augmentation, mixing) seeds: distinct per input pipeline and per purpose."""
    if cfg.seed is None:
        return None, None
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    aug_seed = cfg.seed + 1_000_003 * pipeline_id
    return aug_seed, aug_seed + 1


def _with_seeds(ds: tf.data.Dataset, seed: int | None) -> tf.data.Dataset:
    """Zip a fresh [2] int64 stateless seed onto every element (new draws every pass)."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip(ds, seeds)


def _checked_records(
    source,
    cfg: DataConfig,
    split: str,
    input_context: tf.distribute.InputContext | None,
    num_classes: int,
    counter: skipping.SkipCounter,
    deterministic: bool,
) -> tf.data.Dataset:
    """Read (train: cache, shuffle), parse and keep the valid (image, label, origin) records."""
    train = split == "train"
    ds = source.records(split, input_context, train)
    if cfg.cache and train:
        ds = ds.cache()
    if train:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.map(counter.count_read)
    ds = ds.map(source.parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.ignore_errors()
    check = functools.partial(
        skipping.check_record, num_classes=num_classes, is_image_fn=preprocessing.is_image
    )
    return ds.filter(lambda image, label, origin: counter.keep(check(image, label), label, origin))


def _preprocessed(
    ds: tf.data.Dataset,
    source,
    cfg: DataConfig,
    train: bool,
    aug_seed: int | None,
    counter: skipping.SkipCounter,
    deterministic: bool,
) -> tf.data.Dataset:
    """Decode and transform every image (train: random crop + augmentation), counting drops.

    The origin travels with each image until it is counted, so that an image that fails to
    decode is named by its file at the end of the pass (dataloader.skipping).
    """
    if train:
        train_fn = _train_map(source, cfg)
        ds = _with_seeds(ds, aug_seed)

        def fn(record, seed):
            image, label, origin = record
            return (*train_fn(image, label, seed), origin)
    else:
        eval_fn = _eval_map(source, cfg)

        def fn(image, label, origin):
            return (*eval_fn(image, label), origin)

    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    # Corrupt or truncated image data fails in decode: drop it (counted by difference).
    ds = ds.ignore_errors()
    ds = ds.map(counter.count_produced)  # also drops the origin
    return ds.concatenate(counter.end_of_pass(ds.element_spec))


def _batched(
    ds: tf.data.Dataset,
    cfg: DataConfig,
    train: bool,
    repeat: bool,
    num_classes: int,
    mix_seed: int | None,
    deterministic: bool,
) -> tf.data.Dataset:
    """(Validation: cache), repeat, batch, one-hot labels, (train: MixUp/CutMix), prefetch."""
    if cfg.cache and not train:
        ds = ds.cache()
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(cfg.batch_size, drop_remainder=train, num_parallel_calls=tf.data.AUTOTUNE)

    def onehot(images, labels):
        return images, tf.one_hot(labels, num_classes, dtype=tf.float32)

    ds = ds.map(onehot, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if train and cfg.mixing and not cfg.defer_img_mixing:
        ds = _with_seeds(ds, mix_seed).map(
            lambda batch, seed: mixing.mix_batch(
                *batch, cfg.mixup_alpha, cfg.cutmix_alpha, seed=seed
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic,
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def build_dataset(
    cfg: DataConfig,
    split: str,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool | None = None,
) -> tf.data.Dataset:
    """The batched input pipeline for one split.

    Args:
      cfg: the data config (one per training stage).
      split: "train" or "validation".
      input_context: tf.distribute input context; files are split across its input pipelines
        so two workers never read the same file.
      repeat: repeat forever; None means True for train, False for validation.

    Returns:
      Dataset of (images float32 [B, S, S, 3] in 0..255, labels float32 [B, num_classes]).
      Train batches are full (remainder dropped, static shapes); the last validation batch
      may be smaller so every image is evaluated once. With mixing on and not deferred, train
      labels are mixed one-hot rows.

    Raises:
      DataError: unknown split, missing data_dir or no matching files (message names the
        pattern), num_classes disagreeing with the source.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    train = split == "train"
    repeat = train if repeat is None else repeat
    if cfg.dataset == "synthetic":
        return _synthetic(cfg, split, repeat, dataset_info(cfg).num_classes)

    source = get_source(cfg)
    num_classes = source.num_classes
    counter = skipping.SkipCounter(
        f"{cfg.dataset}/{split}", source.origin, report_passes=not repeat, scope=cfg.data_dir
    )
    deterministic = not train or cfg.seed is not None
    aug_seed, mix_seed = stream_seeds(cfg, input_context)
    ds = _checked_records(source, cfg, split, input_context, num_classes, counter, deterministic)
    ds = _preprocessed(ds, source, cfg, train, aug_seed, counter, deterministic)
    ds = _batched(ds, cfg, train, repeat, num_classes, mix_seed, deterministic)
    return ds.with_options(_options(deterministic))
