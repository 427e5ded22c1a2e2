"""AdvProp training (Xie et al., "Adversarial Examples Improve Image Recognition", CVPR 2020,
arXiv:1911.09665): every batch also trains on PGD adversarial images through auxiliary BNs.

`--advprop`: each (micro-)batch runs the clean images through the main BatchNorms and PGD
adversarial images (L-inf ball of `--advprop_epsilon` pixels, `--advprop_steps` signed-gradient
steps of `--advprop_step_size` pixels from a random start, clipped to the image range) through
the auxiliary ones (model/advprop_bn.py); the loss is clean + adversarial cross-entropy. Cost:
`--advprop_steps` extra forward/backward passes for the attack plus one forward/backward for
the adversarial loss, i.e. about steps + 2 times a plain step (docs/advprop.md).

Pixel units: the model takes raw 0..255 images and normalizes them in-graph
(`input_normalization` imagenet / scale128), so one pixel step is 1.0 in the model's input
range and images are clipped to [0, 255]. A model with input_normalization="none" is refused
(its input range is the data pipeline's, not pixels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf

from model.advprop_bn import add_auxiliary_batch_norms, auxiliary_batch_norms

PIXEL_RANGE = (0.0, 255.0)


@dataclasses.dataclass(frozen=True)
class AdvPropConfig:
    """The attack: L-inf radius and step size in the model's input units, and step count."""

    epsilon: float
    steps: int
    step_size: float
    clip_min: float = PIXEL_RANGE[0]
    clip_max: float = PIXEL_RANGE[1]


def setup(params: Mapping[str, Any], model: keras.Model) -> AdvPropConfig | None:
    """With --advprop: add the auxiliary BNs to `model` (under the strategy scope) and return
    the attack config; else None and the model is untouched."""
    if not params.get("advprop"):
        return None
    add_auxiliary_batch_norms(model)
    return AdvPropConfig(
        epsilon=float(params["advprop_epsilon"]),
        steps=int(params["advprop_steps"]),
        step_size=float(params["advprop_step_size"]),
    )


def _cross_entropy(model, images, labels, label_smoothing):
    logits = tf.cast(model(images, training=True), tf.float32)
    return keras.losses.categorical_crossentropy(
        labels, logits, from_logits=True, label_smoothing=label_smoothing
    )


def adversarial_images(
    model: keras.Model,
    images,
    labels,
    config: AdvPropConfig,
    label_smoothing: float,
    scale_loss: Callable = lambda x: x,
):
    """PGD (Madry et al. 2018) on the input through the auxiliary BNs, statistics frozen.

    Args:
      model: the model with auxiliary BNs.
      images: [B, H, W, 3] float images in the model's input range.
      labels: [B, C] float (possibly smoothed/mixed) labels.
      config: the attack.
      label_smoothing: of the attack's cross-entropy (as in training).
      scale_loss: the optimizer's loss scaling (mixed float16: keeps input gradients from
        underflowing; the sign step does not depend on the scale).

    Returns:
      The adversarial images (no gradient flows back into the attack).
    """
    images = tf.cast(images, tf.float32)
    noise = tf.random.uniform(tf.shape(images), -config.epsilon, config.epsilon)
    x = tf.clip_by_value(images + noise, config.clip_min, config.clip_max)
    with auxiliary_batch_norms(model, update_statistics=False):
        for _ in range(config.steps):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = scale_loss(tf.reduce_mean(_cross_entropy(model, x, labels, label_smoothing)))
            grad = tape.gradient(loss, x)
            # Under mixed float16 a loss-scaled backward pass can overflow (inf - inf = NaN in
            # some pixels); those pixels do not move this step instead of poisoning the batch.
            grad = tf.where(tf.math.is_nan(grad), tf.zeros_like(grad), grad)
            x = x + config.step_size * tf.sign(grad)
            x = tf.clip_by_value(x, images - config.epsilon, images + config.epsilon)
            x = tf.clip_by_value(x, config.clip_min, config.clip_max)
    return tf.stop_gradient(x)


def adversarial_loss(model: keras.Model, adv_images, labels, label_smoothing: float):
    """Per-example cross-entropy of the adversarial images through the auxiliary BNs (their
    statistics updated), to add to the clean per-example loss under the training tape."""
    with auxiliary_batch_norms(model):
        return _cross_entropy(model, adv_images, labels, label_smoothing)
