"""EfficientNetV2-S (arXiv:2104.00298; automl effnetv2_configs "efficientnetv2-s")."""

from config.efficientnet_v2 import V2_S_BLOCKS, v2_config

config = v2_config(
    "efficientnetv2-s", V2_S_BLOCKS, stem_filters=24, train_size=300, eval_size=384, dropout=0.2
)
