"""Input files a training folder may hold (dataloader/files.py): regular files only, no symlink out
of the folder, a pixel limit read from the header, no empty class folder (issue #12)."""

import logging
import os

import numpy as np
import pytest

from dataloader.config import DataConfig, DataError
from dataloader.files import FilePolicy, image_size_from_header, skip_reason
from tests.helpers import data_fixtures
from tests.helpers.data_fixtures import png_header


def test_image_header_sizes_of_every_format(tmp_path):
    from PIL import Image

    array = np.zeros((30, 70, 3), np.uint8)
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        path = tmp_path / f"x.{fmt.lower()}"
        Image.fromarray(array).save(path, format=fmt)
        assert image_size_from_header(str(path)) == (70, 30), fmt
    # A JPEG with a large EXIF segment before the SOF, and a progressive JPEG.
    exif = Image.Exif()
    exif[0x010E] = "x" * 20000
    Image.fromarray(array).save(tmp_path / "exif.jpg", exif=exif.tobytes())
    Image.fromarray(array).save(tmp_path / "prog.jpg", progressive=True)
    assert image_size_from_header(str(tmp_path / "exif.jpg")) == (70, 30)
    assert image_size_from_header(str(tmp_path / "prog.jpg")) == (70, 30)
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8" + b"\x00" * 100)
    assert image_size_from_header(str(tmp_path / "junk.jpg")) is None


def test_training_folder_skips_and_counts_unsafe_files(tmp_path, caplog):
    from dataloader.sources import FolderSource

    data_fixtures.make_folder_tree(str(tmp_path), ["a", "b"], {"train": 2, "val": 1}, size=(20, 20))
    (tmp_path / "train" / "a" / "huge.png").write_bytes(png_header(20000, 20000))
    os.mkfifo(tmp_path / "train" / "b" / "pipe.jpg")
    outside = tmp_path.parent / f"{tmp_path.name}_outside.jpg"
    outside.write_bytes(data_fixtures.jpeg(0))
    os.symlink(outside, tmp_path / "train" / "a" / "out.jpg")
    with caplog.at_level(logging.WARNING):
        source = FolderSource(DataConfig(dataset="folder", data_dir=str(tmp_path)))
        paths, labels = source.file_list("train")
    assert len(paths) == 4 and labels == [0, 0, 1, 1]
    assert sorted(os.path.basename(p) for p, _ in source.skipped["train"]) == [
        "huge.png",
        "out.jpg",
        "pipe.jpg",
    ]
    assert "folder/train: skipped 3 file(s)" in caplog.text


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    """Before: an empty class folder silently became an extra class."""
    from dataloader.sources import FolderSource

    data_fixtures.make_folder_tree(str(tmp_path), ["a", "b"], {"train": 2, "val": 1}, size=(20, 20))
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/empty holds no usable file"):
        FolderSource(DataConfig(dataset="folder", data_dir=str(tmp_path))).file_list("train")


def test_skip_reason_of_devices_and_missing_files(tmp_path):
    policy = FilePolicy()
    assert skip_reason("/dev/null", None, policy) == "not a regular file (device)"
    assert skip_reason(str(tmp_path / "nope.jpg"), None, policy).startswith("not a regular file")
    os.symlink(tmp_path / "nope.jpg", tmp_path / "dangling.jpg")
    assert skip_reason(str(tmp_path / "dangling.jpg"), str(tmp_path), policy).startswith(
        "not a regular file"
    )
