"""EfficientNet-B5: width 1.6, depth 2.2, resolution 456, dropout 0.4 (arXiv:1905.11946)."""

from config.efficientnet_v1 import v1_config

config = v1_config("efficientnet-b5", width=1.6, depth=2.2, resolution=456, dropout=0.4)
