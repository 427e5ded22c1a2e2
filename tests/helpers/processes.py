"""Command lines and environments for the programs of tests/helpers/programs/."""

from __future__ import annotations

import os
import sys

from tests.helpers import ROOT

# A developer's shell or a CI job may hold launcher variables: a child process started by a test
# must not take itself for a rank of a multi-worker job (runtime.distribute.resolve_cluster).
LAUNCHER_PREFIXES = ("TF_CONFIG", "SLURM_", "OMPI_", "PMI_", "MASTER_")


def program(name: str, *args: object) -> list[str]:
    """`python -m tests.helpers.programs.<name> args...` (run it with cwd=ROOT)."""
    return [sys.executable, "-m", f"tests.helpers.programs.{name}", *map(str, args)]


def cpu_env(**extra: str) -> dict[str, str]:
    """This process's environment without launcher variables: no GPU, TensorFlow's C++ INFO and
    WARNING lines off, the repository importable; `extra` set last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    env.update({"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT})
    env.update(extra)
    return env
