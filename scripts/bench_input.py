#!/usr/bin/env python
"""Input-pipeline throughput: our tf.data pipelines vs a PIL/NumPy reference, same run.

Generates ImageNet-like JPEG TFRecords (default 500x375, smooth content plus noise, quality 90,
about 50-60 KB per image: ImageNet's average is ~110 KB at ~400x350) in a temporary directory,
then measures images/s of
  - decode only: TFRecord -> parse -> full `decode_jpeg` (the upper bound of any pipeline),
  - the train and eval transforms alone (read, parse, transform, batch: no shuffle, checks or
    counting): the floor set by the TF ops themselves,
  - our train pipeline (random-resized crop decoding only the window, flip, resize), without
    and with RandAugment, and our eval pipeline (center crop, resize),
  - a PIL/NumPy reference doing the same transforms in a process pool with as many workers as
    CPU cores (like a PyTorch DataLoader), delivering the same float32 batches.
Every measurement is repeated (interleaved) and the median reported; ratios are to the reference
and to decode-only in the same run. Images per CPU-second (all threads and processes) are
reported too: on shared cores they are steadier than wall-clock rates. Keep it short on shared machines (the defaults take ~1-2 min on
2 cores).

Example:
  python scripts/bench_input.py --num_images 256 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger("bench_input")

RAUG_LAYERS, RAUG_MAGNITUDE = 2, 9.0
DECODE_ONLY = "decode only (upper bound)"


def make_jpeg(rng: np.random.RandomState, height: int, width: int) -> bytes:
    """A photo-like JPEG: upsampled low-frequency color field plus mild noise."""
    from PIL import Image

    coarse = rng.uniform(0, 255, (height // 25 + 1, width // 25 + 1, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    image = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_records(data_dir: str, num_images: int, height: int, width: int, num_files: int = 8):
    """Write `validation-*` and `train-*` shards (same images) plus metadata."""
    import tensorflow as tf

    from dataloader import tfrecord_format

    rng = np.random.RandomState(0)
    images = [make_jpeg(rng, height, width) for _ in range(num_images)]
    for split in ("train", "validation"):
        for i in range(num_files):
            name = tfrecord_format.shard_name(split, i, num_files)
            with tf.io.TFRecordWriter(os.path.join(data_dir, name)) as writer:
                for j in range(i, num_images, num_files):
                    writer.write(tfrecord_format.make_example(images[j], j % 10 + 1, height, width))
    tfrecord_format.write_metadata(data_dir, 10, num_images, num_images, None)
    return images


# ---- PIL/NumPy reference (runs in worker processes, never touches TF) ---------------------


def _pil_random_resized_crop(image, size, rng, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    from PIL import Image

    width, height = image.size
    for _ in range(10):
        target = rng.uniform(*area) * width * height
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.randint(0, width - w + 1), rng.randint(0, height - h + 1)
            break
    else:
        side = int(min(width, height) * size / (size + 32))
        x, y, w, h = (width - side) // 2, (height - side) // 2, side, side
    image = image.crop((x, y, x + w, y + h))
    if rng.rand() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image.resize((size, size), Image.BILINEAR)


def _pil_center_crop(image, size):
    from PIL import Image

    width, height = image.size
    side = int(min(width, height) * size / (size + 32))
    x, y = (width - side) // 2, (height - side) // 2
    return image.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)


def _pil_randaugment(image, rng, num_layers=RAUG_LAYERS, magnitude=RAUG_MAGNITUDE):
    """The same op set and level mappings as dataloader.augment, in PIL."""
    from PIL import Image, ImageEnhance, ImageOps

    level = magnitude / 10.0
    fill = (128, 128, 128)

    def sign(v):
        return -v if rng.rand() < 0.5 else v

    def affine(img, matrix):
        return img.transform(img.size, Image.AFFINE, matrix, fillcolor=fill)

    def cutout(img):
        img = img.copy()
        pad = int(level * 40 / 224 * min(img.size))
        cx, cy = rng.randint(img.size[0]), rng.randint(img.size[1])
        img.paste(fill, (max(cx - pad, 0), max(cy - pad, 0), cx + pad, cy + pad))
        return img

    def solarize_add(img):
        arr = np.asarray(img, np.int32)
        return Image.fromarray(
            np.where(arr < 128, np.minimum(arr + int(level * 110), 255), arr).astype(np.uint8)
        )

    factor = level * 1.8 + 0.1
    ops = [
        ImageOps.autocontrast,
        ImageOps.equalize,
        ImageOps.invert,
        lambda img: img.rotate(sign(level * 30), fillcolor=fill),
        lambda img: ImageOps.posterize(img, max(8 - int(level * 4), 1)),
        lambda img: ImageOps.solarize(img, max(256 - int(level * 256), 0)),
        lambda img: ImageEnhance.Color(img).enhance(factor),
        lambda img: ImageEnhance.Contrast(img).enhance(factor),
        lambda img: ImageEnhance.Brightness(img).enhance(factor),
        lambda img: ImageEnhance.Sharpness(img).enhance(factor),
        lambda img: affine(img, (1, sign(level * 0.3), 0, 0, 1, 0)),
        lambda img: affine(img, (1, 0, 0, sign(level * 0.3), 1, 0)),
        lambda img: affine(img, (1, 0, sign(level * 100 / 224 * img.size[0]), 0, 1, 0)),
        lambda img: affine(img, (1, 0, 0, 0, 1, sign(level * 100 / 224 * img.size[1]))),
        cutout,
        solarize_add,
    ]
    for _ in range(num_layers):
        op = ops[rng.randint(len(ops))]
        if rng.rand() < rng.uniform(0.2, 0.8):
            image = op(image)
    return image


def pil_worker(task):
    """Decode and transform a chunk of JPEGs; returns (uint8 [n, S, S, 3], CPU seconds)."""
    from PIL import Image

    cpu = time.process_time()
    images, size, mode, seed = task
    rng = np.random.RandomState(seed)
    out = []
    for data in images:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        if mode == "eval":
            image = _pil_center_crop(image, size)
        else:
            image = _pil_random_resized_crop(image, size, rng)
            if mode == "train_raug":
                image = _pil_randaugment(image, rng)
        out.append(np.asarray(image, np.uint8))
    return np.stack(out), time.process_time() - cpu


def pil_rate(pool, images, size, mode, batch_size) -> tuple[float, float]:
    """(images/s, images per CPU-second) of the reference; the main process gets float32."""
    start, cpu = time.perf_counter(), time.process_time()
    tasks = [(images[i : i + batch_size], size, mode, i) for i in range(0, len(images), batch_size)]
    count, worker_cpu = 0, 0.0
    for batch, seconds in pool.imap(pil_worker, tasks):
        count += len(batch.astype(np.float32))
        worker_cpu += seconds
    wall = time.perf_counter() - start
    return count / wall, count / (worker_cpu + time.process_time() - cpu)


# ---- tf.data -------------------------------------------------------------------------------


def tf_rate(ds, num_images: int, batch_size: int) -> tuple[float, float]:
    """(images/s, images per CPU-second) over `num_images` after two warm-up batches.

    CPU time is this process's (all tf.data threads); it does not depend on how many of the
    shared cores other users took during the run, wall time does.
    """
    steps = num_images // batch_size
    iterator = iter(ds)
    for _ in range(2):
        next(iterator)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        next(iterator)
    images = steps * batch_size
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu)


def bare_pipeline(data_dir: str, batch_size: int, transform):
    """The fewest tf.data stages around `transform(encoded_jpeg, seed)`: read, map, batch.

    No shuffling, bad-record checks, skip counting or labels: what is left is the cost of the
    ops themselves, the floor for a full pipeline using them.
    """
    import tensorflow as tf

    from dataloader import tfrecord_format

    files = tf.io.gfile.glob(os.path.join(data_dir, "train-*"))

    def parse_and_transform(record, seed):
        parsed = tf.io.parse_single_example(
            record, {tfrecord_format.ENCODED: tf.io.FixedLenFeature([], tf.string)}
        )
        return transform(parsed[tfrecord_format.ENCODED], seed)

    ds = tf.data.Dataset.from_tensor_slices(files).repeat()
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=len(files),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=0).batch(2))
    ds = ds.map(parse_and_transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def bare_transforms(image_size: int) -> dict:
    """name -> (reference mode, transform) for `bare_pipeline`; the first is decode only."""
    import tensorflow as tf

    from dataloader import preprocessing

    def decode(encoded, seed):
        # Keep the decoded pixels out of the batch (sizes differ) but make them needed.
        return tf.shape(tf.io.decode_jpeg(encoded, channels=3))

    return {
        DECODE_ONLY: (None, decode),
        "train transform alone (floor)": (
            "train",
            lambda encoded, seed: preprocessing.preprocess_for_train(encoded, image_size, seed),
        ),
        "eval transform alone (floor)": (
            "eval",
            lambda encoded, seed: preprocessing.preprocess_for_eval(encoded, image_size),
        ),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--num_images", type=int, default=256, help="images per measurement")
    parser.add_argument("--image_height", type=int, default=375)
    parser.add_argument("--image_width", type=int, default=500)
    parser.add_argument("--image_size", type=int, default=224, help="output side")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="median over this many runs")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="PIL reference processes"
    )
    args = parser.parse_args(argv)
    for name in (
        "num_images",
        "image_height",
        "image_width",
        "image_size",
        "batch_size",
        "repeats",
        "workers",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.num_images < args.batch_size:
        parser.error("--num_images must be >= --batch_size")
    logging.basicConfig(level=logging.WARNING)

    from dataloader import DataConfig, build_dataset

    with tempfile.TemporaryDirectory() as data_dir:
        print(
            f"generating {args.num_images} JPEGs of {args.image_width}x{args.image_height}",
            file=sys.stderr,
        )
        images = write_records(data_dir, args.num_images, args.image_height, args.image_width)
        kb = np.mean([len(b) for b in images]) / 1024
        base = DataConfig(
            dataset="imagenet",
            data_dir=data_dir,
            image_size=args.image_size,
            batch_size=args.batch_size,
            shuffle_buffer=args.num_images,
            augmenter="none",
        )
        raug = DataConfig(
            **{
                **base.__dict__,
                "augmenter": "randaugment",
                "raug_num_layers": RAUG_LAYERS,
                "raug_magnitude": RAUG_MAGNITUDE,
            }
        )
        ours = {
            "train": lambda: build_dataset(base, "train"),
            "train + RandAugment": lambda: build_dataset(raug, "train"),
            "eval": lambda: build_dataset(base, "validation", repeat=True),
        }
        reference_mode = {"train": "train", "train + RandAugment": "train_raug", "eval": "eval"}
        bare = bare_transforms(args.image_size)
        bare_rates = {name: [] for name in bare}
        rates = {name: ([], []) for name in ours}
        # fork: the reference workers only run PIL/NumPy, never TF.
        with multiprocessing.get_context("fork").Pool(args.workers) as pool:
            pil_rate(
                pool,
                images[: args.batch_size * args.workers],
                args.image_size,
                "train",
                args.batch_size,
            )  # start the workers
            for r in range(args.repeats):
                print(f"run {r + 1}/{args.repeats}", file=sys.stderr)
                for name, (_, transform) in bare.items():
                    ds = bare_pipeline(data_dir, args.batch_size, transform)
                    bare_rates[name].append(tf_rate(ds, args.num_images, args.batch_size))
                for name, build in ours.items():
                    rates[name][0].append(tf_rate(build(), args.num_images, args.batch_size))
                    rates[name][1].append(
                        pil_rate(
                            pool, images, args.image_size, reference_mode[name], args.batch_size
                        )
                    )

    def median(values, i):
        return statistics.median(v[i] for v in values)

    decode, decode_cpu = median(bare_rates[DECODE_ONLY], 0), median(bare_rates[DECODE_ONLY], 1)
    print(
        f"\n{args.num_images} JPEGs {args.image_width}x{args.image_height} (mean {kb:.0f} KB) "
        f"-> {args.image_size}px, batch {args.batch_size}, {os.cpu_count()} CPU cores shared "
        f"with other users, median of {args.repeats} runs; PIL reference with {args.workers} "
        "processes\n"
    )
    print(
        "| pipeline | tf.data img/s | PIL img/s | tf.data / PIL | tf.data / decode-only "
        "| tf.data img/CPU-s | PIL img/CPU-s | tf.data / PIL (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {DECODE_ONLY} | {decode:.0f} | | | 1.00 | {decode_cpu:.0f} | | |")
    rows = [(name, bare_rates[name], rates[mode][1]) for name, (mode, _) in bare.items() if mode]
    rows += [(name, tf_values, pil_values) for name, (tf_values, pil_values) in rates.items()]
    for name, tf_values, pil_values in rows:
        t, p = median(tf_values, 0), median(pil_values, 0)
        tc, pc = median(tf_values, 1), median(pil_values, 1)
        print(
            f"| {name} | {t:.0f} | {p:.0f} | {t / p:.2f} | {t / decode:.2f} "
            f"| {tc:.0f} | {pc:.0f} | {tc / pc:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
