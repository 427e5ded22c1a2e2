"""EfficientNetV2-XL (arXiv:2104.00298; automl effnetv2_configs "efficientnetv2-xl")."""

from config.efficientnet_v2 import V2_XL_BLOCKS, v2_config

config = v2_config(
    "efficientnetv2-xl", V2_XL_BLOCKS, stem_filters=32, train_size=384, eval_size=512, dropout=0.4
)
