# EfficientNet-B0 recipe shared by the scripts under efficientnet_v1/B0 (sourced, not run).
# From NVIDIA DeepLearningExamples TensorFlow2/Classification/ConvNets/efficientnet_v1/B0:
# 500 epochs at 224 px, AutoAugment, cosine decay from lr_init 0.005 (per 128 images, scaled to
# the global batch), EMA 0.9999, AMP + XLA on A100.
LAUNCH="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/launch.sh"
CFG=config/efficientnet_v1/b0_cfg.py
TRAIN_ARGS=(--log_steps 100 --save_checkpoint_freq 5 --max_epochs 500
  --augmenter_name autoaugment --defer_img_mixing
  --lr_decay cosine --lr_init 0.005 --moving_average_decay 0.9999)
# Throughput on synthetic data (no dataset needed).
BENCH_ARGS=(--dataset synthetic --augmenter_name autoaugment --moving_average_decay 0.9999)
EVAL_ARGS=(--eval_img_size 224)
