"""EfficientNet v1/v2 model zoo (Keras 3; keras.layers / keras.ops only)."""

from model.efficientnet import build_model
from model.specs import BlockSpec

__all__ = ["BlockSpec", "build_model"]
