"""What a user's runs leave in the repository stays out of git: run folders and weight files."""

import shutil
import subprocess

import pytest

from tests.helpers import ROOT


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
@pytest.mark.parametrize(
    "path",
    [
        "runs/my_model/params.json",
        "results/quickstart/log.json",
        "efficientnetb0_notop.weights.h5",
        "efficientnetb0_notop.h5",
        "efficientnet_lite0.pth",
        "tf_efficientnetv2_s.safetensors",
        "my_images/train/cat/0.jpg",
    ],
)
def test_run_outputs_and_weight_files_are_ignored(path):
    done = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, check=False)
    assert done.returncode == 0, f"{path} is not in .gitignore"
