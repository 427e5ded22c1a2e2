"""EfficientNet-B4: width 1.4, depth 1.8, resolution 380, dropout 0.4 (arXiv:1905.11946)."""

from config.efficientnet_v1 import v1_config

config = v1_config("efficientnet-b4", width=1.4, depth=1.8, resolution=380, dropout=0.4)
