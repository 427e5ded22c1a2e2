"""tf.data input pipeline: sources, preprocessing, augmentation and MixUp/CutMix.

Public API (see contracts.md): `DataConfig`, `DatasetInfo`, `DataError`, `dataset_info`,
`build_dataset`; `dataloader.mixing.mix_batch`; `dataloader.preprocessing.preprocess_for_eval`.
"""

from dataloader.config import DataConfig, DataError, DatasetInfo
from dataloader.pipeline import build_dataset, dataset_info

__all__ = ["DataConfig", "DataError", "DatasetInfo", "build_dataset", "dataset_info"]
