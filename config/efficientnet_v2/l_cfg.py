"""EfficientNetV2-L (arXiv:2104.00298; automl effnetv2_configs "efficientnetv2-l")."""

from config.efficientnet_v2 import V2_L_BLOCKS, v2_config

config = v2_config(
    "efficientnetv2-l", V2_L_BLOCKS, stem_filters=32, train_size=384, eval_size=480, dropout=0.4
)
