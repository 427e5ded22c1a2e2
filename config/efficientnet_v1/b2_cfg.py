"""EfficientNet-B2: width 1.1, depth 1.2, resolution 260, dropout 0.3 (arXiv:1905.11946)."""

from config.efficientnet_v1 import v1_config

config = v1_config("efficientnet-b2", width=1.1, depth=1.2, resolution=260, dropout=0.3)
