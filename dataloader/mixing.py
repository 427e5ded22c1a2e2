"""MixUp (Zhang et al., 2018) and CutMix (Yun et al., 2019): the one implementation.

The input pipeline calls `mix_batch` after batching; with `defer_img_mixing` the runtime calls
it inside its compiled train step instead, so mixing runs on the accelerator. Each batch is
mixed with itself reversed along the batch axis and one mixing weight is drawn per batch (timm's
"batch" mode). When both alphas are positive, each batch uses CutMix or MixUp with equal
probability (timm's `switch_prob` 0.5).

NOTE: this is not NVIDIA's scheme. NVIDIA's TF2 ConvNets (dataloader/dataset_factory.py) draws
a MixUp weight per sample, max(lambda, 1 - lambda), and with both alphas on splits every batch:
MixUp on the first half, CutMix on the second. We keep one weight and one box per batch: one
fused op per batch on the accelerator, and in expectation the same half-and-half mixture of the
two; the shipped recipes use at most one of them (B4: MixUp 0.2), where only the per-sample vs
per-batch weight differs (docs/parity.md).
"""

from __future__ import annotations

import tensorflow as tf


def _beta(alpha: float, seed) -> tf.Tensor:
    """One Beta(alpha, alpha) sample from two Gamma(alpha) samples."""
    if seed is None:
        g = tf.random.gamma([2], alpha)
    else:
        g = tf.random.stateless_gamma([2], seed=seed, alpha=alpha)
    return g[0] / (g[0] + g[1])


def _uniform(shape, seed, maxval=1.0) -> tf.Tensor:
    if seed is None:
        return tf.random.uniform(shape, maxval=maxval)
    return tf.random.stateless_uniform(shape, seed=seed, maxval=maxval)


def _mixup(images, labels, lam):
    lam_i = tf.cast(lam, images.dtype)
    lam_l = tf.cast(lam, labels.dtype)
    mixed = lam_i * images + (1 - lam_i) * tf.reverse(images, [0])
    return mixed, lam_l * labels + (1 - lam_l) * tf.reverse(labels, [0])


def _cutmix(images, labels, lam, seed):
    """Paste a box of area ~(1 - lam) from the partner; labels weighted by the actual box area."""
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(ratio * tf.cast(height, tf.float32), tf.int32)
    cut_w = tf.cast(ratio * tf.cast(width, tf.float32), tf.int32)
    center = _uniform([2], seed)
    cy = tf.cast(center[0] * tf.cast(height, tf.float32), tf.int32)
    cx = tf.cast(center[1] * tf.cast(width, tf.float32), tf.int32)
    y0 = tf.clip_by_value(cy - cut_h // 2, 0, height)
    y1 = tf.clip_by_value(cy + cut_h // 2, 0, height)
    x0 = tf.clip_by_value(cx - cut_w // 2, 0, width)
    x1 = tf.clip_by_value(cx + cut_w // 2, 0, width)
    rows = tf.range(height)
    cols = tf.range(width)
    in_rows = tf.logical_and(rows >= y0, rows < y1)[:, None]
    in_cols = tf.logical_and(cols >= x0, cols < x1)[None, :]
    box = tf.logical_and(in_rows, in_cols)[None, :, :, None]
    mixed = tf.where(box, tf.reverse(images, [0]), images)
    area = tf.cast((y1 - y0) * (x1 - x0), tf.float32)
    lam_adj = tf.cast(1.0 - area / tf.cast(height * width, tf.float32), labels.dtype)
    return mixed, lam_adj * labels + (1 - lam_adj) * tf.reverse(labels, [0])


def mix_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    mixup_alpha: float,
    cutmix_alpha: float,
    seed=None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply MixUp or CutMix to a batch; a no-op when both alphas are 0.

    Pure TF, so it runs inside a `tf.function` train step (under a distribution strategy too).
    The alphas are Python numbers: a stage change retraces the step.

    Args:
      images: float [B, H, W, C] batch.
      labels: float one-hot (or already smoothed) [B, num_classes] labels.
      mixup_alpha: MixUp Beta parameter; 0 disables MixUp.
      cutmix_alpha: CutMix Beta parameter; 0 disables CutMix.
      seed: None for stateful random ops, or an int / int [2] tensor for stateless ops
        (the same seed gives the same mix).

    Returns:
      (mixed images, mixed labels) with the input shapes and dtypes; label rows still sum to
      the same total as the inputs.
    """
    mixup_alpha, cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixing alphas must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return images, labels
    seeds = [None] * 4
    if seed is not None:
        seed = tf.convert_to_tensor(seed)
        if seed.shape.rank == 0:
            seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))

    def mixup():
        return _mixup(images, labels, _beta(mixup_alpha, seeds[0]))

    def cutmix():
        return _cutmix(images, labels, _beta(cutmix_alpha, seeds[1]), seeds[2])

    if cutmix_alpha == 0:
        return mixup()
    if mixup_alpha == 0:
        return cutmix()
    use_cutmix = _uniform([], seeds[3]) < 0.5
    return tf.cond(use_cutmix, cutmix, mixup)
