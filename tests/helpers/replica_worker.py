"""One Python process with two logical CPU replicas that runs the tests' check scripts.

Logical devices must be configured before TensorFlow initializes, so checks under a
two-replica MirroredStrategy cannot run in the pytest process. Each used to start its own
interpreter (a TensorFlow import and device set-up, seconds each); one worker now runs them
all, one after the other, each script in a fresh namespace with the float32 Keras policy
restored afterwards. `run` returns what `subprocess.run` did, so the checks read the same.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SERVE = r"""
import contextlib, io, json, sys, traceback

protocol = sys.stdout
for line in sys.stdin:
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(compile(json.loads(line), "<check script>", "exec"), {"__name__": "__main__"})
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            if "keras" in sys.modules:  # a script may have set mixed_float16
                sys.modules["keras"].mixed_precision.set_global_policy("float32")
    reply = {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    protocol.write(json.dumps(reply) + "\n")
    protocol.flush()
"""


def _environment() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TF_CONFIG", "SLURM_", "OMPI_", "PMI_"))
    }
    env.update({"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT})
    return env


@functools.cache
def _worker() -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE],
        cwd=ROOT,
        env=_environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    atexit.register(_stop, proc)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(code: str) -> subprocess.CompletedProcess:
    """Run `code` (dedented) in the worker; its stdout, stderr (a traceback) and exit status."""
    proc = _worker()
    proc.stdin.write(json.dumps(textwrap.dedent(code)) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the replica worker exited with status {proc.wait()}")
    reply = json.loads(line)
    return subprocess.CompletedProcess(
        ["replica_worker"], reply["returncode"], reply["stdout"], reply["stderr"]
    )
