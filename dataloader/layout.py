"""The class-per-folder layout of `--dataset folder`: `data_dir/train/<class>/*` and
`data_dir/val/<class>/*` (or `validation/`).

TensorFlow-free, so that runtime/flag_checks.py checks the layout on the command line, before
anything is written (exit 2); the folder source (dataloader/sources.py) finds its splits with
the same function.
"""

from __future__ import annotations

import os

from dataloader.config import DataError

SPLIT_DIRS = {"train": ("train",), "validation": ("val", "validation")}


def split_dir(data_dir: str, split: str) -> str:
    """The folder of `split` ("train" or "validation") in `data_dir`.

    Raises:
      DataError: no such folder; the message names the folders looked for.
    """
    for name in SPLIT_DIRS[split]:
        path = os.path.join(data_dir, name)
        if os.path.isdir(path):
            return path
    names = " or ".join(os.path.join(data_dir, n) for n in SPLIT_DIRS[split])
    raise DataError(f"no {split} folder: expected {names}, with one sub-folder per class")


def check_layout(data_dir: str) -> None:
    """Check that `data_dir` has a train folder with class sub-folders and a validation folder.

    Only folder names are read; the files are checked when the data is read
    (dataloader/files.py, dataloader/sources.py).

    Raises:
      DataError: one line naming the folder that is missing or has no class folders.
    """
    train = split_dir(data_dir, "train")
    try:
        with os.scandir(train) as entries:
            has_classes = any(e.is_dir() and not e.name.startswith(".") for e in entries)
    except OSError as err:
        raise DataError(f"cannot list {train}: {err.strerror}") from err
    if not has_classes:
        raise DataError(
            f"no class folders in {train}: put each class's images in a sub-folder "
            f"({os.path.join(train, '<class>', '*.jpg')})"
        )
    split_dir(data_dir, "validation")
