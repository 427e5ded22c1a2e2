"""EfficientNetV2-B2 (arXiv:2104.00298; automl effnetv2_configs "efficientnetv2-b2")."""

from config.efficientnet_v2 import v2_base_config

config = v2_base_config(
    "efficientnetv2-b2", width=1.1, depth=1.2, train_size=208, eval_size=260, dropout=0.3
)
