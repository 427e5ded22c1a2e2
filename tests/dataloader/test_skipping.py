"""dataloader/skipping.py: every bad file named once per run with its path and reason, and the
counts once per pass (an input read once) or once per epoch (the repeated training input)."""

from __future__ import annotations

import logging

import pytest

from dataloader import DataConfig, build_dataset, skipping
from tests.helpers import data_fixtures as fx

SIZE = 32


def _folder_with_bad_files(root):
    fx.make_folder_tree(str(root), ["ant", "bee"], {"train": 4, "val": 2})
    broken = root / "train" / "ant" / "broken.jpg"
    broken.write_bytes(fx.truncated_jpeg())
    notes = root / "train" / "bee" / "notes.txt"
    notes.write_text("not an image")
    (root / "val" / "bee" / "cut.jpg").write_bytes(fx.truncated_jpeg(1))
    return broken, notes


def _cfg(root, **kw):
    return DataConfig(
        dataset="folder",
        data_dir=str(root),
        image_size=SIZE,
        batch_size=2,
        augmenter="none",
        seed=1,
        **kw,
    )


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "dataloader.skipping"]


def test_training_input_names_each_bad_file_once_and_counts_once_per_epoch(tmp_path, caplog):
    """Before: the truncated JPEG was never named (only TensorFlow's 'Premature end of JPEG
    data'), and the counts were logged at the end of every pass, twice per epoch."""
    broken, notes = _folder_with_bad_files(tmp_path)
    skipping.report_pending("before")  # counts of other tests' training inputs
    with caplog.at_level(logging.INFO, logger="dataloader.skipping"):
        for _ in range(2):  # a seeded run builds its training input again for every epoch
            # 10 records per pass: 12 batches of 2 read two passes and a bit.
            for _ in build_dataset(_cfg(tmp_path), "train", repeat=True).take(12):
                pass
        messages = _messages(caplog)
        assert (
            messages.count(
                f"folder/train: skipping {broken}: undecodable image data (corrupt or truncated)"
            )
            == 1
        ), messages
        assert messages.count(f"folder/train: skipping {notes}: not an image") == 1, messages
        assert not [m for m in messages if "pass done" in m], messages
        caplog.clear()
        reported = skipping.report_pending("epoch 1")
        assert _messages(caplog) == [
            "epoch 1: folder/train: a pass over the data skipped 2 of 10 records "
            "(1 not an image, 1 undecodable)"
        ]
        assert reported["folder/train"]["read"] == 10
        caplog.clear()
        assert skipping.report_pending("epoch 2") == {} and _messages(caplog) == []


def test_an_input_read_once_logs_its_pass_and_names_the_bad_file(tmp_path, caplog):
    _folder_with_bad_files(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="dataloader.skipping"):
        _, labels = fx.collect(build_dataset(_cfg(tmp_path), "validation"))
    assert len(labels) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"folder/validation: skipping {tmp_path / 'val' / 'bee' / 'cut.jpg'}: undecodable image "
        "data (corrupt or truncated)",
        "folder/validation: pass done, skipped 1 of 5 records (1 undecodable)",
    ]
    caplog.clear()
    (tmp_path / "val" / "bee" / "cut.jpg").unlink()
    with caplog.at_level(logging.INFO, logger="dataloader.skipping"):
        fx.collect(build_dataset(_cfg(tmp_path), "validation"))
    assert _messages(caplog) == []  # a clean pass: no line


def test_a_bad_record_in_a_tfrecord_shard_names_the_shard(tmp_path, caplog):
    fx.write_tfrecords(
        str(tmp_path), "validation", [[0, 1], [2]], extra_records={1: [(fx.truncated_jpeg(), 3)]}
    )
    cfg = DataConfig(
        dataset="imagenet", data_dir=str(tmp_path), num_classes=10, image_size=SIZE, batch_size=2
    )
    with caplog.at_level(logging.WARNING, logger="dataloader.skipping"):
        _, labels = fx.collect(build_dataset(cfg, "validation"))
    assert len(labels) == 3
    shard = tmp_path / "validation-00001-of-00002"
    assert (
        f"imagenet/validation: skipping {shard}: 1 of 2 records undecodable (corrupt or "
        "truncated image data)"
    ) in _messages(caplog)


def test_after_max_named_files_only_the_counts_go_on(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(skipping, "MAX_NAMED", 1)
    _folder_with_bad_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dataloader.skipping"):
        fx.collect(build_dataset(_cfg(tmp_path), "train", repeat=False))
    messages = _messages(caplog)
    assert sum(": skipping " in m for m in messages) == 1, messages
    assert "folder/train: 1 bad files named; more are counted, not named" in messages
    assert "folder/train: pass done, skipped 2 of 10 records (1 not an image, 1 undecodable)" in (
        messages
    )


@pytest.mark.parametrize(
    "values, text",
    [
        ({"read": 5, "decoded": 5}, "5 records, none skipped"),
        ({"read": 9, "decoded": 6, "empty": 1}, "skipped 3 of 9 records (1 empty, 2 undecodable)"),
    ],
)
def test_describe_counts(values, text):
    assert skipping.describe_counts(values) == text
