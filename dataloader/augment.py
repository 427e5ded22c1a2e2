"""AutoAugment (Cubuk et al., 2019; ImageNet policy v0) and RandAugment (Cubuk et al., 2020).

Per-example, pure TF, on float32 [H, W, 3] images in 0..255. Written here because Keras has no
AutoAugment, and `keras.layers.RandAugment` on a batch draws one set of op indices per call
(`layer_idxes` of shape (num_ops,) in Keras 3.15.1 rand_augment.py), so every image of the batch
gets the same ops, and it computes every op on the whole batch to select one. Here each image
draws its own ops, probabilities and signs from its own stateless seed.

Operations and level-to-argument mappings follow the EfficientNet reference
(tensorflow/tpu models/official/efficientnet/autoaugment.py, _MAX_LEVEL = 10), except:
- translate and cutout sizes are fractions of the image side (reference: 100 and 40 pixels at
  224 px, i.e. 0.45 and 0.18) so they scale with progressive resizing;
- posterize and solarize grow stronger with the level (the reference's posterize keeps
  int(level / 10 * 4) bits, which blacks out the image at low levels, and its solarize is a
  no-op at level 10).
Levels above 10 extrapolate (EfficientNetV2 schedules RandAugment magnitude up to 15); results
are clipped to 0..255.

Every op in `OPS` is `op(image, level, seed) -> image`: float32 [H, W, 3] in 0..255 in and out,
`level` a Python float on the 0..10 scale, `seed` an int [2] stateless seed used by the ops with
a random sign or position.
"""

from __future__ import annotations

import math

import tensorflow as tf

MAX_LEVEL = 10.0
# NOTE: full-image tf.where is avoided below: on CPU it costs ~0.5 ms per 224 px image, several
# times a multiply-add with a 0/1 mask (measured inside tf.data, TF 2.21).
FILL_VALUE = 128.0  # gray fill of geometric ops and cutout, as in the reference
TRANSLATE_FRACTION = 100.0 / 224.0
CUTOUT_FRACTION = 40.0 / 224.0


def _blend(degenerate, image, factor):
    """image + factor * (image - degenerate) toward/away from `degenerate`, clipped."""
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # ITU-R 601-2 luma, as tf.image.rgb_to_grayscale


def grayscale(image):
    # Same weights as tf.image.rgb_to_grayscale; channel slices are ~2x faster than its
    # tensordot on a single image (measured, TF 2.21 CPU).
    r, g, b = GRAY_WEIGHTS
    return image[..., 0:1] * r + image[..., 1:2] * g + image[..., 2:3] * b


def _per_pixel_linear(image, matrix, bias=0.0):
    """clip(pixel @ matrix + bias, 0, 255) for every RGB pixel.

    One [H*W, 3] x [3, 3] product: ~3x cheaper than the same arithmetic as elementwise ops on
    a 224 px image (measured inside tf.data, TF 2.21 CPU).
    """
    out = tf.matmul(tf.reshape(image, [-1, 3]), matrix) + bias
    return tf.reshape(tf.clip_by_value(out, 0.0, 255.0), tf.shape(image))


def auto_contrast(image, level, seed):
    # Per-channel full reductions are faster than one reduction over axes [0, 1].
    lo = tf.stack([tf.reduce_min(image[..., c]) for c in range(3)])
    hi = tf.stack([tf.reduce_max(image[..., c]) for c in range(3)])
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1e-3), 1.0)
    offset = tf.where(hi > lo, lo, 0.0)
    return _per_pixel_linear(image, tf.linalg.diag(scale), -offset * scale)


def equalize(image, level, seed):
    """PIL's ImageOps.equalize, all three channels at once (offset bins per channel)."""
    offsets = tf.constant([0, 256, 512])
    values = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.int32) + offsets
    # bincount: the same counts as unsorted_segment_sum of ones, faster on CPU.
    flat = tf.reshape(values, [-1])
    hist = tf.reshape(tf.math.bincount(flat, minlength=768, maxlength=768), [3, 256])
    # PIL: step = (pixels - count of the last non-empty bin) // 255; no change when step == 0.
    last_bin = 255 - tf.argmax(
        tf.reverse(tf.cast(hist > 0, tf.int32), [1]), axis=1, output_type=tf.int32
    )
    last = tf.gather(hist, last_bin, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last) // 255
    safe_step = tf.maximum(step, 1)[:, None]
    lut = (tf.cumsum(hist, axis=1) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], tf.int32), lut[:, :-1]], 1), 0, 255)
    identity = tf.tile(tf.range(256)[None], [3, 1])
    lut = tf.where((step > 0)[:, None], lut, identity)
    # Cast the 768-entry table, not the image.
    return tf.gather(tf.cast(tf.reshape(lut, [-1]), tf.float32), values)


def invert(image, level, seed):
    return 255.0 - image


def _signed(value, seed):
    negate = tf.random.stateless_uniform([], seed) < 0.5
    return tf.where(negate, -value, value)


def nearest_source(coords, size):
    """Integer source index and in-bounds mask for float source coordinates on one axis.

    ImageProjectiveTransformV3 rounds half away from zero and fills outside [0, size). A
    coordinate is inside exactly when -0.5 < coords < size - 0.5, and there it is > -0.5, so
    truncating coords + 0.5 toward zero is that rounding: 2 passes instead of 6.
    """
    inside = (coords > -0.5) & (coords < tf.cast(size, tf.float32) - 0.5)
    return tf.cast(coords + 0.5, tf.int32), inside


def projective_transform(image, transform):
    """Affine warp, nearest neighbour, gray outside: ImageProjectiveTransformV3's result.

    `transform` is [a0, a1, a2, b0, b1, b2, 0, 0]: output pixel (x, y) reads input pixel
    (round(a0 x + a1 y + a2), round(b0 x + b1 y + b2)), as in ImageProjectiveTransformV3 with
    NEAREST interpolation and CONSTANT fill. One gather of whole pixels from the image with a
    fill pixel appended is ~2x faster than that op on CPU (measured, TF 2.21, 224 px).
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    t = tf.unstack(tf.cast(tf.reshape(transform, [8]), tf.float32))
    x = tf.cast(tf.range(width), tf.float32)[None, :]
    y = tf.cast(tf.range(height), tf.float32)[:, None]
    in_x, inside_x = nearest_source(t[0] * x + (t[1] * y + t[2]), width)
    in_y, inside_y = nearest_source(t[3] * x + (t[4] * y + t[5]), height)
    index = tf.where(inside_x & inside_y, in_y * width + in_x, height * width)  # fill pixel
    pixels = tf.concat(
        [tf.reshape(image, [-1, 3]), tf.fill([1, 3], tf.cast(FILL_VALUE, image.dtype))], 0
    )
    return tf.gather(pixels, index)


def rotate(image, level, seed):
    radians = _signed(level / MAX_LEVEL * 30.0, seed) * math.pi / 180.0
    shape = tf.cast(tf.shape(image), tf.float32)
    h, w = shape[0] - 1, shape[1] - 1
    cos, sin = tf.cos(radians), tf.sin(radians)
    x_offset = (w - (cos * w - sin * h)) / 2.0
    y_offset = (h - (sin * w + cos * h)) / 2.0
    return projective_transform(
        image, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])
    )


def shear_x(image, level, seed):
    s = _signed(level / MAX_LEVEL * 0.3, seed)
    return projective_transform(image, tf.stack([1.0, s, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image, level, seed):
    s = _signed(level / MAX_LEVEL * 0.3, seed)
    return projective_transform(image, tf.stack([1.0, 0.0, 0.0, s, 1.0, 0.0, 0.0, 0.0]))


def _shift(image, level, seed, axis):
    """Translate by whole pixels along `axis` (slicing: ~10x cheaper than a transform)."""
    size = tf.shape(image)[axis]
    px = tf.cast(level / MAX_LEVEL * TRANSLATE_FRACTION * tf.cast(size, tf.float32), tf.int32)
    px = tf.clip_by_value(_signed(px, seed), -size, size)
    shape = tf.shape(image)
    fill = tf.fill(tf.tensor_scatter_nd_update(shape, [[axis]], [tf.abs(px)]), FILL_VALUE)
    begin = tf.tensor_scatter_nd_update(tf.zeros_like(shape), [[axis]], [tf.maximum(-px, 0)])
    kept = tf.slice(image, begin, tf.tensor_scatter_nd_update(shape, [[axis]], [size - tf.abs(px)]))
    parts = tf.cond(px >= 0, lambda: (fill, kept), lambda: (kept, fill))
    return tf.concat(parts, axis=axis)


def translate_x(image, level, seed):
    return _shift(image, level, seed, axis=1)


def translate_y(image, level, seed):
    return _shift(image, level, seed, axis=0)


def posterize(image, level, seed):
    """Keep the high `bits` bits of each rounded 0..255 value (float floor: no uint8 casts)."""
    bits = tf.clip_by_value(8 - tf.cast(level / MAX_LEVEL * 4.0, tf.int32), 1, 8)
    step = tf.cast(tf.bitwise.left_shift(1, 8 - bits), tf.float32)
    return tf.floor(tf.round(image) / step) * step


def solarize(image, level, seed):
    threshold = tf.maximum(256.0 - level / MAX_LEVEL * 256.0, 0.0)
    # |x - 255| = 255 - x for the pixels at or above the threshold.
    return tf.abs(image - 255.0 * tf.cast(image >= threshold, tf.float32))


def solarize_add(image, level, seed):
    addition = level / MAX_LEVEL * 110.0
    return tf.minimum(image + addition * tf.cast(image < 128.0, tf.float32), 255.0)


def _enhance_factor(level):
    return tf.maximum(level / MAX_LEVEL * 1.8 + 0.1, 0.0)


def color(image, level, seed):
    # blend(gray, image, f) = f * pixel + (1 - f) * gray(pixel): linear in the pixel.
    factor = _enhance_factor(level)
    weights = tf.tile(tf.constant(GRAY_WEIGHTS)[:, None], [1, 3])
    return _per_pixel_linear(image, factor * tf.eye(3) + (1.0 - factor) * weights)


def contrast(image, level, seed):
    mean = tf.reduce_mean(grayscale(image))
    return _blend(mean, image, _enhance_factor(level))


def brightness(image, level, seed):
    # blend(0, image, f) = f * image with f >= 0 and image >= 0: only the upper clip applies.
    return tf.minimum(image * _enhance_factor(level), 255.0)


def sharpness(image, level, seed):
    """Blend with PIL's SMOOTH-filtered image; the one-pixel border is left unfiltered.

    blend(smooth, image, f) = (1 - f) * smooth + f * image is itself a 3x3 filter: one
    depthwise convolution of the interior, then the original border around it.
    """
    factor = _enhance_factor(level)
    smooth = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    center = tf.constant([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    kernel = tf.tile(((1.0 - factor) * smooth + factor * center)[:, :, None, None], [1, 1, 3, 1])
    inner = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    inner = tf.clip_by_value(inner, 0.0, 255.0)
    middle = tf.concat([image[1:-1, :1], inner, image[1:-1, -1:]], 1)
    return tf.concat([image[:1], middle, image[-1:]], 0)


def cutout(image, level, seed):
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    pad = tf.cast(
        level / MAX_LEVEL * CUTOUT_FRACTION * tf.cast(tf.minimum(height, width), tf.float32),
        tf.int32,
    )
    center = tf.random.stateless_uniform([2], seed)
    cy = tf.cast(center[0] * tf.cast(height, tf.float32), tf.int32)
    cx = tf.cast(center[1] * tf.cast(width, tf.float32), tf.int32)
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    box = (rows >= cy - pad) & (rows < cy + pad) & (cols >= cx - pad) & (cols < cx + pad)
    box = tf.cast(box, tf.float32)[..., None]
    return image + box * (FILL_VALUE - image)


OPS = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Cutout": cutout,
    "SolarizeAdd": solarize_add,
}
RANDAUGMENT_OPS = tuple(OPS)

# ImageNet policy v0 of the EfficientNet reference: (op, probability, level) pairs.
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)


def _apply_with_prob(image, op_name, prob, level, seed):
    gate_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    apply = tf.random.stateless_uniform([], gate_seed) < prob
    out = tf.cond(apply, lambda: OPS[op_name](image, float(level), op_seed), lambda: image)
    out.set_shape(image.shape)
    return out


def randaugment(image: tf.Tensor, num_layers: int, magnitude: float, seed: tf.Tensor) -> tf.Tensor:
    """RandAugment: `num_layers` ops drawn uniformly, each applied with probability in [0.2, 0.8].

    The per-op probability draw follows the EfficientNet reference implementation. A skipped
    op selects an identity branch of the same switch (no nested cond: fewer graph nodes to run
    per image).

    Args:
      image: float32 [H, W, 3] in 0..255.
      num_layers: ops applied in sequence.
      magnitude: level on the 0..10 scale (larger extrapolates).
      seed: int [2] stateless seed for this image.

    Returns:
      float32 [H, W, 3] in 0..255.
    """
    num_ops = len(RANDAUGMENT_OPS)
    seeds = tf.random.experimental.stateless_split(seed, max(num_layers, 1) * 2)
    for layer in range(num_layers):
        draw_seed, op_seed = seeds[2 * layer], seeds[2 * layer + 1]
        pick, prob, gate = tf.unstack(tf.random.stateless_uniform([3], draw_seed))
        index = tf.minimum(tf.cast(pick * num_ops, tf.int32), num_ops - 1)
        index = tf.where(gate < 0.2 + 0.6 * prob, index, num_ops)
        branches = [
            lambda name=name, image=image, op_seed=op_seed: OPS[name](image, magnitude, op_seed)
            for name in RANDAUGMENT_OPS
        ]
        branches.append(lambda image=image: tf.identity(image))
        out = tf.switch_case(index, branches)
        out.set_shape(image.shape)
        image = out
    return image


def autoaugment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """AutoAugment ImageNet policy v0: one of 25 sub-policies, each two ops with fixed probs.

    Args:
      image: float32 [H, W, 3] in 0..255.
      seed: int [2] stateless seed for this image.

    Returns:
      float32 [H, W, 3] in 0..255.
    """
    select_seed, first_seed, second_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3)
    )
    index = tf.random.stateless_uniform([], select_seed, maxval=len(POLICY_V0), dtype=tf.int32)

    def sub_policy(ops):
        (op1, p1, l1), (op2, p2, l2) = ops
        out = _apply_with_prob(image, op1, p1, l1, first_seed)
        return _apply_with_prob(out, op2, p2, l2, second_seed)

    return tf.switch_case(index, [lambda ops=ops: sub_policy(ops) for ops in POLICY_V0])
