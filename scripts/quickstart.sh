#!/usr/bin/env bash
# Quick start, no download: install, then train + evaluate + predict a small EfficientNet-B0
# (width/depth 0.25) on scikit-learn's bundled digits, upscaled to 32x32 RGB.
#   bash scripts/quickstart.sh                 # full run (~10 epochs)
#   SKIP_INSTALL=1 EPOCHS=1 bash scripts/quickstart.sh --steps_per_epoch 5   # shortened (tests)
# Extra arguments go to the training command.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
MODEL_DIR=${MODEL_DIR:-results/quickstart}
EPOCHS=${EPOCHS:-10}
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  "$PYTHON" -m pip install -q -r requirements.txt
fi
# The flags that define the model and its input, shared by training and predict.
# crop_fraction 1.0: digits are evaluated uncropped, so predict must not crop either.
COMMON=(--cfg config/efficientnet_v1/b0_cfg.py
        --mparams width_coefficient=0.25,depth_coefficient=0.25
        --dataset digits --train_img_size 32 --eval_img_size 32 --crop_fraction 1.0
        --model_dir "$MODEL_DIR")
"$PYTHON" main.py "${COMMON[@]}" --mode train_and_eval --max_epochs "$EPOCHS" \
  --train_batch_size 32 --eval_batch_size 128 --lr_init 0.02 --lr_decay cosine \
  --lr_warmup_epochs 1 --augmenter_name none --moving_average_decay 0.99 --seed 1 \
  --save_checkpoint_freq 1 --log_steps 20 "$@"
"$PYTHON" scripts/export_digits.py --out "$MODEL_DIR/digits_png" --count 20
"$PYTHON" main.py "${COMMON[@]}" --mode predict --predict_img_dir "$MODEL_DIR/digits_png"
