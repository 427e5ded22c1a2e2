"""scripts/bench_input.py runs end to end on tiny inputs and rejects bad flags."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "bench_input.py")


@pytest.mark.slow
def test_tiny_benchmark_prints_the_table():
    result = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--num_images",
            "32",
            "--batch_size",
            "16",
            "--repeats",
            "1",
            "--image_height",
            "60",
            "--image_width",
            "80",
            "--image_size",
            "32",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == [
        "decode only (upper bound)",
        "train transform alone (floor)",
        "eval transform alone (floor)",
        "train",
        "train + RandAugment",
        "eval",
    ]
    for row in rows[2:]:
        rates = [float(v) for v in row.split("|")[2:-1] if v.strip()]
        assert len(rates) == 7 and all(r > 0 for r in rates)


def test_bad_flags_exit_2_with_a_message():
    result = subprocess.run(
        [sys.executable, SCRIPT, "--num_images", "8", "--batch_size", "16"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "--num_images must be >= --batch_size" in result.stderr
