"""EfficientNet-Lite4: width 1.4, depth 1.8, resolution 300, dropout 0.3 (automl lite builder)."""

from config.efficientnet_lite import lite_config

config = lite_config("efficientnet-lite4", width=1.4, depth=1.8, resolution=300, dropout=0.3)
