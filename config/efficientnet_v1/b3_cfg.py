"""EfficientNet-B3: width 1.2, depth 1.4, resolution 300, dropout 0.3 (arXiv:1905.11946)."""

from config.efficientnet_v1 import v1_config

config = v1_config("efficientnet-b3", width=1.2, depth=1.4, resolution=300, dropout=0.3)
