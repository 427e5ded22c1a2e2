"""Per-example decode, crop and resize for training and evaluation (pure TF, graph-safe).

Follows the EfficientNet reference input pipelines (Tan & Le, 2019; Inception-style random
resized crop, Szegedy et al., 2015): training decodes only the sampled crop window of a JPEG
(`tf.image.decode_and_crop_jpeg`). Evaluation either takes a square center crop of
`image_size / (image_size + 32)` of the shorter side ("crop", automl's v1 legacy pipeline and
its v2 pipeline below 320 px) or resizes the whole image to the square ("squash", automl v2 at
>= 320 px). The crop area, `min_object_covered`, eval mode and resize method are each model
family's recipe (config/efficientnet_v1, config/efficientnet_v2; docs/parity.md). Every
function returns float32 in 0..255: normalization happens once, inside the model.
"""

from __future__ import annotations

import tensorflow as tf

# Magic bytes of the formats `tf.io.decode_image` understands; anything else is not an image.
_JPEG_MAGIC = b"\xff\xd8\xff"
_OTHER_IMAGE_MAGICS = (b"\x89PNG", b"GIF8", b"BM")


def is_jpeg(image_bytes: tf.Tensor) -> tf.Tensor:
    """Whether encoded bytes start with the JPEG SOI marker.

    Args:
      image_bytes: scalar string tensor.

    Returns:
      Scalar bool tensor.
    """
    return tf.equal(tf.strings.substr(image_bytes, 0, 3), _JPEG_MAGIC)


def is_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Whether encoded bytes start like a JPEG, PNG, GIF or BMP file.

    Args:
      image_bytes: scalar string tensor.

    Returns:
      Scalar bool tensor.
    """
    head = tf.strings.substr(image_bytes, 0, 4)
    other = [tf.equal(tf.strings.substr(head, 0, len(m)), m) for m in _OTHER_IMAGE_MAGICS]
    return tf.reduce_any(tf.stack([is_jpeg(image_bytes), *other]))


def _decode_any(image_bytes: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _center_window(height, width, crop_fraction: float):
    """Largest centered square of `crop_fraction` of the shorter side (reference's padded crop)."""
    side = tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


EVAL_CROPS = ("crop", "squash")
# Random-crop sampling attempts before the center-crop fallback (automl v1; docs/parity.md).
CROP_MAX_ATTEMPTS = 10


def random_window(
    height, width, seed, area_min, aspect_range, crop_fraction, min_object_covered=0.1
):
    """Inception-style random crop window; the center crop when sampling fails.

    NOTE: as in automl's v1 pipeline, when 10 attempts find no window inside the area and
    aspect ranges the sampler returns the whole image and we fall back to the eval center crop
    (automl v2 and NVIDIA make 100 attempts and keep the whole image; docs/parity.md).
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([height, width, 3]),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=min_object_covered,
        aspect_ratio_range=aspect_range,
        area_range=(area_min, 1.0),
        max_attempts=CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    failed = tf.logical_and(tf.equal(size[0], height), tf.equal(size[1], width))
    center = _center_window(height, width, crop_fraction)
    return tuple(
        tf.where(failed, c, r)
        for c, r in zip(center, (begin[0], begin[1], size[0], size[1]), strict=True)
    )


def _decode_window(image: tf.Tensor, window_fn) -> tf.Tensor:
    """Decode (JPEG: only the window) and crop; `window_fn(height, width)` picks the window."""
    if image.dtype != tf.string:  # already decoded (digits, TFDS without SkipDecoding)
        shape = tf.shape(image)
        y, x, h, w = window_fn(shape[0], shape[1])
        return tf.image.crop_to_bounding_box(image, y, x, h, w)

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image)
        y, x, h, w = window_fn(shape[0], shape[1])
        return tf.image.decode_and_crop_jpeg(image, tf.stack([y, x, h, w]), channels=3)

    def other():
        decoded = _decode_any(image)
        shape = tf.shape(decoded)
        y, x, h, w = window_fn(shape[0], shape[1])
        return tf.image.crop_to_bounding_box(decoded, y, x, h, w)

    cropped = tf.cond(is_jpeg(image), jpeg, other)
    cropped.set_shape([None, None, 3])
    return cropped


# TF's bicubic kernels look the fractional sample offset up in a table of this many entries.
_TF_BICUBIC_TABLE = 1024
_TF1_BICUBIC_A = -0.75
_TF2_BICUBIC_A = -0.5


def _bicubic_matrix(in_size: tf.Tensor, out_size: int, half_pixel: bool) -> tf.Tensor:
    """[out_size, in_size] float32 matrix of TF's ResizeBicubic along one axis.

    TF1 `resize_bicubic` (`half_pixel=False`): output pixel o samples the input at
    o * in / out with Keys' cubic a = -0.75 over the four neighbours, border indices clamped.
    TF2 `tf.image.resize(method="bicubic")` (`half_pixel=True`): samples at
    (o + 0.5) * in / out - 0.5 with a = -0.5; neighbours outside the image get weight 0 and the
    others are renormalized to sum 1. Both round the fractional offset to TF's 1024-entry
    coefficient table (tensorflow/core/kernels/image/resize_bicubic_op.cc).
    """
    in_size = tf.cast(in_size, tf.int32)
    scale = tf.cast(in_size, tf.float32) / out_size
    x = tf.range(out_size, dtype=tf.float32)
    x = (x + 0.5) * scale - 0.5 if half_pixel else x * scale
    base = tf.floor(x)
    frac = tf.round((x - base) * _TF_BICUBIC_TABLE) / _TF_BICUBIC_TABLE
    a = _TF2_BICUBIC_A if half_pixel else _TF1_BICUBIC_A
    matrix = tf.zeros([out_size, in_size], tf.float32)
    for k in (-1, 0, 1, 2):
        t = tf.abs(frac - k)
        near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
        far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
        weight = tf.where(t <= 1.0, near, tf.where(t < 2.0, far, tf.zeros_like(t)))
        sample = tf.cast(base, tf.int32) + k
        index = tf.clip_by_value(sample, 0, in_size - 1)
        if half_pixel:
            weight = tf.where(index == sample, weight, tf.zeros_like(weight))
        matrix += tf.one_hot(index, in_size) * weight[:, None]
    if half_pixel:
        matrix /= tf.reduce_sum(matrix, axis=1, keepdims=True)
    return matrix


def _resize_bicubic_portable(images: tf.Tensor, image_size: int, half_pixel: bool) -> tf.Tensor:
    """TF's ResizeBicubic of a [B, H, W, C] batch as two matrix products (`_bicubic_matrix`).

    NOTE: hand-written because exported graphs cannot keep TF's op: tf2onnx turns
    ResizeBicubic(half_pixel_centers=False) into ONNX Resize with a = -0.5 (TF1 uses -0.75) and
    LiteRT has no bicubic builtin (TF2's op fails there as an unsupported Flex op). Matrix
    products, one_hot and elementwise ops convert exactly.
    """
    shape = tf.shape(images)
    rows = _bicubic_matrix(shape[1], image_size, half_pixel)  # [S, H]
    cols = _bicubic_matrix(shape[2], image_size, half_pixel)  # [S, W]
    channels_first = tf.transpose(tf.cast(images, tf.float32), [0, 3, 1, 2])  # [B, C, H, W]
    out = tf.matmul(tf.matmul(rows[None, None], channels_first), cols, transpose_b=True)
    return tf.transpose(out, [0, 2, 3, 1])


def resize(
    image: tf.Tensor, image_size: int, method: str = "bilinear", portable: bool = False
) -> tf.Tensor:
    """Resize to a square float32 image in 0..255 (bicubic overshoot is clipped).

    Args:
      image: [H, W, 3] or [B, H, W, 3] image of any real dtype in 0..255.
      image_size: output side in pixels.
      method: "bilinear", "bicubic" (TF2 `tf.image.resize`: half-pixel centers, Keys a = -0.5)
        or "bicubic_tf1" (TF1 `tf.image.resize_bicubic`: no half-pixel centers, a = -0.75).
      portable: bicubic of a batch as matrix products that ONNX and LiteRT convert exactly
        (exported graphs); the TF op otherwise (faster in the input pipeline).

    Returns:
      float32 [image_size, image_size, 3] (or batched).
    """
    size = [image_size, image_size]
    if method in ("bicubic", "bicubic_tf1") and portable:
        out = _resize_bicubic_portable(image, image_size, half_pixel=method == "bicubic")
    elif method == "bicubic_tf1":
        # NOTE: the resize of Google's EfficientNet v1/Lite pipelines (tensorflow/tpu
        # efficientnet/preprocessing.py, automl preprocess_legacy.py), behind the published
        # accuracies and the keras.applications and Lite weights. The op TF1's
        # tf.image.resize_bicubic ran; called directly, as tf.compat.v1's wrapper logs a
        # deprecation notice each time a pipeline is traced.
        batched = image if image.shape.rank == 4 else image[None]
        out = tf.raw_ops.ResizeBicubic(
            images=batched, size=size, align_corners=False, half_pixel_centers=False
        )
        out = out if image.shape.rank == 4 else out[0]
    else:
        # uint8 in, float32 out: resizing before casting reads 4x fewer bytes.
        out = tf.image.resize(image, size, method=method)
    if method == "bilinear":  # convex combinations of inputs: already within 0..255
        return tf.cast(out, tf.float32)
    return tf.clip_by_value(tf.cast(out, tf.float32), 0.0, 255.0)


def preprocess_for_train(
    image: tf.Tensor,
    image_size: int,
    seed: tf.Tensor,
    area_min: float = 0.08,
    aspect_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    resize_method: str = "bilinear",
    min_object_covered: float = 0.1,
) -> tf.Tensor:
    """Random-resized crop (decoding only the crop window of a JPEG) and random flip.

    Args:
      image: scalar string of encoded bytes (JPEG, PNG, GIF, BMP) or a decoded uint8 image.
      image_size: output side in pixels.
      seed: int32/int64 [2] stateless seed (one per example).
      area_min: smallest crop area as a fraction of the image.
      aspect_range: (min, max) crop aspect ratio, width / height.
      resize_method: "bilinear", "bicubic" or "bicubic_tf1" (see `resize`).
      min_object_covered: `tf.image.sample_distorted_bounding_box`'s minimum fraction of the
        whole-image box the crop must cover (0.1 in automl v1 and NVIDIA, 0 in automl v2).

    Returns:
      float32 [image_size, image_size, 3] in 0..255.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    fallback = image_size / (image_size + 32)
    cropped = _decode_window(
        image,
        lambda h, w: random_window(
            h, w, crop_seed, area_min, aspect_range, fallback, min_object_covered
        ),
    )
    flipped = tf.image.stateless_random_flip_left_right(cropped, flip_seed)
    return resize(flipped, image_size, resize_method)


def preprocess_for_eval(
    image_bytes: tf.Tensor,
    image_size: int,
    crop_fraction: float | None = None,
    resize_method: str = "bilinear",
    eval_crop: str = "crop",
) -> tf.Tensor:
    """The evaluation transform; predict and export use it too.

    Args:
      image_bytes: scalar string of encoded bytes (JPEG, PNG, GIF, BMP) or a decoded uint8
        image.
      image_size: output side in pixels.
      crop_fraction: "crop" mode: fraction of the shorter side kept; None means
        image_size / (image_size + 32). Ignored by "squash".
      resize_method: "bilinear", "bicubic" or "bicubic_tf1" (see `resize`).
      eval_crop: "crop" (square center crop, then resize) or "squash" (resize the whole image
        to the square, aspect ratio not kept, as automl v2 evaluates at >= 320 px).

    Returns:
      float32 [image_size, image_size, 3] in 0..255.
    """
    if eval_crop not in EVAL_CROPS:
        raise ValueError(
            f"unknown eval_crop {eval_crop!r}; expected one of {', '.join(EVAL_CROPS)}"
        )
    image_bytes = tf.convert_to_tensor(image_bytes)
    if eval_crop == "squash":
        image = _decode_any(image_bytes) if image_bytes.dtype == tf.string else image_bytes
        return resize(image, image_size, resize_method)
    if crop_fraction is None:
        crop_fraction = image_size / (image_size + 32)
    cropped = _decode_window(image_bytes, lambda h, w: _center_window(h, w, crop_fraction))
    return resize(cropped, image_size, resize_method)
