"""EfficientNet v1/v2 model zoo (Keras 3; keras.layers / keras.ops only).

Public API: `build_model`, `BlockSpec`; the model config's keys and value checks are in
`model.schema`.

The package face is lazy (PEP 562): `model.schema` and `model.specs` import without Keras, so
config/ checks a model config at start-up before TensorFlow loads; `build_model` loads Keras on
first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from model.specs import BlockSpec

__all__ = ["BlockSpec", "build_model"]

_LAZY = {"build_model": "model.efficientnet"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
