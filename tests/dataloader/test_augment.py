"""AutoAugment / RandAugment ops and MixUp / CutMix."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from dataloader import augment, mixing

SIZE = 24


def random_image(seed=0) -> tf.Tensor:
    rng = np.random.RandomState(seed)
    return tf.constant(rng.uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32))


@pytest.mark.parametrize("name", sorted(augment.OPS))
@pytest.mark.parametrize("level", [0.0, 10.0, 15.0])
def test_every_op_keeps_shape_dtype_and_range(name, level):
    out = augment.OPS[name](random_image(), level, tf.constant([1, 2]))
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255


def test_ops_do_what_their_names_say():
    image = random_image()
    seed = tf.constant([0, 0])
    np.testing.assert_allclose(augment.invert(image, 0, seed), 255 - image.numpy())
    # Enhancement level 5 -> factor 1.0: the identity.
    for op in (augment.color, augment.contrast, augment.brightness, augment.sharpness):
        np.testing.assert_allclose(op(image, 5.0, seed), image.numpy(), atol=1e-3)
    # Posterize at level 10 keeps 4 bits.
    values = np.unique(augment.posterize(image, 10.0, seed).numpy())
    assert np.all(values % 16 == 0)
    # Solarize at level 10 inverts everything (threshold 0).
    np.testing.assert_allclose(augment.solarize(image, 10.0, seed), 255 - image.numpy())
    # Equalize spreads a narrow histogram over 0..255.
    narrow = tf.constant(np.random.RandomState(1).randint(100, 110, (SIZE, SIZE, 3)), tf.float32)
    eq = augment.equalize(narrow, 0, seed).numpy()
    assert eq.min() < 20 and eq.max() > 220
    # Rotating by 0 degrees is the identity; a translation moves content and fills gray.
    np.testing.assert_allclose(augment.rotate(image, 0.0, seed), image.numpy())
    moved = augment.translate_x(image, 10.0, seed).numpy()
    assert (moved == augment.FILL_VALUE).all(axis=-1).any()


def test_randaugment_draws_ops_per_example():
    image = random_image()
    outs = [augment.randaugment(image, 2, 10.0, tf.constant([i, 5])).numpy() for i in range(12)]
    for out in outs:
        assert out.shape == (SIZE, SIZE, 3) and 0 <= out.min() and out.max() <= 255
    # Same input, different seeds: many different results (Keras' batched layer gives one).
    assert len({out.tobytes() for out in outs}) >= 6
    same = augment.randaugment(image, 2, 10.0, tf.constant([0, 5])).numpy()
    np.testing.assert_array_equal(outs[0], same)
    # Zero layers is the identity.
    np.testing.assert_array_equal(
        augment.randaugment(image, 0, 10.0, tf.constant([0, 5])), image.numpy()
    )


def test_autoaugment_policy_v0_is_well_formed_and_runs():
    assert len(augment.POLICY_V0) == 25
    for sub_policy in augment.POLICY_V0:
        for name, prob, level in sub_policy:
            assert name in augment.OPS and 0 <= prob <= 1 and 0 <= level <= 10
    outs = [augment.autoaugment(random_image(), tf.constant([i, 9])).numpy() for i in range(8)]
    assert len({out.tobytes() for out in outs}) >= 3
    for out in outs:
        assert 0 <= out.min() and out.max() <= 255


def batch(n=4):
    images = tf.stack([tf.fill([SIZE, SIZE, 3], float(10 * i)) for i in range(n)])
    labels = tf.one_hot(tf.range(n), 5)
    return images, labels


def test_mixup_is_a_convex_combination_with_the_reversed_batch():
    images, labels = batch()
    mixed, mixed_labels = mixing.mix_batch(images, labels, 0.4, 0.0, seed=3)
    lam = float(mixed_labels[0, 0])
    assert 0 <= lam <= 1
    np.testing.assert_allclose(mixed_labels[0, 3], 1 - lam, rtol=1e-5)
    np.testing.assert_allclose(mixed[0], lam * images[0] + (1 - lam) * images[3], rtol=1e-5)
    np.testing.assert_allclose(mixed_labels.numpy().sum(1), 1.0, rtol=1e-6)


def test_cutmix_label_weights_equal_pasted_area():
    images, labels = batch()
    for seed in range(5):
        mixed, mixed_labels = mixing.mix_batch(images, labels, 0.0, 1.0, seed=seed)
        pasted = float(tf.reduce_mean(tf.cast(mixed[0, :, :, 0] == images[3, 0, 0, 0], tf.float32)))
        np.testing.assert_allclose(mixed_labels[0, 3], pasted, atol=1e-6)
        np.testing.assert_allclose(mixed_labels[0, 0], 1 - pasted, atol=1e-6)


def test_mix_batch_inside_tf_function_and_noop_without_alphas():
    images, labels = batch()

    @tf.function
    def step(x, y):
        return mixing.mix_batch(x, y, 0.2, 1.0)

    x, y = step(images, labels)
    assert x.shape == images.shape and y.shape == labels.shape
    np.testing.assert_allclose(y.numpy().sum(1), 1.0, rtol=1e-6)
    same = mixing.mix_batch(images, labels, 0.0, 0.0)
    assert same[0] is images and same[1] is labels
    with pytest.raises(ValueError, match="alphas must be >= 0"):
        mixing.mix_batch(images, labels, -1.0, 0.0)


def test_equalize_and_autocontrast_match_pil():
    from PIL import Image, ImageOps

    rng = np.random.RandomState(3)
    # Uneven histograms per channel, one channel constant (PIL leaves it unchanged).
    array = np.stack(
        [
            rng.randint(40, 90, (SIZE, SIZE)),
            rng.binomial(255, 0.3, (SIZE, SIZE)),
            np.full((SIZE, SIZE), 77),
        ],
        axis=-1,
    ).astype(np.uint8)
    image = tf.constant(array, tf.float32)
    seed = tf.constant([0, 0])
    expected = np.asarray(ImageOps.equalize(Image.fromarray(array)))
    np.testing.assert_array_equal(augment.equalize(image, 0, seed).numpy(), expected)
    expected = np.asarray(ImageOps.autocontrast(Image.fromarray(array)), np.float32)
    np.testing.assert_allclose(augment.auto_contrast(image, 0, seed).numpy(), expected, atol=1)


@pytest.mark.parametrize("op, axis", [(augment.translate_x, 1), (augment.translate_y, 0)])
def test_translate_shifts_whole_pixels_and_fills_gray(op, axis):
    image = random_image()
    px = int(10.0 / augment.MAX_LEVEL * augment.TRANSLATE_FRACTION * SIZE)
    shifts = set()
    for i in range(8):
        out = op(image, 10.0, tf.constant([i, 0])).numpy()
        for shift in (px, -px):
            moved = np.roll(image.numpy(), shift, axis=axis)
            keep = [slice(None)] * 3
            keep[axis] = slice(shift, None) if shift > 0 else slice(None, shift)
            fill = [slice(None)] * 3
            fill[axis] = slice(None, shift) if shift > 0 else slice(shift, None)
            if np.array_equal(out[tuple(keep)], moved[tuple(keep)]):
                assert (out[tuple(fill)] == augment.FILL_VALUE).all()
                shifts.add(shift)
    assert shifts == {px, -px}  # both directions occur, nothing else


def test_solarize_add_and_cutout_values():
    image = tf.constant([[[10.0, 127.0, 128.0], [200.0, 0.0, 255.0]]])
    seed = tf.constant([0, 0])
    out = augment.solarize_add(image, 10.0, seed).numpy()  # adds 110 below 128
    np.testing.assert_allclose(out, [[[120.0, 237.0, 128.0], [200.0, 110.0, 255.0]]])
    out = augment.solarize(image, 5.0, seed).numpy()  # threshold 128
    np.testing.assert_allclose(out, [[[10.0, 127.0, 127.0], [55.0, 0.0, 0.0]]])
    cut = augment.cutout(random_image(), 10.0, tf.constant([4, 4])).numpy()
    gray = (cut == augment.FILL_VALUE).all(-1)
    assert 0 < gray.sum() <= (2 * int(augment.CUTOUT_FRACTION * SIZE)) ** 2


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY"])
@pytest.mark.parametrize("level", [3.0, 10.0, 15.0])
def test_geometric_ops_match_image_projective_transform(name, level, monkeypatch):
    # The gather-based warp must give ImageProjectiveTransformV3's NEAREST / CONSTANT result.
    transforms = []
    original = augment.projective_transform

    def capture(image, transform):
        transforms.append(transform)
        return original(image, transform)

    monkeypatch.setattr(augment, "projective_transform", capture)
    image = tf.constant(np.random.RandomState(3).uniform(0, 255, (21, 34, 3)), tf.float32)
    for i in range(4):
        out = augment.OPS[name](image, level, tf.constant([i, 9]))
        expected = tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None],
            transforms=tf.reshape(tf.cast(transforms[-1], tf.float32), [1, 8]),
            output_shape=[21, 34],
            fill_value=augment.FILL_VALUE,
            interpolation="NEAREST",
            fill_mode="CONSTANT",
        )[0]
        np.testing.assert_array_equal(out.numpy(), expected.numpy())
        assert (out.numpy() == augment.FILL_VALUE).all(axis=-1).any()  # corners filled


def test_grayscale_matches_tf_image():
    image = random_image(4)
    np.testing.assert_allclose(
        augment.grayscale(image), tf.image.rgb_to_grayscale(image), rtol=1e-5, atol=1e-3
    )


@pytest.mark.parametrize("level", [2.0, 7.0, 10.0])
def test_enhance_ops_and_posterize_match_pil(level):
    """The fused forms (3x3 pixel products, one filter) still compute PIL's operations."""
    from PIL import Image, ImageEnhance, ImageOps

    array = np.random.RandomState(4).randint(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    image, seed = tf.constant(array, tf.float32), tf.constant([0, 0])
    factor = level / augment.MAX_LEVEL * 1.8 + 0.1
    pil = Image.fromarray(array)
    for op, enhancer in (
        (augment.color, ImageEnhance.Color),
        (augment.brightness, ImageEnhance.Brightness),
        (augment.sharpness, ImageEnhance.Sharpness),
        (augment.contrast, ImageEnhance.Contrast),
    ):
        expected = np.asarray(enhancer(pil).enhance(factor), np.float32)
        # PIL rounds its intermediates and result to uint8 (measured max difference 1.33).
        np.testing.assert_allclose(op(image, level, seed).numpy(), expected, atol=1.5)
    bits = max(8 - int(level / augment.MAX_LEVEL * 4), 1)
    expected = np.asarray(ImageOps.posterize(pil, bits), np.float32)
    np.testing.assert_array_equal(augment.posterize(image, level, seed).numpy(), expected)


def test_randaugment_applies_each_layer_about_half_the_time():
    # One layer, probability drawn from U(0.2, 0.8): about half of the images stay untouched.
    image = random_image()
    run = tf.function(lambda seed: augment.randaugment(image, 1, 10.0, seed))
    unchanged = sum(
        bool(np.array_equal(run(tf.constant([i, 11])).numpy(), image.numpy())) for i in range(200)
    )
    assert 70 <= unchanged <= 130, unchanged


def test_nearest_source_rounds_half_away_and_masks_outside():
    coords = tf.constant([-0.5, -0.49, 0.5, 1.49, 3.49, 3.5])
    index, inside = augment.nearest_source(coords, 4)
    np.testing.assert_array_equal(inside.numpy(), [False, True, True, True, True, False])
    np.testing.assert_array_equal(index.numpy()[1:5], [0, 1, 1, 3])
