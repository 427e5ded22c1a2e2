"""EfficientNetV2-B1 (arXiv:2104.00298; automl effnetv2_configs "efficientnetv2-b1")."""

from config.efficientnet_v2 import v2_base_config

config = v2_base_config(
    "efficientnetv2-b1", width=1.0, depth=1.1, train_size=192, eval_size=240, dropout=0.2
)
