"""EfficientNet-Lite1: width 1.0, depth 1.1, resolution 240, dropout 0.2 (automl lite builder)."""

from config.efficientnet_lite import lite_config

config = lite_config("efficientnet-lite1", width=1.0, depth=1.1, resolution=240, dropout=0.2)
