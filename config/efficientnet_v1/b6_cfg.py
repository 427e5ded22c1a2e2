"""EfficientNet-B6: width 1.8, depth 2.6, resolution 528, dropout 0.5 (arXiv:1905.11946)."""

from config.efficientnet_v1 import v1_config

config = v1_config("efficientnet-b6", width=1.8, depth=2.6, resolution=528, dropout=0.5)
