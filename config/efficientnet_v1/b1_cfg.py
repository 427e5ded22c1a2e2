"""EfficientNet-B1: width 1.0, depth 1.1, resolution 240, dropout 0.2 (arXiv:1905.11946)."""

from config.efficientnet_v1 import v1_config

config = v1_config("efficientnet-b1", width=1.0, depth=1.1, resolution=240, dropout=0.2)
