"""EfficientNet-Lite0: width 1.0, depth 1.0, resolution 224, dropout 0.2 (automl lite builder)."""

from config.efficientnet_lite import lite_config

config = lite_config("efficientnet-lite0", width=1.0, depth=1.0, resolution=224, dropout=0.2)
