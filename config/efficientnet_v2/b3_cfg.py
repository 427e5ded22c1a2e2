"""EfficientNetV2-B3 (arXiv:2104.00298; automl effnetv2_configs "efficientnetv2-b3")."""

from config.efficientnet_v2 import v2_base_config

config = v2_base_config(
    "efficientnetv2-b3", width=1.2, depth=1.4, train_size=240, eval_size=300, dropout=0.3
)
