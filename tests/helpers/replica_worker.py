"""One Python process with two logical CPU replicas that runs the tests' replica checks.

Logical devices must be configured before TensorFlow initializes, so checks under a
two-replica MirroredStrategy cannot run in the pytest process. Each used to start its own
interpreter (a TensorFlow import and device set-up, seconds each); one worker now runs them
all, one after the other, with the float32 Keras policy restored after each. A check is a
function of a module in tests/helpers/programs/ that prints its results; `run(check)` returns
what `subprocess.run` did, so the checks read the same.

    python -m tests.helpers.replica_worker

(started by `run`) reads one JSON "module:function" a line on stdin and answers each with one
JSON line {"returncode", "stdout", "stderr"} on stdout.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import io
import json
import subprocess
import sys
import traceback
from collections.abc import Callable

from tests.helpers import ROOT
from tests.helpers.processes import cpu_env


def serve(requests=sys.stdin, protocol=sys.stdout) -> None:
    """Run each requested check with its output captured; report its exit status and output."""
    for line in requests:
        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                module, _, function = json.loads(line).partition(":")
                getattr(importlib.import_module(module), function)()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                if "keras" in sys.modules:  # a check may have set mixed_float16
                    sys.modules["keras"].mixed_precision.set_global_policy("float32")
        reply = {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


@functools.cache
def _worker() -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.replica_worker"],
        cwd=ROOT,
        env=cpu_env(),
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


def run(check: Callable[[], object]) -> subprocess.CompletedProcess:
    """Run `check` (a module-level function) in the worker; its stdout, stderr (a traceback)
    and exit status."""
    proc = _worker()
    proc.stdin.write(json.dumps(f"{check.__module__}:{check.__name__}") + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the replica worker exited with status {proc.wait()}")
    reply = json.loads(line)
    return subprocess.CompletedProcess(
        ["replica_worker", check.__name__], reply["returncode"], reply["stdout"], reply["stderr"]
    )


if __name__ == "__main__":
    serve()
