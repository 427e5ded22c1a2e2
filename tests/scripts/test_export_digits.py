"""scripts/export_digits.py: the digits validation split as PNG files, without TensorFlow."""

import os
import subprocess

import numpy as np
from PIL import Image

from dataloader import DataConfig
from dataloader.sources import DigitsSource
from tests.helpers import ROOT
from tests.helpers.processes import program


def test_pngs_are_the_validation_images_and_no_tensorflow_is_loaded(tmp_path):
    out = tmp_path / "png"
    proc = subprocess.run(
        program("export_digits_without_tensorflow", "--out", out, "--count", "5"),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    images, labels = DigitsSource(DataConfig(dataset="digits")).split_arrays["validation"]
    names = [f"label{labels[i]}_{i:04d}.png" for i in range(5)]
    assert sorted(os.listdir(out)) == sorted(names)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), images[i])
