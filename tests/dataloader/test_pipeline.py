"""build_dataset / dataset_info on small generated data sets of every source."""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

import dataloader
from dataloader import DataConfig, DataError, build_dataset, dataset_info
from tests.helpers import data_fixtures as fx

NUM_CLASSES = 10
SIZE = 32
TRAIN_FILES = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 1]]
VAL_FILES = [[0, 1], [2, 3], [4, 5], [6, 7]]


def assert_labels_match_pixels(images, labels, num_classes=NUM_CLASSES):
    from_pixels = [fx.label_from_image(im, num_classes) for im in images]
    assert list(labels.argmax(1)) == from_pixels


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfrecords"))
    fx.write_tfrecords(root, "train", TRAIN_FILES)
    fx.write_tfrecords(root, "validation", VAL_FILES)
    return root


def imagenet_cfg(data_dir, **kw) -> DataConfig:
    base = dict(
        dataset="imagenet",
        data_dir=data_dir,
        num_classes=NUM_CLASSES,
        image_size=SIZE,
        batch_size=4,
        seed=0,
        augmenter="none",
    )
    return DataConfig(**{**base, **kw})


def test_public_api_is_exported():
    assert callable(dataloader.mixing.mix_batch)
    assert callable(dataloader.preprocessing.preprocess_for_eval)


def test_synthetic_batches_have_contract_shapes():
    cfg = DataConfig(dataset="synthetic", image_size=SIZE, batch_size=3, num_classes=7)
    x, y = next(iter(build_dataset(cfg, "train")))
    assert x.shape == (3, SIZE, SIZE, 3) and x.dtype == tf.float32
    assert y.shape == (3, 7) and y.dtype == tf.float32
    assert 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255
    np.testing.assert_allclose(y.numpy().sum(1), 1.0)
    assert dataset_info(cfg).num_classes == 7


def test_digits_split_sizes_and_labels():
    cfg = DataConfig(dataset="digits", image_size=SIZE, batch_size=64, seed=0, augmenter="none")
    info = dataset_info(cfg)
    assert (info.num_classes, info.num_train, info.num_eval) == (10, 1437, 360)
    assert info.class_names == tuple(str(i) for i in range(10))
    images, labels = fx.collect(build_dataset(cfg, "validation"))
    assert images.shape == (360, SIZE, SIZE, 3) and labels.shape == (360, 10)
    assert images.min() >= 0 and images.max() <= 255 and images.max() > 200
    # Deterministic split: validation is the same on every build, and disjoint from train.
    again = fx.collect(build_dataset(cfg, "validation"))[1]
    np.testing.assert_array_equal(labels, again)
    train = next(iter(build_dataset(cfg, "train")))
    assert train[0].shape == (64, SIZE, SIZE, 3)


def test_imagenet_records_labels_shapes_and_one_based(records_dir):
    cfg = imagenet_cfg(records_dir)
    info = dataset_info(cfg)
    assert (info.num_classes, info.num_train, info.num_eval) == (NUM_CLASSES, 12, 8)
    images, labels = fx.collect(build_dataset(cfg, "validation"))
    assert images.shape == (8, SIZE, SIZE, 3) and labels.dtype == np.float32
    assert sorted(labels.argmax(1)) == sorted(sum(VAL_FILES, []))
    assert_labels_match_pixels(images, labels)
    images, labels = fx.collect(build_dataset(cfg, "train", repeat=False))
    assert images.shape == (12, SIZE, SIZE, 3)  # 12 records, batch 4, remainder 0
    assert_labels_match_pixels(images, labels)


def test_zero_based_records_need_the_flag(tmp_path, caplog):
    fx.write_tfrecords(str(tmp_path), "validation", [[0, 1, 2, 9]], one_based=False)
    cfg = imagenet_cfg(str(tmp_path), one_based_labels=False)
    images, labels = fx.collect(build_dataset(cfg, "validation"))
    assert sorted(labels.argmax(1)) == [0, 1, 2, 9]
    assert_labels_match_pixels(images, labels)
    # Read as 1-based, label 0 becomes -1: skipped and counted, never a wrong label.
    with caplog.at_level(logging.WARNING, logger="dataloader.skipping"):
        _, labels = fx.collect(
            build_dataset(dataclasses.replace(cfg, one_based_labels=True), "validation")
        )
    assert sorted(labels.argmax(1)) == [0, 1, 8]
    assert "skipped 1 of 4 records (1 label out of range)" in caplog.text


def test_two_workers_see_disjoint_files(records_dir):
    cfg = imagenet_cfg(records_dir)
    seen = []
    for worker in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
        _, labels = fx.collect(build_dataset(cfg, "validation", input_context=ctx))
        seen.append(sorted(labels.argmax(1)))
    # Worker i reads files i and i + 2 of the sorted list.
    assert seen[0] == sorted(VAL_FILES[0] + VAL_FILES[2])
    assert seen[1] == sorted(VAL_FILES[1] + VAL_FILES[3])


def test_train_file_order_reshuffles_every_epoch(records_dir):
    # Buffer 1 and one file at a time would expose the file order directly; with interleave
    # the first label of a pass still comes from the first file of that pass.
    cfg = imagenet_cfg(records_dir, shuffle_buffer=1, batch_size=1)
    ds = build_dataset(cfg, "train", repeat=True).take(12 * 8)
    labels = np.concatenate([y.numpy().argmax(1) for _, y in ds]).reshape(8, 12)
    orders = {tuple(epoch) for epoch in labels}
    assert len(orders) > 1, "every epoch read the files in the same order"
    for epoch in labels:
        assert sorted(epoch) == sorted(sum(TRAIN_FILES, []))


def test_bad_records_are_skipped_counted_and_logged(tmp_path, caplog):
    extra = {
        0: [(b"", 1), (b"GIF is not here, just text", 2), (fx.truncated_jpeg(), 3)],
        1: [(fx.corrupt_jpeg_header(), 4), (fx.jpeg(2), 99), (fx.png(5), 6)],
    }
    fx.write_tfrecords(str(tmp_path), "train", [[0, 1], [2, 3]], extra_records=extra)
    cfg = imagenet_cfg(str(tmp_path), batch_size=1)
    with caplog.at_level(logging.INFO, logger="dataloader.skipping"):
        images, labels = fx.collect(build_dataset(cfg, "train", repeat=False))
    # 4 good JPEGs + the PNG (stored label 6 = class 5); 5 bad records skipped.
    assert sorted(labels.argmax(1)) == [0, 1, 2, 3, 5]
    assert_labels_match_pixels(images, labels)
    assert (
        "skipped 5 of 10 records (1 empty, 1 not an image, 1 label out of range, 2 undecodable)"
    ) in caplog.text
    assert "train-00000-of-00002" in caplog.text  # the origin of a rejected record


def test_missing_inputs_give_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(imagenet_cfg(str(tmp_path / "nope")), "train")
    with pytest.raises(DataError, match=r"no TFRecord files match .*train-\*"):
        build_dataset(imagenet_cfg(str(tmp_path)), "train")
    with pytest.raises(DataError, match="needs --data_dir"):
        build_dataset(imagenet_cfg(None), "train")
    with pytest.raises(DataError, match="unknown split"):
        build_dataset(DataConfig(dataset="digits"), "test")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dataset="cifar"), "unknown dataset"),
        (dict(augmenter="trivial"), "unknown augmenter"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(crop_fraction=1.5), "crop_fraction"),
        (dict(mixup_alpha=-1.0), "mixup_alpha"),
    ],
)
def test_bad_config_values_are_rejected(kwargs, message):
    with pytest.raises(DataError, match=message):
        DataConfig(**kwargs)


def test_num_classes_must_agree_with_metadata(tmp_path):
    from dataloader import tfrecord_format

    fx.write_tfrecords(str(tmp_path), "validation", [[0, 1]])
    tfrecord_format.write_metadata(str(tmp_path), 10, 0, 2, None)
    with pytest.raises(DataError, match="num_classes=5 but"):
        build_dataset(imagenet_cfg(str(tmp_path), num_classes=5), "validation")


def test_folder_source_labels_class_names_and_non_images(tmp_path, caplog):
    classes = ["zebra", "ant", "mole"]
    fx.make_folder_tree(str(tmp_path), classes, {"train": 3, "val": 2})
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "val" / "mole" / "empty.jpg").write_bytes(b"")
    cfg = DataConfig(
        dataset="folder",
        data_dir=str(tmp_path),
        image_size=SIZE,
        batch_size=2,
        seed=1,
        augmenter="none",
    )
    info = dataset_info(cfg)
    assert info.class_names == ("ant", "mole", "zebra")
    assert (info.num_classes, info.num_train, info.num_eval) == (3, 10, 7)
    with caplog.at_level(logging.WARNING, logger="dataloader.skipping"):
        images, labels = fx.collect(build_dataset(cfg, "validation"))
    assert sorted(labels.argmax(1)) == [0, 0, 1, 1, 2, 2]
    assert_labels_match_pixels(images, labels, 3)
    assert "empty.jpg" in caplog.text and "skipped 1 of 7 records (1 empty)" in caplog.text
    images, labels = fx.collect(build_dataset(cfg, "train", repeat=False))
    assert len(labels) == 8  # 9 images, notes.txt skipped, remainder dropped
    assert_labels_match_pixels(images, labels, 3)


def test_folder_without_val_split_names_the_expected_paths(tmp_path):
    fx.make_folder_tree(str(tmp_path), ["a", "b"], {"train": 1})
    cfg = DataConfig(dataset="folder", data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"no validation folder: expected .*val or .*validation"):
        build_dataset(cfg, "validation")


def test_tfds_mock_data_gives_batches_and_class_names():
    import tensorflow_datasets as tfds

    cfg = DataConfig(
        dataset="tfds:imagenet2012",
        data_dir="/nonexistent",
        image_size=SIZE,
        batch_size=4,
        seed=0,
        augmenter="none",
    )
    with tfds.testing.mock_data(num_examples=8):
        info = dataset_info(cfg)
        train = list(build_dataset(cfg, "train", repeat=False))
        images, labels = fx.collect(build_dataset(cfg, "validation"))
    assert info.num_classes == 1000 and info.class_names[0] == "n01440764"
    assert len(train) == 2 and train[0][0].shape == (4, SIZE, SIZE, 3)
    assert images.shape == (8, SIZE, SIZE, 3) and labels.shape == (8, 1000)
    np.testing.assert_allclose(labels.sum(1), 1.0)


def test_unknown_tfds_name_is_a_data_error():
    with pytest.raises(DataError, match="unknown TFDS data set"):
        dataset_info(DataConfig(dataset="tfds:no_such_dataset_xyz", data_dir="/nonexistent"))


def test_in_pipeline_mixing_and_randaugment_keep_ranges(records_dir):
    cfg = imagenet_cfg(
        records_dir,
        augmenter="randaugment",
        raug_magnitude=15,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        cache=True,
    )
    images, labels = fx.collect(build_dataset(cfg, "train", repeat=False))
    assert images.shape == (12, SIZE, SIZE, 3)
    assert images.min() >= 0 and images.max() <= 255
    np.testing.assert_allclose(labels.sum(1), 1.0, rtol=1e-5)
    assert (labels > 0).sum(1).max() == 2  # mixed rows carry two classes
    deferred = dataclasses.replace(cfg, defer_img_mixing=True, augmenter="none")
    _, labels = fx.collect(build_dataset(deferred, "train", repeat=False))
    assert set(np.unique(labels)) == {0.0, 1.0}


def test_in_pipeline_autoaugment_keeps_range_and_changes_pixels(records_dir):
    """The flag default (the tiny end-to-end runs train without augmentation, for speed)."""
    cfg = imagenet_cfg(records_dir, augmenter="autoaugment")
    images, labels = fx.collect(build_dataset(cfg, "train", repeat=False))
    plain, plain_labels = fx.collect(
        build_dataset(dataclasses.replace(cfg, augmenter="none"), "train", repeat=False)
    )
    assert images.shape == plain.shape == (12, SIZE, SIZE, 3)
    assert images.min() >= 0 and images.max() <= 255
    np.testing.assert_array_equal(labels, plain_labels)  # same seed: same order and crops
    assert not np.array_equal(images, plain)


def test_eval_is_deterministic_and_cache_gives_same_data(records_dir):
    cfg = imagenet_cfg(records_dir, cache=True)
    ds = build_dataset(cfg, "validation", repeat=True).take(4)  # two passes of 2 batches
    batches = [x.numpy() for x, _ in ds]
    np.testing.assert_array_equal(batches[0], batches[2])
    np.testing.assert_array_equal(batches[1], batches[3])


def test_works_under_distribute_datasets_from_function(records_dir):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    cfg = imagenet_cfg(records_dir)
    with strategy.scope():  # the runtime may build datasets with the scope open
        dist = strategy.distribute_datasets_from_function(
            lambda ctx: build_dataset(cfg, "validation", input_context=ctx)
        )
        labels = [y.numpy() for _, y in dist]
    assert sorted(np.concatenate(labels).argmax(1)) == sorted(sum(VAL_FILES, []))


def test_seeded_train_pipeline_is_reproducible(records_dir):
    cfg = imagenet_cfg(records_dir, mixup_alpha=0.2, cutmix_alpha=1.0)
    first = [next(iter(build_dataset(cfg, "train"))) for _ in range(2)]
    np.testing.assert_array_equal(first[0][0].numpy(), first[1][0].numpy())
    np.testing.assert_array_equal(first[0][1].numpy(), first[1][1].numpy())
    other = next(iter(build_dataset(dataclasses.replace(cfg, seed=1), "train")))
    assert not np.array_equal(first[0][0].numpy(), other[0].numpy())


def zero_based_set(root: str, num_classes: int = 3, per_class: int = 8) -> str:
    """A train/validation TFRecord set written with 0-based labels and no dataset_info.json."""
    labels = [c for c in range(num_classes) for _ in range(per_class)]
    fx.write_tfrecords(root, "train", [labels[0::2], labels[1::2]], one_based=False)
    fx.write_tfrecords(root, "validation", [labels[::3]], one_based=False)
    return root


def test_zero_based_shards_read_as_one_based_stop_with_the_flag_to_set(tmp_path):
    # Before: every class-0 record was skipped with a WARNING and the run went on without it.
    cfg = imagenet_cfg(zero_based_set(str(tmp_path)), num_classes=3)
    with pytest.raises(
        DataError,
        match=r"8 of 24 train records .* have a label outside \[0, 3\) "
        r"\(stored labels 0\.\.2, label_offset 1\).*"
        r"look 0-based: pass --label_offset 0",
    ):
        dataset_info(cfg)
    with pytest.raises(DataError, match="pass --label_offset 0"):
        build_dataset(cfg, "validation")
    fixed = dataclasses.replace(cfg, one_based_labels=False)
    assert dataset_info(fixed).num_train == 24
    images, labels = fx.collect(build_dataset(fixed, "validation"))
    assert sorted(labels.argmax(1)) == sorted([c for c in range(3) for _ in range(8)][::3])
    assert_labels_match_pixels(images, labels, num_classes=3)


def test_labels_beyond_num_classes_stop_the_run(tmp_path):
    fx.write_tfrecords(str(tmp_path), "train", [[0, 1, 2, 3, 4, 4, 4]])
    with pytest.raises(
        DataError,
        match=r"5 of 7 train records .*outside \[0, 2\).*"
        r"set --mparams num_classes to the real class count",
    ):
        build_dataset(imagenet_cfg(str(tmp_path), num_classes=2), "train")


def test_one_based_shards_read_as_zero_based_name_the_flag(tmp_path):
    fx.write_tfrecords(str(tmp_path), "train", [[0, 1, 2, 2, 1, 0]])
    with pytest.raises(DataError, match="look 1-based .*pass --label_offset 1"):
        build_dataset(imagenet_cfg(str(tmp_path), num_classes=3, one_based_labels=False), "train")


def test_requested_num_classes_disagreeing_with_metadata_is_an_error(records_dir, tmp_path):
    from dataloader.tfrecord_format import write_metadata

    write_metadata(records_dir, NUM_CLASSES, 12, 8, None)
    try:
        with pytest.raises(
            DataError, match=f"num_classes=5 but .*dataset_info.json says {NUM_CLASSES}"
        ):
            dataset_info(imagenet_cfg(records_dir, num_classes=5))
    finally:
        os.remove(os.path.join(records_dir, "dataset_info.json"))


def test_augmentation_and_mixing_seeds_differ_per_input_pipeline():
    from dataloader.pipeline import stream_seeds

    cfg = DataConfig(dataset="synthetic", seed=3)
    contexts = [tf.distribute.InputContext(2, i, 1) for i in (0, 1)]
    seeds = [s for ctx in contexts for s in stream_seeds(cfg, ctx)]
    assert len(set(seeds)) == 4 and all(isinstance(s, int) for s in seeds)
    assert stream_seeds(cfg, None) == stream_seeds(cfg, contexts[0])
    assert stream_seeds(dataclasses.replace(cfg, seed=None), contexts[1]) == (None, None)
