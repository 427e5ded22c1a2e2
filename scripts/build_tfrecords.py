#!/usr/bin/env python
"""Convert an image tree into sharded TFRecords in the standard ImageNet layout.

Input layouts (INPUT_DIR):
  class-per-folder:  train/<class>/*, val/<class>/* (or validation/<class>/*)
  raw ImageNet:      train/<synset>/*.JPEG, validation/*.JPEG (flat) with --val_labels_file
                     (one synset per line for the sorted validation file names, e.g.
                     imagenet_2012_validation_synset_labels.txt)

Output (OUTPUT_DIR): train-00000-of-NNNNN ..., validation-00000-of-NNNNN ..., with features
image/encoded (RGB JPEG), image/class/label (1-based: class i of the sorted class folders, or of
--synsets_file, is stored as i + 1), image/class/text, image/class/synset, plus
dataset_info.json (class names, split sizes, label offset) and skipped_files.txt.

Every image is decoded before it is written: PNG, CMYK or other non-RGB files are re-encoded as
RGB JPEG; empty, truncated or non-image files are skipped and listed. Shards are written to
`<name>.tmp` and renamed when complete; a rerun skips finished shards, so an interrupted run
resumes and no finished shard is ever overwritten.

Example:
  python scripts/build_tfrecords.py --input_dir ~/flowers --output_dir ~/flowers_tfrecords \
      --train_shards 16 --validation_shards 4 --num_workers 8
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import random
import sys

# Run as `python scripts/build_tfrecords.py` from anywhere: make the repo importable. The
# `dataloader` package (and with it TensorFlow) is imported only where shards are written, so
# flag and path errors come back in a fraction of a second.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import BAD_INPUT, UserError  # noqa: E402 (TF-free)

logger = logging.getLogger("build_tfrecords")

MANIFEST_FILE = "build_manifest.json"
SKIPPED_FILE = "skipped_files.txt"
JPEG_QUALITY = 95
_VAL_DIRS = ("val", "validation")


class ConvertError(UserError, ValueError):
    """Unusable input or output directory; the message is one line."""

    exit_code = BAD_INPUT


class BadImage(ValueError):
    """An input file that is not a usable image; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One input image and its class."""

    path: str
    label: int  # 0-based; stored as label + 1
    synset: str
    text: str


def _list_classes(train_dir: str, synsets_file: str | None) -> list[str]:
    if synsets_file:
        with open(synsets_file) as f:
            synsets = [line.strip() for line in f if line.strip()]
        if not synsets:
            raise ConvertError(f"--synsets_file {synsets_file} lists no classes")
        return synsets
    classes = sorted(
        e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith(".")
    )
    if not classes:
        raise ConvertError(f"no class folders match {os.path.join(train_dir, '*/')}")
    return classes


def _read_human_names(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    names = {}
    with open(path) as f:
        for line in f:
            synset, _, text = line.rstrip("\n").partition("\t")
            if synset:
                names[synset] = text
    return names


def _files(folder: str) -> list[str]:
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


def collect(args) -> tuple[list[str], dict[str, list[Item]]]:
    """Find every input image and its label.

    Returns:
      (class names in label order, split -> items in a fixed shuffled order).
    """
    if not os.path.isdir(args.input_dir):
        raise ConvertError(f"--input_dir {args.input_dir} does not exist")
    train_dir = os.path.join(args.input_dir, "train")
    if not os.path.isdir(train_dir):
        raise ConvertError(f"no train folder: expected {train_dir}")
    classes = _list_classes(train_dir, args.synsets_file)
    index = {name: i for i, name in enumerate(classes)}
    human = _read_human_names(args.class_names_file)

    def item(path, synset):
        return Item(path, index[synset], synset, human.get(synset, synset))

    splits = {"train": []}
    for synset in classes:
        folder = os.path.join(train_dir, synset)
        if not os.path.isdir(folder):
            raise ConvertError(f"class {synset} of --synsets_file has no folder {folder}")
        splits["train"] += [item(p, synset) for p in _files(folder)]

    val_dir = next(
        (
            os.path.join(args.input_dir, d)
            for d in _VAL_DIRS
            if os.path.isdir(os.path.join(args.input_dir, d))
        ),
        None,
    )
    if val_dir is None:
        logger.warning("no val/ or validation/ folder in %s: train only", args.input_dir)
    else:
        subdirs = sorted(e.name for e in os.scandir(val_dir) if e.is_dir())
        if subdirs:
            unknown = [d for d in subdirs if d not in index]
            if unknown:
                raise ConvertError(f"{val_dir}/{unknown[0]} is not a class of {train_dir}")
            splits["validation"] = [
                item(p, s) for s in subdirs for p in _files(os.path.join(val_dir, s))
            ]
        else:
            files = _files(val_dir)
            if not args.val_labels_file:
                raise ConvertError(
                    f"{val_dir} has no class folders: pass --val_labels_file (one synset per "
                    "line for the sorted file names)"
                )
            with open(args.val_labels_file) as f:
                synsets = [line.strip() for line in f if line.strip()]
            if len(synsets) != len(files):
                raise ConvertError(
                    f"--val_labels_file has {len(synsets)} labels for {len(files)} files in "
                    f"{val_dir}"
                )
            bad = [s for s in synsets if s not in index]
            if bad:
                raise ConvertError(f"--val_labels_file names unknown class {bad[0]}")
            splits["validation"] = [item(p, s) for p, s in zip(files, synsets, strict=True)]
    for split, items in splits.items():
        if not items:
            raise ConvertError(f"no {split} images found under {args.input_dir}")
        # Mix classes across shards, the same way on every run (resuming relies on it).
        random.Random(args.seed).shuffle(items)
    return classes, splits


def load_image(path: str) -> tuple[bytes, int, int]:
    """Read and fully decode one file; returns RGB JPEG bytes and (height, width).

    JPEG files already in RGB or grayscale are kept byte for byte; anything else that decodes
    (PNG, CMYK JPEG, GIF, BMP, ...) is re-encoded as RGB JPEG.

    Raises:
      BadImage: empty, unreadable, truncated or not an image.
    """
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise BadImage("empty file")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes everything: truncated data raises here
    except Exception as e:  # PIL raises many types for bad data
        raise BadImage(f"not a decodable image ({type(e).__name__}: {e})") from e
    if image.format == "JPEG" and image.mode in ("RGB", "L"):
        return data, image.height, image.width
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), image.height, image.width


def write_shard(job: tuple[str, str, list[Item]]) -> tuple[str, int, list[tuple[str, str]]]:
    """Write one shard to `<path>.tmp`, then rename; returns (name, records, skipped)."""
    import tensorflow as tf

    from dataloader import tfrecord_format

    path, name, items = job
    tmp = path + ".tmp"
    skipped, count = [], 0
    with tf.io.TFRecordWriter(tmp) as writer:
        for item in items:
            try:
                data, height, width = load_image(item.path)
            except (BadImage, OSError) as e:
                skipped.append((item.path, str(e)))
                continue
            writer.write(
                tfrecord_format.make_example(
                    data,
                    item.label + 1,
                    height,
                    width,
                    text=item.text,
                    synset=item.synset,
                    filename=os.path.basename(item.path),
                )
            )
            count += 1
    os.replace(tmp, path)
    return name, count, skipped


def _fingerprint(items: list[Item]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.path}\t{item.label}\n".encode())
    return digest.hexdigest()


def _count_records(path: str) -> int:
    import tensorflow as tf

    return sum(1 for _ in tf.data.TFRecordDataset(path))


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io_group = parser.add_argument_group("input and output")
    io_group.add_argument("--input_dir", required=True, help="tree with train/ and val/")
    io_group.add_argument("--output_dir", required=True, help="where the shards go")
    io_group.add_argument(
        "--synsets_file",
        help="class folder names in label order, one per line (default: sorted folder names)",
    )
    io_group.add_argument(
        "--val_labels_file",
        help="for a flat validation/ folder: one class per line for the sorted file names",
    )
    io_group.add_argument(
        "--class_names_file",
        help="'<folder>\\t<human-readable name>' lines (e.g. imagenet_metadata.txt)",
    )
    shards = parser.add_argument_group("sharding")
    shards.add_argument("--train_shards", type=int, default=1024)
    shards.add_argument("--validation_shards", type=int, default=128)
    shards.add_argument(
        "--num_workers", type=int, default=os.cpu_count() or 1, help="parallel processes"
    )
    shards.add_argument("--seed", type=int, default=12345, help="seed of the file order")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar"
    )
    args = parser.parse_args(argv)
    for name in ("train_shards", "validation_shards", "num_workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    for name in ("synsets_file", "val_labels_file", "class_names_file"):
        path = getattr(args, name)
        if path and not os.path.isfile(path):
            parser.error(f"--{name} {path} does not exist")
    return args


def convert(args) -> dict:
    """Build (or resume building) the shards; returns a summary dict."""
    classes, splits = collect(args)
    from dataloader import tfrecord_format

    os.makedirs(args.output_dir, exist_ok=True)
    manifest_path = os.path.join(args.output_dir, MANIFEST_FILE)
    num_shards = {"train": args.train_shards, "validation": args.validation_shards}
    plan = {
        split: {"num_shards": min(num_shards[split], len(items)), "files": _fingerprint(items)}
        for split, items in splits.items()
    }
    manifest = {"plan": plan, "shards": {}}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            previous = json.load(f)
        if previous.get("plan") != plan:
            raise ConvertError(
                f"{args.output_dir} holds shards of a different input or sharding; "
                "use a new --output_dir"
            )
        manifest = previous

    def save_manifest():
        with open(manifest_path + ".tmp", "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(manifest_path + ".tmp", manifest_path)

    save_manifest()
    jobs, done = [], 0
    for split, items in splits.items():
        n = plan[split]["num_shards"]
        for i in range(n):
            name = tfrecord_format.shard_name(split, i, n)
            path = os.path.join(args.output_dir, name)
            shard_items = items[i * len(items) // n : (i + 1) * len(items) // n]
            if os.path.exists(path):
                done += len(shard_items)
                if name not in manifest["shards"]:  # finished, but killed before recording
                    manifest["shards"][name] = {"records": _count_records(path), "skipped": []}
                continue
            jobs.append((path, name, shard_items))
    total = sum(len(items) for items in splits.values())
    if done:
        logger.info("resuming: %d of %d images already in finished shards", done, total)

    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, unit="img", disable=not args.progress, file=sys.stderr)
    sizes = {job[1]: len(job[2]) for job in jobs}
    if args.num_workers > 1 and len(jobs) > 1:
        # spawn: workers import TF themselves (forking a process with TF loaded is unsafe).
        pool = multiprocessing.get_context("spawn").Pool(min(args.num_workers, len(jobs)))
        results = pool.imap_unordered(write_shard, jobs)
    else:
        pool, results = None, map(write_shard, jobs)
    try:
        for name, count, skipped in results:
            manifest["shards"][name] = {"records": count, "skipped": skipped}
            save_manifest()
            bar.update(sizes[name])
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()

    counts = {
        split: sum(v["records"] for k, v in manifest["shards"].items() if k.startswith(split + "-"))
        for split in ("train", "validation")
    }
    skipped = [s for v in manifest["shards"].values() for s in v["skipped"]]
    from utils.fileio import atomic_write

    with atomic_write(os.path.join(args.output_dir, SKIPPED_FILE)) as f:
        f.writelines(f"{path}\t{reason}\n" for path, reason in skipped)
    tfrecord_format.write_metadata(
        args.output_dir,
        num_classes=len(classes),
        num_train=counts["train"],
        num_eval=counts["validation"],
        class_names=[_read_human_names(args.class_names_file).get(c, c) for c in classes],
        label_offset=1,
        synsets=classes,
    )
    return {
        "num_classes": len(classes),
        "train": counts["train"],
        "validation": counts["validation"],
        "skipped": len(skipped),
        "shards_written": len(jobs),
    }


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    try:
        summary = convert(args)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(
        f"{summary['num_classes']} classes, {summary['train']} train and "
        f"{summary['validation']} validation images in {args.output_dir} "
        f"({summary['shards_written']} shards written, {summary['skipped']} files skipped"
        + (
            f", listed in {os.path.join(args.output_dir, SKIPPED_FILE)})"
            if summary["skipped"]
            else ")"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
