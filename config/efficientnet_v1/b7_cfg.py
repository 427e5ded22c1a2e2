"""EfficientNet-B7: width 2.0, depth 3.1, resolution 600, dropout 0.5 (arXiv:1905.11946)."""

from config.efficientnet_v1 import v1_config

config = v1_config("efficientnet-b7", width=2.0, depth=3.1, resolution=600, dropout=0.5)
