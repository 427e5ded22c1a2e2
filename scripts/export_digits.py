"""Write validation images of scikit-learn's bundled digits as PNG files (quick-start predict input).

    python scripts/export_digits.py --out results/quickstart/digits_png --count 20

The images come from the held-out 20% split that `--dataset digits` evaluates on, so the
predictions in the quick start are on images the model never trained on. File names carry the
true label (`label3_0007.png`) so the predictions can be checked by eye.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image  # noqa: E402

from dataloader.digits import digits_splits  # noqa: E402  (no TensorFlow: starts in ~1 s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write PNG files to")
    parser.add_argument("--count", type=int, default=20, help="number of images (1..360)")
    args = parser.parse_args(argv)
    splits, _ = digits_splits()
    images, labels = splits["validation"]
    if not 1 <= args.count <= len(labels):
        parser.error(f"--count must be in 1..{len(labels)}, got {args.count}")
    os.makedirs(args.out, exist_ok=True)
    for i in range(args.count):
        Image.fromarray(images[i]).save(os.path.join(args.out, f"label{labels[i]}_{i:04d}.png"))
    print(f"wrote {args.count} PNG files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
