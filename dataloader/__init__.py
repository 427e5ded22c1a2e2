"""tf.data input pipeline: sources, preprocessing, augmentation and MixUp/CutMix.

Public API: `DataConfig`, `DatasetInfo`, `DataError`, `dataset_info`, `dataset_classes`,
`build_dataset`; `dataloader.mixing.mix_batch`; `dataloader.preprocessing.preprocess_for_eval`.

The package face is lazy (PEP 562): `dataloader.config` (choice lists, DataConfig) and
`dataloader.files` import without TensorFlow, so `runtime/flags.py` can take the real lists and
fail fast on a typo; `build_dataset`, `dataset_info` and `dataset_classes` load the pipeline (and
TensorFlow) on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from dataloader.config import DataConfig, DataError, DatasetInfo

__all__ = [
    "DataConfig",
    "DataError",
    "DatasetInfo",
    "build_dataset",
    "dataset_classes",
    "dataset_info",
]

_LAZY = {
    "build_dataset": "dataloader.pipeline",
    "dataset_classes": "dataloader.pipeline",
    "dataset_info": "dataloader.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dataloader' has no attribute {name!r}")
