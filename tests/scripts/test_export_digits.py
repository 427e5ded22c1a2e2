"""scripts/export_digits.py: the digits validation split as PNG files, without TensorFlow."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from dataloader import DataConfig
from dataloader.sources import DigitsSource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pngs_are_the_validation_images_and_no_tensorflow_is_loaded(tmp_path):
    out = tmp_path / "png"
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['export_digits.py', '--out', {str(out)!r}, '--count', '5']\n"
        "try:\n"
        "    runpy.run_path('scripts/export_digits.py', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "sys.exit(3 if any(m.split('.')[0] == 'tensorflow' for m in sys.modules) else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    images, labels = DigitsSource(DataConfig(dataset="digits")).split_arrays["validation"]
    names = [f"label{labels[i]}_{i:04d}.png" for i in range(5)]
    assert sorted(os.listdir(out)) == sorted(names)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), images[i])
