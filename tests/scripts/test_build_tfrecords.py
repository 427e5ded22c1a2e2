"""scripts/build_tfrecords.py: folder and raw-ImageNet trees -> TFRecords -> pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dataloader import DataConfig, build_dataset, dataset_info
from scripts import build_tfrecords
from tests.helpers import ROOT
from tests.helpers import data_fixtures as fx

SCRIPT = os.path.join(ROOT, "scripts", "build_tfrecords.py")
CLASSES = ["cat", "dog", "emu"]


def run(*args) -> int:
    return build_tfrecords.main([*map(str, args), "--no-progress"])


def convert(tree, out, train_shards=3, validation_shards=1) -> int:
    """Convert in this process (one worker) with the given shard counts."""
    return run(
        "--input_dir",
        tree,
        "--output_dir",
        out,
        "--train_shards",
        train_shards,
        "--validation_shards",
        validation_shards,
        "--num_workers",
        1,
    )


def read_all(data_dir, split, size=16):
    cfg = DataConfig(
        dataset="imagenet", data_dir=str(data_dir), image_size=size, batch_size=4, augmenter="none"
    )
    return fx.collect(build_dataset(cfg, split, repeat=False))


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "in"
    fx.make_folder_tree(str(root), CLASSES, {"train": 4, "val": 2})
    (root / "train" / "cat" / "truncated.jpg").write_bytes(fx.truncated_jpeg())
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    (root / "train" / "dog" / "readme.txt").write_text("not an image")
    (root / "train" / "emu" / "cmyk.jpg").write_bytes(fx.jpeg(2, mode="CMYK"))
    (root / "train" / "emu" / "png_named.jpg").write_bytes(fx.png(2))
    return root


def test_folder_round_trip_gives_the_same_labels(tree, tmp_path):
    out = tmp_path / "out"
    assert convert(tree, out, validation_shards=2) == 0
    names = sorted(os.listdir(out))
    assert [n for n in names if n.startswith("train-")] == [
        f"train-0000{i}-of-00003" for i in range(3)
    ]
    assert not [n for n in names if n.endswith(".tmp")]
    meta = json.loads((out / "dataset_info.json").read_text())
    # 12 good + CMYK + PNG-in-.jpg re-encoded; truncated, empty, text skipped.
    assert (meta["num_classes"], meta["num_train"], meta["num_eval"]) == (3, 14, 6)
    assert meta["class_names"] == CLASSES and meta["label_offset"] == 1
    skipped = (out / "skipped_files.txt").read_text()
    assert all(n in skipped for n in ("truncated.jpg", "empty.jpg", "readme.txt"))

    info = dataset_info(DataConfig(dataset="imagenet", data_dir=str(out)))
    assert info.class_names == tuple(CLASSES) and info.num_classes == 3
    images, labels = read_all(out, "validation")
    assert sorted(labels.argmax(1)) == [0, 0, 1, 1, 2, 2]
    assert [fx.label_from_image(im, 3) for im in images] == list(labels.argmax(1))
    images, labels = read_all(out, "train")
    assert len(labels) == 12  # 14 records, batch 4, remainder dropped
    assert [fx.label_from_image(im, 3) for im in images] == list(labels.argmax(1))


def test_rerun_resumes_and_never_overwrites_finished_shards(tree, tmp_path):
    out = tmp_path / "out"
    assert convert(tree, out) == 0
    kept = out / "train-00000-of-00003"
    before = kept.stat().st_mtime_ns
    (out / "train-00001-of-00003").unlink()  # as if killed before this shard finished
    (out / "train-00001-of-00003.tmp").write_bytes(b"partial")
    assert convert(tree, out) == 0
    assert kept.stat().st_mtime_ns == before
    assert (out / "train-00001-of-00003").exists()
    assert not (out / "train-00001-of-00003.tmp").exists()
    assert json.loads((out / "dataset_info.json").read_text())["num_train"] == 14
    # Same output dir, different sharding: refused instead of mixing two layouts.
    assert convert(tree, out, validation_shards=2) == 2


def test_raw_imagenet_layout_with_synsets_and_parallel_workers(tmp_path):
    root = tmp_path / "raw"
    synsets = ["n02", "n01"]  # label order comes from the file, not from sorting
    for label, synset in enumerate(synsets):
        folder = root / "train" / synset
        folder.mkdir(parents=True)
        for j in range(3):
            (folder / f"{synset}_{j}.JPEG").write_bytes(fx.jpeg(label))
    (root / "validation").mkdir()
    val_labels = ["n01", "n02", "n01"]
    for j, synset in enumerate(val_labels):
        (root / "validation" / f"ILSVRC2012_val_{j:08d}.JPEG").write_bytes(
            fx.jpeg(synsets.index(synset))
        )
    (tmp_path / "synsets.txt").write_text("\n".join(synsets) + "\n")
    (tmp_path / "val_labels.txt").write_text("\n".join(val_labels) + "\n")
    (tmp_path / "names.txt").write_text("n01\tgoldfish\nn02\tshark\n")
    out = tmp_path / "out"
    assert (
        run(
            "--input_dir",
            root,
            "--output_dir",
            out,
            "--synsets_file",
            tmp_path / "synsets.txt",
            "--val_labels_file",
            tmp_path / "val_labels.txt",
            "--class_names_file",
            tmp_path / "names.txt",
            "--train_shards",
            2,
            "--validation_shards",
            1,
            "--num_workers",
            2,
        )
        == 0
    )
    meta = json.loads((out / "dataset_info.json").read_text())
    assert meta["class_names"] == ["shark", "goldfish"] and meta["synsets"] == synsets
    images, labels = read_all(out, "validation")
    assert sorted(labels.argmax(1)) == [0, 1, 1]
    assert [fx.label_from_image(im, 2) for im in images] == list(labels.argmax(1))


def test_flat_validation_without_labels_file_is_an_error(tmp_path, capsys):
    root = tmp_path / "raw"
    (root / "train" / "n01").mkdir(parents=True)
    (root / "train" / "n01" / "a.JPEG").write_bytes(fx.jpeg(0))
    (root / "validation").mkdir()
    (root / "validation" / "v.JPEG").write_bytes(fx.jpeg(0))
    assert run("--input_dir", root, "--output_dir", tmp_path / "o") == 2
    assert "pass --val_labels_file" in capsys.readouterr().err


def test_cli_errors_exit_nonzero_with_one_line(tmp_path):
    missing = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--input_dir",
            str(tmp_path / "none"),
            "--output_dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: --input_dir {tmp_path / 'none'} does not exist"
    )
    bad_flag = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--input_dir",
            str(tmp_path),
            "--output_dir",
            "o",
            "--train_shards",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert bad_flag.returncode == 2 and "--train_shards must be >= 1" in bad_flag.stderr
