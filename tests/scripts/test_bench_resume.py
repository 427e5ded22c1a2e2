"""scripts/bench_resume.py runs end to end on tiny inputs and rejects bad flags."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tests.helpers.processes import cpu_env

SCRIPT = os.path.join(ROOT, "scripts", "bench_resume.py")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, env=cpu_env(), timeout=300
    )


@pytest.mark.slow
def test_tiny_benchmark_prints_the_skip_cost_and_the_iterator_checkpoint():
    result = run("--num_images", "48", "--skip", "2", "--batch_size", "8", "--image_size", "32")
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ("first batch after 2 skipped:", "one skipped batch:", "iterator checkpoint:"):
        assert label in result.stdout, result.stdout


def test_bad_flags_exit_2():
    result = run("--skip", "0")
    assert result.returncode == 2 and "--skip must be >= 1" in result.stderr
