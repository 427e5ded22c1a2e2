# EfficientNetV2-S recipe shared by the scripts under efficientnet_v2/S (sourced, not run).
# From NVIDIA DeepLearningExamples TensorFlow2/Classification/ConvNets/efficientnet_v2/S:
# progressive learning in 4 stages (image size 128 -> 300, RandAugment magnitude 5 -> 15),
# 350 epochs, cosine decay from lr_init 0.005 (per 128 images, scaled to the global batch),
# EMA 0.9999, evaluation at 384 px, AMP + XLA on A100.
LAUNCH="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/launch.sh"
CFG=config/efficientnet_v2/s_cfg.py
TRAIN_ARGS=(--log_steps 500 --save_checkpoint_freq 10 --max_epochs 350
  --n_stages 4 --base_img_size 128 --train_img_size 300 --base_randaug_mag 5
  --augmenter_name randaugment --raug_num_layers 2 --raug_magnitude 15
  --mixup_alpha 0 --cutmix_alpha 0 --defer_img_mixing
  --lr_decay cosine --lr_init 0.005 --weight_decay 0.000005 --opt_epsilon 0.001
  --moving_average_decay 0.9999 --eval_img_size 384 --eval_batch_size 100)
# Throughput at the last stage's image size on synthetic data (no dataset needed).
BENCH_ARGS=(--dataset synthetic --train_img_size 300 --augmenter_name randaugment
  --raug_num_layers 2 --raug_magnitude 15 --moving_average_decay 0.9999)
EVAL_ARGS=(--eval_img_size 384)
