"""A tiny EfficientNetV2 run configuration for runtime tests (32 px, ~36k parameters)."""

from __future__ import annotations

import tensorflow as tf

from runtime import flags
from runtime.checkpoint import checkpoint_dir
from runtime.components import create_model

TINY_MPARAMS = (
    "width_coefficient=0.1,depth_coefficient=0.1,train_img_size=32,eval_img_size=32,num_classes=10"
)
# Two blocks (one fused-MBConv, one MBConv+SE) instead of the 6 stages: for run-level tests whose
# checks do not depend on depth; the train step traces in about half the time.
TWO_BLOCKS = "blocks=('r1_k3_s1_e1_i24_o24_c1','r1_k3_s2_e4_i24_o32_se0.25')"


def tiny_args(model_dir, mode: str, *extra: str, mparams: str = TINY_MPARAMS) -> list[str]:
    """main.py arguments of a tiny CPU run on the bundled digits.

    No augmentation: tracing the AutoAugment policy (the flag default) costs seconds per training
    input built; the augmenters have their own tests (tests/dataloader/test_augment.py).
    """
    return [
        "--cfg",
        "config/efficientnet_v2/s_cfg.py",
        "--mparams",
        mparams,
        "--mode",
        mode,
        "--dataset",
        "digits",
        "--model_dir",
        str(model_dir),
        "--no-use_xla",
        "--augmenter_name",
        "none",
        *extra,
    ]


def tiny_params(model_dir, mode: str, *extra: str, mparams: str = TINY_MPARAMS) -> dict:
    """The resolved params dict main.py would pass to the mode function."""
    return flags.parse(tiny_args(model_dir, mode, *extra, mparams=mparams))


def save_random_checkpoint(params: dict, num_classes: int = 10):
    """Write an (untrained) model as the run's newest training checkpoint; returns the model."""
    model = create_model(params, num_classes)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), checkpoint_dir(params["model_dir"]), max_to_keep=1
    )
    manager.save()
    return model
