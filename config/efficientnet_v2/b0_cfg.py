"""EfficientNetV2-B0 (arXiv:2104.00298; automl effnetv2_configs "efficientnetv2-b0")."""

from config.efficientnet_v2 import v2_base_config

config = v2_base_config(
    "efficientnetv2-b0", width=1.0, depth=1.0, train_size=192, eval_size=224, dropout=0.2
)
