"""EfficientNetV2-M (arXiv:2104.00298; automl effnetv2_configs "efficientnetv2-m")."""

from config.efficientnet_v2 import V2_M_BLOCKS, v2_config

config = v2_config(
    "efficientnetv2-m", V2_M_BLOCKS, stem_filters=24, train_size=384, eval_size=480, dropout=0.3
)
