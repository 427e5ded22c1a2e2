#!/usr/bin/env python
"""What checkpoints and a mid-epoch resume cost: checkpoint size and write time, skipped input.

A seeded run resumed at step S of an epoch rebuilds the epoch's pipeline from its seed and skips
its first S batches (runtime/train_input.py), so it reads what the uninterrupted run read. A
skipped batch is read, decoded and augmented like any other. On ImageNet-like JPEG TFRecords
(scripts/bench_input.py's generator) this prints:
- the seconds until the first batch after skipping 0 and S batches, and so the cost of one
  skipped batch, next to the pipeline's time per batch;
- whether the alternative, a checkpoint of the iterator (tf.train.Checkpoint(iterator=...)),
  can be written for the same pipeline.
With `--cfg` (repeatable) it also writes one training checkpoint of each model (1000 classes,
RMSprop, EMA: runtime.checkpoint.TrainingCheckpoint, as training does) to a temporary folder
on this machine and prints its size and write time: the cost of `--save_checkpoint_minutes`.

Example:
  python scripts/bench_resume.py --num_images 1000 --skip 30
  python scripts/bench_resume.py --skip 1 --num_images 64 --cfg config/efficientnet_v2/s_cfg.py
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.bench_input import RAUG_LAYERS, RAUG_MAGNITUDE, tf_rate, write_records  # noqa: E402


def first_batch_seconds(build, skip: int) -> float:
    """Seconds from building the pipeline to its first batch after skipping `skip` batches."""
    start = time.perf_counter()
    dataset = build()
    next(iter(dataset.skip(skip) if skip else dataset))
    return time.perf_counter() - start


def iterator_checkpoint(build, directory: str) -> str:
    """The outcome of checkpointing the pipeline's iterator after one batch: size or error."""
    import tensorflow as tf

    iterator = iter(build())
    next(iterator)
    try:
        tf.train.Checkpoint(iterator=iterator).save(os.path.join(directory, "iterator"))
    except (tf.errors.OpError, ValueError) as err:
        reason = str(err).strip().splitlines()[-1].split("}}")[-1].split("[Op:")[0].strip()
        return f"fails: {type(err).__name__}: {reason}"
    size = sum(e.stat().st_size for e in os.scandir(directory) if e.name.startswith("iterator"))
    return f"{size / 1e6:.1f} MB"


def checkpoint_cost(cfg_path: str, directory: str) -> str:
    """Size and write time of one training checkpoint of `cfg_path`'s model (1000 classes)."""
    from config.loader import load_config
    from model import build_model
    from runtime.checkpoint import TrainingCheckpoint
    from utils.ema import ExponentialMovingAverage
    from utils.optimizers import OptimizerConfig, build_optimizer

    config = load_config(cfg_path)
    model = build_model(config, num_classes=1000)
    optimizer = build_optimizer(OptimizerConfig(), 0.01, model.trainable_variables)
    optimizer.build(model.trainable_variables)
    ema = ExponentialMovingAverage(model, 0.9999)
    checkpoint = TrainingCheckpoint(directory, model, optimizer, ema)
    start = time.perf_counter()
    checkpoint.save(1)
    seconds = time.perf_counter() - start
    folder = os.path.join(directory, "checkpoints")
    size = sum(e.stat().st_size for e in os.scandir(folder) if e.name.startswith("ckpt-"))
    return (
        f"{config.get('name', cfg_path)}: {model.count_params():,} parameters, checkpoint "
        f"{size / 1e6:.0f} MB written in {seconds:.1f} s"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--num_images", type=int, default=1000, help="JPEGs to generate")
    parser.add_argument("--skip", type=int, default=30, help="batches to skip")
    parser.add_argument("--image_size", type=int, default=224, help="output side")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="median over this many runs")
    parser.add_argument("--cfg", action="append", default=[], help="also a checkpoint of it")
    args = parser.parse_args(argv)
    for name in ("num_images", "skip", "image_size", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    logging.basicConfig(level=logging.WARNING)

    from dataloader import DataConfig, build_dataset

    with tempfile.TemporaryDirectory() as data_dir:
        print(f"generating {args.num_images} JPEGs of 500x375", file=sys.stderr)
        write_records(data_dir, args.num_images, 375, 500)
        cfg = DataConfig(
            dataset="imagenet",
            data_dir=data_dir,
            image_size=args.image_size,
            batch_size=args.batch_size,
            augmenter="randaugment",
            raug_num_layers=RAUG_LAYERS,
            raug_magnitude=RAUG_MAGNITUDE,
            seed=1,
        )

        def build():
            return build_dataset(cfg, "train", repeat=True)

        runs = []
        for r in range(args.repeats):
            print(f"run {r + 1}/{args.repeats}", file=sys.stderr)
            runs.append(
                (
                    first_batch_seconds(build, 0),
                    first_batch_seconds(build, args.skip),
                    tf_rate(build(), args.skip * args.batch_size, args.batch_size)[0],
                )
            )
        checkpoint = iterator_checkpoint(build, os.path.join(data_dir, "ckpt"))
    plain, skipped = (statistics.median(r[i] for r in runs) for i in (0, 1))
    rate = statistics.median(r[2] for r in runs)
    per_batch = (skipped - plain) / args.skip
    print(
        f"\ntrain pipeline, {args.image_size}px + RandAugment, batch {args.batch_size}, shuffle "
        f"buffer {cfg.shuffle_buffer} (of {args.num_images} images), {os.cpu_count()} CPU "
        f"cores, median of {args.repeats} runs\n"
    )
    print(f"first batch, no skip:            {plain:.2f} s")
    print(f"first batch after {args.skip} skipped:  {skipped:.2f} s")
    print(f"one skipped batch:               {per_batch * 1000:.0f} ms")
    print(
        f"one batch of the running pipeline: {args.batch_size / rate * 1000:.0f} ms "
        f"({rate:.0f} img/s)"
    )
    print(f"iterator checkpoint:             {checkpoint}")
    for cfg_path in args.cfg:
        with tempfile.TemporaryDirectory() as directory:
            print(checkpoint_cost(cfg_path, directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
