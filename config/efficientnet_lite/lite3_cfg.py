"""EfficientNet-Lite3: width 1.2, depth 1.4, resolution 280, dropout 0.3 (automl lite builder)."""

from config.efficientnet_lite import lite_config

config = lite_config("efficientnet-lite3", width=1.2, depth=1.4, resolution=280, dropout=0.3)
