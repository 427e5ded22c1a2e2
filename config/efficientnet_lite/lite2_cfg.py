"""EfficientNet-Lite2: width 1.1, depth 1.2, resolution 260, dropout 0.3 (automl lite builder)."""

from config.efficientnet_lite import lite_config

config = lite_config("efficientnet-lite2", width=1.1, depth=1.2, resolution=260, dropout=0.3)
