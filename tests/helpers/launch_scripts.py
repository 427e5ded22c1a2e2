"""Dry runs of the launch scripts and the main.py command line they print
(tests/scripts/test_launch_scripts.py checks the scripts, tests/test_parity.py the recipes)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from tests.helpers import ROOT


def dry_run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    """`bash argv...` in the repository root with DRY_RUN=1 and the scripts' settings `env`."""
    # The scripts' settings come from the environment: start from none of them.
    settings = (
        "SLURM_",
        "DRY_RUN",
        "DATA_DIR",
        "MODEL_DIR",
        "RESULTS_DIR",
        "PYTHON",
        "CONTAINER",
        "PRECISION",
        "BATCH",
        "MASTER_PORT",
        "NUM_GPUS",
        "EXTRA_ARGS",
        "REQUEUE",
    )
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(settings)}
    full_env.update({"DRY_RUN": "1", **env})
    return subprocess.run(
        ["bash", *argv], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=30
    )


def main_py_args(stdout: str) -> list[str]:
    """The flags of the one printed `... main.py ...` command line."""
    lines = [line for line in stdout.splitlines() if re.search(r"(^|/)main\.py ", line)]
    assert len(lines) == 1, stdout
    words = shlex.split(lines[0])
    return words[next(i for i, w in enumerate(words) if w.endswith("main.py")) + 1 :]
